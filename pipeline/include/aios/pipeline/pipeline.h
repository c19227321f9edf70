// aios/pipeline/pipeline.h — one backbone over several processes: pipeline stages that each hold a
// contiguous range of blocks, linked point to point by LibTorch's c10d (Gloo).
//
// Process 0, the front, holds the token embedding, the output head, the final norm and the first
// blocks, and is an ordinary local::LocalBackbone to its callers (and to the host serving it):
// every call of the Latent and Gradient APIs and generation work unchanged. Processes 1..N-1 are
// stage workers holding the remaining blocks in order. Each process reads only its share of the
// checkpoint. docs/pipeline-parallel.md says what crosses the link per call and how failures
// surface.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aios/backbone/config.h"
#include "aios/export.h"
#include "aios/local/local_backbone.h"

AIOS_EXPORT_BEGIN

namespace aios::pipeline {

struct PipelineOptions {
  int64_t world = 2;  // processes: the front and world - 1 stage workers
  // HOST:PORT of the rendezvous, which the front serves. Port 0 (front only) takes a free one,
  // which `launch` is told (for workers on the same machine).
  std::string rendezvous = "127.0.0.1:0";
  // The address this process's peers reach it at; empty: the front's is the rendezvous host, a
  // stage's the local address on its route to the rendezvous.
  std::string address;
  // Front only: blocks per process, the front first (may be 0), each stage at least 1, summing to
  // the model's blocks; empty: balanced_blocks().
  std::vector<int64_t> blocks;
  // Bounds every wait for another process during a call; past it the pipeline is lost and the
  // call fails with kUnavailable.
  std::chrono::milliseconds timeout = std::chrono::minutes(10);
  // Bounds forming the pipeline: every process joining and loading its share.
  std::chrono::milliseconds join_timeout = std::chrono::minutes(30);
};

// Blocks per process for `world` processes, the front first: the weights each holds as even as
// whole blocks allow, the front's tables (embedding, head) counted, each stage at least one block.
// Throws Error(kInvalidArgument) when the model has fewer than world - 1 blocks.
std::vector<int64_t> balanced_blocks(const backbone::ModelConfig& config, int64_t world);

// The front: serves the rendezvous, publishes the layout, calls `launch(port)` (to start the
// stage workers of this machine, replacing any started before), waits for every stage to load
// its share and join while it loads its own, and returns the backbone. Throws aios::Error: a
// stage's own error when its load failed (with its rank), kUnavailable when one did not come in
// time, kInvalidArgument for bad options.
// Later, when a stage is lost, calls fail with kUnavailable; the front calls `serving(false)`,
// launches again and forms a new link with the stages (those still alive rejoin it), then calls
// `serving(true)`.
std::unique_ptr<local::LocalBackbone> load_front(const std::string& path, const backbone::LoadOptions& load,
                                                 const local::StoreOptions& store, const PipelineOptions& options,
                                                 const std::function<void(int port)>& launch = {},
                                                 const std::function<void(bool serving)>& serving = {});

// A stage worker of rank `rank` (1..world-1): joins the rendezvous, loads its share of the
// checkpoint and serves the front until the front shuts it down (returns). When the link is lost
// it waits for the front to form a new one and joins it, keeping its weights; it throws
// Error(kUnavailable) when the front is gone.
void serve_stage(const std::string& path, const backbone::LoadOptions& load, int64_t rank,
                 const PipelineOptions& options);

}  // namespace aios::pipeline
AIOS_EXPORT_END

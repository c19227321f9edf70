// Internal: what the front and the stages say to each other, and who holds which blocks.
//
// The front (rank 0) holds the tables and blocks [0, bounds[1]); stage r (1 <= r < world) holds
// blocks [bounds[r], bounds[r+1]). Every call that reaches the stages is one request: the front
// sends each stage a Control (and its small tensors) under Tag::kControl, and the residual stream
// then flows rank 1 -> 2 -> ... -> world-1 -> front under Tag::kForward (cotangents the other way
// under Tag::kBackward). Each stage serves requests in the order the front sent them, which is
// what keeps every pair's messages matched.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace aios::pipeline {

enum class Op : int64_t {
  kForward = 1,    // run the blocks; with kKeep, keep what backward needs under `pass`
  kBackward = 2,   // cotangent of the output (and of owned layers) -> cotangent of the input
  kRelease = 3,    // forget the kept pass `pass`
  kDropCache = 4,  // forget the KV cache `cache`
  kShutdown = 5,   // the front is going: leave the serving loop
};

enum Flag : int64_t {
  kKeep = 1,         // a pass for backward, under Control::pass
  kRecompute = 2,    // kept as the states between blocks, each block recomputed during backward
  kRouting = 4,      // return each block's experts (int64 [B,T,k]) to the front
  kKeyPadding = 8,   // a key-padding mask bool [B,T] follows the positions
  kFullMask = 16,    // a full mask bool [B,T,T] follows the positions
  kNewCache = 32,    // the first pass into Control::cache (any other names a cache the stage holds)
};

struct Control {
  Op op = Op::kForward;
  uint64_t pass = 0;   // the kept pass (kKeep, kBackward, kRelease); 0 = none
  uint64_t cache = 0;  // the KV cache (kForward, kDropCache); 0 = none
  int64_t flags = 0;
  std::vector<int64_t> layers;   // ForwardOptions::layers of the call (each stage picks its own)
  std::vector<int64_t> present;  // kBackward: 1 where the cotangent of layers[j] is given

  at::Tensor encode() const;                 // int64 [4 + 2n]
  static Control decode(const at::Tensor& words);
};

struct Layout {
  std::vector<int64_t> bounds;  // world + 1 entries, bounds[0] = 0, bounds[world] = num_layers

  int world() const { return static_cast<int>(bounds.size()) - 1; }
  int64_t first(int rank) const { return bounds[static_cast<std::size_t>(rank)]; }
  int64_t end(int rank) const { return bounds[static_cast<std::size_t>(rank) + 1]; }
  int64_t num_layers() const { return bounds.back(); }
  // The stage whose blocks make layer state l (the stream entering block l) for
  // first(1) < l < num_layers: the rank r with first(r) < l <= end(r); -1 for any other l.
  int owner(int64_t l) const;

  std::string text() const;  // "0,2,4,6"
  // Throws Error(kInvalidArgument) naming `field` unless `text` lists world + 1 increasing bounds.
  static Layout parse(const std::string& text, const std::string& field);
};

}  // namespace aios::pipeline

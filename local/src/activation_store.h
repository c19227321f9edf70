// Internal: the bounded store of the passes LocalBackbone keeps for a later vjp.
//
// A kept pass holds its autograd graph (the activations backward needs) under a handle. The store
// bounds what they hold: a byte budget, a time-to-live since last use, and explicit release. A
// handle that was released, evicted or expired is a kNotFound error; a handle of another store is
// kInvalidArgument. Every pass is charged to an owner, and making room for one evicts only its own
// owner's passes (gradient::StoreOwner says how).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "aios/export.h"
#include "aios/local/local_backbone.h"

// Exported for the C++ tests, which reach this internal class (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::local {

using gradient::Handle;
using gradient::StoreOwner;

// One kept forward pass: either its autograd graph (from leaf to hidden and layers) or, when kept
// for recomputation, the residual stream between blocks and what the blocks share.
struct KeptPass {
  at::Tensor leaf;                  // [B,T,D] the latents (requires grad when a graph is kept)
  at::Tensor hidden;                // [B,T,D] the final hidden state
  std::vector<at::Tensor> layers;   // requested intermediate states, in request order
  std::vector<at::Tensor> routing;  // with ForwardOptions::routing: int64 [B,T,k] per block
  std::vector<int64_t> layer_index;  // their indices
  // recompute only: num_layers + 1 states [B,T,D] between blocks. With remote blocks
  // (backbone::RemoteBlocks) those entering them are undefined; the last one and the layers
  // the remote blocks return keep their graph back to remote_input, which the remote side
  // backs through.
  std::vector<at::Tensor> states;
  at::Tensor remote_input;          // recompute with remote blocks: [B,T,D], the leaf they start from
  std::shared_ptr<const backbone::Model::BlockContext> context;  // recompute only: what the blocks share
  std::size_t bytes = 0;            // estimate of the memory the pass holds
  std::shared_ptr<const ali::Extension> extension;  // the vocabulary the pass's logits span, or null
  at::Tensor ids;                   // int64 [B,T]: ForwardOptions::ids when given with an extension
  std::function<bool()> cancelled;  // ForwardOptions::cancelled, asked between blocks of each backward
};

struct Stored {
  Handle handle = 0;
  // Passes of the same owner that the store dropped while storing this one: evicted to make
  // room, or found expired. Their handles are gone (a host forgets them).
  std::vector<Handle> dropped;
};

class ActivationStore {
 public:
  explicit ActivationStore(StoreOptions options = {});
  ~ActivationStore();
  ActivationStore(const ActivationStore&) = delete;
  ActivationStore& operator=(const ActivationStore&) = delete;

  // Stores `pass` for `owner`, dropping expired entries, then the owner's least recently used
  // ones until it fits. Throws Error(kResourceExhausted) when the pass alone exceeds the budget,
  // or when the other owners' passes leave too little of it (then nothing is evicted).
  Stored put(std::shared_ptr<const KeptPass> pass, StoreOwner owner = 0);
  // Throws what put() would for a pass of `bytes` (before computing one), without changing anything.
  void check_room(std::size_t bytes, StoreOwner owner = 0) const;
  // The pass under `handle`; refreshes its recency and time-to-live.
  std::shared_ptr<const KeptPass> get(Handle handle);
  // Drops the pass under `handle` (its memory is freed once no call is using it).
  void release(Handle handle);

  std::size_t bytes() const;                  // sum of the estimates of the live entries
  std::size_t bytes(StoreOwner owner) const;  // the same, of `owner`'s entries
  std::size_t size() const;                   // live entries
  const StoreOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::local
AIOS_EXPORT_END

// Internal: the front's side of a pipeline. The blocks past the front's own are a
// backbone::RemoteBlocks whose run() sends the residual stream through the stages, so that every
// call of LocalBackbone (kept passes, recomputation, the fused losses, generation with caches,
// extensions) works unchanged above it. A pass kept for backward is one autograd node here
// (RemoteBackward) standing for the stages' parts; when the node goes (release, eviction, expiry
// or the end of a stateless call), the stages are told to drop their parts.
//
// Concurrency: calls from many threads are sent to the stages one at a time, in the order of a
// ticket; their answers are taken in the same order. A call's sends do not wait for earlier calls'
// answers, so while the last stage works on one call the first works on the next: requests from
// several callers fill the pipeline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "aios/backbone/model.h"
#include "link.h"
#include "protocol.h"

namespace aios::pipeline {

class Stages final : public backbone::RemoteBlocks, public std::enable_shared_from_this<Stages> {
 public:
  // `rendezvous` is kept for the link's life (its store serves the stages).
  // kv_bytes: the bytes one slot of one layer's keys and values takes (2 * Hkv * hd * element size).
  Stages(std::unique_ptr<Rendezvous> rendezvous, std::unique_ptr<Link> link, Layout layout,
         std::vector<WeightKind> storage, std::size_t kv_bytes, std::chrono::milliseconds timeout);
  ~Stages() override;  // tells the stages to leave

  int64_t first_block() const override { return layout_.first(1); }
  at::Tensor run(const at::Tensor& x, const backbone::Attention& attention, const std::vector<int64_t>& layers,
                 std::vector<at::Tensor>* states, backbone::KVCache* cache, std::vector<at::Tensor>* routing,
                 bool recompute) override;
  std::vector<WeightKind> storage() const override { return storage_; }
  // Each stage's caches grow with the front's (the same slots appended), each of its layers holding
  // keys and values [B, kv_width / head_dim, capacity, head_dim].
  std::size_t cache_bytes(const backbone::KVCache& cache) const override;

  // The kept pass `pass`: d output [B,T,D] and d layers[j] (undefined where not given; only the
  // stages' layers) -> d input [B,T,D].
  at::Tensor backward(uint64_t pass, const at::Tensor& d_output, const std::vector<int64_t>& layers,
                      const std::vector<at::Tensor>& d_layers);
  // Tells the stages to drop a kept pass or a cache (nothing when the link is gone). Never throws.
  void drop(Op op, uint64_t id) noexcept;

  const Layout& layout() const { return layout_; }

 private:
  // Runs `sends` for one request, in ticket order; returns the ticket its answers are taken under.
  uint64_t dispatch(const std::function<void()>& sends);
  // Waits for `ticket`'s turn, runs `receives`, passes the turn on. An error a stage sent in place of
  // a tensor is thrown after the request's last message is taken.
  void answer(uint64_t ticket, const std::function<void()>& receives);
  // The next message from `rank` under `tag` for the request being answered.
  at::Tensor take(int rank, Tag tag);

  std::unique_ptr<Rendezvous> rendezvous_;
  std::unique_ptr<Link> link_;
  Layout layout_;
  std::vector<WeightKind> storage_;
  std::size_t kv_bytes_;
  std::chrono::milliseconds timeout_;

  std::atomic<uint64_t> next_id_{1};  // kept passes and caches
  std::mutex dispatch_mutex_;
  uint64_t next_ticket_ = 0;          // under dispatch_mutex_
  std::mutex turn_mutex_;
  std::condition_variable turn_;
  uint64_t serving_ = 0;              // under turn_mutex_: the ticket whose answers are taken now
  std::optional<Error> answer_error_;  // the first error a stage sent for the request being answered
};

}  // namespace aios::pipeline

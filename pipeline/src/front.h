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
//
// Failures: a lost link (a stage died or did not answer in time) fails the calls on it with
// kUnavailable; a supervisor thread then forms a new link (a new epoch: local workers relaunched,
// remote ones rejoining), and calls succeed again. Kept passes and caches of the lost epoch are
// gone from the stages, which say kNotFound when asked for them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "aios/backbone/model.h"
#include "aios/export.h"
#include "link.h"
#include "protocol.h"

// Exported for the C++ tests, which reach this internal class (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::pipeline {

// What the stages' share of a session's cache holds per row: bytes per slot (their attention
// layers' keys and values) and a fixed part (their recurrent layers' states).
struct CacheCost {
  std::size_t per_slot = 0;
  std::size_t per_row = 0;
};

class Stages final : public backbone::RemoteBlocks, public std::enable_shared_from_this<Stages> {
 public:
  // Forms the link of `epoch` (0, 1, ...) with every stage: relaunches what must be, waits for each
  // stage to load and join; throws Error when it cannot.
  using Form = std::function<std::unique_ptr<Link>(int64_t epoch)>;

  // Serves over `first`, epoch 0's link. When a call finds a link lost, calls `serving(false)`
  // before that call fails; the supervisor then forms the next epoch's until one holds, and calls
  // `serving(true)`.
  // cache_cost: what the stages' share of a cache holds per row.
  Stages(std::unique_ptr<Link> first, Form form, Layout layout, std::vector<WeightKind> storage, CacheCost cache_cost,
         std::chrono::milliseconds timeout, std::function<void(bool)> serving);
  ~Stages() override;  // tells the stages to leave

  int64_t first_block() const override { return layout_.first(1); }
  at::Tensor run(const at::Tensor& x, const backbone::Attention& attention, const std::vector<int64_t>& layers,
                 std::vector<at::Tensor>* states, backbone::KVCache* cache, std::vector<at::Tensor>* routing,
                 bool recompute) override;
  std::vector<WeightKind> storage() const override { return storage_; }
  // Each stage's caches grow with the front's (the same slots appended), each of its layers holding
  // keys and values [B, Hkv, capacity, hd].
  std::size_t cache_bytes(const backbone::KVCache& cache) const override;

  // The kept pass `pass`: d output [B,T,D] and d layers[j] (undefined where not given; only the
  // stages' layers) -> d input [B,T,D].
  at::Tensor backward(uint64_t pass, const at::Tensor& d_output, const std::vector<int64_t>& layers,
                      const std::vector<at::Tensor>& d_layers);
  // Tells the stages to drop a kept pass or a cache (nothing when the link is gone). Never throws.
  void drop(Op op, uint64_t id) noexcept;

 private:
  // One link's life: its requests' tickets and whose answers are taken now.
  struct Epoch {
    explicit Epoch(std::unique_ptr<Link> link) : link(std::move(link)) {}
    std::unique_ptr<Link> link;
    uint64_t next_ticket = 0;  // under Stages::dispatch_mutex_
    std::mutex turn_mutex;
    std::condition_variable turn;
    uint64_t serving = 0;  // under turn_mutex
  };
  struct Ticket {
    std::shared_ptr<Epoch> epoch;
    uint64_t number = 0;
  };
  // The next message from `rank` under `tag` for the request being answered; an error a stage sent
  // in its place is kept (the first one) and thrown once the request's last message is taken.
  using Take = std::function<at::Tensor(int rank, Tag tag)>;

  // Runs `sends` for one request on the current link; returns the ticket its answers are taken under
  // (with `answered`: every such ticket must be answered, or the turns stop there).
  Ticket dispatch(const std::function<void(Link&)>& sends, bool answered = true);
  // Waits for the ticket's turn, runs `receives`, passes the turn on.
  void answer(const Ticket& ticket, const std::function<void(const Take&)>& receives);
  // After a transport failure on `epoch`'s link: wakes the supervisor if that link is still the
  // current one (failures of a link already replaced are old news).
  void lost(const std::shared_ptr<Epoch>& epoch);
  void supervise();

  Form form_;
  Layout layout_;
  std::vector<WeightKind> storage_;
  CacheCost cache_cost_;
  std::chrono::milliseconds timeout_;
  std::function<void(bool)> serving_;

  std::atomic<uint64_t> next_id_{1};  // kept passes and caches, unique across epochs
  std::mutex dispatch_mutex_;
  std::shared_ptr<Epoch> current_;    // under dispatch_mutex_
  int64_t epoch_number_ = 0;

  std::mutex state_mutex_;
  std::condition_variable state_;
  // Under state_mutex_: the current link, found broken. Set only while that link is current and
  // cleared when it is replaced, both under dispatch_mutex_ too (taken first), so that it never
  // names a link already replaced.
  std::shared_ptr<Epoch> lost_;
  bool stopping_ = false;  // under state_mutex_
  std::thread supervisor_;
};

}  // namespace aios::pipeline

AIOS_EXPORT_END

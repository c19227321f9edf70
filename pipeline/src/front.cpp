#include "front.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include "aios/fail.h"

namespace aios::pipeline {

namespace {

// What the stages keep under an id (a pass or a cache) for as long as this lives.
class Share {
 public:
  Share(std::weak_ptr<Stages> stages, Op drop, uint64_t id) : stages_(std::move(stages)), drop_(drop), id_(id) {}
  ~Share() {
    if (const std::shared_ptr<Stages> stages = stages_.lock()) stages->drop(drop_, id_);
  }
  Share(const Share&) = delete;
  Share& operator=(const Share&) = delete;
  uint64_t id() const { return id_; }

 private:
  std::weak_ptr<Stages> stages_;
  Op drop_;
  uint64_t id_;
};

// The stages' blocks in the front's autograd graph: outputs y [B,T,D] and the stages' requested
// layer states, input x [B,T,D]; backward asks the stages.
class RemoteBackward final : public torch::autograd::Node {
 public:
  RemoteBackward(std::weak_ptr<Stages> stages, std::shared_ptr<Share> pass, std::vector<int64_t> layers,
                 const at::Tensor& output)
      : stages_(std::move(stages)), pass_(std::move(pass)), layers_(std::move(layers)),
        output_sizes_(output.sizes().vec()), output_options_(output.options()) {}

  std::string name() const override { return "aios::pipeline::RemoteBackward"; }

  // Output k >= 1 is layers_[slots[k-1]]'s state.
  std::vector<std::size_t> slots;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const std::shared_ptr<Stages> stages = stages_.lock();
    if (!stages || !pass_) {
      fail(ErrorCode::kNotFound, "handle", "the pipeline stages no longer hold this pass");
    }
    const at::Tensor d_output = grads[0].defined() ? grads[0] : at::zeros(output_sizes_, output_options_);
    std::vector<at::Tensor> d_layers(layers_.size());
    for (std::size_t k = 1; k < grads.size(); ++k) d_layers[slots[k - 1]] = grads[k];
    return {stages->backward(pass_->id(), d_output, layers_, d_layers)};
  }

  void release_variables() override { pass_.reset(); }

 private:
  std::weak_ptr<Stages> stages_;
  std::shared_ptr<Share> pass_;
  std::vector<int64_t> layers_;
  std::vector<int64_t> output_sizes_;  // [B,T,D]
  at::TensorOptions output_options_;
};

}  // namespace

Stages::Stages(std::unique_ptr<Link> first, Form form, Layout layout, std::vector<WeightKind> storage,
               CacheCost cache_cost, std::chrono::milliseconds timeout, std::function<void(bool)> serving)
    : form_(std::move(form)), layout_(std::move(layout)), storage_(std::move(storage)), cache_cost_(cache_cost),
      timeout_(timeout), serving_(std::move(serving)) {
  current_ = std::make_shared<Epoch>(std::move(first));
  supervisor_ = std::thread([this] { supervise(); });
}

std::size_t Stages::cache_bytes(const backbone::KVCache& cache) const {
  if (cache.batch_size() == 0) return 0;
  return static_cast<std::size_t>(cache.batch_size()) *
         (static_cast<std::size_t>(cache.capacity()) * cache_cost_.per_slot + cache_cost_.per_row);
}

Stages::~Stages() {
  {
    std::lock_guard lock(state_mutex_);
    stopping_ = true;
  }
  state_.notify_all();
  supervisor_.join();
  try {
    std::lock_guard lock(dispatch_mutex_);
    Link& link = *current_->link;
    if (link.broken()) return;
    Control c;
    c.op = Op::kShutdown;
    for (int r = 1; r < layout_.world(); ++r) link.send(r, Tag::kControl, c.encode());
    link.flush();
    fmt::print(stderr, "aios: {}\n", link.traffic_line());
  } catch (const std::exception&) {
    // The stages are gone already; nothing to tell them.
  }
}

void Stages::lost(const std::shared_ptr<Epoch>& epoch) {
  {
    // Checked and recorded under dispatch_mutex_, which the supervisor holds to replace the link:
    // a loss is recorded only for the link that is current at that moment.
    std::lock_guard lock(dispatch_mutex_);
    if (epoch != current_) return;
    {
      std::lock_guard state(state_mutex_);
      lost_ = epoch;
    }
    // Said here, before the call that found the link lost fails: a caller told kUnavailable finds
    // the health service agreeing (the supervisor may not run for a while). Under dispatch_mutex_,
    // so that it never comes after the next link's serving(true).
    if (serving_) serving_(false);
  }
  state_.notify_all();
}

void Stages::supervise() {
  std::unique_lock lock(state_mutex_);
  for (;;) {
    state_.wait(lock, [&] { return lost_ != nullptr || stopping_; });
    if (stopping_) return;
    lost_ = nullptr;
    lock.unlock();
    fmt::print(stderr, "aios: pipeline: a stage was lost; not serving until the stages are back\n");
    std::unique_ptr<Link> link;
    while (!link) {
      {
        std::lock_guard stop(state_mutex_);
        if (stopping_) return;
      }
      try {
        link = form_(++epoch_number_);
      } catch (const std::exception& e) {
        fmt::print(stderr, "aios: pipeline: forming the stages' link failed, trying again: {}\n", e.what());
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
    {
      std::lock_guard swap(dispatch_mutex_);
      current_ = std::make_shared<Epoch>(std::move(link));
      // Calls that failed on the old link while the new one formed (a stateless call's pass
      // dropped as it failed, say) reported its loss again; that is old news, and acting on it
      // would tear down the link just formed (and, with local workers, kill them again).
      {
        std::lock_guard state(state_mutex_);
        lost_ = nullptr;
      }
      fmt::print(stderr, "aios: pipeline: the stages are back (link {})\n", epoch_number_);
      // With the link swapped in, under the same lock: a loss of the new link says NOT_SERVING
      // after this, never before it.
      if (serving_) serving_(true);
    }
    lock.lock();
  }
}

Stages::Ticket Stages::dispatch(const std::function<void(Link&)>& sends, bool answered) {
  Ticket ticket;
  {
    std::lock_guard lock(dispatch_mutex_);
    ticket.epoch = current_;
    if (!ticket.epoch->link->broken()) {
      try {
        sends(*ticket.epoch->link);
        if (answered) ticket.number = ticket.epoch->next_ticket++;
        return ticket;
      } catch (const Error&) {
        if (!ticket.epoch->link->broken()) throw;
      }
    }
  }
  lost(ticket.epoch);
  fail(ErrorCode::kUnavailable, "pipeline", "a pipeline stage was lost; calls succeed again once the stages are back");
}

void Stages::answer(const Ticket& ticket, const std::function<void(const Take&)>& receives) {
  Epoch& epoch = *ticket.epoch;
  {
    std::unique_lock lock(epoch.turn_mutex);
    epoch.turn.wait(lock, [&] { return epoch.serving == ticket.number; });
  }
  auto pass_turn = [&] {
    std::lock_guard lock(epoch.turn_mutex);
    ++epoch.serving;
    epoch.turn.notify_all();
  };
  std::optional<Error> error;
  const Take take = [&](int rank, Tag tag) {
    Received r = epoch.link->receive(rank, tag, timeout_);
    if (r.error && !error) error = std::move(r.error);
    return r.tensor;
  };
  try {
    receives(take);
  } catch (const Error&) {
    pass_turn();
    if (epoch.link->broken()) lost(ticket.epoch);
    throw;
  } catch (...) {
    pass_turn();
    throw;
  }
  pass_turn();
  if (error) throw *error;
}

at::Tensor Stages::run(const at::Tensor& x, const backbone::Attention& attention, const std::vector<int64_t>& layers,
                       std::vector<at::Tensor>* states, backbone::KVCache* cache, std::vector<at::Tensor>* routing,
                       bool recompute) {
  const int world = layout_.world();
  const bool keep = at::GradMode::is_enabled() && x.requires_grad();
  Control c;
  c.op = Op::kForward;
  c.layers = layers;
  if (routing != nullptr) c.flags |= kRouting;
  if (attention.key_padding.defined()) c.flags |= kKeyPadding;
  if (attention.full_mask.defined()) c.flags |= kFullMask;
  if (cache != nullptr) {
    if (cache->remote_id() == 0) {
      const uint64_t id = next_id_++;
      cache->attach_remote(id, std::make_shared<Share>(weak_from_this(), Op::kDropCache, id));
      c.flags |= kNewCache;
    }
    c.cache = cache->remote_id();
  }
  // Created before anything is sent: however this call ends, the stages' parts are dropped with it.
  std::shared_ptr<Share> pass;
  if (keep) {
    pass = std::make_shared<Share>(weak_from_this(), Op::kRelease, next_id_++);
    c.pass = pass->id();
    c.flags |= kKeep;
    if (recompute) c.flags |= kRecompute;
  }
  const at::Tensor control = c.encode();
  const Ticket ticket = dispatch([&](Link& link) {
    for (int r = 1; r < world; ++r) {
      link.send(r, Tag::kControl, control);
      link.send(r, Tag::kControl, attention.positions);
      if (attention.key_padding.defined()) link.send(r, Tag::kControl, attention.key_padding);
      if (attention.full_mask.defined()) link.send(r, Tag::kControl, attention.full_mask);
    }
    link.send(1, Tag::kForward, x.detach());
  });
  std::vector<at::Tensor> layer_states(layers.size());
  at::Tensor y;
  answer(ticket, [&](const Take& take) {
    for (int r = 1; r < world; ++r) {
      for (std::size_t j = 0; j < layers.size(); ++j) {
        if (layout_.owner(layers[j]) == r) layer_states[j] = take(r, Tag::kToFront);
      }
      if (routing != nullptr) {
        for (int64_t i = layout_.first(r); i < layout_.end(r); ++i) {
          (*routing)[static_cast<std::size_t>(i)] = take(r, Tag::kToFront).to(x.device());
        }
      }
    }
    y = take(world - 1, Tag::kForward);
  });
  y = y.to(x.device());
  c10::intrusive_ptr<RemoteBackward> node;
  if (keep) {
    node = c10::make_intrusive<RemoteBackward>(weak_from_this(), pass, layers, y);
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    torch::autograd::set_history(y, node);
  }
  for (std::size_t j = 0; j < layers.size(); ++j) {
    if (!layer_states[j].defined()) continue;
    at::Tensor state = layer_states[j].to(x.device());
    if (node) {
      torch::autograd::set_history(state, node);
      node->slots.push_back(j);
    }
    (*states)[j] = state;
  }
  return y;
}

at::Tensor Stages::backward(uint64_t pass, const at::Tensor& d_output, const std::vector<int64_t>& layers,
                            const std::vector<at::Tensor>& d_layers) {
  const int world = layout_.world();
  Control c;
  c.op = Op::kBackward;
  c.pass = pass;
  c.layers = layers;
  for (const at::Tensor& d : d_layers) c.present.push_back(d.defined() ? 1 : 0);
  const at::Tensor control = c.encode();
  const Ticket ticket = dispatch([&](Link& link) {
    for (int r = 1; r < world; ++r) {
      link.send(r, Tag::kControl, control);
      for (std::size_t j = 0; j < layers.size(); ++j) {
        if (d_layers[j].defined() && layout_.owner(layers[j]) == r) link.send(r, Tag::kControl, d_layers[j]);
      }
    }
    link.send(world - 1, Tag::kBackward, d_output);
  });
  at::Tensor d_input;
  answer(ticket, [&](const Take& take) { d_input = take(1, Tag::kBackward); });
  return d_input.to(d_output.device());
}

void Stages::drop(Op op, uint64_t id) noexcept {
  Control c;
  c.op = op;
  (op == Op::kDropCache ? c.cache : c.pass) = id;
  try {
    // Ids are unique across epochs: a newer link's stages never held this one and ignore it.
    dispatch(
        [&](Link& link) {
          const at::Tensor control = c.encode();
          for (int r = 1; r < layout_.world(); ++r) link.send(r, Tag::kControl, control);
        },
        /*answered=*/false);
  } catch (const std::exception&) {
    // A lost link has dropped everything the stages held.
  }
}

}  // namespace aios::pipeline

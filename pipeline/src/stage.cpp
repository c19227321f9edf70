#include "stage.h"

#include <map>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include "aios/fail.h"

namespace aios::pipeline {

namespace {

// How long a stage waits for its next request: as long as the front lives (its end ends the wait).
constexpr std::chrono::milliseconds kIdle = std::chrono::hours(24 * 365);

// What a kept pass holds on this stage: its graph from `input`, or with recomputation the states
// between its blocks and what the blocks share.
struct Kept {
  at::Tensor input;                          // [B,T,D]; requires grad in graph form
  at::Tensor output;                         // [B,T,D], graph form
  std::map<int64_t, at::Tensor> layers;      // graph form: the requested inner states by layer index
  std::vector<at::Tensor> states;            // recompute form: end - first + 1 states
  std::shared_ptr<const backbone::Model::BlockContext> context;
};

class Stage {
 public:
  Stage(Link& link, const backbone::Model& model, const Layout& layout, std::chrono::milliseconds timeout)
      : link_(link), model_(model), layout_(layout), timeout_(timeout), rank_(link.rank()),
        first_(layout.first(rank_)), end_(layout.end(rank_)),
        previous_(rank_ - 1), next_(rank_ + 1 < layout.world() ? rank_ + 1 : 0) {}

  void serve() {
    for (;;) {
      const Control c = Control::decode(need(link_.receive(0, Tag::kControl, kIdle)));
      switch (c.op) {
        case Op::kForward: forward(c); break;
        case Op::kBackward: backward(c); break;
        case Op::kRelease: passes_.erase(c.pass); break;
        case Op::kDropCache: caches_.erase(c.cache); break;
        case Op::kShutdown:
          link_.flush();
          fmt::print(stderr, "aios: {}\n", link_.traffic_line());
          return;
        default: fail(ErrorCode::kInternal, "pipeline", "unknown request {}", static_cast<int64_t>(c.op));
      }
    }
  }

 private:
  // A message from the front itself is never an error.
  static at::Tensor need(Received r) {
    if (r.error) throw *r.error;
    return r.tensor;
  }

  // The indices j of the call's layers whose states this stage makes.
  std::vector<std::size_t> owned(const Control& c) const {
    std::vector<std::size_t> out;
    for (std::size_t j = 0; j < c.layers.size(); ++j) {
      if (layout_.owner(c.layers[j]) == rank_) out.push_back(j);
    }
    return out;
  }

  template <typename Compute>
  std::optional<Error> attempt(std::optional<Error> error, Compute compute) {
    if (error) return error;
    try {
      compute();
    } catch (const Error& e) {
      return e;
    } catch (const std::exception& e) {
      return Error(ErrorCode::kInternal, "pipeline", fmt::format("stage {}: {}", rank_, e.what()));
    }
    return std::nullopt;
  }

  void forward(const Control& c) {
    const c10::Device device = model_.device();
    backbone::Attention attention;
    attention.positions = need(link_.receive(0, Tag::kControl, timeout_)).to(device);
    if (c.flags & kKeyPadding) attention.key_padding = need(link_.receive(0, Tag::kControl, timeout_)).to(device);
    if (c.flags & kFullMask) attention.full_mask = need(link_.receive(0, Tag::kControl, timeout_)).to(device);
    Received in = link_.receive(previous_, Tag::kForward, timeout_);
    const std::vector<std::size_t> mine = owned(c);
    std::map<int64_t, at::Tensor> states;  // layer index -> state
    std::vector<at::Tensor> routing;
    at::Tensor y;
    const std::optional<Error> error = attempt(std::move(in.error), [&] {
      const bool keep = (c.flags & kKeep) != 0, recompute = (c.flags & kRecompute) != 0;
      backbone::KVCache* cache = nullptr;
      if (c.cache != 0) {
        if ((c.flags & kNewCache) == 0 && caches_.count(c.cache) == 0) {
          fail(ErrorCode::kNotFound, "session",
               "pipeline stage {} no longer holds this session's cache (the stage was restarted)", rank_);
        }
        cache = &caches_[c.cache];
      }
      if (cache != nullptr) {
        const at::Tensor valid = attention.key_padding.defined() ? attention.key_padding : attention.positions.ge(0);
        cache->append_slots(valid, attention.positions, layout_.num_layers());
      }
      at::Tensor x = in.tensor.to(device, model_.dtype());
      std::shared_ptr<backbone::Model::BlockContext> context = model_.begin(x, attention, cache);
      if (c.flags & kRouting) {
        routing.assign(static_cast<std::size_t>(layout_.num_layers()), at::Tensor());
        context->routing = &routing;
      }
      const bool graph = keep && !recompute;
      at::AutoGradMode grad_mode(graph);
      Kept kept;
      if (graph) x.requires_grad_(true);
      kept.input = x;
      if (keep && recompute) kept.states.push_back(x);
      auto record = [&](int64_t l) {
        for (std::size_t j : mine) {
          if (c.layers[j] == l) states[l] = x;
        }
      };
      for (int64_t i = first_; i < end_; ++i) {
        if (i > first_) record(i);
        x = model_.block(i, x, *context);
        if (keep && recompute) kept.states.push_back(x);
      }
      record(end_);
      y = x;
      context->routing = nullptr;
      if (keep) {
        if (graph) {
          kept.output = y;
          kept.layers = states;
        } else {
          kept.context = context;
        }
        passes_[c.pass] = std::move(kept);
      }
      if (c.flags & kRouting) backbone::Model::complete_routing(routing, y);
    });
    for (std::size_t j : mine) {
      if (error) {
        link_.send_error(0, Tag::kToFront, *error);
      } else {
        link_.send(0, Tag::kToFront, states.at(c.layers[j]).detach());
      }
    }
    if (c.flags & kRouting) {
      for (int64_t i = first_; i < end_; ++i) {
        if (error) {
          link_.send_error(0, Tag::kToFront, *error);
        } else {
          link_.send(0, Tag::kToFront, routing[static_cast<std::size_t>(i)]);
        }
      }
    }
    if (error) {
      link_.send_error(next_, Tag::kForward, *error);
    } else {
      link_.send(next_, Tag::kForward, y.detach());
    }
  }

  void backward(const Control& c) {
    std::map<int64_t, at::Tensor> d_layers;  // layer index -> cotangent
    for (std::size_t j : owned(c)) {
      if (c.present[j] != 0) d_layers[c.layers[j]] = need(link_.receive(0, Tag::kControl, timeout_));
    }
    Received d_out = link_.receive(next_, Tag::kBackward, timeout_);
    at::Tensor d_input;
    const std::optional<Error> error = attempt(std::move(d_out.error), [&] {
      const auto found = passes_.find(c.pass);
      if (found == passes_.end()) {
        fail(ErrorCode::kNotFound, "handle", "pipeline stage {} no longer holds this pass", rank_);
      }
      const Kept& kept = found->second;
      const c10::Device device = model_.device();
      at::AutoGradMode grad_mode(true);
      at::Tensor g = d_out.tensor.to(device, model_.dtype());
      auto add = [&](int64_t l) {
        const auto d = d_layers.find(l);
        if (d != d_layers.end()) g = g + d->second.to(device, model_.dtype());
      };
      add(end_);  // the output is layer end_'s state too
      if (kept.states.empty()) {
        std::vector<at::Tensor> outputs{kept.output}, grads{g};
        for (const auto& [l, d] : d_layers) {
          if (l == end_) continue;
          outputs.push_back(kept.layers.at(l));
          grads.push_back(d.to(device, model_.dtype()));
        }
        d_input = torch::autograd::grad(outputs, {kept.input}, grads, /*retain_graph=*/true,
                                        /*create_graph=*/false, /*allow_unused=*/true)[0];
        if (!d_input.defined()) d_input = at::zeros_like(kept.input);
        return;
      }
      for (int64_t i = end_ - 1; i >= first_; --i) {
        const at::Tensor x = kept.states[static_cast<std::size_t>(i - first_)].detach().requires_grad_(true);
        g = torch::autograd::grad({model_.block(i, x, *kept.context)}, {x}, {g})[0];
        if (i > first_) add(i);
      }
      d_input = g;
    });
    if (error) {
      link_.send_error(previous_, Tag::kBackward, *error);
    } else {
      link_.send(previous_, Tag::kBackward, d_input);
    }
  }

  Link& link_;
  const backbone::Model& model_;
  const Layout& layout_;
  std::chrono::milliseconds timeout_;
  int rank_;
  int64_t first_, end_;
  int previous_, next_;
  std::map<uint64_t, Kept> passes_;
  std::map<uint64_t, backbone::KVCache> caches_;
};

}  // namespace

void serve_requests(Link& link, const backbone::Model& model, const Layout& layout, std::chrono::milliseconds timeout) {
  Stage(link, model, layout, timeout).serve();
}

}  // namespace aios::pipeline

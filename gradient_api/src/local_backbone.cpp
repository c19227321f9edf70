#include "aios/gradient_api/local_backbone.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <cmath>

#include <fmt/ranges.h>
#include <torch/csrc/autograd/autograd.h>

#include "aios/fail.h"
#include "losses.h"

namespace aios::gradient {

namespace {

std::string shape_of(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ",")); }

void check_like(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::TensorOptions& like) {
  if (t.sizes() != shape) {
    fail(ErrorCode::kInvalidArgument, name, "expected shape [{}], got {}", fmt::join(shape, ","), shape_of(t));
  }
  if (t.scalar_type() != like.dtype().toScalarType()) {
    fail(ErrorCode::kInvalidArgument, name, "expected dtype {}, got {}",
         backbone::dtype_name(like.dtype().toScalarType()), backbone::dtype_name(t.scalar_type()));
  }
  if (t.device() != like.device()) {
    fail(ErrorCode::kInvalidArgument, name, "expected device {}, got {}", like.device().str(), t.device().str());
  }
}

// Per-token weights [B,T] -> float32 [N] on `device`: finite, >= 0, with a positive sum.
at::Tensor checked_weights(const at::Tensor& w, const char* name, int64_t B, int64_t T, c10::Device device) {
  if (w.sizes() != at::IntArrayRef{B, T}) {
    fail(ErrorCode::kInvalidArgument, name, "expected shape [{},{}], got {}", B, T, shape_of(w));
  }
  if (!c10::isFloatingType(w.scalar_type()) && !c10::isIntegralType(w.scalar_type(), true)) {
    fail(ErrorCode::kInvalidArgument, name, "expected a real dtype, got {}", backbone::dtype_name(w.scalar_type()));
  }
  const at::Tensor flat = w.to(device, at::kFloat).flatten();
  const double low = flat.min().item<double>();
  if (!std::isfinite(flat.abs().max().item<double>()) || low < 0) {
    fail(ErrorCode::kInvalidArgument, name, "expected finite values >= 0, got a minimum of {}", low);
  }
  if (flat.sum().item<double>() <= 0) fail(ErrorCode::kInvalidArgument, name, "expected a positive total weight, got 0");
  return flat;
}

// Activations autograd keeps per token and layer, in elements: block input and norm, q/k/v and
// their rotated forms, attention output, MLP input, gate/up, activation and product.
std::size_t estimate_bytes(const backbone::ModelConfig& c, int64_t B, int64_t T, c10::ScalarType dtype) {
  const int64_t qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  const int64_t per_layer = 6 * c.hidden_size + 3 * qkv + 2 * c.num_heads * c.head_dim + 4 * c.intermediate_size;
  return static_cast<std::size_t>(B * T * (per_layer * c.num_layers + 2 * c.hidden_size)) * c10::elementSize(dtype);
}

}  // namespace

struct LocalBackbone::Impl {
  std::unique_ptr<ali::LocalBackbone> inner;
  ActivationStore store;

  Impl(std::unique_ptr<ali::LocalBackbone> b, const StoreOptions& s) : inner(std::move(b)), store(s) {}

  const backbone::Model& model() const { return inner->model(); }

  // Memory a pass of these latents will hold, known before running it.
  std::size_t pass_bytes(const at::Tensor& latents, const ForwardOptions& options) const {
    const auto& cfg = model().config();
    if (!options.recompute) return estimate_bytes(cfg, latents.size(0), latents.size(1), latents.scalar_type());
    return static_cast<std::size_t>(cfg.num_layers + 1) * static_cast<std::size_t>(latents.nbytes());
  }

  // The forward pass, keeping its graph (starting from a fresh leaf that shares the latents'
  // storage) or, with options.recompute, only the states between blocks. `attention` comes from
  // inner->prepare(latents, options).
  std::shared_ptr<KeptPass> run(const at::Tensor& latents, const backbone::Attention& attention,
                                const ForwardOptions& options) const {
    if (c10::InferenceMode::is_enabled() || latents.is_inference()) {
      fail(ErrorCode::kInvalidArgument, "latents",
           "gradient calls need autograd: expected latents made outside torch.inference_mode(), and no such mode active");
    }
    const backbone::Model& m = model();
    const auto& cfg = m.config();
    auto pass = std::make_shared<KeptPass>();
    pass->layer_index = options.layers;
    pass->extension = options.extension;
    if (options.ids) pass->ids = options.ids->to(latents.device(), at::kLong);
    pass->cancelled = options.cancelled;
    if (!options.recompute) {
      pass->leaf = latents.detach().requires_grad_(true);
      at::AutoGradMode grad_mode(true);
      // With a cancellation check, the gradient entering each block asks it too, during backward.
      auto between_blocks = [&](int64_t, const at::Tensor& x) {
        ali::stop_if_cancelled(options.cancelled);
        if (options.cancelled) {
          // A hook on the stream entering a block runs once that block's backward is done.
          x.register_hook([cancelled = options.cancelled](const at::Tensor& grad) {
            ali::stop_if_cancelled(cancelled);
            return grad;
          });
        }
      };
      pass->hidden = m.forward(pass->leaf, attention, options.layers, &pass->layers, nullptr, between_blocks);
      pass->bytes = pass_bytes(latents, options);
      return pass;
    }
    at::NoGradGuard no_grad;
    pass->leaf = latents.detach();
    std::shared_ptr<backbone::Model::BlockContext> context = m.begin(latents, attention);
    // The caller may change its latents after this call: the kept state must not alias them.
    at::Tensor x = m.input(latents, *context).clone();
    pass->states.push_back(x);
    for (int64_t i = 0; i < cfg.num_layers; ++i) {
      ali::stop_if_cancelled(options.cancelled);
      pass->states.push_back(x = m.block(i, x, *context));
    }
    pass->hidden = m.final_norm(x);
    for (int64_t l : options.layers) pass->layers.push_back(pass->states[static_cast<std::size_t>(l)]);
    pass->context = context;
    pass->bytes = pass_bytes(latents, options);
    return pass;
  }

  void check(const KeptPass& pass, const Cotangents& c) const {
    check(pass.hidden.size(0), pass.hidden.size(1), pass.layers.size(), pass.extension.get(), pass.hidden.options(), c);
  }
  // The cotangents of a pass of B x T latents keeping `layers` states, whose outputs are `like`:
  // known before the pass runs, so that a stateless vjp with wrong ones computes nothing.
  void check(int64_t B, int64_t T, std::size_t layers, const ali::Extension* extension, const at::TensorOptions& like,
             const Cotangents& c) const {
    const int64_t D = model().config().hidden_size;
    if (c.hidden.defined()) check_like(c.hidden, "cotangents.hidden", {B, T, D}, like);
    if (c.layers.size() > layers) {
      fail(ErrorCode::kInvalidArgument, "cotangents.layers", "expected at most {} entries (the kept layers), got {}",
           layers, c.layers.size());
    }
    for (std::size_t i = 0; i < c.layers.size(); ++i) {
      if (c.layers[i].defined()) check_like(c.layers[i], "cotangents.layers", {B, T, D}, like);
    }
    if (c.logits.defined()) check_like(c.logits, "cotangents.logits", {B, T, vocabulary(extension)}, like);
  }

  // Logits over the base vocabulary and the extension's tokens.
  int64_t vocabulary(const ali::Extension* extension) const {
    return model().config().vocab_size + (extension != nullptr ? extension->size() : 0);
  }

  // Checks ForwardOptions::extension and ::ids against this backbone and latents [B,T,D].
  void check_extension(const ForwardOptions& options, int64_t B, int64_t T) const {
    if (options.extension) options.extension->check_fits(*inner, "extension");
    if (!options.ids) return;
    if (!options.extension) {
      fail(ErrorCode::kInvalidArgument, "ids", "apply only with an extension (they locate its embedding rows)");
    }
    const at::Tensor& ids = *options.ids;
    if (!ids.defined() || ids.sizes() != at::IntArrayRef{B, T} || !c10::isIntegralType(ids.scalar_type(), false)) {
      fail(ErrorCode::kInvalidArgument, "ids", "expected an integer tensor [{},{}], got {}", B, T,
           ids.defined() ? shape_of(ids) : "none");
    }
  }

  // d loss / d embedding rows [K,D]: d latents summed over the positions holding each new id.
  static at::Tensor embedding_rows_grad(const KeptPass& pass, const at::Tensor& grad_latents) {
    const ali::Extension& e = *pass.extension;
    const at::Tensor rows = pass.ids.flatten() - e.first_id();  // [N]
    const at::Tensor selected = rows.ge(0).logical_and(rows.lt(e.size())).nonzero().flatten();
    const at::Tensor flat = grad_latents.reshape({-1, grad_latents.size(-1)});
    return at::zeros_like(e.embedding_rows())
        .index_add_(0, rows.index_select(0, selected), flat.index_select(0, selected));
  }

  Gradients backward(const KeptPass& pass, const Cotangents& c, bool retain_graph) const {
    check(pass, c);
    // With logits cotangents and an extension, its classifier rows join the graph as a fresh leaf.
    const at::Tensor rows = pass.extension && c.logits.defined()
                                ? pass.extension->classifier_rows().detach().requires_grad_(true)
                                : at::Tensor();
    Gradients out = pass.states.empty() ? backward_through_graph(pass, c, rows, retain_graph)
                                        : backward_by_recompute(pass, c, rows);
    if (pass.extension) {
      if (!out.classifier_rows.defined()) out.classifier_rows = at::zeros_like(pass.extension->classifier_rows());
      if (pass.ids.defined()) out.embedding_rows = embedding_rows_grad(pass, out.latents);
    }
    return out;
  }

  // The final hidden state's contribution to the outputs whose cotangents are given: the hidden
  // state itself and the logits (over the extension too when `rows` is defined).
  void add_top_outputs(const at::Tensor& hidden, const Cotangents& c, const at::Tensor& rows,
                       std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& grads) const {
    if (c.hidden.defined()) {
      outputs.push_back(hidden);
      grads.push_back(c.hidden);
    }
    if (c.logits.defined()) {
      outputs.push_back(model().classify(hidden, rows));
      grads.push_back(c.logits);
    }
  }

  // d outputs / d (inputs...), zeros for an input the outputs do not reach.
  static std::vector<at::Tensor> grad(const std::vector<at::Tensor>& outputs, const std::vector<at::Tensor>& inputs,
                                      const std::vector<at::Tensor>& grads, bool retain_graph) {
    std::vector<at::Tensor> out = torch::autograd::grad(outputs, inputs, grads, retain_graph,
                                                        /*create_graph=*/false, /*allow_unused=*/true);
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (!out[i].defined()) out[i] = at::zeros_like(inputs[i]);
    }
    return out;
  }

  Gradients backward_through_graph(const KeptPass& pass, const Cotangents& c, const at::Tensor& rows,
                                   bool retain_graph) const {
    at::AutoGradMode grad_mode(true);
    std::vector<at::Tensor> outputs, grads;
    add_top_outputs(pass.hidden, c, rows, outputs, grads);
    for (std::size_t i = 0; i < c.layers.size(); ++i) {
      if (!c.layers[i].defined()) continue;
      outputs.push_back(pass.layers[i]);
      grads.push_back(c.layers[i]);
    }
    Gradients out;
    if (outputs.empty()) {
      out.latents = at::zeros_like(pass.leaf);
      return out;
    }
    std::vector<at::Tensor> inputs{pass.leaf};
    if (rows.defined()) inputs.push_back(rows);
    std::vector<at::Tensor> g = grad(outputs, inputs, grads, retain_graph);
    out.latents = g[0];
    if (rows.defined()) out.classifier_rows = g[1];
    return out;
  }

  // Walks the blocks backwards, recomputing each from its kept input with autograd on.
  Gradients backward_by_recompute(const KeptPass& pass, const Cotangents& c, const at::Tensor& rows) const {
    const backbone::Model& m = model();
    const int64_t L = m.config().num_layers;
    const backbone::Model::BlockContext& context = *pass.context;
    at::AutoGradMode grad_mode(true);
    Gradients out;
    at::Tensor state_grad = at::zeros_like(pass.hidden);  // d loss / d state, from the top down
    auto add_layer_cotangents = [&](int64_t index) {
      for (std::size_t j = 0; j < c.layers.size(); ++j) {
        if (c.layers[j].defined() && pass.layer_index[j] == index) state_grad = state_grad + c.layers[j];
      }
    };
    if (c.hidden.defined() || c.logits.defined()) {
      const at::Tensor top = pass.states.back().detach().requires_grad_(true);
      std::vector<at::Tensor> outputs, grads, inputs{top};
      add_top_outputs(m.final_norm(top), c, rows, outputs, grads);
      if (rows.defined()) inputs.push_back(rows);
      std::vector<at::Tensor> g = grad(outputs, inputs, grads, /*retain_graph=*/false);
      state_grad = g[0];
      if (rows.defined()) out.classifier_rows = g[1];
    }
    add_layer_cotangents(L);
    for (int64_t i = L - 1; i >= 0; --i) {
      ali::stop_if_cancelled(pass.cancelled);
      const at::Tensor x = pass.states[static_cast<std::size_t>(i)].detach().requires_grad_(true);
      state_grad = torch::autograd::grad({m.block(i, x, context)}, {x}, {state_grad})[0];
      add_layer_cotangents(i);
    }
    out.latents = state_grad;  // the block input's Jacobian with respect to the latents is the identity
    return out;
  }
};

LocalBackbone::LocalBackbone(std::unique_ptr<ali::LocalBackbone> inner, const StoreOptions& store)
    : impl_(std::make_unique<Impl>(std::move(inner), store)) {}
LocalBackbone::~LocalBackbone() = default;

std::unique_ptr<LocalBackbone> LocalBackbone::load(const std::string& path, const ali::LoadOptions& options,
                                                   const StoreOptions& store) {
  return std::unique_ptr<LocalBackbone>(new LocalBackbone(ali::LocalBackbone::load(path, options), store));
}

const ali::ModelConfig& LocalBackbone::config() const { return impl_->inner->config(); }
c10::Device LocalBackbone::device() const { return impl_->inner->device(); }
c10::ScalarType LocalBackbone::dtype() const { return impl_->inner->dtype(); }
int64_t LocalBackbone::parameter_count() const { return impl_->inner->parameter_count(); }
const backbone::Model& LocalBackbone::model() const { return impl_->model(); }
const ActivationStore& LocalBackbone::store() const { return impl_->store; }

at::Tensor LocalBackbone::embed(const at::Tensor& ids, const ali::Extension* extension) {
  return impl_->inner->embed(ids, extension);
}
ForwardOutput LocalBackbone::forward(const at::Tensor& latents, const ForwardOptions& options) {
  return impl_->inner->forward(latents, options);
}
at::Tensor LocalBackbone::classify(const at::Tensor& hidden, const ali::Extension* extension) {
  return impl_->inner->classify(hidden, extension);
}
std::shared_ptr<ali::Extension> LocalBackbone::extend(const std::vector<std::string>& tokens,
                                                      const ali::ExtendOptions& options) {
  return impl_->inner->extend(tokens, options);
}
std::shared_ptr<const tokenizer::Tokenizer> LocalBackbone::tokenizer() { return impl_->inner->tokenizer(); }
std::unique_ptr<ali::Generation> LocalBackbone::start_generation(const at::Tensor& latents,
                                                                 const ali::GenerateOptions& options) {
  return impl_->inner->start_generation(latents, options);
}
std::shared_ptr<ali::Session> LocalBackbone::new_session() { return impl_->inner->new_session(); }
std::optional<std::string> LocalBackbone::chat_template() { return impl_->inner->chat_template(); }

KeptForward LocalBackbone::forward_keep(const at::Tensor& latents, const ForwardOptions& options) {
  const backbone::Attention attention = impl_->inner->prepare(latents, options);
  impl_->check_extension(options, latents.size(0), latents.size(1));
  const std::size_t bytes = impl_->pass_bytes(latents, options);
  if (bytes > impl_->store.options().max_bytes) {
    fail(ErrorCode::kResourceExhausted, "activation_store",
         "this forward pass would keep about {} bytes of activations, more than the store's budget of {} bytes "
         "(recompute=true keeps less)", bytes, impl_->store.options().max_bytes);
  }
  impl_->store.check_room(bytes, options.store_owner);  // refused before computing, not after
  std::shared_ptr<KeptPass> pass = impl_->run(latents, attention, options);
  KeptForward out;
  out.output.hidden = pass->hidden.detach();
  for (const at::Tensor& layer : pass->layers) out.output.layers.push_back(layer.detach());
  out.bytes = pass->bytes;
  Stored stored = impl_->store.put(std::move(pass), options.store_owner);
  out.handle = stored.handle;
  out.dropped = std::move(stored.dropped);
  return out;
}

Gradients LocalBackbone::vjp(Handle handle, const Cotangents& cotangents) {
  const std::shared_ptr<const KeptPass> pass = impl_->store.get(handle);
  return impl_->backward(*pass, cotangents, /*retain_graph=*/true);
}

void LocalBackbone::release(Handle handle) { impl_->store.release(handle); }

Gradients LocalBackbone::vjp(const at::Tensor& latents, const ForwardOptions& options, const Cotangents& cotangents) {
  const backbone::Attention attention = impl_->inner->prepare(latents, options);
  impl_->check_extension(options, latents.size(0), latents.size(1));
  impl_->check(latents.size(0), latents.size(1), options.layers.size(), options.extension.get(),
               at::TensorOptions().dtype(dtype()).device(device()), cotangents);
  const std::shared_ptr<KeptPass> pass = impl_->run(latents, attention, options);
  return impl_->backward(*pass, cotangents, /*retain_graph=*/false);
}

FusedResult LocalBackbone::forward_backward(const at::Tensor& latents, const ForwardOptions& options,
                                            const LossOptions& loss) {
  const ali::ModelConfig& cfg = config();
  if (loss.chunk_tokens < 1) {
    fail(ErrorCode::kInvalidArgument, "chunk_tokens", "expected >= 1, got {}", loss.chunk_tokens);
  }
  // Argument checks come first, so that nothing runs for a call that will fail.
  const backbone::Attention attention = impl_->inner->prepare(latents, options);
  const int64_t B = latents.size(0), T = latents.size(1), N = B * T;
  impl_->check_extension(options, B, T);
  const ali::Extension* extension = options.extension.get();
  const int64_t V = impl_->vocabulary(extension);  // base vocabulary plus the extension's tokens
  // The extension's classifier rows as one leaf for the whole loss: its gradient sums over chunks.
  const at::Tensor rows = extension != nullptr ? extension->classifier_rows().detach() : at::Tensor();
  const c10::Device device = latents.device();
  at::Tensor weights;
  TokenLoss token_loss;

  if (const auto* ce = std::get_if<CrossEntropy>(&loss.loss)) {
    if (!ce->targets.defined() || ce->targets.sizes() != at::IntArrayRef{B, T} ||
        !c10::isIntegralType(ce->targets.scalar_type(), false)) {
      fail(ErrorCode::kInvalidArgument, "targets", "expected an integer tensor [{},{}], got {}", B, T,
           ce->targets.defined() ? shape_of(ce->targets) : "none");
    }
    weights = ce->weights.defined() ? checked_weights(ce->weights, "weights", B, T, device)
                                    : at::ones({N}, at::TensorOptions().dtype(at::kFloat).device(device));
    const at::Tensor targets = ce->targets.to(device, at::kLong).flatten();
    weights = weights * targets.ne(kIgnoredTarget);
    if (weights.sum().item<double>() <= 0) {
      fail(ErrorCode::kInvalidArgument, "targets", "expected a token to score, got every target {} or weighted 0",
           kIgnoredTarget);
    }
    const at::Tensor counted = targets.masked_select(weights.gt(0));
    if (counted.numel() > 0 && (counted.min().item<int64_t>() < 0 || counted.max().item<int64_t>() >= V)) {
      fail(ErrorCode::kInvalidArgument, "targets", "expected ids in [0, {}) wherever the weight is > 0, got values in [{}, {}]",
           V, counted.min().item<int64_t>(), counted.max().item<int64_t>());
    }
    token_loss = [targets](const at::Tensor& rows, const at::Tensor& logits) {
      return at::logsumexp(logits, -1) - logits.gather(1, targets.index_select(0, rows).unsqueeze(1)).squeeze(1);
    };
  } else {
    const auto& d = std::get<Distillation>(loss.loss);
    if (!(d.temperature > 0) || !std::isfinite(d.temperature)) {
      fail(ErrorCode::kInvalidArgument, "temperature", "expected a finite value > 0, got {}", d.temperature);
    }
    const int given = d.teacher_logits.defined() + d.teacher_probs.defined() + d.teacher_latents.defined();
    if (given != 1) {
      fail(ErrorCode::kInvalidArgument, "teacher", "expected exactly one of teacher_logits, teacher_probs, "
           "teacher_latents, got {}", given);
    }
    const double tau = d.temperature;
    std::function<at::Tensor(const at::Tensor&)> teacher;  // rows -> float32 probabilities [n,V]
    at::Tensor mapped = at::ones({N}, at::TensorOptions().dtype(at::kBool).device(device));
    if (d.teacher_latents.defined()) {
      if (d.teacher_latents.dim() != 3 || d.teacher_latents.size(0) != B) {
        fail(ErrorCode::kInvalidArgument, "teacher_latents", "expected [{},T',{}], got {}", B, cfg.hidden_size,
             shape_of(d.teacher_latents));
      }
      const at::Tensor teacher_hidden = impl_->inner->forward(d.teacher_latents, d.teacher_options).hidden;
      const int64_t Tt = teacher_hidden.size(1);
      at::Tensor index;
      if (d.teacher_index.defined()) {
        if (d.teacher_index.sizes() != at::IntArrayRef{B, T} ||
            !c10::isIntegralType(d.teacher_index.scalar_type(), false)) {
          fail(ErrorCode::kInvalidArgument, "teacher_index", "expected an integer tensor [{},{}], got {}", B, T,
               shape_of(d.teacher_index));
        }
        index = d.teacher_index.to(device, at::kLong);
        if (index.min().item<int64_t>() < -1 || index.max().item<int64_t>() >= Tt) {
          fail(ErrorCode::kInvalidArgument, "teacher_index", "expected values in [-1, {}), got values in [{}, {}]", Tt,
               index.min().item<int64_t>(), index.max().item<int64_t>());
        }
      } else {
        if (Tt != T) {
          fail(ErrorCode::kInvalidArgument, "teacher_index", "required when the teacher's length {} differs from {}",
               Tt, T);
        }
        index = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device)).expand({B, T});
      }
      mapped = index.ge(0).flatten();
      const at::Tensor teacher_rows =
          (at::arange(B, index.options()).unsqueeze(1) * Tt + index.clamp_min(0)).flatten();  // [N]
      const at::Tensor teacher_flat = teacher_hidden.reshape({B * Tt, cfg.hidden_size});
      const backbone::Model& model = impl_->model();
      teacher = [&model, teacher_rows, teacher_flat, tau, rows](const at::Tensor& chunk) {
        at::NoGradGuard no_grad;
        const at::Tensor h = teacher_flat.index_select(0, teacher_rows.index_select(0, chunk));
        return at::softmax(model.classify(h, rows).to(at::kFloat) / tau, -1);
      };
    } else {
      if (d.teacher_index.defined()) {
        fail(ErrorCode::kInvalidArgument, "teacher_index",
             "applies to teacher_latents only; teacher_logits and teacher_probs are given per student position");
      }
      const at::Tensor& given_tensor = d.teacher_logits.defined() ? d.teacher_logits : d.teacher_probs;
      const char* name = d.teacher_logits.defined() ? "teacher_logits" : "teacher_probs";
      if (given_tensor.sizes() != at::IntArrayRef{B, T, V} || !c10::isFloatingType(given_tensor.scalar_type())) {
        fail(ErrorCode::kInvalidArgument, name, "expected a floating tensor [{},{},{}], got {}", B, T, V,
             shape_of(given_tensor));
      }
      const at::Tensor flat = given_tensor.to(device).reshape({N, V});
      // Probabilities: rows sum to 1, or are all zero where a position has no teacher.
      const at::Tensor row_sums = flat.sum(-1);
      if (!std::isfinite(flat.abs().max().item<double>()) ||
          (d.teacher_probs.defined() &&
           (flat.min().item<double>() < 0 ||
            ((row_sums - 1).abs().gt(1e-3).logical_and(row_sums.ne(0))).any().item<bool>()))) {
        fail(ErrorCode::kInvalidArgument, name, "expected finite values{}",
             d.teacher_probs.defined() ? ", >= 0, each row summing to 1 (or 0 where unused)" : "");
      }
      if (d.teacher_logits.defined()) {
        teacher = [flat, tau](const at::Tensor& rows) { return at::softmax(flat.index_select(0, rows).to(at::kFloat) / tau, -1); };
      } else {
        teacher = [flat](const at::Tensor& rows) { return flat.index_select(0, rows).to(at::kFloat); };
      }
    }
    weights = d.weights.defined() ? checked_weights(d.weights, "weights", B, T, device) : mapped.to(at::kFloat);
    if (weights.gt(0).logical_and(mapped.logical_not()).any().item<bool>()) {
      fail(ErrorCode::kInvalidArgument, "weights", "expected 0 wherever teacher_index is -1");
    }
    if (weights.sum().item<double>() <= 0) fail(ErrorCode::kInvalidArgument, "weights", "expected a positive total weight");
    token_loss = [teacher, tau](const at::Tensor& rows, const at::Tensor& logits) {
      const at::Tensor p = teacher(rows);
      return (at::xlogy(p, p) - p * at::log_softmax(logits / tau, -1)).sum(-1);
    };
  }

  const std::shared_ptr<KeptPass> pass = impl_->run(latents, attention, options);
  const at::Tensor hidden = pass->hidden.detach().reshape({N, cfg.hidden_size});
  const ChunkedLoss chunked = chunked_loss(impl_->model(), hidden, rows, weights, loss.chunk_tokens, token_loss);

  FusedResult result;
  const at::Tensor weighted = (chunked.per_token * weights).view({B, T});
  const at::Tensor row_weight = weights.view({B, T}).sum(1);
  result.loss = weighted.sum() / weights.sum();
  result.losses = at::where(row_weight.gt(0), weighted.sum(1) / row_weight.clamp_min(1e-30), at::zeros_like(row_weight));
  Cotangents from_loss;
  from_loss.hidden = chunked.grad_hidden.view({B, T, cfg.hidden_size});
  result.grad = impl_->backward(*pass, from_loss, /*retain_graph=*/false);
  if (extension != nullptr) result.grad.classifier_rows = chunked.grad_rows;
  return result;
}

}  // namespace aios::gradient

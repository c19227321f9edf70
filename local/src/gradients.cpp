// LocalBackbone's kept passes and the backward through them: forward_keep, vjp (by handle and
// stateless), release.
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <fmt/ranges.h>
#include <torch/csrc/autograd/autograd.h>

#include "aios/fail.h"
#include "impl.h"

namespace aios::local {

using gradient::Cotangents;
using gradient::Gradients;
using gradient::KeptForward;

namespace {

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

// Activations autograd keeps per token and layer, in elements: block input and norm, q/k/v and
// their rotated forms, attention output, MLP input, gate/up, activation and product.
std::size_t estimate_bytes(const backbone::ModelConfig& c, int64_t B, int64_t T, c10::ScalarType dtype) {
  const int64_t qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  const int64_t per_layer = 6 * c.hidden_size + 3 * qkv + 2 * c.num_heads * c.head_dim + 4 * c.intermediate_size;
  return static_cast<std::size_t>(B * T * (per_layer * c.num_layers + 2 * c.hidden_size)) * c10::elementSize(dtype);
}

// d loss / d embedding rows [K,D]: d latents summed over the positions holding each new id, times
// the scale embed() multiplies rows by (Gemma's sqrt(D)).
at::Tensor embedding_rows_grad(const KeptPass& pass, const at::Tensor& grad_latents, double scale) {
  const ali::Extension& e = *pass.extension;
  const at::Tensor rows = pass.ids.flatten() - e.first_id();  // [N]
  const at::Tensor selected = rows.ge(0).logical_and(rows.lt(e.size())).nonzero().flatten();
  const at::Tensor flat = grad_latents.reshape({-1, grad_latents.size(-1)});
  const at::Tensor sum = at::zeros_like(e.embedding_rows())
                            .index_add_(0, rows.index_select(0, selected), flat.index_select(0, selected));
  return scale == 1.0 ? sum : sum * at::scalar_tensor(scale, sum.options());
}

// The final hidden state's contribution to the outputs whose cotangents are given: the hidden
// state itself and the logits (over the extension too when `rows` is defined).
void add_top_outputs(const backbone::Model& m, const at::Tensor& hidden, const Cotangents& c, const at::Tensor& rows,
                     std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& grads) {
  if (c.hidden.defined()) {
    outputs.push_back(hidden);
    grads.push_back(c.hidden);
  }
  if (c.logits.defined()) {
    outputs.push_back(m.classify(hidden, rows));
    grads.push_back(c.logits);
  }
}

// d outputs / d (inputs...), zeros for an input the outputs do not reach.
std::vector<at::Tensor> grad(const std::vector<at::Tensor>& outputs, const std::vector<at::Tensor>& inputs,
                             const std::vector<at::Tensor>& grads, bool retain_graph) {
  std::vector<at::Tensor> out = torch::autograd::grad(outputs, inputs, grads, retain_graph,
                                                      /*create_graph=*/false, /*allow_unused=*/true);
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!out[i].defined()) out[i] = at::zeros_like(inputs[i]);
  }
  return out;
}

Gradients backward_through_graph(const backbone::Model& m, const KeptPass& pass, const Cotangents& c,
                                 const at::Tensor& rows, bool retain_graph) {
  at::AutoGradMode grad_mode(true);
  std::vector<at::Tensor> outputs, grads;
  add_top_outputs(m, pass.hidden, c, rows, outputs, grads);
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

// Walks the blocks backwards, recomputing each from its kept input with autograd on (remote blocks
// back through their own node, keeping it for later calls when `retain_graph`).
Gradients backward_by_recompute(const backbone::Model& m, const KeptPass& pass, const Cotangents& c,
                                const at::Tensor& rows, bool retain_graph) {
  const int64_t L = m.config().num_layers;
  const int64_t local_end = pass.remote_input.defined() ? m.remote_blocks()->first_block() : L;
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
    add_top_outputs(m, m.final_norm(top), c, rows, outputs, grads);
    if (rows.defined()) inputs.push_back(rows);
    std::vector<at::Tensor> g = grad(outputs, inputs, grads, /*retain_graph=*/false);
    state_grad = g[0];
    if (rows.defined()) out.classifier_rows = g[1];
  }
  add_layer_cotangents(L);
  if (local_end < L) {
    std::vector<at::Tensor> outputs{pass.states.back()}, grads{state_grad};
    for (std::size_t j = 0; j < c.layers.size(); ++j) {
      if (c.layers[j].defined() && pass.layer_index[j] > local_end && pass.layer_index[j] < L) {
        outputs.push_back(pass.layers[j]);
        grads.push_back(c.layers[j]);
      }
    }
    state_grad = grad(outputs, {pass.remote_input}, grads, retain_graph)[0];
    add_layer_cotangents(local_end);
  }
  for (int64_t i = local_end - 1; i >= 0; --i) {
    ali::stop_if_cancelled(pass.cancelled);
    const at::Tensor x = pass.states[static_cast<std::size_t>(i)].detach().requires_grad_(true);
    state_grad = torch::autograd::grad({m.block(i, x, context)}, {x}, {state_grad})[0];
    add_layer_cotangents(i);
  }
  out.latents = state_grad;  // the block input's Jacobian with respect to the latents is the identity
  return out;
}

}  // namespace

std::size_t LocalBackbone::Impl::pass_bytes(const at::Tensor& latents, const gradient::ForwardOptions& options) const {
  const auto& cfg = model->config();
  if (!options.recompute) return estimate_bytes(cfg, latents.size(0), latents.size(1), latents.scalar_type());
  return static_cast<std::size_t>(cfg.num_layers + 1) * static_cast<std::size_t>(latents.nbytes());
}

// The graph starts from a fresh leaf that shares the latents' storage.
std::shared_ptr<KeptPass> LocalBackbone::Impl::run(const at::Tensor& latents, const backbone::Attention& attention,
                                                   const gradient::ForwardOptions& options) const {
  if (c10::InferenceMode::is_enabled() || latents.is_inference()) {
    fail(ErrorCode::kInvalidArgument, "latents",
         "gradient calls need autograd: expected latents made outside torch.inference_mode(), and no such mode active");
  }
  const backbone::Model& m = *model;
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
    pass->hidden = m.forward(pass->leaf, attention, options.layers, &pass->layers, nullptr, between_blocks,
                             options.routing ? &pass->routing : nullptr);
    pass->bytes = pass_bytes(latents, options);
    return pass;
  }
  at::NoGradGuard no_grad;
  pass->leaf = latents.detach();
  std::shared_ptr<backbone::Model::BlockContext> context = m.begin(latents, attention);
  // The caller may change its latents after this call: the kept state must not alias them.
  at::Tensor x = m.input(latents, *context).clone();
  pass->states.push_back(x);
  if (options.routing) {
    pass->routing.assign(static_cast<std::size_t>(cfg.num_layers), at::Tensor());
    context->routing = &pass->routing;
  }
  backbone::RemoteBlocks* remote = m.remote_blocks();
  const int64_t local_end = remote != nullptr ? remote->first_block() : cfg.num_layers;
  for (int64_t i = 0; i < local_end; ++i) {
    ali::stop_if_cancelled(options.cancelled);
    pass->states.push_back(x = m.block(i, x, *context));
  }
  std::vector<at::Tensor> remote_layers;
  if (remote != nullptr) {
    // The remote blocks keep their own states for recomputation; here, their graph's one node.
    ali::stop_if_cancelled(options.cancelled);
    at::AutoGradMode grad_mode(true);
    pass->remote_input = x.detach().requires_grad_(true);
    remote_layers.assign(options.layers.size(), at::Tensor());
    pass->states.resize(static_cast<std::size_t>(cfg.num_layers));
    pass->states.push_back(x = remote->run(pass->remote_input, attention, options.layers, &remote_layers, nullptr,
                                           options.routing ? &pass->routing : nullptr, /*recompute=*/true));
  }
  context->routing = nullptr;  // the recomputations during backward record nothing
  if (options.routing) backbone::Model::complete_routing(pass->routing, latents);
  pass->hidden = m.final_norm(x.detach());
  for (std::size_t j = 0; j < options.layers.size(); ++j) {
    const auto l = static_cast<std::size_t>(options.layers[j]);
    pass->layers.push_back(remote_layers.empty() || !remote_layers[j].defined() ? pass->states[l] : remote_layers[j]);
  }
  pass->context = context;
  pass->bytes = pass_bytes(latents, options);
  return pass;
}

void LocalBackbone::Impl::check_cotangents(int64_t B, int64_t T, std::size_t layers, const ali::Extension* extension,
                                           const at::TensorOptions& like, const Cotangents& c) const {
  const int64_t D = model->config().hidden_size;
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

Gradients LocalBackbone::Impl::backward(const KeptPass& pass, const Cotangents& c, bool retain_graph) const {
  check_cotangents(pass.hidden.size(0), pass.hidden.size(1), pass.layers.size(), pass.extension.get(),
                   pass.hidden.options(), c);
  // With logits cotangents and an extension, its classifier rows join the graph as a fresh leaf.
  const at::Tensor rows = pass.extension && c.logits.defined()
                              ? pass.extension->classifier_rows().detach().requires_grad_(true)
                              : at::Tensor();
  Gradients out = pass.states.empty() ? backward_through_graph(*model, pass, c, rows, retain_graph)
                                      : backward_by_recompute(*model, pass, c, rows, retain_graph);
  if (pass.extension) {
    if (!out.classifier_rows.defined()) out.classifier_rows = at::zeros_like(pass.extension->classifier_rows());
    if (pass.ids.defined()) out.embedding_rows = embedding_rows_grad(pass, out.latents, model->config().embedding_scale);
  }
  return out;
}

KeptForward LocalBackbone::forward_keep(const at::Tensor& latents, const gradient::ForwardOptions& options) {
  const backbone::Attention attention = impl_->prepare(latents, options);
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
  out.output.routing = pass->routing;
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

Gradients LocalBackbone::vjp(const at::Tensor& latents, const gradient::ForwardOptions& options,
                             const Cotangents& cotangents) {
  const backbone::Attention attention = impl_->prepare(latents, options);
  impl_->check_extension(options, latents.size(0), latents.size(1));
  impl_->check_cotangents(latents.size(0), latents.size(1), options.layers.size(), options.extension.get(),
                          at::TensorOptions().dtype(dtype()).device(device()), cotangents);
  const std::shared_ptr<KeptPass> pass = impl_->run(latents, attention, options);
  return impl_->backward(*pass, cotangents, /*retain_graph=*/false);
}

}  // namespace aios::local

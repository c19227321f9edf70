// LocalBackbone's fused losses (forward_backward): token cross-entropy and distillation over the
// vocabulary in chunks of tokens, so that at most [chunk_tokens, V] logits (and their gradient)
// exist at once.
#include <ATen/core/grad_mode.h>
#include <cmath>
#include <functional>

#include <torch/csrc/autograd/autograd.h>

#include "aios/fail.h"
#include "impl.h"

namespace aios::local {

using gradient::Cotangents;
using gradient::CrossEntropy;
using gradient::Distillation;
using gradient::FusedResult;
using gradient::LossOptions;

namespace {

struct ChunkedLoss {
  at::Tensor per_token;    // float32 [N]: each token's loss (0 where its weight is 0)
  at::Tensor grad_hidden;  // [N,D] in the model dtype: d (sum_n w_n loss_n / sum_n w_n) / d hidden
  at::Tensor grad_rows;    // [K,D]: the same for the extension's classifier rows (when given)
};

// Per-token loss [n] (float32, differentiable in `logits`) for the tokens `rows` given their
// float32 logits [n,V].
using TokenLoss = std::function<at::Tensor(const at::Tensor& rows, const at::Tensor& logits)>;

// hidden: [N,D] without graph; extra_rows: an extension's classifier rows [K,D] or undefined (the
// logits then span V+K); weights: float32 [N] >= 0 with a positive sum.

// hidden: [N,D] without graph; extra_rows: an extension's classifier rows [K,D] or undefined (the
// logits then span V+K); weights: float32 [N] >= 0 with a positive sum.
ChunkedLoss chunked_loss(const backbone::Model& model, const at::Tensor& hidden, const at::Tensor& extra_rows,
                         const at::Tensor& weights, int64_t chunk_tokens, const TokenLoss& token_loss) {
  const double total = weights.sum().item<double>();
  const at::Tensor tokens = weights.gt(0).nonzero().flatten();  // only weighted tokens cost anything
  ChunkedLoss out{at::zeros({hidden.size(0)}, weights.options()), at::zeros_like(hidden), at::Tensor()};
  const bool extended = extra_rows.defined();
  const at::Tensor rows = extended ? extra_rows.detach().requires_grad_(true) : at::Tensor();
  if (extended) out.grad_rows = at::zeros_like(extra_rows);
  at::AutoGradMode grad_mode(true);
  for (int64_t begin = 0; begin < tokens.numel(); begin += chunk_tokens) {
    const at::Tensor chunk = tokens.slice(0, begin, begin + chunk_tokens);
    const at::Tensor h = hidden.index_select(0, chunk).detach().requires_grad_(true);  // [n,D]
    const at::Tensor logits = model.classify(h, rows).to(at::kFloat);                 // [n,V(+K)]
    const at::Tensor loss = token_loss(chunk, logits);                                // [n]
    const at::Tensor weighted = (loss * weights.index_select(0, chunk)).sum() / total;
    const std::vector<at::Tensor> grads =
        extended ? torch::autograd::grad({weighted}, {h, rows}) : torch::autograd::grad({weighted}, {h});
    out.grad_hidden.index_copy_(0, chunk, grads[0]);
    if (extended) out.grad_rows.add_(grads[1]);
    out.per_token.index_copy_(0, chunk, loss.detach());
  }
  return out;
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

}  // namespace

FusedResult LocalBackbone::forward_backward(const at::Tensor& latents, const gradient::ForwardOptions& options,
                                            const LossOptions& loss) {
  const ModelInfo& cfg = config();
  if (loss.chunk_tokens < 1) {
    fail(ErrorCode::kInvalidArgument, "chunk_tokens", "expected >= 1, got {}", loss.chunk_tokens);
  }
  // Argument checks come first, so that nothing runs for a call that will fail.
  const backbone::Attention attention = impl_->prepare(latents, options);
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
      const at::Tensor teacher_hidden = forward(d.teacher_latents, {d.teacher_options, options.cancelled}).hidden;
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
      const backbone::Model& model = *impl_->model;
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
  const ChunkedLoss chunked = chunked_loss(*impl_->model, hidden, rows, weights, loss.chunk_tokens, token_loss);

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

}  // namespace aios::local

#include "losses.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

namespace aios::gradient {

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

}  // namespace aios::gradient

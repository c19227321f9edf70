#include "losses.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

namespace aios::gradient {

ChunkedLoss chunked_loss(const backbone::Model& model, const at::Tensor& hidden, const at::Tensor& weights,
                         int64_t chunk_tokens, const TokenLoss& token_loss) {
  const double total = weights.sum().item<double>();
  const at::Tensor rows = weights.gt(0).nonzero().flatten();  // only weighted tokens cost anything
  ChunkedLoss out{at::zeros({hidden.size(0)}, weights.options()), at::zeros_like(hidden)};
  at::AutoGradMode grad_mode(true);
  for (int64_t begin = 0; begin < rows.numel(); begin += chunk_tokens) {
    const at::Tensor chunk = rows.slice(0, begin, begin + chunk_tokens);
    const at::Tensor h = hidden.index_select(0, chunk).detach().requires_grad_(true);  // [n,D]
    const at::Tensor logits = model.classify(h).to(at::kFloat);                       // [n,V]
    const at::Tensor loss = token_loss(chunk, logits);                                // [n]
    const at::Tensor weighted = (loss * weights.index_select(0, chunk)).sum() / total;
    out.grad_hidden.index_copy_(0, chunk, torch::autograd::grad({weighted}, {h})[0]);
    out.per_token.index_copy_(0, chunk, loss.detach());
  }
  return out;
}

}  // namespace aios::gradient

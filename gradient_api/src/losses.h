// Internal: losses over the vocabulary computed in chunks of tokens, so that at most
// [chunk_tokens, V] logits (and their gradient) exist at once.
#pragma once

#include <functional>

#include <ATen/ATen.h>

#include "aios/backbone/model.h"

namespace aios::gradient {

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
ChunkedLoss chunked_loss(const backbone::Model& model, const at::Tensor& hidden, const at::Tensor& extra_rows,
                         const at::Tensor& weights, int64_t chunk_tokens, const TokenLoss& token_loss);

}  // namespace aios::gradient

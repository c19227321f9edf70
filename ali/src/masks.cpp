#include "aios/ali/masks.h"

#include "aios/fail.h"

namespace aios::ali {

at::Tensor gist_mask(int64_t seq_len, const at::Tensor& begin, const at::Tensor& end) {
  if (seq_len < 1) fail(ErrorCode::kInvalidArgument, "seq_len", "expected >= 1, got {}", seq_len);
  for (const auto& [t, name] : {std::pair{&begin, "begin"}, std::pair{&end, "end"}}) {
    if (!t->defined() || t->dim() != 1 || !c10::isIntegralType(t->scalar_type(), false)) {
      fail(ErrorCode::kInvalidArgument, name, "expected an integer tensor [B]");
    }
  }
  if (begin.size(0) != end.size(0)) {
    fail(ErrorCode::kInvalidArgument, "end", "expected {} entries like begin, got {}", begin.size(0), end.size(0));
  }
  const at::Tensor b = begin.to(at::kLong).cpu(), e = end.to(at::kLong).cpu();
  if ((b < 0).any().item<bool>() || (b > e).any().item<bool>() || (e > seq_len).any().item<bool>()) {
    fail(ErrorCode::kInvalidArgument, "begin", "expected 0 <= begin <= end <= {} in every row", seq_len);
  }
  const at::Tensor i = at::arange(seq_len, at::kLong);
  const at::Tensor query = i.view({1, -1, 1}), key = i.view({1, 1, -1});
  const at::Tensor causal = query >= key;                                                   // [1,T,T]
  const at::Tensor hidden = (query >= e.view({-1, 1, 1})).logical_and(key < b.view({-1, 1, 1}));  // [B,T,T]
  return causal.logical_and(hidden.logical_not());
}

}  // namespace aios::ali

// aios/ali/masks.h — attention masks that callers would otherwise build by hand.
#pragma once

#include <ATen/ATen.h>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::ali {

// The gist mask [B,T,T] (bool, true = may attend) for sequences laid out as
//   prompt [0, begin) | gist slots [begin, end) | rest [end, T)
// per row b: causal order, except that positions at or after end[b] cannot see the prompt before
// begin[b] (they see it only through the gist slots). The prompt cannot see past the gist span by
// causality. begin, end: int64 [B] with 0 <= begin <= end <= T. Pass the result as
// ForwardOptions::mask (a full mask, used as given).
at::Tensor gist_mask(int64_t seq_len, const at::Tensor& begin, const at::Tensor& end);

}  // namespace aios::ali
AIOS_EXPORT_END

// Argument checks shared by the encoders and decoders (internal).
#pragma once

#include <fmt/ranges.h>

#include "aios/ali/backbone.h"
#include "aios/fail.h"

namespace aios::adapters {

inline void require_positive(int64_t value, const char* field) {
  if (value < 1) fail(ErrorCode::kInvalidArgument, field, "expected a size >= 1, got {}", value);
}

inline void require_width(int64_t width, const ali::Backbone& backbone, const char* field) {
  const int64_t D = backbone.config().hidden_size;
  if (width != D) {
    fail(ErrorCode::kInvalidArgument, field, "expected the backbone's hidden size {}, got {}", D, width);
  }
}

// x: floating [..., in].
inline void require_input(const at::Tensor& x, int64_t in_features) {
  if (!x.defined() || x.dim() < 1 || !c10::isFloatingType(x.scalar_type()) || x.size(-1) != in_features) {
    std::string got = x.defined() ? fmt::format("{} {}", c10::toString(x.scalar_type()), fmt::join(x.sizes(), ","))
                                  : std::string("none");
    fail(ErrorCode::kInvalidArgument, "x", "expected a floating tensor [..., {}] (in_features), got {}", in_features, got);
  }
}

}  // namespace aios::adapters

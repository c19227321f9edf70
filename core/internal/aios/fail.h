// aios/fail.h — throwing an aios::Error with a formatted message. Internal to aios: the public
// headers do not depend on fmt.
#pragma once

#include <string>
#include <utility>

#include <fmt/format.h>

#include "aios/error.h"

namespace aios {

// Throws Error(code, field, fmt::format(...)). Named for the common case so call sites read as a sentence:
//   fail(ErrorCode::kInvalidArgument, "latents", "expected rank 3 [B,T,D], got rank {}", x.dim());
template <typename... Args>
[[noreturn]] void fail(ErrorCode code, std::string field, fmt::format_string<Args...> format,
                       Args&&... args) {
  throw Error(code, std::move(field), fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace aios

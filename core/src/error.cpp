#include <algorithm>
#include <cstdint>

#include <fmt/format.h>

#include "aios/error.h"

namespace aios {

std::string_view error_code_name(ErrorCode code) {
  for (const ErrorCodeInfo& info : kErrorCodes) {
    if (info.code == code) return info.name;
  }
  return "unknown";
}

namespace {

// Field and message often quote untrusted bytes (a tensor name from a file, a token from a request).
// They travel on as Python str and gRPC status text, which must be UTF-8, and a hostile name can
// be megabytes long: bytes that are not UTF-8 become U+FFFD, and the text is cut at kMaxBytes.
std::string printable(std::string text) {
  constexpr std::size_t kMaxBytes = 2048;
  std::string out;
  out.reserve(std::min(text.size(), kMaxBytes + 8));
  for (std::size_t i = 0; i < text.size();) {
    if (out.size() >= kMaxBytes) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(text[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool valid = n != 0 && i + n <= text.size();
    for (std::size_t k = 1; valid && k < n; ++k) valid = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
    if (valid && n > 1) {
      // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8 either.
      std::uint32_t cp = c & (0x7F >> n);
      for (std::size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
      const std::uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
      valid = cp >= least[n] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    }
    if (valid) {
      out.append(text, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

std::string compose(ErrorCode code, const std::string& field, const std::string& message) {
  if (field.empty()) return fmt::format("{}: {}", error_code_name(code), message);
  return fmt::format("{}: {}: {}", error_code_name(code), field, message);
}
}  // namespace

Error::Error(ErrorCode code, std::string field, std::string message)
    : std::runtime_error(compose(code, printable(field), printable(message))),
      code_(code),
      field_(printable(std::move(field))),
      message_(printable(std::move(message))) {}

}  // namespace aios

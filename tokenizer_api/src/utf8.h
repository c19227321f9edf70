// Internal: UTF-8 as the tokenizer reads it. Text from outside may hold bytes that are not UTF-8;
// these helpers tell valid sequences from other bytes without ever failing on them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace aios::tokenizer {

// Appends the UTF-8 of code point `cp` (at most U+10FFFF) to `out`.
void append_utf8(std::string& out, uint32_t cp);

// Length of the valid UTF-8 sequence at s[i] (i < s.size()), or 0 when the bytes there are not one
// (overlong forms, surrogates and code points above U+10FFFF included); its code point goes to
// *code_point when given. Inline: encode calls it for every character.
inline std::size_t utf8_length(std::string_view s, std::size_t i, uint32_t* code_point = nullptr) {
  const auto b = static_cast<unsigned char>(s[i]);
  std::size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (std::size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c >> 6) != 2) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  constexpr uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  if (code_point != nullptr) *code_point = cp;
  return n;
}

// Whether all of `s` is valid UTF-8.
bool valid_utf8(std::string_view s);

// Calls f(valid, text) for each maximal run of valid UTF-8 (valid) or of other bytes, in order.
template <typename F>
void for_each_run(std::string_view s, F&& f) {
  std::size_t run = 0, i = 0;
  bool valid = true;
  while (i < s.size()) {
    const std::size_t n = utf8_length(s, i);
    if ((n != 0) != valid) {
      if (i > run) f(valid, s.substr(run, i - run));
      run = i;
      valid = n != 0;
    }
    i += n == 0 ? 1 : n;
  }
  if (i > run) f(valid, s.substr(run, i - run));
}

// `bytes` with each byte that is not part of valid UTF-8 replaced by U+FFFD, as a lossy
// conversion does.
std::string lossy_utf8(std::string_view bytes);

}  // namespace aios::tokenizer

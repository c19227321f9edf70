// Internal: Unicode beyond UTF-8 as the tokenizer needs it (ICU's character properties,
// normalization and case mapping), and GPT-2's byte alphabet.
#pragma once

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "utf8.h"

namespace aios::tokenizer {

// Inline, these character tests: the added-token scan and the Strip normalizer, in other files,
// call them per character.

// Unicode White_Space, as Rust's char::is_whitespace and the reference's `\s` test it.
inline bool is_white_space(uint32_t cp) { return u_isUWhiteSpace(static_cast<UChar32>(cp)) != 0; }

// The regex `\w` of the reference (Rust regex): alphabetic, marks, decimal digits, connector
// punctuation, join controls.
inline bool is_word_char(uint32_t cp) {
  const auto c = static_cast<UChar32>(cp);
  const int32_t mask = U_GET_GC_MASK(c);
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}

// The code point that ends s[0, end) (invalid bytes read as U+FFFD), and where it starts.
inline uint32_t code_point_before(std::string_view s, std::size_t end, std::size_t* start) {
  std::size_t i = end - 1;
  for (std::size_t k = 0; k < 3 && i > 0 && (static_cast<unsigned char>(s[i]) >> 6) == 2; ++k) --i;
  uint32_t cp = 0xFFFD;
  if (utf8_length(s, i, &cp) != end - i) {
    i = end - 1;
    cp = 0xFFFD;
  }
  *start = i;
  return cp;
}

// End of the run of white space that starts at s[i].
inline std::size_t white_space_end(std::string_view s, std::size_t i) {
  uint32_t cp = 0;
  for (std::size_t n = 0; i < s.size() && (n = utf8_length(s, i, &cp)) != 0 && is_white_space(cp);) i += n;
  return i;
}

// Start of the run of white space that ends at s[end], not before `floor`.
inline std::size_t white_space_start(std::string_view s, std::size_t end, std::size_t floor) {
  std::size_t at = 0;
  while (end > floor && is_white_space(code_point_before(s, end, &at))) end = at;
  return std::max(end, floor);
}

// Unicode normalization (NFC, NFD, NFKC, NFKD) of the valid UTF-8 runs of `s`; other bytes pass
// through unchanged.
std::string unicode_normalize(const icu::Normalizer2& form, std::string_view s);

// Lowercases each character on its own (full mappings, no context), as the reference does.
std::string lowercase(std::string_view s);

// GPT-2's reversible map from bytes to printable code points.
struct ByteAlphabet {
  std::string of_byte[256];                      // UTF-8 of the code point standing for each byte
  std::unordered_map<uint32_t, uint8_t> to_byte;  // code point -> byte
  ByteAlphabet();
};
inline const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

}  // namespace aios::tokenizer

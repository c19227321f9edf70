// Unicode normalization and lowercasing through ICU, over text that may hold bytes that are not
// UTF-8; GPT-2's byte alphabet.
#include "unicode.h"

#include <unicode/bytestream.h>
#include <unicode/ustring.h>

#include "aios/fail.h"

namespace aios::tokenizer {

std::string unicode_normalize(const icu::Normalizer2& form, std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for_each_run(s, [&](bool valid, std::string_view run) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::StringPiece piece(run.data(), static_cast<int32_t>(run.size()));
    if (!valid || form.isNormalizedUTF8(piece, status)) {
      out.append(run);
      return;
    }
    status = U_ZERO_ERROR;
    icu::StringByteSink<std::string> sink(&out);
    form.normalizeUTF8(0, piece, sink, nullptr, status);
    if (U_FAILURE(status)) fail(ErrorCode::kInternal, "normalizer", "ICU normalization failed: {}", u_errorName(status));
  });
  return out;
}

// Lowercases each character on its own (full mappings, no context), as the reference does.
std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const std::size_t n = utf8_length(s, i, &cp);
    if (n <= 1) {  // ASCII or a byte that is not UTF-8
      const char c = s[i];
      out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
      ++i;
      continue;
    }
    UChar src[2], dst[8];
    int32_t src_length = 0;
    U16_APPEND_UNSAFE(src, src_length, static_cast<UChar32>(cp));
    UErrorCode status = U_ZERO_ERROR;
    const int32_t length = u_strToLower(dst, 8, src, src_length, "", &status);
    if (U_FAILURE(status)) {
      out.append(s, i, n);
    } else {
      for (int32_t k = 0; k < length;) {
        UChar32 c = 0;
        U16_NEXT_UNSAFE(dst, k, c);
        append_utf8(out, static_cast<uint32_t>(c));
      }
    }
    i += n;
  }
  return out;
}

ByteAlphabet::ByteAlphabet() {
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++);
    append_utf8(of_byte[b], cp);
    to_byte[cp] = static_cast<uint8_t>(b);
  }
}

}  // namespace aios::tokenizer

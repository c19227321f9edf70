// Encode and decode of arbitrary bytes with real tokenizers: the default model's (SmolLM2,
// byte-level BPE) and those listed in AIOS_FUZZ_TOKENIZERS (colon-separated tokenizer.json or
// .gguf paths). The first byte picks the tokenizer and the flags; the rest is the text.
// Checked beyond not crashing: every id is in the vocabulary, and on the default tokenizer
// decode(encode(text)) == text for valid UTF-8 (its header promises it where the reference
// round-trips, which it does for byte-level BPE without a normalizer). tests/fuzz/compare_tokenizers.py
// replays the corpus against the `tokenizers` library, id for id.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "aios/tokenizer_api/tokenizer.h"
#include "fuzz.h"

namespace {

std::vector<aios::tokenizer::Tokenizer>& tokenizers() {
  static std::vector<aios::tokenizer::Tokenizer> all = [] {
    std::vector<aios::tokenizer::Tokenizer> out;
    out.push_back(aios::tokenizer::Tokenizer::load(AIOS_FUZZ_DEFAULT_TOKENIZER));
    if (const char* more = std::getenv("AIOS_FUZZ_TOKENIZERS")) {
      std::string list = more;
      for (std::size_t begin = 0; begin < list.size();) {
        std::size_t end = list.find(':', begin);
        if (end == std::string::npos) end = list.size();
        if (end > begin) out.push_back(aios::tokenizer::Tokenizer::load(list.substr(begin, end - begin)));
        begin = end + 1;
      }
    }
    return out;
  }();
  return all;
}

bool valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    std::uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (std::size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    const std::uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto& all = tokenizers();
  const std::size_t which = (data[0] >> 1) % all.size();
  const bool add_special = (data[0] & 1) != 0;
  const auto& tokenizer = all[which];
  const std::string text = aios::fuzz::bytes_of(data + 1, size - 1);
  const std::vector<int32_t> ids = tokenizer.encode(text, add_special);  // encode never fails
  for (int32_t id : ids) {
    if (id < 0 || id >= tokenizer.vocab_size()) __builtin_trap();
  }
  const std::string back = tokenizer.decode(ids);  // ids from encode always decode
  if (which == 0 && !add_special && valid_utf8(text) && back != text) __builtin_trap();
  tokenizer.decode(ids, /*skip_special_tokens=*/true);
  return 0;
}

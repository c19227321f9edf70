// Encode and decode of arbitrary bytes with real tokenizers: the default model's (SmolLM2,
// byte-level BPE) and those listed in AIOS_FUZZ_TOKENIZERS (colon-separated tokenizer.json or
// .gguf paths). The first byte picks the tokenizer and the flags; the rest is the text.
// Checked beyond not crashing: every id is in the vocabulary, and on the default tokenizer
// decode(encode(text)) == text for valid UTF-8 whose every byte has a token (its header promises
// it where the reference round-trips, which byte-level BPE without a normalizer does, except that
// both drop a byte the vocabulary has no token for: SmolLM2 has none for 0x04, 0x06, ...). tests/fuzz/compare_tokenizers.py
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

// GPT-2's byte alphabet: the code point that spells byte b in a byte-level vocabulary.
std::string byte_spelling(int b) {
  const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    cp = 256;
    for (int x = 0; x < b; ++x) {
      if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++cp;
    }
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// Whether every byte of `text` has a token in the default (byte-level) tokenizer: a byte without
// one is dropped, as the reference drops it, and the round trip cannot hold.
bool every_byte_has_a_token(const std::string& text) {
  static const std::vector<bool> has = [] {
    std::vector<bool> out(256);
    for (int b = 0; b < 256; ++b) out[static_cast<std::size_t>(b)] = tokenizers()[0].token_to_id(byte_spelling(b)).has_value();
    return out;
  }();
  for (unsigned char c : text) {
    if (!has[c]) return false;
  }
  return true;
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
  if (which == 0 && !add_special && valid_utf8(text) && every_byte_has_a_token(text) && back != text) {
    __builtin_trap();
  }
  tokenizer.decode(ids, /*skip_special_tokens=*/true);
  return 0;
}

// tokenizer.json: every model, normalizer, pre-tokenizer, post-processor and decoder option, then
// encode and decode with whatever was accepted. Mutated as JSON (json_mutator.cpp).
#include <cstddef>
#include <cstdint>

#include "aios/tokenizer_api/tokenizer.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  aios::fuzz::refused([&] {
    const auto tokenizer = aios::tokenizer::Tokenizer::from_json(aios::fuzz::bytes_of(data, size));
    const auto ids = tokenizer.encode(" Hello  wörld\n\t123 abcabc \xF0\x9F\x98\x80 <s></s>\xFF\xC3");
    aios::fuzz::refused([&] { tokenizer.decode(ids); });
    aios::fuzz::refused([&] { tokenizer.decode(ids, /*skip_special_tokens=*/true); });
    for (int32_t id = 0; id < tokenizer.vocab_size() && id < 64; ++id) {
      aios::fuzz::refused([&] { tokenizer.id_to_token(id); });
    }
  });
  return 0;
}

// GGUF files: metadata, tensor directory, every tensor type's blocks through dequantisation, and
// what is built from them — the model config, the whole model and the tokenizer.
#include <ATen/Parallel.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "aios/backbone/model.h"
#include "aios/io/gguf.h"
#include "aios/tokenizer_api/tokenizer.h"
#include "dequantize.h"
#include "fuzz.h"
#include "gguf_checkpoint.h"

namespace {

// A tensor is dequantised only when its float32 values stay small: the file may be a few KiB and
// still list a [0, 2^40] tensor, whose values take no memory, or a valid 2^24-element one; larger
// ones reach no other code, only take time.
constexpr std::int64_t kMaxValues = 1 << 16;

void touch_metadata(const aios::io::GgufFile& file) {
  for (const auto& entry : file.metadata()) {
    const std::string& key = entry.first;  // (clang 14 captures no structured bindings)
    aios::fuzz::refused([&] { file.string(key); });
    aios::fuzz::refused([&] { file.integer(key); });
    aios::fuzz::refused([&] { file.number(key); });
    aios::fuzz::refused([&] { file.boolean(key); });
    aios::fuzz::refused([&] { file.strings(key); });
    aios::fuzz::refused([&] { file.integers(key); });
    aios::fuzz::refused([&] { file.numbers(key); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  aios::fuzz::refused([&] {
    const auto file = aios::io::GgufFile::parse(aios::fuzz::bytes_of(data, size), "fuzz.gguf");
    touch_metadata(file);
    for (const auto& t : file.tensors()) {
      if (t.numel() > kMaxValues) continue;
      aios::fuzz::refused([&] {
        const at::Tensor values = aios::backbone::dequantize(t, t.name);
        if (values.numel() != t.numel()) __builtin_trap();
      });
    }
    aios::fuzz::refused([&] { aios::backbone::gguf_model_config(file); });
    aios::fuzz::refused([&] { aios::backbone::load_model(file); });
    aios::fuzz::refused([&] {
      const auto tokenizer = aios::tokenizer::Tokenizer::from_gguf(file);
      const auto ids = tokenizer.encode("Hello, world! 123 \xF0\x9F\x98\x80 <|im_start|>");
      aios::fuzz::refused([&] { tokenizer.decode(ids); });
    });
  });
  return 0;
}

// Safetensors files: header JSON, dtypes, shapes and offsets, from bytes in memory.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "aios/io/safetensors.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  aios::fuzz::refused([&] {
    const auto file = aios::io::SafetensorsFile::parse(aios::fuzz::bytes_of(data, size), "fuzz.safetensors");
    // What a loader does with each tensor: its element count and every byte of it.
    std::size_t sum = 0;
    for (const auto& t : file.tensors()) {
      if (t.numel() < 0 || static_cast<std::uint64_t>(t.numel()) * aios::io::dtype_size(t.dtype) != t.size_bytes) {
        __builtin_trap();
      }
      for (std::size_t i = 0; i < t.size_bytes; ++i) sum += static_cast<unsigned char>(t.data[i]);
      if (file.find(t.name) == nullptr) __builtin_trap();
    }
    for (const auto& [key, value] : file.metadata()) sum += key.size() + value.size();
    return sum;
  });
  return 0;
}

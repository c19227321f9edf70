// config.json into the model config, for every family. Mutated as JSON (json_mutator.cpp).
#include <cstddef>
#include <cstdint>

#include "aios/backbone/config.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  aios::fuzz::refused([&] { aios::backbone::parse_hf_config(aios::fuzz::bytes_of(data, size)); });
  return 0;
}

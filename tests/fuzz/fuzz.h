// tests/fuzz/fuzz.h — what the fuzz targets share.
//
// Each target feeds its input to one parser of untrusted bytes. An aios::Error is an answer (the
// input was refused with a code); anything else is a finding: a crash or undefined behaviour
// (ASan, UBSan), an exception of another type escaping (libFuzzer reports the abort), an
// allocation beyond -malloc_limit_mb, or a run beyond -timeout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "aios/error.h"

namespace aios::fuzz {

inline std::string bytes_of(const std::uint8_t* data, std::size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// Runs `body`; an aios::Error it throws is the expected way to refuse an input.
template <typename Body>
bool refused(Body&& body) {
  try {
    body();
    return false;
  } catch (const aios::Error& e) {
    // Every error names what it is about in valid, bounded text (it goes on to Python and gRPC).
    if (std::string_view(e.what()).size() > 8192) __builtin_trap();
    return true;
  }
}

// For targets whose seeds are built from a tiny backbone: with AIOS_FUZZ_WRITE_SEEDS=DIR in the
// environment, `write(DIR)` writes them and the process exits (from LLVMFuzzerInitialize).
template <typename Write>
void write_seeds_if_asked(Write&& write) {
  if (const char* dir = std::getenv("AIOS_FUZZ_WRITE_SEEDS")) {
    write(std::filesystem::path(dir));
    std::exit(0);
  }
}

}  // namespace aios::fuzz

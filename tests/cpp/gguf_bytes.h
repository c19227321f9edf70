// GGUF files byte by byte, for tests: little-endian integers, length-prefixed strings.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace aios_test {

struct Bytes {
  std::string s;
  Bytes& u(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  // `claimed`: the length written, when it should lie.
  Bytes& str(const std::string& text, std::uint64_t claimed = ~0ull) {
    u(claimed == ~0ull ? text.size() : claimed, 8);
    s += text;
    return *this;
  }
  Bytes& f32(float f) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return u(bits, 4);
  }
  Bytes& pad(std::size_t alignment) {
    s.append((alignment - s.size() % alignment) % alignment, '\0');
    return *this;
  }
};

}  // namespace aios_test

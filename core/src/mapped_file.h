// Internal to core: what the file-format readers share — a read-only private mapping of a whole
// file, and overflow-checked size arithmetic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace aios::io {

class MappedFile {
 public:
  // Throws Error: kNotFound (no such file), kInvalidArgument (not a regular file), kUnavailable
  // (cannot be opened or mapped).
  explicit MappedFile(const std::string& path);
  // Bytes already in memory, held instead of a mapping (the readers' in-memory entry points).
  struct InMemory {};
  MappedFile(std::string bytes, InMemory);
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  std::string owned_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
};

// a * b into *out; false (and *out untouched) on overflow.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

// Every product of the dimensions of `shape`, and all of them times `element_bytes`, fit in
// int64 — also the products of the dimensions after a zero, which a zero-sized tensor's byte count
// (0) does not bound but code that takes rows or strides multiplies. `*bytes`: the tensor's bytes.
// A negative dimension is refused too.
inline bool checked_extent(const std::vector<std::int64_t>& shape, std::uint64_t element_bytes, std::uint64_t* bytes) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t nonzero = element_bytes;
  bool empty = false;
  for (std::int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) {
      empty = true;
      continue;
    }
    if (!checked_mul(nonzero, static_cast<std::uint64_t>(d), &nonzero) || nonzero > kMax) return false;
  }
  *bytes = empty ? 0 : nonzero;
  return true;
}

}  // namespace aios::io

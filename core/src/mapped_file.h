// Internal to core: what the file-format readers share — a read-only private mapping of a whole
// file, and overflow-checked size arithmetic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

namespace aios::io {

class MappedFile {
 public:
  // Throws Error: kNotFound (no such file), kInvalidArgument (not a regular file), kUnavailable
  // (cannot be opened or mapped).
  explicit MappedFile(const std::string& path);
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// a * b into *out; false (and *out untouched) on overflow.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

}  // namespace aios::io

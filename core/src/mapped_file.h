// Internal to core: a read-only private mapping of a whole file, shared by the file-format readers.
#pragma once

#include <cstddef>
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

}  // namespace aios::io

#include "mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "aios/fail.h"

namespace aios::io {

MappedFile::MappedFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    fail(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kUnavailable, path, "cannot open: {}", std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::kInvalidArgument, path, "expected a regular file");
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail(ErrorCode::kUnavailable, path, "cannot map {} bytes: {}", size_, std::strerror(err));
    }
    data_ = static_cast<const std::byte*>(p);
    mapped_ = true;
  }
  ::close(fd);
}

MappedFile::MappedFile(std::string bytes, InMemory)
    : owned_(std::move(bytes)), data_(reinterpret_cast<const std::byte*>(owned_.data())), size_(owned_.size()) {}

MappedFile::~MappedFile() {
  if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace aios::io

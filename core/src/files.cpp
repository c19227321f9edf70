#include "aios/io/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "aios/fail.h"

namespace aios::io {

std::string unique_file_name(const std::string& prefix, const std::string& suffix) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  std::random_device entropy;
  return fmt::format("{}{:x}-{:08x}{}", prefix, std::chrono::duration_cast<std::chrono::nanoseconds>(now).count(),
                     entropy(), suffix);
}

void remove_superseded(const std::string& folder, const std::string& prefix, const std::string& keep) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(folder, error)) {
    const std::string name = entry.path().filename().string();
    const bool superseded = name.starts_with(prefix) && name != keep;
    if (superseded || name.find(".tmp.") != std::string::npos) std::filesystem::remove(entry.path(), error);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorCode::kNotFound, path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  std::string tmp = path + ".tmp.XXXXXX";  // unique per call, beside the target (same file system)
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail(ErrorCode::kUnavailable, path, "cannot create {}: {}", tmp, std::strerror(errno));
  ::fchmod(fd, 0644);
  std::size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(ErrorCode::kUnavailable, path, "write failed: {}", std::strerror(err));
    }
    written += static_cast<std::size_t>(n);
  }
  const int synced = ::fsync(fd) == 0 ? 0 : errno;
  const int closed = ::close(fd) == 0 ? 0 : errno;
  if (synced != 0 || closed != 0) {
    ::unlink(tmp.c_str());
    fail(ErrorCode::kUnavailable, path, "flush failed: {}", std::strerror(synced != 0 ? synced : closed));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail(ErrorCode::kUnavailable, path, "rename failed: {}", std::strerror(err));
  }
  // The rename is durable once the folder's entry is: sync the folder too (best effort; some file
  // systems refuse to open or sync a directory, and the data itself is already on disk).
  const std::string::size_type slash = path.rfind('/');
  const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void sync_folder(const std::string& path) {
  const int dir = ::open(path.empty() ? "." : path.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void create_folders(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_directory(path, error)) return;
  fs::path folder = fs::path(path).lexically_normal();
  if (folder.filename().empty()) folder = folder.parent_path();  // "a/b/" is "a/b"
  const fs::path parent = folder.parent_path();
  if (!parent.empty()) create_folders(parent.string());
  if (!fs::create_directory(folder, error) && !fs::is_directory(folder)) {
    fail(ErrorCode::kUnavailable, path, "cannot create the folder: {}", error ? error.message() : "not a folder");
  }
  sync_folder(parent.empty() ? std::string(".") : parent.string());
}

}  // namespace aios::io

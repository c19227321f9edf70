#include "state_files.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2

#include <cerrno>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "aios/fail.h"
#include "aios/io/files.h"

namespace aios::server {
namespace fs = std::filesystem;

namespace {

constexpr const char* kStaging = ".staging-";
constexpr const char* kRetired = ".retired-";

fs::path fresh_name(const fs::path& root, const char* prefix) {
  std::random_device random;
  return root / fmt::format("{}{:08x}{:08x}", prefix, random(), random());
}

}  // namespace

fs::path staging_folder(const fs::path& root) {
  const fs::path folder = fresh_name(root, kStaging);
  try {
    io::create_folders(folder.string());
  } catch (const Error&) {
    // The host's paths stay out of replies.
    fail(ErrorCode::kUnavailable, "state_dir", "cannot create a folder in the host's state folder");
  }
  return folder;
}

void write_state_file(const fs::path& path, const std::string& bytes) {
  try {
    io::write_file_atomically(path.string(), bytes);
  } catch (const Error&) {
    fail(ErrorCode::kUnavailable, "state_dir", "cannot write a file in the host's state folder");
  }
}

void replace_folder(const fs::path& staged, const fs::path& target) {
  const fs::path root = target.parent_path();
  // Renaming over a missing name (or an empty folder) is one step anywhere.
  if (::rename(staged.c_str(), target.c_str()) != 0) {
    const int err = errno;
    if (err != ENOTEMPTY && err != EEXIST) {
      fail(ErrorCode::kUnavailable, "state_dir", "cannot rename a folder in the host's state folder: {}",
           std::strerror(err));
    }
    // A folder with files: the two change places in one step, then the old one (now staged) goes.
    if (::renameat2(AT_FDCWD, staged.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0) {
      const int why = errno;
      if (why == EINVAL || why == ENOSYS || why == EOPNOTSUPP) {
        fail(ErrorCode::kFailedPrecondition, "name",
             "the host's state folder is on a file system that cannot replace a folder in one step: delete it first");
      }
      fail(ErrorCode::kUnavailable, "state_dir", "cannot replace a folder in the host's state folder: {}",
           std::strerror(why));
    }
  }
  io::sync_folder(root.string());  // the rename is the commit: durable before the caller hears of it
  std::error_code ignored;
  fs::remove_all(staged, ignored);
}

bool remove_folder(const fs::path& target) {
  const fs::path retired = fresh_name(target.parent_path(), kRetired);
  if (::rename(target.c_str(), retired.c_str()) != 0) {
    if (errno == ENOENT) return false;
    fail(ErrorCode::kUnavailable, "state_dir", "cannot remove a folder of the host's state folder: {}",
         std::strerror(errno));
  }
  io::sync_folder(target.parent_path().string());
  std::error_code ignored;
  fs::remove_all(retired, ignored);
  return true;
}

void remove_leftovers(const fs::path& root) {
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with(kStaging) || name.starts_with(kRetired)) fs::remove_all(entry.path(), error);
  }
}

}  // namespace aios::server

// Changes to the host's state folder (HostOptions::state_dir) that a crash at any point leaves
// either undone or done, never half done (internal to aios_server). Folders whose names start
// with "." are the host's own: staged or retired versions, never served, removed at start.
#pragma once

#include <filesystem>
#include <string>

namespace aios::server {

// A fresh, empty folder in `root` to stage a new version in (".staging-<random>").
std::filesystem::path staging_folder(const std::filesystem::path& root);

// Writes `bytes` to the file `path` durably (io::write_file_atomically). Throws
// Error(kUnavailable, "state_dir"), whose message names no path of the host.
void write_state_file(const std::filesystem::path& path, const std::string& bytes);

// Puts the folder `staged` under the name `target` (in the same folder) in one rename: the previous
// folder of that name, if any, stays whole until the new one has replaced it, and is removed
// afterwards. Durable when it returns. Throws Error(kUnavailable), or Error(kFailedPrecondition)
// where the file system cannot exchange two folders in one step (Linux's RENAME_EXCHANGE) and
// `target` exists.
void replace_folder(const std::filesystem::path& staged, const std::filesystem::path& target);

// Takes the folder `target` away in one rename, then removes its files. False when it is not there.
bool remove_folder(const std::filesystem::path& target);

// Removes what interrupted changes left in `root` (staged and retired folders). Best effort.
void remove_leftovers(const std::filesystem::path& root);

}  // namespace aios::server

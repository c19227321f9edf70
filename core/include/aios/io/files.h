// aios/io/files.h — whole files and folders as saved state needs them: atomic writes (temporary
// file, flush, fsync, rename, fsync of the folder), folders committed by their manifest, reading a
// whole file. No LibTorch.
#pragma once

#include <string>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::io {

// Writes `bytes` to `path` atomically (temporary file, flush, fsync, rename, fsync of the folder).
void write_file_atomically(const std::string& path, const std::string& bytes);

// Folders committed by their manifest (vocabulary extensions, encoders): data goes to a file under
// a fresh name, then the manifest naming it is written atomically, which is the commit; afterwards
// the data files no manifest names are removed.
//
// "<prefix><unique part><suffix>": a name no earlier save in the folder used.
std::string unique_file_name(const std::string& prefix, const std::string& suffix);
// In `folder`, removes the files named `prefix`... other than `keep`, and the temporaries that
// interrupted atomic writes left (names with ".tmp."). Best effort: what cannot be removed stays.
void remove_superseded(const std::string& folder, const std::string& prefix, const std::string& keep);

// The whole content of `path`. Throws Error(kNotFound) when it cannot be opened.
std::string read_file(const std::string& path);

// Makes the entries of the folder `path` (files renamed into it, folders made or removed in it)
// durable: fsync of the folder. Best effort, as write_file_atomically's: some file systems refuse.
void sync_folder(const std::string& path);
// Creates the folder `path` and its missing parents, syncing the parent of each one made, so that
// a folder that was there once stays there after a crash of the machine. Throws
// Error(kUnavailable) when the file system refuses.
void create_folders(const std::string& path);

}  // namespace aios::io
AIOS_EXPORT_END

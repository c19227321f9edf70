// aios/io/safetensors.h — a validating reader and an atomic writer for the safetensors format.
//
// The file is memory-mapped and its header is checked before any tensor is handed out: the header
// length fits the file, the JSON is an object of well-formed entries, every dtype is known, every
// byte range lies inside the data section, dtype size × shape equals the range's length, and the
// ranges cover the data section exactly once (no overlaps, no holes), as the format requires.
// Nothing here depends on LibTorch: the tokenizer's extension storage uses it too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::io {

class MappedFile;

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element of `dtype`.
std::size_t dtype_size(DType dtype);
// The safetensors spelling: "F32", "BF16", ...
const char* dtype_name(DType dtype);

// A tensor inside a mapped file (or, for writing, inside caller memory). `data` is valid while the
// SafetensorsFile that produced it is alive. Row-major, little-endian, possibly unaligned.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t size_bytes = 0;

  int64_t numel() const;
};

struct SafetensorsLimits {
  std::uint64_t max_header_bytes = 100ull << 20;  // the reference implementation's limit
  std::size_t max_tensors = 1u << 20;
  std::size_t max_rank = 8;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws Error: kNotFound (no such file), kUnavailable (cannot be read or
  // mapped), kInvalidArgument (not a regular file), kDataLoss (truncated or corrupt, including a
  // header over max_header_bytes or a rank over max_rank: the message names the entry and field),
  // kResourceExhausted (more than max_tensors entries).
  static SafetensorsFile open(const std::string& path, const SafetensorsLimits& limits = {});
  // The same checks on a file's bytes held in memory (kept by the returned object); `name` stands
  // for the path in messages.
  static SafetensorsFile parse(std::string bytes, const std::string& name, const SafetensorsLimits& limits = {});

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const;
  // Entries in file order (by offset).
  const std::vector<TensorView>& tensors() const;
  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  // The optional "__metadata__" string map.
  const std::map<std::string, std::string>& metadata() const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  static SafetensorsFile validate(const std::string& path, std::unique_ptr<MappedFile> file,
                                  const SafetensorsLimits& limits);
  std::unique_ptr<Impl> impl_;
};

// Writes `tensors` to `path` atomically (write_file_atomically of aios/io/files.h). Throws
// Error(kInvalidArgument) for duplicate names or sizes that do not match their shapes,
// Error(kUnavailable) when the file system refuses.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace aios::io
AIOS_EXPORT_END

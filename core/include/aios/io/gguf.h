// aios/io/gguf.h — a validating reader for GGUF files (llama.cpp's single-file checkpoints).
//
// It lives in core, without LibTorch, because two components read the same file: backbone/ takes
// the weights (and dequantises them with LibTorch), tokenizer_api/ takes the vocabulary and merges
// from the metadata and must not depend on LibTorch.
//
// The file is memory-mapped and checked whole before anything is handed out: magic, version (2 or
// 3), key-value and tensor counts against what the file could hold, every string and array length
// against the bytes left, array nesting depth, value types, general.alignment, tensor ranks and
// dimensions, tensor types (known to ggml), each tensor's byte size (from its type's block size)
// fitting the data section at an aligned offset, no two tensors overlapping, no repeated names.
// Layout: "GGUF", u32 version, u64 tensor count, u64 key-value count, key-values, tensor infos,
// padding to the alignment, data section. Everything little-endian.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::io {

class MappedFile;

// Metadata value types, numbered as in the file.
enum class GgufType : std::uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// Tensor element types (ggml_type), numbered as in the file. The quantised ones store blocks of
// block_size elements in type_size bytes.
enum class GgmlType : std::uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22,
  kIQ4_XS = 23, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kIQ1_M = 29, kBF16 = 30,
  kTQ1_0 = 34, kTQ2_0 = 35, kMXFP4 = 39, kNVFP4 = 40,
};

// "F32", "Q4_K", ... ("?" for a value outside the enum).
const char* ggml_type_name(GgmlType type);
// Elements per block and bytes per block; false for a number ggml does not define.
bool ggml_block_layout(std::uint32_t type, std::uint64_t* block_size, std::uint64_t* type_size);

// One metadata value. Integers keep their file type in `type`; arrays hold their elements (all of
// `element_type`; nested arrays up to GgufLimits::max_nesting).
struct GgufValue {
  GgufType type = GgufType::kU8;
  GgufType element_type = GgufType::kU8;  // arrays only
  std::variant<std::uint64_t, std::int64_t, double, bool, std::string> scalar;
  std::vector<GgufValue> elements;  // arrays only
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<std::int64_t> shape;  // row-major, outermost first: the file's ne[] reversed
  std::uint64_t offset = 0;         // inside the data section
  const std::byte* data = nullptr;  // valid while the GgufFile is alive
  std::size_t size_bytes = 0;

  std::int64_t numel() const;
};

struct GgufLimits {
  std::uint64_t max_tensors = 1u << 20;
  std::uint64_t max_metadata = 1u << 20;        // key-value pairs
  std::uint64_t max_string_bytes = 1ull << 28;  // one key or string value
  std::uint64_t max_array_elements = 1ull << 28;
  // Array elements of all keys together: each takes a GgufValue in memory, far more than its bytes
  // in the file. Real files hold a few hundred thousand (tokens, scores, merges).
  std::uint64_t max_metadata_values = 1ull << 22;
  std::size_t max_nesting = 4;  // arrays of arrays
  std::size_t max_rank = 4;     // ggml's GGML_MAX_DIMS
};

class GgufFile {
 public:
  // Maps and validates `path`. Throws Error: kNotFound (no such file), kUnavailable (cannot be read
  // or mapped), kInvalidArgument (not a regular file, a version other than 2 or 3, a tensor type
  // ggml does not define), kDataLoss (bad magic, truncated or corrupt: lying counts, lengths or
  // offsets, misaligned or overlapping tensors, repeated names; the message names the key or
  // tensor), kResourceExhausted (more tensors, key-values or metadata values than a limit allows).
  static GgufFile open(const std::string& path, const GgufLimits& limits = {});
  // The same checks on a file's bytes held in memory (kept by the returned object); `name` stands
  // for the path in messages.
  static GgufFile parse(std::string bytes, const std::string& name, const GgufLimits& limits = {});

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  const std::string& path() const;
  std::uint32_t version() const;
  std::uint64_t alignment() const;
  // Tensors in file order.
  const std::vector<GgufTensor>& tensors() const;
  const GgufTensor* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, GgufValue>& metadata() const;
  const GgufValue* find_metadata(const std::string& key) const;  // nullptr when absent

  // Typed access: nullopt when the key is absent; Error(kDataLoss) naming the key when its value
  // has another type. integer() takes any integer type (a u64 above 2^63-1 is refused), number()
  // any integer or float type.
  std::optional<std::string> string(const std::string& key) const;
  std::optional<std::int64_t> integer(const std::string& key) const;
  std::optional<double> number(const std::string& key) const;
  std::optional<bool> boolean(const std::string& key) const;
  std::optional<std::vector<std::string>> strings(const std::string& key) const;
  std::optional<std::vector<std::int64_t>> integers(const std::string& key) const;
  std::optional<std::vector<double>> numbers(const std::string& key) const;

 private:
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  static GgufFile validate(const std::string& path, std::unique_ptr<MappedFile> file, const GgufLimits& limits);
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::io
AIOS_EXPORT_END

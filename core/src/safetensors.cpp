#include "aios/io/safetensors.h"
#include "aios/io/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "aios/json.h"
#include "mapped_file.h"

namespace aios::io {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: case DType::kI16: return 2;
    case DType::kI8: case DType::kU8: case DType::kBool: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF64: return "F64";
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kI16: return "I16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
  }
  return "?";
}

namespace {

bool parse_dtype(const std::string& name, DType* out) {
  static const std::pair<const char*, DType> kNames[] = {
      {"F64", DType::kF64}, {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
      {"I64", DType::kI64}, {"I32", DType::kI32}, {"I16", DType::kI16}, {"I8", DType::kI8},
      {"U8", DType::kU8},   {"BOOL", DType::kBool}};
  for (const auto& [spelling, dtype] : kNames) {
    if (name == spelling) {
      *out = dtype;
      return true;
    }
  }
  return false;
}

std::uint64_t read_le_u64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
  return v;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

struct SafetensorsFile::Impl {
  std::string path;
  std::unique_ptr<MappedFile> file;
  std::vector<TensorView> tensors;
  std::map<std::string, std::size_t> index;
  std::map<std::string, std::string> metadata;
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const { return impl_->path; }
const std::vector<TensorView>& SafetensorsFile::tensors() const { return impl_->tensors; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = impl_->index.find(name);
  return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

SafetensorsFile SafetensorsFile::open(const std::string& path, const SafetensorsLimits& limits) {
  return validate(path, std::make_unique<MappedFile>(path), limits);
}

SafetensorsFile SafetensorsFile::parse(std::string bytes, const std::string& name, const SafetensorsLimits& limits) {
  return validate(name, std::make_unique<MappedFile>(std::move(bytes), MappedFile::InMemory{}), limits);
}

SafetensorsFile SafetensorsFile::validate(const std::string& path, std::unique_ptr<MappedFile> file,
                                          const SafetensorsLimits& limits) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->file = std::move(file);
  const std::byte* bytes = impl->file->data();
  const std::uint64_t file_size = impl->file->size();

  if (file_size < 8) {
    fail(ErrorCode::kDataLoss, path, "truncated: expected at least 8 bytes of header length, got {}",
         file_size);
  }
  const std::uint64_t header_len = read_le_u64(bytes);
  if (header_len > limits.max_header_bytes) {
    fail(ErrorCode::kDataLoss, path, "header length {} exceeds the limit of {} bytes", header_len,
         limits.max_header_bytes);
  }
  if (header_len > file_size - 8) {
    fail(ErrorCode::kDataLoss, path, "truncated: header claims {} bytes but the file has {} after the length",
         header_len, file_size - 8);
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  if (header_len < 2 || header_begin[0] != '{') {
    fail(ErrorCode::kDataLoss, path, "header: expected a JSON object starting with '{{'");
  }
  const nlohmann::json header = parse_json(std::string_view(header_begin, header_len), path);
  if (!header.is_object()) fail(ErrorCode::kDataLoss, path, "header: expected a JSON object");
  const std::uint64_t data_begin = 8 + header_len;
  const std::uint64_t data_len = file_size - data_begin;
  if (header.size() > limits.max_tensors + 1) {
    fail(ErrorCode::kResourceExhausted, path, "header lists {} entries, limit {}", header.size(),
         limits.max_tensors);
  }

  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(ErrorCode::kDataLoss, path, "__metadata__: expected an object");
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          fail(ErrorCode::kDataLoss, path, "__metadata__.{}: expected a string value", key);
        }
        impl->metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string field = fmt::format("{}: tensor '{}'", path, name);
    if (!entry.is_object()) fail(ErrorCode::kDataLoss, field, "expected an object");
    TensorView view;
    view.name = name;
    auto dtype = entry.find("dtype");
    if (dtype == entry.end() || !dtype->is_string() || !parse_dtype(dtype->get<std::string>(), &view.dtype)) {
      fail(ErrorCode::kDataLoss, field, "dtype: expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL, got {}",
           dtype == entry.end() ? std::string("nothing") : json_excerpt(*dtype));
    }
    auto shape = entry.find("shape");
    if (shape == entry.end() || !shape->is_array()) fail(ErrorCode::kDataLoss, field, "shape: expected an array");
    if (shape->size() > limits.max_rank) {
      fail(ErrorCode::kDataLoss, field, "shape: rank {} exceeds the limit {}", shape->size(), limits.max_rank);
    }
    for (const auto& dim : *shape) {
      if (!dim.is_number_unsigned()) {
        fail(ErrorCode::kDataLoss, field, "shape: expected non-negative integers, got {}", json_excerpt(*shape));
      }
      const std::uint64_t d = dim.get<std::uint64_t>();
      view.shape.push_back(d > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max()) ? -1 : static_cast<int64_t>(d));
    }
    std::uint64_t expected_bytes = 0;
    if (!checked_extent(view.shape, dtype_size(view.dtype), &expected_bytes)) {  // -1: a dimension past int64
      fail(ErrorCode::kDataLoss, field, "shape {} overflows", json_excerpt(*shape));
    }
    auto offsets = entry.find("data_offsets");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
      fail(ErrorCode::kDataLoss, field, "data_offsets: expected [begin, end] of non-negative integers");
    }
    const std::uint64_t begin = (*offsets)[0].get<std::uint64_t>();
    const std::uint64_t end = (*offsets)[1].get<std::uint64_t>();
    if (begin > end || end > data_len) {
      fail(ErrorCode::kDataLoss, field, "data_offsets [{}, {}] lie outside the data section of {} bytes", begin,
           end, data_len);
    }
    if (end - begin != expected_bytes) {
      fail(ErrorCode::kDataLoss, field, "expected {} bytes for {} {}, data_offsets span {}", expected_bytes,
           dtype_name(view.dtype), json_excerpt(*shape), end - begin);
    }
    view.data = bytes + data_begin + begin;
    view.size_bytes = static_cast<std::size_t>(end - begin);
    impl->tensors.push_back(std::move(view));
  }

  // Ranges must tile the data section: sorted by offset, each starts where the previous ended.
  auto offset_of = [&](const TensorView& v) { return static_cast<std::uint64_t>(v.data - (bytes + data_begin)); };
  std::stable_sort(impl->tensors.begin(), impl->tensors.end(),
                   [&](const TensorView& a, const TensorView& b) { return offset_of(a) < offset_of(b); });
  std::uint64_t cursor = 0;
  for (const TensorView& v : impl->tensors) {
    const std::uint64_t begin = offset_of(v);
    if (begin != cursor) {
      fail(ErrorCode::kDataLoss, fmt::format("{}: tensor '{}'", path, v.name),
           "data_offsets begin at {} but the previous tensor ends at {} ({})", begin, cursor,
           begin < cursor ? "overlap" : "hole");
    }
    cursor = begin + v.size_bytes;
  }
  if (cursor != data_len) {
    fail(ErrorCode::kDataLoss, path, "tensors cover {} bytes of a data section of {} bytes", cursor, data_len);
  }
  for (std::size_t i = 0; i < impl->tensors.size(); ++i) impl->index[impl->tensors[i].name] = i;
  return SafetensorsFile(std::move(impl));
}

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  std::uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      fail(ErrorCode::kInvalidArgument, t.name, "duplicate or reserved tensor name");
    }
    std::uint64_t expected = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0 || !checked_mul(expected, static_cast<std::uint64_t>(d), &expected)) {
        fail(ErrorCode::kInvalidArgument, t.name, "expected non-negative dimensions that fit in memory");
      }
    }
    if (t.data == nullptr && expected != 0) fail(ErrorCode::kInvalidArgument, t.name, "expected data, got none");
    if (expected != t.size_bytes) {
      fail(ErrorCode::kInvalidArgument, t.name, "expected {} bytes for its shape, got {}", expected, t.size_bytes);
    }
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + expected}}};
    offset += expected;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  std::string bytes;
  bytes.reserve(8 + json.size() + offset);
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((json.size() >> (8 * i)) & 0xff));
  bytes += json;
  for (const TensorView& t : tensors) bytes.append(reinterpret_cast<const char*>(t.data), t.size_bytes);
  write_file_atomically(path, bytes);
}

}  // namespace aios::io

#include "aios/io/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "aios/fail.h"
#include "mapped_file.h"

namespace aios::io {

namespace {

struct TypeLayout {
  GgmlType type;
  const char* name;
  std::uint64_t block_size;
  std::uint64_t type_size;
};

// ggml's block layouts (GGML_QUANT_SIZES in the gguf Python package), QK_K = 256.
constexpr TypeLayout kLayouts[] = {
    {GgmlType::kF32, "F32", 1, 4},           {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", 32, 18},       {GgmlType::kQ4_1, "Q4_1", 32, 20},
    {GgmlType::kQ5_0, "Q5_0", 32, 22},       {GgmlType::kQ5_1, "Q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", 32, 34},       {GgmlType::kQ8_1, "Q8_1", 32, 40},
    {GgmlType::kQ2_K, "Q2_K", 256, 84},      {GgmlType::kQ3_K, "Q3_K", 256, 110},
    {GgmlType::kQ4_K, "Q4_K", 256, 144},     {GgmlType::kQ5_K, "Q5_K", 256, 176},
    {GgmlType::kQ6_K, "Q6_K", 256, 210},     {GgmlType::kQ8_K, "Q8_K", 256, 292},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 66}, {GgmlType::kIQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 98}, {GgmlType::kIQ1_S, "IQ1_S", 256, 50},
    {GgmlType::kIQ4_NL, "IQ4_NL", 32, 18},   {GgmlType::kIQ3_S, "IQ3_S", 256, 110},
    {GgmlType::kIQ2_S, "IQ2_S", 256, 82},    {GgmlType::kIQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::kI8, "I8", 1, 1},             {GgmlType::kI16, "I16", 1, 2},
    {GgmlType::kI32, "I32", 1, 4},           {GgmlType::kI64, "I64", 1, 8},
    {GgmlType::kF64, "F64", 1, 8},           {GgmlType::kIQ1_M, "IQ1_M", 256, 56},
    {GgmlType::kBF16, "BF16", 1, 2},         {GgmlType::kTQ1_0, "TQ1_0", 256, 54},
    {GgmlType::kTQ2_0, "TQ2_0", 256, 66},    {GgmlType::kMXFP4, "MXFP4", 32, 17},
    {GgmlType::kNVFP4, "NVFP4", 64, 36},
};

const TypeLayout* layout_of(std::uint32_t type) {
  for (const TypeLayout& l : kLayouts) {
    if (static_cast<std::uint32_t>(l.type) == type) return &l;
  }
  return nullptr;
}

const char* value_type_name(GgufType type) {
  static const char* const kNames[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<std::uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "?";
}

// Bytes of a scalar of `type` in the file (strings and arrays: 0, they have their own lengths).
std::uint64_t scalar_size(GgufType type) {
  switch (type) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    case GgufType::kString: case GgufType::kArray: return 0;
  }
  return 0;
}

// Sequential little-endian reads that never pass the end of the mapping; each failure names what
// was being read.
class Cursor {
 public:
  Cursor(const std::byte* data, std::uint64_t size, const std::string& path) : data_(data), size_(size), path_(path) {}

  std::uint64_t position() const { return pos_; }
  std::uint64_t left() const { return size_ - pos_; }

  void need(std::uint64_t bytes, const std::string& what) const {
    if (bytes > left()) {
      fail(ErrorCode::kDataLoss, field(what), "truncated: expected {} more bytes at offset {}, the file has {}", bytes,
           pos_, left());
    }
  }
  std::uint64_t uint(unsigned bytes, const std::string& what) {
    need(bytes, what);
    std::uint64_t v = 0;
    for (unsigned i = 0; i < bytes; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(data_[pos_ + i])} << (8 * i);
    pos_ += bytes;
    return v;
  }
  std::string string(const GgufLimits& limits, const std::string& what) {
    const std::uint64_t length = uint(8, what);
    if (length > limits.max_string_bytes) {
      fail(ErrorCode::kDataLoss, field(what), "string length {} exceeds the limit of {} bytes", length,
           limits.max_string_bytes);
    }
    if (length > left()) {
      fail(ErrorCode::kDataLoss, field(what), "string length {} runs past the end of the file ({} bytes left)", length,
           left());
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(length));
    pos_ += length;
    return s;
  }
  std::string field(const std::string& what) const { return what.empty() ? path_ : path_ + ": " + what; }

 private:
  const std::byte* data_;
  std::uint64_t size_;
  std::uint64_t pos_ = 0;
  const std::string& path_;
};

GgufType read_value_type(Cursor& in, const std::string& what) {
  const std::uint64_t t = in.uint(4, what);
  if (t > static_cast<std::uint64_t>(GgufType::kF64)) {
    fail(ErrorCode::kDataLoss, in.field(what), "unknown value type {} (expected 0..12)", t);
  }
  return static_cast<GgufType>(t);
}

// `values`: array elements read so far, over all keys, against limits.max_metadata_values.
GgufValue read_value(Cursor& in, GgufType type, const GgufLimits& limits, std::size_t depth, std::uint64_t& values,
                     const std::string& what) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::kU8: case GgufType::kU16: case GgufType::kU32: case GgufType::kU64:
      v.scalar = in.uint(static_cast<unsigned>(scalar_size(type)), what);
      break;
    case GgufType::kI8: case GgufType::kI16: case GgufType::kI32: case GgufType::kI64: {
      const unsigned bytes = static_cast<unsigned>(scalar_size(type));
      std::uint64_t raw = in.uint(bytes, what);
      if (bytes < 8 && (raw >> (8 * bytes - 1)) != 0) raw |= ~std::uint64_t{0} << (8 * bytes);  // sign-extend
      v.scalar = static_cast<std::int64_t>(raw);
      break;
    }
    case GgufType::kF32: {
      const auto bits = static_cast<std::uint32_t>(in.uint(4, what));
      float f;
      std::memcpy(&f, &bits, 4);
      v.scalar = static_cast<double>(f);
      break;
    }
    case GgufType::kF64: {
      const std::uint64_t bits = in.uint(8, what);
      double d;
      std::memcpy(&d, &bits, 8);
      v.scalar = d;
      break;
    }
    case GgufType::kBool: {
      const std::uint64_t b = in.uint(1, what);
      if (b > 1) fail(ErrorCode::kDataLoss, in.field(what), "expected a bool of 0 or 1, got {}", b);
      v.scalar = b == 1;
      break;
    }
    case GgufType::kString:
      v.scalar = in.string(limits, what);
      break;
    case GgufType::kArray: {
      if (depth >= limits.max_nesting) {
        fail(ErrorCode::kDataLoss, in.field(what), "arrays nested deeper than {}", limits.max_nesting);
      }
      v.element_type = read_value_type(in, what);
      const std::uint64_t count = in.uint(8, what);
      if (count > limits.max_array_elements) {
        fail(ErrorCode::kDataLoss, in.field(what), "array length {} exceeds the limit of {}", count,
             limits.max_array_elements);
      }
      // Every element takes at least this many bytes: a count the file cannot hold is a lie, caught
      // before anything is allocated for it.
      const std::uint64_t least = v.element_type == GgufType::kString  ? 8
                                  : v.element_type == GgufType::kArray ? 12
                                                                       : scalar_size(v.element_type);
      if (count > in.left() / least) {
        fail(ErrorCode::kDataLoss, in.field(what), "array of {} {} elements does not fit the {} bytes left", count,
             value_type_name(v.element_type), in.left());
      }
      if (count > limits.max_metadata_values - values) {
        fail(ErrorCode::kResourceExhausted, in.field(what), "{} more array elements exceed the limit of {} in all",
             count, limits.max_metadata_values);
      }
      values += count;
      v.elements.reserve(static_cast<std::size_t>(count));
      for (std::uint64_t i = 0; i < count; ++i) {
        v.elements.push_back(read_value(in, v.element_type, limits, depth + 1, values, what));
      }
      break;
    }
  }
  return v;
}

}  // namespace

const char* ggml_type_name(GgmlType type) {
  const TypeLayout* l = layout_of(static_cast<std::uint32_t>(type));
  return l != nullptr ? l->name : "?";
}

bool ggml_block_layout(std::uint32_t type, std::uint64_t* block_size, std::uint64_t* type_size) {
  const TypeLayout* l = layout_of(type);
  if (l == nullptr) return false;
  *block_size = l->block_size;
  *type_size = l->type_size;
  return true;
}

std::int64_t GgufTensor::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

struct GgufFile::Impl {
  std::string path;
  std::unique_ptr<MappedFile> file;
  std::uint32_t version = 0;
  std::uint64_t alignment = 32;
  std::vector<GgufTensor> tensors;
  std::map<std::string, std::size_t> index;
  std::map<std::string, GgufValue> metadata;

  const GgufValue* typed(const std::string& key, bool (*accept)(GgufType), const char* expected) const {
    auto it = metadata.find(key);
    if (it == metadata.end()) return nullptr;
    if (!accept(it->second.type)) {
      fail(ErrorCode::kDataLoss, path + ": " + key, "expected {}, got a value of type {}", expected,
           value_type_name(it->second.type));
    }
    return &it->second;
  }
};

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

const std::string& GgufFile::path() const { return impl_->path; }
std::uint32_t GgufFile::version() const { return impl_->version; }
std::uint64_t GgufFile::alignment() const { return impl_->alignment; }
const std::vector<GgufTensor>& GgufFile::tensors() const { return impl_->tensors; }
const std::map<std::string, GgufValue>& GgufFile::metadata() const { return impl_->metadata; }

const GgufTensor* GgufFile::find(const std::string& name) const {
  auto it = impl_->index.find(name);
  return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

const GgufValue* GgufFile::find_metadata(const std::string& key) const {
  auto it = impl_->metadata.find(key);
  return it == impl_->metadata.end() ? nullptr : &it->second;
}

namespace {

bool is_integer(GgufType t) {
  return t == GgufType::kU8 || t == GgufType::kI8 || t == GgufType::kU16 || t == GgufType::kI16 ||
         t == GgufType::kU32 || t == GgufType::kI32 || t == GgufType::kU64 || t == GgufType::kI64;
}
bool is_number(GgufType t) { return is_integer(t) || t == GgufType::kF32 || t == GgufType::kF64; }
bool is_string(GgufType t) { return t == GgufType::kString; }
bool is_bool(GgufType t) { return t == GgufType::kBool; }
bool is_array(GgufType t) { return t == GgufType::kArray; }

// An integer value as int64, or nullopt for a u64 above INT64_MAX.
std::optional<std::int64_t> as_int64(const GgufValue& v) {
  if (const auto* u = std::get_if<std::uint64_t>(&v.scalar)) {
    if (*u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
    return static_cast<std::int64_t>(*u);
  }
  return std::get<std::int64_t>(v.scalar);
}

double as_double(const GgufValue& v) {
  if (const auto* d = std::get_if<double>(&v.scalar)) return *d;
  if (const auto* u = std::get_if<std::uint64_t>(&v.scalar)) return static_cast<double>(*u);
  return static_cast<double>(std::get<std::int64_t>(v.scalar));
}

}  // namespace

std::optional<std::string> GgufFile::string(const std::string& key) const {
  const GgufValue* v = impl_->typed(key, is_string, "a string");
  if (v == nullptr) return std::nullopt;
  return std::get<std::string>(v->scalar);
}

std::optional<std::int64_t> GgufFile::integer(const std::string& key) const {
  const GgufValue* v = impl_->typed(key, is_integer, "an integer");
  if (v == nullptr) return std::nullopt;
  const auto i = as_int64(*v);
  if (!i) fail(ErrorCode::kDataLoss, impl_->path + ": " + key, "integer {} is too large", std::get<std::uint64_t>(v->scalar));
  return i;
}

std::optional<double> GgufFile::number(const std::string& key) const {
  const GgufValue* v = impl_->typed(key, is_number, "a number");
  if (v == nullptr) return std::nullopt;
  return as_double(*v);
}

std::optional<bool> GgufFile::boolean(const std::string& key) const {
  const GgufValue* v = impl_->typed(key, is_bool, "a bool");
  if (v == nullptr) return std::nullopt;
  return std::get<bool>(v->scalar);
}

std::optional<std::vector<std::string>> GgufFile::strings(const std::string& key) const {
  const GgufValue* v = impl_->typed(key, is_array, "an array of strings");
  if (v == nullptr) return std::nullopt;
  if (v->element_type != GgufType::kString) {
    fail(ErrorCode::kDataLoss, impl_->path + ": " + key, "expected an array of strings, got an array of {}",
         value_type_name(v->element_type));
  }
  std::vector<std::string> out;
  out.reserve(v->elements.size());
  for (const GgufValue& e : v->elements) out.push_back(std::get<std::string>(e.scalar));
  return out;
}

std::optional<std::vector<std::int64_t>> GgufFile::integers(const std::string& key) const {
  const GgufValue* v = impl_->typed(key, is_array, "an array of integers");
  if (v == nullptr) return std::nullopt;
  if (!is_integer(v->element_type)) {
    fail(ErrorCode::kDataLoss, impl_->path + ": " + key, "expected an array of integers, got an array of {}",
         value_type_name(v->element_type));
  }
  std::vector<std::int64_t> out;
  out.reserve(v->elements.size());
  for (const GgufValue& e : v->elements) {
    const auto i = as_int64(e);
    if (!i) fail(ErrorCode::kDataLoss, impl_->path + ": " + key, "integer {} is too large", std::get<std::uint64_t>(e.scalar));
    out.push_back(*i);
  }
  return out;
}

std::optional<std::vector<double>> GgufFile::numbers(const std::string& key) const {
  const GgufValue* v = impl_->typed(key, is_array, "an array of numbers");
  if (v == nullptr) return std::nullopt;
  if (!is_number(v->element_type)) {
    fail(ErrorCode::kDataLoss, impl_->path + ": " + key, "expected an array of numbers, got an array of {}",
         value_type_name(v->element_type));
  }
  std::vector<double> out;
  out.reserve(v->elements.size());
  for (const GgufValue& e : v->elements) out.push_back(as_double(e));
  return out;
}

GgufFile GgufFile::open(const std::string& path, const GgufLimits& limits) {
  return validate(path, std::make_unique<MappedFile>(path), limits);
}

GgufFile GgufFile::parse(std::string bytes, const std::string& name, const GgufLimits& limits) {
  return validate(name, std::make_unique<MappedFile>(std::move(bytes), MappedFile::InMemory{}), limits);
}

GgufFile GgufFile::validate(const std::string& path, std::unique_ptr<MappedFile> file, const GgufLimits& limits) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->file = std::move(file);
  const std::byte* bytes = impl->file->data();
  const std::uint64_t file_size = impl->file->size();
  Cursor in(bytes, file_size, impl->path);

  in.need(4, "magic");
  if (std::memcmp(bytes, "GGUF", 4) != 0) fail(ErrorCode::kDataLoss, path, "bad magic: expected a file starting with GGUF");
  in.uint(4, "magic");
  impl->version = static_cast<std::uint32_t>(in.uint(4, "version"));
  if (impl->version != 2 && impl->version != 3) {
    fail(ErrorCode::kInvalidArgument, in.field("version"), "expected GGUF version 2 or 3, got {}", impl->version);
  }
  const std::uint64_t tensor_count = in.uint(8, "tensor_count");
  const std::uint64_t metadata_count = in.uint(8, "metadata_kv_count");
  // The smallest key-value (empty key, type, one byte) takes 13 bytes, the smallest tensor info
  // (empty name, rank, type, offset) 24: counts the file cannot hold are caught here.
  if (metadata_count > in.left() / 13) {
    fail(ErrorCode::kDataLoss, in.field("metadata_kv_count"), "{} key-values cannot fit the {} bytes left",
         metadata_count, in.left());
  }
  if (tensor_count > in.left() / 24) {
    fail(ErrorCode::kDataLoss, in.field("tensor_count"), "{} tensors cannot fit the {} bytes left", tensor_count,
         in.left());
  }
  if (tensor_count > limits.max_tensors) {
    fail(ErrorCode::kResourceExhausted, in.field("tensor_count"), "{} tensors exceed the limit of {}", tensor_count,
         limits.max_tensors);
  }
  if (metadata_count > limits.max_metadata) {
    fail(ErrorCode::kResourceExhausted, in.field("metadata_kv_count"), "{} key-values exceed the limit of {}",
         metadata_count, limits.max_metadata);
  }
  std::uint64_t values = 0;
  for (std::uint64_t i = 0; i < metadata_count; ++i) {
    const std::string key = in.string(limits, fmt::format("metadata key #{}", i));
    const GgufType type = read_value_type(in, key);
    GgufValue value = read_value(in, type, limits, 0, values, key);
    if (!impl->metadata.emplace(key, std::move(value)).second) {
      fail(ErrorCode::kDataLoss, in.field(key), "metadata key appears twice");
    }
  }
  if (const GgufValue* a = impl->typed("general.alignment", is_integer, "an integer")) {
    const auto alignment = as_int64(*a);
    if (!alignment || *alignment <= 0 || *alignment > (1 << 20) || (*alignment & (*alignment - 1)) != 0) {
      fail(ErrorCode::kDataLoss, in.field("general.alignment"), "expected a power of two in [1, 2^20], got {}",
           alignment ? fmt::format("{}", *alignment) : std::string("a huge value"));
    }
    impl->alignment = static_cast<std::uint64_t>(*alignment);
  }

  for (std::uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensor t;
    t.name = in.string(limits, fmt::format("tensor #{} name", i));
    const std::string what = fmt::format("tensor '{}'", t.name);
    const std::uint64_t rank = in.uint(4, what);
    if (rank > limits.max_rank) {
      fail(ErrorCode::kDataLoss, in.field(what), "rank {} exceeds the limit {}", rank, limits.max_rank);
    }
    std::vector<std::uint64_t> ne(static_cast<std::size_t>(rank));
    for (auto& d : ne) d = in.uint(8, what);
    const std::uint64_t type = in.uint(4, what);
    t.offset = in.uint(8, what);
    const TypeLayout* layout = layout_of(static_cast<std::uint32_t>(type));
    if (layout == nullptr) fail(ErrorCode::kInvalidArgument, in.field(what), "unknown tensor type {}", type);
    t.type = layout->type;
    // ne[0] is the innermost dimension; a row of it is a whole number of blocks.
    for (std::size_t d = 0; d < ne.size(); ++d) {
      if (ne[d] > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        fail(ErrorCode::kDataLoss, in.field(what), "dimension {} is {}, too large", d, ne[d]);
      }
    }
    for (auto d = ne.rbegin(); d != ne.rend(); ++d) t.shape.push_back(static_cast<std::int64_t>(*d));
    if (!ne.empty() && ne[0] % layout->block_size != 0) {
      fail(ErrorCode::kDataLoss, in.field(what), "{} rows of {} elements are not whole blocks of {}", layout->name,
           ne[0], layout->block_size);
    }
    // The element count (and every product of dimensions) fits int64, and so do the bytes: a row
    // of ne[0] elements is ne[0] / block_size blocks of type_size bytes.
    std::uint64_t bytes = 0;
    std::vector<std::int64_t> blocks = t.shape;
    if (!blocks.empty()) blocks.back() = blocks.back() / static_cast<std::int64_t>(layout->block_size);
    if (!checked_extent(t.shape, 1, &bytes) || !checked_extent(blocks, layout->type_size, &bytes)) {
      fail(ErrorCode::kDataLoss, in.field(what), "byte size overflows");
    }
    if (bytes > file_size) {
      fail(ErrorCode::kDataLoss, in.field(what), "needs {} bytes, more than the file's {}", bytes, file_size);
    }
    t.size_bytes = static_cast<std::size_t>(bytes);
    if (!impl->index.emplace(t.name, impl->tensors.size()).second) {
      fail(ErrorCode::kDataLoss, in.field(what), "tensor name appears twice");
    }
    impl->tensors.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const std::uint64_t a = impl->alignment;
  const std::uint64_t data_begin = (in.position() + a - 1) / a * a;
  const std::uint64_t data_size = data_begin <= file_size ? file_size - data_begin : 0;
  if (!impl->tensors.empty() && data_begin > file_size) {
    fail(ErrorCode::kDataLoss, path, "truncated: the data section would start at {}, past the end of the file ({})",
         data_begin, file_size);
  }
  std::vector<const GgufTensor*> by_offset;
  for (GgufTensor& t : impl->tensors) {
    const std::string field = fmt::format("{}: tensor '{}'", path, t.name);
    if (t.offset % a != 0) fail(ErrorCode::kDataLoss, field, "offset {} is not a multiple of the alignment {}", t.offset, a);
    if (t.offset > data_size || t.size_bytes > data_size - t.offset) {
      fail(ErrorCode::kDataLoss, field, "bytes [{}, {}) lie outside the data section of {} bytes", t.offset,
           t.offset + t.size_bytes, data_size);
    }
    t.data = bytes + data_begin + t.offset;
    by_offset.push_back(&t);
  }
  std::stable_sort(by_offset.begin(), by_offset.end(),
                   [](const GgufTensor* x, const GgufTensor* y) { return x->offset < y->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& prev = *by_offset[i - 1];
    const GgufTensor& next = *by_offset[i];
    if (next.offset < prev.offset + prev.size_bytes) {
      fail(ErrorCode::kDataLoss, fmt::format("{}: tensor '{}'", path, next.name),
           "bytes from offset {} overlap tensor '{}' at [{}, {})", next.offset, prev.name, prev.offset,
           prev.offset + prev.size_bytes);
    }
  }
  return GgufFile(std::move(impl));
}

}  // namespace aios::io

#include "weights.h"

#include <algorithm>
#include <filesystem>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "aios/io/files.h"
#include "aios/fail.h"
#include "aios/json.h"
#include "dequantize.h"
#include "packed.h"

namespace aios::backbone {

namespace fs = std::filesystem;

namespace {

c10::ScalarType to_scalar_type(io::DType dtype) {
  switch (dtype) {
    case io::DType::kF64: return c10::kDouble;
    case io::DType::kF32: return c10::kFloat;
    case io::DType::kF16: return c10::kHalf;
    case io::DType::kBF16: return c10::kBFloat16;
    case io::DType::kI64: return c10::kLong;
    case io::DType::kI32: return c10::kInt;
    case io::DType::kI16: return c10::kShort;
    case io::DType::kI8: return c10::kChar;
    case io::DType::kU8: return c10::kByte;
    case io::DType::kBool: return c10::kBool;
  }
  return c10::kFloat;
}

}  // namespace

namespace {

// Shard names come from an untrusted index: plain file names inside the folder only.
void check_shard_name(const std::string& index, const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name == "." || name == "..") {
    fail(ErrorCode::kDataLoss, index, "weight_map: expected plain file names inside the folder, got \"{}\"", name);
  }
}

}  // namespace

SafetensorsWeights::SafetensorsWeights(const std::string& folder) {
  const fs::path single = fs::path(folder) / "model.safetensors";
  const fs::path index = fs::path(folder) / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> shard_of;  // tensor -> shard file, from the index
  std::error_code error;  // the non-throwing overloads: a permission problem is an aios::Error too
  if (fs::exists(index, error)) {
    nlohmann::json root = parse_json(io::read_file(index.string()), index.string());
    if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object()) {
      fail(ErrorCode::kDataLoss, index.string(), "expected a JSON object with a \"weight_map\" object");
    }
    for (auto& [tensor, shard] : root["weight_map"].items()) {
      if (!shard.is_string()) fail(ErrorCode::kDataLoss, index.string(), "weight_map.{}: expected a file name", tensor);
      const std::string name = shard.get<std::string>();
      check_shard_name(index.string(), name);
      shard_of[tensor] = name;
      if (std::find(shard_names.begin(), shard_names.end(), name) == shard_names.end()) shard_names.push_back(name);
    }
  } else if (fs::exists(single, error)) {
    shard_names.push_back("model.safetensors");
  } else {
    fail(ErrorCode::kNotFound, folder, "expected model.safetensors or model.safetensors.index.json in the folder");
  }

  files_.reserve(shard_names.size());
  for (const std::string& name : shard_names) files_.push_back(io::SafetensorsFile::open((fs::path(folder) / name).string()));
  for (std::size_t i = 0; i < files_.size(); ++i) {
    for (const io::TensorView& view : files_[i].tensors()) {
      auto listed = shard_of.find(view.name);
      // With an index, a tensor counts only in the shard the index names for it.
      if (!shard_of.empty() && (listed == shard_of.end() || listed->second != shard_names[i])) continue;
      where_[view.name] = &view;
    }
  }
  for (const auto& [tensor, shard] : shard_of) {
    if (where_.count(tensor) == 0) {
      fail(ErrorCode::kDataLoss, (fs::path(folder) / shard).string(), "tensor '{}' listed in the index is missing", tensor);
    }
  }
}

void check_shape(const std::string& name, at::IntArrayRef expected, at::IntArrayRef actual) {
  if (!std::equal(actual.begin(), actual.end(), expected.begin(), expected.end())) {
    fail(ErrorCode::kDataLoss, name, "expected shape [{}], got [{}]", fmt::join(expected.begin(), expected.end(), ", "),
         fmt::join(actual.begin(), actual.end(), ", "));
  }
}

const io::TensorView* SafetensorsWeights::find(const std::string& name) const {
  auto it = where_.find(name);
  return it != where_.end() ? it->second : nullptr;
}

bool SafetensorsWeights::contains(const std::string& name) const {
  return find(name) != nullptr || (find(name + "_blocks") != nullptr && find(name + "_scales") != nullptr);
}

at::Tensor SafetensorsWeights::take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const {
  const io::TensorView* found = find(name);
  const io::TensorView* blocks = find(name + "_blocks");
  const io::TensorView* scales = find(name + "_scales");
  if (found == nullptr && blocks != nullptr && scales != nullptr) {
    auto bytes = [](const io::TensorView& v, const std::string& field) {
      if (v.dtype != io::DType::kU8) fail(ErrorCode::kDataLoss, field, "expected U8 MXFP4 data, got {}", io::dtype_name(v.dtype));
      return at::from_blob(const_cast<std::byte*>(v.data), v.shape, at::TensorOptions().dtype(at::kByte));
    };
    const std::string field = name + "_blocks";
    const std::size_t rank = shape.size();
    // [..., in, out] unquantised <- blocks [..., out, in/32, 16], scales [..., out, in/32]
    if (rank < 2 || shape[rank - 2] % 32 != 0) fail(ErrorCode::kDataLoss, field, "expected an MXFP4 tensor of rows divisible by 32");
    std::vector<int64_t> block_shape(shape.begin(), shape.end());
    std::swap(block_shape[rank - 2], block_shape[rank - 1]);
    block_shape.back() /= 32;
    check_shape(name + "_scales", block_shape, scales->shape);
    block_shape.push_back(16);
    check_shape(field, block_shape, blocks->shape);
    const at::Tensor values = dequantize_mxfp4(bytes(*blocks, field), bytes(*scales, name + "_scales"));
    return values.transpose(-1, -2).to(options.device, options.dtype).contiguous();
  }
  // The mapping is read-only and dies with this source: copy into memory the model owns.
  return mapped(name, shape).to(options.device, options.dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

at::Tensor SafetensorsWeights::mapped(const std::string& name, at::IntArrayRef shape) const {
  const io::TensorView* found = find(name);
  if (found == nullptr) fail(ErrorCode::kDataLoss, name, "tensor missing from the checkpoint");
  const io::TensorView& view = *found;
  check_shape(name, shape, view.shape);
  const c10::ScalarType stored = to_scalar_type(view.dtype);
  if (!c10::isFloatingType(stored)) {
    fail(ErrorCode::kDataLoss, name, "expected a floating-point tensor, got {}", io::dtype_name(view.dtype));
  }
  return at::from_blob(const_cast<std::byte*>(view.data), view.shape, at::TensorOptions().dtype(stored));
}

Matrix SafetensorsWeights::take_matrix(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const {
  // Quantised straight from the mapping, a row at a time: the load never holds a float copy of a
  // matrix, whose freed memory would stay resident between the small quantised ones.
  if (quantizes(options) && shape.size() == 2 && find(name) != nullptr) return kept(mapped(name, shape), options, name);
  return WeightSource::take_matrix(name, shape, options);
}

bool quantizes(const LoadOptions& options) {
  return options.weights == WeightStorage::kInt8 || options.weights == WeightStorage::kInt4;
}

LoadOptions taking(const LoadOptions& options) {
  LoadOptions out = options;
  if (quantizes(options)) out.dtype = at::kFloat;
  return out;
}

Matrix kept(const at::Tensor& dense, const LoadOptions& options, const std::string& name) {
  if (!quantizes(options)) return {dense, nullptr};
  const auto scheme = options.weights == WeightStorage::kInt8 ? PackedMatrix::Scheme::kInt8 : PackedMatrix::Scheme::kInt4;
  return {at::Tensor(), std::make_shared<const PackedMatrix>(PackedMatrix::quantize(dense, scheme, options.group_size, name))};
}

Matrix WeightSource::take_matrix(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const {
  return kept(take(name, shape, taking(options)), options, name);
}

std::vector<Matrix> WeightSource::take_matrices(const std::string& name, at::IntArrayRef shape,
                                                const LoadOptions& options) const {
  const at::Tensor all = take(name, shape, taking(options));
  std::vector<Matrix> out;
  for (int64_t i = 0; i < shape[0]; ++i) out.push_back(kept(all[i], options, fmt::format("{}[{}]", name, i)));
  return out;
}

Matrix Matrix::stack(const std::vector<Matrix>& parts) {
  const bool stored = std::any_of(parts.begin(), parts.end(), [](const Matrix& m) { return m.packed != nullptr; });
  if (!stored) {
    std::vector<at::Tensor> dense;
    for (const Matrix& m : parts) dense.push_back(m.dense);
    return {at::cat(dense), nullptr};
  }
  std::vector<PackedMatrix> packed;
  for (const Matrix& m : parts) packed.push_back(m.packed ? *m.packed : PackedMatrix::of(m.dense));
  return {at::Tensor(), std::make_shared<const PackedMatrix>(PackedMatrix::stack(packed))};
}

}  // namespace aios::backbone

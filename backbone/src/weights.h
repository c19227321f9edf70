// Internal: a checkpoint's tensors looked up by their Hugging Face names and converted on demand.
// The architecture builders ask for HF names only; each weight format maps them onto its own.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "aios/backbone/model.h"
#include "aios/io/safetensors.h"

namespace aios::backbone {

// A weight matrix [rows, cols] as the architectures receive it: expanded to the compute dtype, or
// kept as stored (LoadOptions::weights); exactly one of the two is set.
struct Matrix {
  at::Tensor dense;
  std::shared_ptr<const PackedMatrix> packed;

  // The parts' rows one after another: stored when any part is (the others join as float32/16-bit
  // segments), else one dense tensor.
  static Matrix stack(const std::vector<Matrix>& parts);
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool contains(const std::string& name) const = 0;
  // The tensor `name` converted to options' dtype and device, checked against `shape`.
  // Throws Error(kDataLoss) naming the tensor when it is missing or shaped otherwise.
  virtual at::Tensor take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const = 0;
  // The matrix `name` [rows, cols] as options.weights asks: quantised from its float32 values
  // (kInt8, kInt4), or kept as the source stores it where the source can (kStored); else expanded,
  // as take().
  virtual Matrix take_matrix(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const;
  // The stacked matrices `name` [n, rows, cols] (a mixture of experts' weights), each as take_matrix
  // would give it.
  virtual std::vector<Matrix> take_matrices(const std::string& name, at::IntArrayRef shape,
                                            const LoadOptions& options) const;
};

// Whether `options` asks for block `index` (LoadOptions::first_block, end_block).
inline bool loads_block(const LoadOptions& options, int64_t index) {
  return index >= options.first_block && (options.end_block < 0 || index < options.end_block);
}

// Whether options.weights quantises float matrices at load (kInt8, kInt4).
bool quantizes(const LoadOptions& options);
// The options to take a float matrix with before kept(): float32 where it will be quantised.
LoadOptions taking(const LoadOptions& options);
// dense [rows, cols] as options.weights keeps a float matrix: quantised row by row from its values as
// float32 (kInt8, kInt4; dense on the CPU, any float dtype), else as it is. Throws Error(kDataLoss)
// naming `name` for a non-finite value quantised.
Matrix kept(const at::Tensor& dense, const LoadOptions& options, const std::string& name);

// model.safetensors, or the shards listed by model.safetensors.index.json, in a folder.
class SafetensorsWeights final : public WeightSource {
 public:
  explicit SafetensorsWeights(const std::string& folder);

  bool contains(const std::string& name) const override;
  // A tensor stored as MXFP4 "<name>_blocks" and "<name>_scales" (gpt-oss's experts, [..., out, in/32,
  // 16] and [..., out, in/32]) comes back dequantised and transposed to the [..., in, out] of its
  // unquantised form.
  at::Tensor take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const override;
  Matrix take_matrix(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const override;

 private:
  const io::TensorView* find(const std::string& name) const;
  // The tensor `name` in its stored dtype, a view of the mapped file (valid while this source lives).
  at::Tensor mapped(const std::string& name, at::IntArrayRef shape) const;

  std::vector<io::SafetensorsFile> files_;
  std::map<std::string, const io::TensorView*> where_;
};

// Another source's tensors, names that begin with `replaced` beginning with `prefix` there instead
// (ModelConfig::weight_prefix and weight_prefix_replaces); other names unchanged.
class PrefixedWeights final : public WeightSource {
 public:
  PrefixedWeights(const WeightSource& inner, std::string prefix, std::string replaced = {})
      : inner_(inner), prefix_(std::move(prefix)), replaced_(std::move(replaced)) {}

  bool contains(const std::string& name) const override { return inner_.contains(renamed(name)); }
  at::Tensor take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const override {
    return inner_.take(renamed(name), shape, options);
  }
  Matrix take_matrix(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const override {
    return inner_.take_matrix(renamed(name), shape, options);
  }
  std::vector<Matrix> take_matrices(const std::string& name, at::IntArrayRef shape,
                                    const LoadOptions& options) const override {
    return inner_.take_matrices(renamed(name), shape, options);
  }

 private:
  std::string renamed(const std::string& name) const {
    return name.rfind(replaced_, 0) == 0 ? prefix_ + name.substr(replaced_.size()) : name;
  }

  const WeightSource& inner_;
  std::string prefix_, replaced_;
};

// Throws Error(kDataLoss) naming `name` when `actual` differs from `expected`.
void check_shape(const std::string& name, at::IntArrayRef expected, at::IntArrayRef actual);

}  // namespace aios::backbone

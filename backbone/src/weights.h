// Internal: a checkpoint's tensors looked up by their Hugging Face names and converted on demand.
// The architecture builders ask for HF names only; each weight format maps them onto its own.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "aios/backbone/model.h"
#include "aios/io/safetensors.h"

namespace aios::backbone {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool contains(const std::string& name) const = 0;
  // The tensor `name` converted to options' dtype and device, checked against `shape`.
  // Throws Error(kDataLoss) naming the tensor when it is missing or shaped otherwise.
  virtual at::Tensor take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const = 0;
};

// model.safetensors, or the shards listed by model.safetensors.index.json, in a folder.
class SafetensorsWeights final : public WeightSource {
 public:
  explicit SafetensorsWeights(const std::string& folder);

  bool contains(const std::string& name) const override { return where_.count(name) != 0; }
  at::Tensor take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const override;

 private:
  std::vector<io::SafetensorsFile> files_;
  std::map<std::string, const io::TensorView*> where_;
};

// Throws Error(kDataLoss) naming `name` when `actual` differs from `expected`.
void check_shape(const std::string& name, at::IntArrayRef expected, at::IntArrayRef actual);

}  // namespace aios::backbone

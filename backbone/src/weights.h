// Internal: the tensors of a checkpoint folder, looked up by name across shards and converted on demand.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "aios/backbone/model.h"
#include "aios/io/safetensors.h"

namespace aios::backbone {

class WeightSource {
 public:
  // Opens model.safetensors, or the shards listed by model.safetensors.index.json, in `folder`.
  explicit WeightSource(const std::string& folder);

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  // The tensor `name` converted to options' dtype and device, checked against `shape`.
  // Throws Error(kDataLoss) naming the tensor when it is missing or shaped otherwise.
  at::Tensor take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const;

 private:
  std::vector<io::SafetensorsFile> files_;
  std::map<std::string, const io::TensorView*> where_;
};

}  // namespace aios::backbone

// Internal: a GGUF file read as a checkpoint — its metadata mapped onto the ModelConfig that the
// Hugging Face config.json of the same model gives, its tensors served under Hugging Face names.
#pragma once

#include "aios/backbone/config.h"
#include "aios/io/gguf.h"
#include "weights.h"

namespace aios::backbone {

// Architectures `llama` (Llama 2/3, SmolLM2, Mixtral, ...), `qwen2`, `qwen3`, `qwen3moe`, `qwen2moe`, `phi3`,
// `gemma2`, `gemma3` and `gpt-oss`. Throws Error: kInvalidArgument (another
// architecture, an unsupported value, naming the GGUF key), kDataLoss (a required key or tensor
// missing or of the wrong type).
ModelConfig gguf_model_config(const io::GgufFile& file);

// The file's tensors, dequantised to float32 and then converted to the requested dtype. For
// `llama`, the q and k projections are un-permuted back to the Hugging Face row order (llama.cpp's
// converter interleaves the two rotary halves of each head); Gemma's norm weights, stored as 1 + w,
// come back as w. Keeps a reference to `file`.
class GgufWeights final : public WeightSource {
 public:
  GgufWeights(const io::GgufFile& file, const ModelConfig& config);

  bool contains(const std::string& name) const override;
  at::Tensor take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const override;
  // With WeightStorage::kStored (kAuto on the CPU), a matrix stored block-quantised, or 16-bit while
  // the compute dtype is wider, stays so (its bytes copied out of the file; llama's q/k rows reordered as take()
  // does); float32 matrices, and every matrix otherwise, come expanded. With kInt8/kInt4 the
  // block-quantised matrices stay so and the float ones are quantised (WeightSource::take_matrix).
  Matrix take_matrix(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const override;
  // Experts stacked [E, rows, cols], each kept as take_matrix keeps a matrix.
  std::vector<Matrix> take_matrices(const std::string& name, at::IntArrayRef shape,
                                    const LoadOptions& options) const override;

 private:
  // The tensor behind `name`, checked against `shape`, and its name for messages.
  std::pair<const io::GgufTensor*, std::string> find(const std::string& name, at::IntArrayRef shape) const;
  // Whether `t` stays as stored under `options` (take_matrix).
  static bool keeps(const io::GgufTensor& t, const LoadOptions& options);
  // How many heads' rows of the GGUF tensor `gguf` to un-permute (0: none).
  int64_t permuted_heads(const std::string& gguf) const;

  const io::GgufFile& file_;
  int64_t num_heads_;
  int64_t num_kv_heads_;
};

}  // namespace aios::backbone

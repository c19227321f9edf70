// Internal: GGUF tensors (plain or ggml block-quantised) to float32 tensors.
#pragma once

#include <string>

#include <ATen/ATen.h>

#include "aios/io/gguf.h"

namespace aios::backbone {

// The tensor's values as a new float32 CPU tensor of its shape. Types: F32, F16, BF16, F64, Q8_0,
// Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, each bit-exact with ggml's reference dequantisation.
// Throws Error(kInvalidArgument) naming `field` for any other type.
at::Tensor dequantize(const io::GgufTensor& tensor, const std::string& field);

}  // namespace aios::backbone

// Internal: GGUF tensors (plain or ggml block-quantised) to float32 tensors.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/ATen.h>

#include "aios/io/gguf.h"

namespace aios::backbone {

// One ggml type: `decode` turns `type_size` bytes into `block_size` float32 values, as ggml's
// reference dequantisation does (F32, F16 and BF16 one value at a time).
struct BlockCodec {
  io::GgmlType type;
  int block_size;
  int type_size;
  void (*decode)(const std::uint8_t*, float*);
};

// The codec of `type`, or nullptr for a type aios cannot decode.
const BlockCodec* block_codec(io::GgmlType type);

// The tensor's values as a new float32 CPU tensor of its shape. Types: F32, F16, BF16, F64, Q8_0,
// Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S,
// IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, NVFP4, each bit-exact with
// ggml's reference dequantisation.
// Throws Error(kInvalidArgument) naming `field` for any other type.
at::Tensor dequantize(const io::GgufTensor& tensor, const std::string& field);

// MXFP4 as Hugging Face checkpoints store it (gpt-oss's "<name>_blocks" and "<name>_scales"):
// blocks uint8 [..., G, 16], two E2M1 values per byte (low nibble first), scales uint8 [..., G],
// powers of two biased by 127 -> float32 [..., G*32], exact.
at::Tensor dequantize_mxfp4(const at::Tensor& blocks, const at::Tensor& scales);

}  // namespace aios::backbone

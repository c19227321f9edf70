// ggml's block formats, decoded one block at a time in plain loops. Each expression keeps the
// reference's order of float operations (scale times quant, then plus min), so results are exact.
#include "dequantize.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>

#include "aios/fail.h"

namespace aios::backbone {

namespace {

using io::GgmlType;

float half(const std::uint8_t* p) {
  std::uint16_t bits;
  std::memcpy(&bits, p, 2);  // little-endian host, as ggml itself assumes
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

void q8_0(const std::uint8_t* b, float* y) {
  const float d = half(b);
  for (int i = 0; i < 32; ++i) y[i] = static_cast<float>(static_cast<std::int8_t>(b[2 + i])) * d;
}

void q4_0(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void q4_1(const std::uint8_t* b, float* y) {
  const float d = half(b), m = half(b + 2);
  const std::uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

std::uint32_t u32(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void q5_0(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint32_t qh = u32(b + 2);
  const std::uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void q5_1(const std::uint8_t* b, float* y) {
  const float d = half(b), m = half(b + 2);
  const std::uint32_t qh = u32(b + 4);
  const std::uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block, packed in 12 bytes.
void scale_min_k4(const std::uint8_t* s, int j, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K: d, dmin, scales[12], qs[128]. Sub-block j (32 elements) uses the low (even j) or high
// (odd j) nibbles of qs[32*(j/2) ...].
void q4_k(const std::uint8_t* b, float* y) {
  const float d = half(b), dmin = half(b + 2);
  const std::uint8_t* scales = b + 4;
  const std::uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(scales, j, &sc, &m);
    const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
    const std::uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) y[32 * j + l] = dl * static_cast<float>((q[l] >> shift) & 0x0F) - ml;
  }
}

// Q5_K: d, dmin, scales[12], qh[32], qs[128]; bit j of qh[l] is the fifth bit of element 32*j + l.
void q5_k(const std::uint8_t* b, float* y) {
  const float d = half(b), dmin = half(b + 2);
  const std::uint8_t* scales = b + 4;
  const std::uint8_t* qh = b + 16;
  const std::uint8_t* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(scales, j, &sc, &m);
    const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
    const std::uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
      y[32 * j + l] = dl * static_cast<float>(v) - ml;
    }
  }
}

// Q6_K: ql[128], qh[64], scales[16] (int8), d. Two halves of 128 elements; in each, element i
// takes 4 bits from ql (nibble i/64 of ql[i%64]) and 2 from qh (pair i/32 of qh[i%32]).
void q6_k(const std::uint8_t* b, float* y) {
  const std::uint8_t* ql = b;
  const std::uint8_t* qh = b + 128;
  const auto* scales = reinterpret_cast<const std::int8_t*>(b + 192);
  const float d = half(b + 208);
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 128; ++i) {
      const int lo = (ql[64 * h + i % 64] >> (4 * (i / 64))) & 0x0F;
      const int hi = (qh[32 * h + i % 32] >> (2 * (i / 32))) & 0x03;
      const int e = 128 * h + i;
      y[e] = d * static_cast<float>(scales[e / 16]) * static_cast<float>((lo | (hi << 4)) - 32);
    }
  }
}

struct BlockCodec {
  GgmlType type;
  int block_size;
  int type_size;
  void (*decode)(const std::uint8_t*, float*);
};

constexpr BlockCodec kCodecs[] = {
    {GgmlType::kQ8_0, 32, 34, q8_0},   {GgmlType::kQ4_0, 32, 18, q4_0},   {GgmlType::kQ4_1, 32, 20, q4_1},
    {GgmlType::kQ5_0, 32, 22, q5_0},   {GgmlType::kQ5_1, 32, 24, q5_1},   {GgmlType::kQ4_K, 256, 144, q4_k},
    {GgmlType::kQ5_K, 256, 176, q5_k}, {GgmlType::kQ6_K, 256, 210, q6_k},
};

}  // namespace

at::Tensor dequantize(const io::GgufTensor& t, const std::string& field) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto plain = [&](c10::ScalarType stored) {
    // The mapping is read-only and outlives nothing here: copy.
    return at::from_blob(const_cast<std::byte*>(t.data), t.shape, at::TensorOptions().dtype(stored)).to(at::kFloat, false, true);
  };
  switch (t.type) {
    case GgmlType::kF32: return plain(at::kFloat);
    case GgmlType::kF16: return plain(at::kHalf);
    case GgmlType::kBF16: return plain(at::kBFloat16);
    case GgmlType::kF64: return plain(at::kDouble);
    default: break;
  }
  for (const BlockCodec& codec : kCodecs) {
    if (codec.type != t.type) continue;
    at::Tensor out = at::empty(t.shape, f32);
    const std::int64_t blocks = t.numel() / codec.block_size;  // the reader checked rows are whole blocks
    const auto* in = reinterpret_cast<const std::uint8_t*>(t.data);
    float* y = out.data_ptr<float>();
    at::parallel_for(0, blocks, 1024, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) codec.decode(in + i * codec.type_size, y + i * codec.block_size);
    });
    return out;
  }
  fail(ErrorCode::kInvalidArgument, field,
       "tensor type {} is not supported (expected F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K)",
       io::ggml_type_name(t.type));
}

}  // namespace aios::backbone

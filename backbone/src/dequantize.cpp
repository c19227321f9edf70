// ggml's block formats, decoded one block at a time in plain loops. Each expression keeps the
// reference's order of float operations (scale times quant, then plus min), so results are exact.
#include "dequantize.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "aios/fail.h"
#include "iq_grids.h"

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

// Q2_K: scales[16] (low nibble scale, high nibble min, per 16 elements), qs[64], d, dmin. Element
// e takes bits 2*s of qs[32*h + l], for e = 128*h + 32*s + l.
void q2_k(const std::uint8_t* b, float* y) {
  const std::uint8_t* scales = b;
  const std::uint8_t* qs = b + 16;
  const float d = half(b + 80), dmin = half(b + 82);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const float dl = d * static_cast<float>(scales[e / 16] & 0x0F), ml = dmin * static_cast<float>(scales[e / 16] >> 4);
    y[e] = dl * static_cast<float>((qs[32 * h + l] >> (2 * s)) & 3) - ml;
  }
}

// Q3_K: hmask[32], qs[64], scales[12] (sixteen 6-bit scales: low nibbles in bytes 0-7, high pairs in
// 8-11), d. Element e = 128*h + 32*s + l takes two bits 2*s of qs[32*h + l], minus 4 unless bit e/32
// of hmask[l] is set.
void q3_k(const std::uint8_t* b, float* y) {
  const std::uint8_t* hmask = b;
  const std::uint8_t* qs = b + 32;
  const std::uint8_t* packed = b + 96;
  const float d = half(b + 108);
  float dl[16];
  for (int i = 0; i < 16; ++i) {
    const int low = (packed[i % 8] >> (4 * (i / 8))) & 0x0F, high = (packed[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    dl[i] = d * static_cast<float>(static_cast<std::int8_t>(low | (high << 4)) - 32);
  }
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int low = (qs[32 * h + l] >> (2 * s)) & 3, offset = ((hmask[l] >> (e / 32)) & 1) != 0 ? 0 : 4;
    y[e] = dl[e / 16] * static_cast<float>(low - offset);
  }
}

// The sixteen levels of IQ4_NL and IQ4_XS.
constexpr std::int8_t kIq4Levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// IQ4_NL: d, qs[16]; element j < 16 is level (qs[j] & 15), element 16 + j level (qs[j] >> 4).
void iq4_nl(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(kIq4Levels[qs[j] & 0x0F]);
    y[j + 16] = d * static_cast<float>(kIq4Levels[qs[j] >> 4]);
  }
}

// IQ4_XS: d, scales_h (u16: two high bits per sub-block), scales_l[4] (a nibble per sub-block),
// qs[128]; eight sub-blocks of 32 laid out as IQ4_NL's, each with a 6-bit scale minus 32.
void iq4_xs(const std::uint8_t* b, float* y) {
  const float d = half(b);
  std::uint16_t scales_h;
  std::memcpy(&scales_h, b + 2, 2);
  const std::uint8_t* scales_l = b + 4;
  const std::uint8_t* qs = b + 8;
  for (int i = 0; i < 8; ++i) {
    const int low = (scales_l[i / 2] >> (4 * (i % 2))) & 0x0F, high = (scales_h >> (2 * i)) & 0x03;
    const float dl = d * static_cast<float>(static_cast<std::int8_t>(low | (high << 4)) - 32);
    for (int j = 0; j < 16; ++j) {
      y[32 * i + j] = dl * static_cast<float>(kIq4Levels[qs[16 * i + j] & 0x0F]);
      y[32 * i + j + 16] = dl * static_cast<float>(kIq4Levels[qs[16 * i + j] >> 4]);
    }
  }
}

// MXFP4: a shared power of two e (E8M0) and 32 E2M1 values as nibbles (low nibbles first). The levels
// are stored doubled, so the scale is halved: 2^(e-128), as ggml's e8m0 "half" conversion.
constexpr std::int8_t kFp4Levels[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

void mxfp4(const std::uint8_t* b, float* y) {
  const std::uint32_t e = b[0];
  const std::uint32_t bits = e < 2 ? std::uint32_t{0x00200000} << e : (e - 1) << 23;
  float d;
  std::memcpy(&d, &bits, 4);
  const std::uint8_t* qs = b + 1;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(kFp4Levels[qs[j] & 0x0F]);
    y[j + 16] = d * static_cast<float>(kFp4Levels[qs[j] >> 4]);
  }
}

// NVFP4: four groups of 16 E2M1 values, each group with its own unsigned E4M3 scale (bias 7, no
// sign; 0 and 0x7F read as zero), the four scale bytes first, then 8 bytes of nibbles per group (low
// nibbles first). The levels are MXFP4's doubled ones, so the scale is halved.
float ue4m3_half(std::uint8_t x) {
  if (x == 0 || x == 0x7F) return 0.0f;
  const int exponent = (x >> 3) & 0x0F;
  const float mantissa = static_cast<float>(x & 0x07);
  const float value = exponent == 0 ? std::ldexp(mantissa, -9) : std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
  return 0.5f * value;
}

void nvfp4(const std::uint8_t* b, float* y) {
  const std::uint8_t* qs = b + 4;
  for (int g = 0; g < 4; ++g) {
    const float d = ue4m3_half(b[g]);
    for (int j = 0; j < 8; ++j) {
      y[16 * g + j] = d * static_cast<float>(kFp4Levels[qs[8 * g + j] & 0x0F]);
      y[16 * g + j + 8] = d * static_cast<float>(kFp4Levels[qs[8 * g + j] >> 4]);
    }
  }
}

// The I-quants: 8 (IQ2) or 4 (IQ3) grid magnitudes per index, signs as bit patterns; the products
// in the reference's order, (scale * magnitude) * sign.
float iq_sign(std::uint8_t pattern, int bit) { return ((pattern >> bit) & 1) != 0 ? -1.0f : 1.0f; }

// IQ2_XXS: d, then per 32 elements two u32: four grid indices (bytes), and four 7-bit sign
// indices plus a 4-bit scale (top bits).
void iq2_xxs(const std::uint8_t* b, float* y) {
  const float d = half(b);
  for (int g = 0; g < 8; ++g) {
    const std::uint8_t* q = b + 2 + 8 * g;
    const std::uint32_t aux = u32(q + 4);
    const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.25f;
    for (int l = 0; l < 4; ++l) {
      const std::uint8_t signs = kIqSigns[(aux >> (7 * l)) & 127];
      for (int j = 0; j < 8; ++j) y[32 * g + 8 * l + j] = db * static_cast<float>(kIq2xxsGrid[q[l]][j]) * iq_sign(signs, j);
    }
  }
}

std::uint16_t u16(const std::uint8_t* p) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// A 4-bit scale per 16 elements (IQ2_XS, IQ2_S): d * (0.5 + s) * 0.25.
float iq2_scale(float d, const std::uint8_t* scales, int i) {
  return d * (0.5f + static_cast<float>((scales[i / 2] >> (4 * (i % 2))) & 0x0F)) * 0.25f;
}

// IQ2_XS: d, 32 u16 (9-bit grid index, 7-bit sign index), 8 bytes of scales.
void iq2_xs(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint8_t* scales = b + 66;
  for (int k = 0; k < 32; ++k) {
    const std::uint16_t q = u16(b + 2 + 2 * k);
    const float db = iq2_scale(d, scales, k / 2);
    const std::uint8_t signs = kIqSigns[q >> 9];
    for (int j = 0; j < 8; ++j) y[8 * k + j] = db * static_cast<float>(kIq2xsGrid[q & 511][j]) * iq_sign(signs, j);
  }
}

// IQ2_S: d, qs[32] (low 8 bits of 10-bit grid indices), signs[32] (a bit per element), qh[8] (the
// indices' high 2 bits), scales[8].
void iq2_s(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint8_t* qs = b + 2;
  const std::uint8_t* signs = b + 34;
  const std::uint8_t* qh = b + 66;
  const std::uint8_t* scales = b + 74;
  for (int k = 0; k < 32; ++k) {
    const int index = qs[k] | (((qh[k / 4] >> (2 * (k % 4))) & 3) << 8);
    const float db = iq2_scale(d, scales, k / 2);
    for (int j = 0; j < 8; ++j) y[8 * k + j] = db * static_cast<float>(kIq2sGrid[index][j]) * iq_sign(signs[k], j);
  }
}

// IQ3_XXS: d, qs[64] (grid indices, 4 elements each), then per 32 elements a u32 of four 7-bit sign
// indices and a 4-bit scale.
void iq3_xxs(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint8_t* qs = b + 2;
  for (int g = 0; g < 8; ++g) {
    const std::uint32_t aux = u32(b + 66 + 4 * g);
    const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
    for (int l = 0; l < 4; ++l) {
      const std::uint8_t signs = kIqSigns[(aux >> (7 * l)) & 127];
      for (int j = 0; j < 8; ++j) {
        const int e = 32 * g + 8 * l + j;
        y[e] = db * static_cast<float>(kIq3xxsGrid[qs[e / 4]][j % 4]) * iq_sign(signs, j);
      }
    }
  }
}

// IQ3_S: d, qs[64] (low 8 bits of 9-bit grid indices), qh[8] (their high bits), signs[32], scales[4]
// (a nibble per 32 elements: d * (1 + 2s)).
void iq3_s(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint8_t* qs = b + 2;
  const std::uint8_t* qh = b + 66;
  const std::uint8_t* signs = b + 74;
  const std::uint8_t* scales = b + 106;
  for (int e = 0; e < 256; ++e) {
    const int k = e / 4, g = e / 32;
    const int index = qs[k] | (((qh[k / 8] >> (k % 8)) & 1) << 8);
    const float db = d * static_cast<float>(1 + 2 * ((scales[g / 2] >> (4 * (g % 2))) & 0x0F));
    y[e] = db * static_cast<float>(kIq3sGrid[index][e % 4]) * iq_sign(signs[e / 8], e % 8);
  }
}

// IQ1_S: d, qs[32] (low 8 bits of 11-bit grid indices), then per 32 elements a u16: the indices'
// high bits (3 per 8 elements), a 3-bit scale (d * (2s + 1)) and the sign of a shift of ±1/8.
void iq1_s(const std::uint8_t* b, float* y) {
  const float d = half(b);
  const std::uint8_t* qs = b + 2;
  for (int g = 0; g < 8; ++g) {
    const std::uint16_t h = u16(b + 34 + 2 * g);
    const float dl = d * static_cast<float>(2 * ((h >> 12) & 7) + 1);
    const float delta = (h & 0x8000) == 0 ? 0.125f : -0.125f;
    for (int l = 0; l < 4; ++l) {
      const int index = qs[4 * g + l] | (((h >> (3 * l)) & 7) << 8);
      for (int j = 0; j < 8; ++j) y[32 * g + 8 * l + j] = dl * (static_cast<float>(kIq1sGrid[index][j]) + delta);
    }
  }
}

// IQ1_M: qs[32], qh[16] (a nibble per 8 elements: 3 high index bits and the shift's sign), and four
// u16 holding sixteen 3-bit scales (per 16 elements) with the f16 d spread over their top nibbles.
void iq1_m(const std::uint8_t* b, float* y) {
  const std::uint8_t* qs = b;
  const std::uint8_t* qh = b + 32;
  std::uint16_t sc[4];
  for (int i = 0; i < 4; ++i) sc[i] = u16(b + 48 + 2 * i);
  const std::uint16_t bits = static_cast<std::uint16_t>(((sc[0] & 0xF000) >> 12) | ((sc[1] & 0xF000) >> 8) |
                                                        ((sc[2] & 0xF000) >> 4) | (sc[3] & 0xF000));
  const float d = static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
  for (int k = 0; k < 32; ++k) {
    const int nibble = (qh[k / 2] >> (4 * (k % 2))) & 0x0F;
    const int index = qs[k] | ((nibble & 7) << 8);
    const float delta = (nibble & 8) == 0 ? 0.125f : -0.125f;
    const int s = k / 2;  // the 16-element group
    const float dl = d * static_cast<float>(2 * ((sc[s / 4] >> (3 * (s % 4))) & 7) + 1);
    for (int j = 0; j < 8; ++j) y[8 * k + j] = dl * (static_cast<float>(kIq1sGrid[index][j]) + delta);
  }
}

// TQ2_0 (ternary): qs[64], d; element 128h + 32s + l is ((qs[32h + l] >> 2s) & 3) - 1.
void tq2_0(const std::uint8_t* b, float* y) {
  const float d = half(b + 64);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    y[e] = d * static_cast<float>(((b[32 * h + l] >> (2 * s)) & 3) - 1);
  }
}

// TQ1_0 (ternary, five trits a byte): qs[48], qh[4], d. Trit m of a byte v is the top of
// (v * 3^m mod 256) * 3 / 256; bytes 0-31 give 160 elements, 32-47 the next 80, qh the last 16.
void tq1_0(const std::uint8_t* b, float* y) {
  static constexpr int kPow3[5] = {1, 3, 9, 27, 81};
  const float d = half(b + 52);
  auto trit = [](int v, int m) { return static_cast<float>((((v * kPow3[m]) & 0xFF) * 3 >> 8) - 1); };
  int e = 0;
  for (const auto& [begin, count, trits] : {std::tuple{0, 32, 5}, std::tuple{32, 16, 5}, std::tuple{48, 4, 4}}) {
    for (int m = 0; m < trits; ++m) {
      for (int l = 0; l < count; ++l) y[e++] = d * trit(b[begin + l], m);
    }
  }
}



void f32(const std::uint8_t* b, float* y) { std::memcpy(y, b, 4); }
void f16(const std::uint8_t* b, float* y) { *y = half(b); }
void bf16(const std::uint8_t* b, float* y) {
  std::uint16_t bits;
  std::memcpy(&bits, b, 2);
  *y = static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
}

constexpr BlockCodec kCodecs[] = {
    {GgmlType::kF32, 1, 4, f32},       {GgmlType::kF16, 1, 2, f16},       {GgmlType::kBF16, 1, 2, bf16},
    {GgmlType::kQ8_0, 32, 34, q8_0},   {GgmlType::kQ4_0, 32, 18, q4_0},   {GgmlType::kQ4_1, 32, 20, q4_1},
    {GgmlType::kQ5_0, 32, 22, q5_0},   {GgmlType::kQ5_1, 32, 24, q5_1},   {GgmlType::kQ4_K, 256, 144, q4_k},
    {GgmlType::kQ5_K, 256, 176, q5_k}, {GgmlType::kQ6_K, 256, 210, q6_k}, {GgmlType::kQ2_K, 256, 84, q2_k},
    {GgmlType::kQ3_K, 256, 110, q3_k}, {GgmlType::kIQ4_NL, 32, 18, iq4_nl}, {GgmlType::kIQ4_XS, 256, 136, iq4_xs},
    {GgmlType::kMXFP4, 32, 17, mxfp4},      {GgmlType::kIQ2_XXS, 256, 66, iq2_xxs}, {GgmlType::kIQ2_XS, 256, 74, iq2_xs},
    {GgmlType::kIQ2_S, 256, 82, iq2_s},     {GgmlType::kIQ3_XXS, 256, 98, iq3_xxs}, {GgmlType::kIQ3_S, 256, 110, iq3_s},
    {GgmlType::kIQ1_S, 256, 50, iq1_s},     {GgmlType::kIQ1_M, 256, 56, iq1_m},     {GgmlType::kTQ1_0, 256, 54, tq1_0},
    {GgmlType::kTQ2_0, 256, 66, tq2_0},     {GgmlType::kNVFP4, 64, 36, nvfp4},
};

}  // namespace

const BlockCodec* block_codec(io::GgmlType type) {
  for (const BlockCodec& codec : kCodecs) {
    if (codec.type == type) return &codec;
  }
  return nullptr;
}

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
  if (const BlockCodec* found = block_codec(t.type)) {
    const BlockCodec& codec = *found;
    at::Tensor out = at::empty(t.shape, f32);
    const std::int64_t blocks = t.numel() / codec.block_size;  // the reader checked rows are whole blocks
    const auto* in = reinterpret_cast<const std::uint8_t*>(t.data);
    float* y = out.data_ptr<float>();
    at::parallel_for(0, blocks, 1024, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) codec.decode(in + i * codec.type_size, y + i * codec.block_size);
    });
    // A block with a non-finite scale is a corrupt file, whether kept stored or expanded.
    if (!out.isfinite().all().item<bool>()) fail(ErrorCode::kDataLoss, field, "a block decodes to a non-finite value");
    return out;
  }
  fail(ErrorCode::kInvalidArgument, field,
       "tensor type {} is not supported (expected F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, "
       "Q5_K, Q6_K, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4 or NVFP4)",
       io::ggml_type_name(t.type));
}

at::Tensor dequantize_mxfp4(const at::Tensor& blocks, const at::Tensor& scales) {
  static const float kValues[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  const at::Tensor levels = at::from_blob(const_cast<float*>(kValues), {16}, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor low = levels.index({at::bitwise_and(blocks, 0x0F).to(at::kLong)});
  const at::Tensor high = levels.index({at::bitwise_right_shift(blocks, 4).to(at::kLong)});
  std::vector<int64_t> shape = scales.sizes().vec();
  const at::Tensor values = at::stack({low, high}, -1).flatten(-2);  // [..., G, 32]
  shape.back() *= 32;
  return at::ldexp(values, (scales.to(at::kInt) - 127).unsqueeze(-1)).reshape(shape);
}

}  // namespace aios::backbone

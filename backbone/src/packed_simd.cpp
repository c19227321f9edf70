// Compiled with -mavx2 -mfma -mf16c -ffp-contract=off on x86-64 (backbone/CMakeLists.txt): nothing
// here runs unless the CPU reports all three. Decoding keeps the reference's separate multiply and
// add (no contraction into FMA), so that stored and expanded weights hold the same values.
#include "packed_simd.h"

#include <algorithm>
#include <cstring>
#include <utility>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define AIOS_SIMD_AVX2 1
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace aios::backbone::simd {

namespace {

#if AIOS_SIMD_AVX2

// half() and scale_min_k4() restate dequantize.cpp's on purpose: a helper shared through a header
// would be compiled here with AVX2 too, and the linker may keep this copy for the portable callers,
// which then fault on CPUs without AVX2.

bool cpu_has_avx2() {
  // F16C from CPUID leaf 1 (ECX bit 29): not every compiler's __builtin_cpu_supports names it.
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

float half(const std::uint8_t* p) {
  std::uint16_t bits;
  std::memcpy(&bits, p, 2);
  return _cvtsh_ss(bits);
}

// The low 8 of 16 signed or unsigned bytes as 8 floats.
__m256 low_i8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }
__m256 low_u8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
__m128i load16(const std::uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
__m128i low_nibbles(__m128i v) { return _mm_and_si128(v, _mm_set1_epi8(0x0F)); }
__m128i high_nibbles(__m128i v) { return _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0F)); }

// 16 signed bytes times d: out[0..16).
void scale16(__m128i q, __m256 d, float* out) {
  _mm256_storeu_ps(out, _mm256_mul_ps(d, low_i8(q)));
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(d, low_i8(_mm_srli_si128(q, 8))));
}

void q8_0(const std::uint8_t* b, std::int64_t blocks, float* y) {
  for (std::int64_t i = 0; i < blocks; ++i, b += 34, y += 32) {
    const __m256 d = _mm256_set1_ps(half(b));
    scale16(load16(b + 2), d, y);
    scale16(load16(b + 18), d, y + 16);
  }
}

void q4_0(const std::uint8_t* b, std::int64_t blocks, float* y) {
  const __m128i eight = _mm_set1_epi8(8);
  for (std::int64_t i = 0; i < blocks; ++i, b += 18, y += 32) {
    const __m256 d = _mm256_set1_ps(half(b));
    const __m128i q = load16(b + 2);
    scale16(_mm_sub_epi8(low_nibbles(q), eight), d, y);
    scale16(_mm_sub_epi8(high_nibbles(q), eight), d, y + 16);
  }
}

void q4_1(const std::uint8_t* b, std::int64_t blocks, float* y) {
  for (std::int64_t i = 0; i < blocks; ++i, b += 20, y += 32) {
    const __m256 d = _mm256_set1_ps(half(b)), m = _mm256_set1_ps(half(b + 2));
    const __m128i q = load16(b + 4);
    for (const auto& [part, out] : {std::pair{low_nibbles(q), y}, std::pair{high_nibbles(q), y + 16}}) {
      _mm256_storeu_ps(out, _mm256_add_ps(_mm256_mul_ps(d, low_u8(part)), m));
      _mm256_storeu_ps(out + 8, _mm256_add_ps(_mm256_mul_ps(d, low_u8(_mm_srli_si128(part, 8))), m));
    }
  }
}

void scale_min_k4(const std::uint8_t* s, int j, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void q4_k(const std::uint8_t* b, std::int64_t blocks, float* y) {
  for (std::int64_t i = 0; i < blocks; ++i, b += 144, y += 256) {
    const float d = half(b), dmin = half(b + 2);
    const std::uint8_t* qs = b + 16;
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      scale_min_k4(b + 4, j, &sc, &m);
      const __m256 dl = _mm256_set1_ps(d * static_cast<float>(sc)), ml = _mm256_set1_ps(dmin * static_cast<float>(m));
      for (int half16 = 0; half16 < 2; ++half16) {
        const __m128i raw = load16(qs + 32 * (j / 2) + 16 * half16);
        const __m128i q = j % 2 == 0 ? low_nibbles(raw) : high_nibbles(raw);
        float* out = y + 32 * j + 16 * half16;
        _mm256_storeu_ps(out, _mm256_sub_ps(_mm256_mul_ps(dl, low_u8(q)), ml));
        _mm256_storeu_ps(out + 8, _mm256_sub_ps(_mm256_mul_ps(dl, low_u8(_mm_srli_si128(q, 8))), ml));
      }
    }
  }
}

void q6_k(const std::uint8_t* b, std::int64_t blocks, float* y) {
  const __m128i three = _mm_set1_epi8(3), bias = _mm_set1_epi8(32);
  for (std::int64_t i = 0; i < blocks; ++i, b += 210, y += 256) {
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const auto* scales = reinterpret_cast<const std::int8_t*>(b + 192);
    const float d = half(b + 208);
    for (int h = 0; h < 2; ++h) {
      for (int g = 0; g < 8; ++g) {  // elements 16g .. 16g+15 of this half share one scale
        const int first = 16 * g;
        const __m128i low = load16(ql + 64 * h + first % 64);
        const __m128i lo = first / 64 == 0 ? low_nibbles(low) : high_nibbles(low);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(load16(qh + 32 * h + first % 32), 2 * (first / 32)), three);
        const __m128i q = _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), bias);
        const int e = 128 * h + first;
        scale16(q, _mm256_set1_ps(d * static_cast<float>(scales[e / 16])), y + e);
      }
    }
  }
}

// Fused row products: out[m] = sum_k W[k] x[m,k] for one weight row and up to four rows of x at a
// time, the quantised values converted in registers and never stored. A block's scale (and min)
// multiply its partial sums, sum_k (d q_k - m) x_k = d (sum_k q_k x_k) - m (sum_k x_k), with
// sum_k x_k per 32 values precomputed once per product (`sums`, [M, K/32]): the same products
// summed in another order.
float hsum(__m256 v) {
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

// sum of 16 byte values (signed or unsigned as converted) times x[0..16).
template <bool kSigned>
__m256 dot16(__m128i q, const float* x) {
  const __m256 lo = kSigned ? low_i8(q) : low_u8(q);
  const __m256 hi = kSigned ? low_i8(_mm_srli_si128(q, 8)) : low_u8(_mm_srli_si128(q, 8));
  return _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + 8), _mm256_mul_ps(lo, _mm256_loadu_ps(x)));
}

// Runs `block(b, x_m, acc_m, min_m)` for every block b and rows m of x in groups of four, each
// group's accumulators in registers; out[m] = hsum(acc_m) + min_m.
template <typename Block>
void for_rows(std::int64_t blocks, const float* x, std::int64_t M, std::int64_t K, float* out, const Block& block) {
  for (std::int64_t m0 = 0; m0 < M; m0 += 4) {
    const int rows = static_cast<int>(std::min<std::int64_t>(4, M - m0));
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float mins[4] = {0, 0, 0, 0};
    for (std::int64_t b = 0; b < blocks; ++b) block(b, x + m0 * K, rows, K, m0, acc, mins);
    for (int r = 0; r < rows; ++r) out[m0 + r] = hsum(acc[r]) + mins[r];
  }
}

void dot_q8_0(const std::uint8_t* w, std::int64_t blocks, const float* x, std::int64_t M, std::int64_t K, const float*,
              float* out) {
  for_rows(blocks, x, M, K, out, [&](std::int64_t b, const float* xs, int rows, std::int64_t ld, std::int64_t, __m256* acc, float*) {
    const std::uint8_t* p = w + 34 * b;
    const __m256 d = _mm256_set1_ps(half(p));
    const __m128i q0 = load16(p + 2), q1 = load16(p + 18);
    for (int r = 0; r < rows; ++r) {
      const float* xr = xs + r * ld + 32 * b;
      acc[r] = _mm256_fmadd_ps(d, _mm256_add_ps(dot16<true>(q0, xr), dot16<true>(q1, xr + 16)), acc[r]);
    }
  });
}

void dot_q4_1(const std::uint8_t* w, std::int64_t blocks, const float* x, std::int64_t M, std::int64_t K,
              const float* sums, float* out) {
  const std::int64_t groups = K / 32;
  for_rows(blocks, x, M, K, out, [&](std::int64_t b, const float* xs, int rows, std::int64_t ld, std::int64_t m0, __m256* acc, float* mins) {
    const std::uint8_t* p = w + 20 * b;
    const __m256 d = _mm256_set1_ps(half(p));
    const float m = half(p + 2);
    const __m128i q = load16(p + 4), lo = low_nibbles(q), hi = high_nibbles(q);
    for (int r = 0; r < rows; ++r) {
      const float* xr = xs + r * ld + 32 * b;
      acc[r] = _mm256_fmadd_ps(d, _mm256_add_ps(dot16<false>(lo, xr), dot16<false>(hi, xr + 16)), acc[r]);
      mins[r] += m * sums[(m0 + r) * groups + b];
    }
  });
}

void dot_q4_k(const std::uint8_t* w, std::int64_t blocks, const float* x, std::int64_t M, std::int64_t K,
              const float* sums, float* out) {
  const std::int64_t groups = K / 32;
  for_rows(blocks, x, M, K, out, [&](std::int64_t b, const float* xs, int rows, std::int64_t ld, std::int64_t m0, __m256* acc, float* mins) {
    const std::uint8_t* p = w + 144 * b;
    const float d = half(p), dmin = half(p + 2);
    const std::uint8_t* qs = p + 16;
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      scale_min_k4(p + 4, j, &sc, &mn);
      const __m256 dl = _mm256_set1_ps(d * static_cast<float>(sc));
      const float ml = dmin * static_cast<float>(mn);
      const __m128i raw0 = load16(qs + 32 * (j / 2)), raw1 = load16(qs + 32 * (j / 2) + 16);
      const __m128i q0 = j % 2 == 0 ? low_nibbles(raw0) : high_nibbles(raw0);
      const __m128i q1 = j % 2 == 0 ? low_nibbles(raw1) : high_nibbles(raw1);
      for (int r = 0; r < rows; ++r) {
        const float* xr = xs + r * ld + 256 * b + 32 * j;
        acc[r] = _mm256_fmadd_ps(dl, _mm256_add_ps(dot16<false>(q0, xr), dot16<false>(q1, xr + 16)), acc[r]);
        mins[r] -= ml * sums[(m0 + r) * groups + 8 * b + j];
      }
    }
  });
}

void dot_q6_k(const std::uint8_t* w, std::int64_t blocks, const float* x, std::int64_t M, std::int64_t K, const float*,
              float* out) {
  const __m128i three = _mm_set1_epi8(3), bias = _mm_set1_epi8(32);
  for_rows(blocks, x, M, K, out, [&](std::int64_t b, const float* xs, int rows, std::int64_t ld, std::int64_t, __m256* acc, float*) {
    const std::uint8_t* p = w + 210 * b;
    const auto* scales = reinterpret_cast<const std::int8_t*>(p + 192);
    const float d = half(p + 208);
    for (int h = 0; h < 2; ++h) {
      for (int g = 0; g < 8; ++g) {
        const int first = 16 * g;
        const __m128i low = load16(p + 64 * h + first % 64);
        const __m128i lo = first / 64 == 0 ? low_nibbles(low) : high_nibbles(low);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(load16(p + 128 + 32 * h + first % 32), 2 * (first / 32)), three);
        const __m128i q = _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), bias);
        const int e = 128 * h + first;
        const __m256 ds = _mm256_set1_ps(d * static_cast<float>(scales[e / 16]));
        for (int r = 0; r < rows; ++r) acc[r] = _mm256_fmadd_ps(ds, dot16<true>(q, xs + r * ld + 256 * b + e), acc[r]);
      }
    }
  });
}

// aios's own schemes (PackedMatrix::Scheme): int8 rows are [float32 scale][K int8]; int4 rows are
// [scales][minimums][K/2 bytes, value 2j in byte j's low nibble, 2j+1 in its high], groups of a
// multiple of 32 values, so that each 32-value block lies in one group.
void dot_int8(const std::uint8_t* w, std::int64_t blocks, const float* x, std::int64_t M, std::int64_t K, const float*,
              float* out) {
  float scale;
  std::memcpy(&scale, w, 4);
  const std::uint8_t* q = w + 4;
  for_rows(blocks, x, M, K, out, [&](std::int64_t b, const float* xs, int rows, std::int64_t ld, std::int64_t, __m256* acc, float*) {
    const __m128i q0 = load16(q + 32 * b), q1 = load16(q + 32 * b + 16);
    for (int r = 0; r < rows; ++r) {
      const float* xr = xs + r * ld + 32 * b;
      acc[r] = _mm256_add_ps(acc[r], _mm256_add_ps(dot16<true>(q0, xr), dot16<true>(q1, xr + 16)));
    }
  });
  for (std::int64_t m = 0; m < M; ++m) out[m] *= scale;
}

void dot_int4(const std::uint8_t* w, std::int64_t group, const float* x, std::int64_t M, std::int64_t K,
              const float* sums, float* out) {
  const std::int64_t groups = (K + group - 1) / group, blocks = K / 32, per_group = group / 32;
  const std::uint8_t* nibbles = w + 8 * groups;
  for_rows(blocks, x, M, K, out, [&](std::int64_t b, const float* xs, int rows, std::int64_t ld, std::int64_t m0, __m256* acc, float* mins) {
    const std::int64_t g = b / per_group;
    float scale, min;
    std::memcpy(&scale, w + 4 * g, 4);
    std::memcpy(&min, w + 4 * (groups + g), 4);
    const __m256 d = _mm256_set1_ps(scale);
    const __m128i v = load16(nibbles + 16 * b), lo = low_nibbles(v), hi = high_nibbles(v);
    const __m128i q0 = _mm_unpacklo_epi8(lo, hi), q1 = _mm_unpackhi_epi8(lo, hi);  // values 0..15, 16..31
    for (int r = 0; r < rows; ++r) {
      const float* xr = xs + r * ld + 32 * b;
      acc[r] = _mm256_fmadd_ps(d, _mm256_add_ps(dot16<false>(q0, xr), dot16<false>(q1, xr + 16)), acc[r]);
      mins[r] += min * sums[(m0 + r) * blocks + b];
    }
  });
}

// PackedMatrix's int8 row: [float32 s][cols int8], value q·s.
void int8_row(const std::uint8_t* w, std::int64_t, std::int64_t cols, float* y) {
  float scale;
  std::memcpy(&scale, w, 4);
  const __m256 d = _mm256_set1_ps(scale);
  const std::uint8_t* q = w + 4;
  std::int64_t k = 0;
  for (; k + 16 <= cols; k += 16) scale16(load16(q + k), d, y + k);
  for (; k < cols; ++k) y[k] = static_cast<float>(static_cast<std::int8_t>(q[k])) * scale;
}

// PackedMatrix's int4 row: [groups float32 s][groups float32 m][nibbles, even index low], value q·s + m.
// Whole 32-value runs of a group go through vectors; an odd group size leaves scalar ends.
void int4_row(const std::uint8_t* w, std::int64_t group, std::int64_t cols, float* y) {
  const std::int64_t groups = (cols + group - 1) / group;
  const std::uint8_t* nibbles = w + 8 * groups;
  const auto value = [&](std::int64_t k, float scale, float min) {
    const std::uint8_t b = nibbles[k / 2];
    return static_cast<float>(k % 2 == 0 ? b & 0x0F : b >> 4) * scale + min;
  };
  for (std::int64_t g = 0; g < groups; ++g) {
    float scale, min;
    std::memcpy(&scale, w + 4 * g, 4);
    std::memcpy(&min, w + 4 * (groups + g), 4);
    const __m256 d = _mm256_set1_ps(scale), m = _mm256_set1_ps(min);
    std::int64_t k = g * group;
    const std::int64_t end = std::min(cols, k + group);
    if (k % 2 == 1) y[k] = value(k, scale, min), ++k;
    for (; k + 32 <= end; k += 32) {
      const __m128i v = load16(nibbles + k / 2), lo = low_nibbles(v), hi = high_nibbles(v);
      const __m128i q0 = _mm_unpacklo_epi8(lo, hi), q1 = _mm_unpackhi_epi8(lo, hi);  // values k..k+15, k+16..k+31
      _mm256_storeu_ps(y + k, _mm256_add_ps(_mm256_mul_ps(d, low_u8(q0)), m));
      _mm256_storeu_ps(y + k + 8, _mm256_add_ps(_mm256_mul_ps(d, low_u8(_mm_srli_si128(q0, 8))), m));
      _mm256_storeu_ps(y + k + 16, _mm256_add_ps(_mm256_mul_ps(d, low_u8(q1)), m));
      _mm256_storeu_ps(y + k + 24, _mm256_add_ps(_mm256_mul_ps(d, low_u8(_mm_srli_si128(q1, 8))), m));
    }
    for (; k < end; ++k) y[k] = value(k, scale, min);
  }
}

float dot_avx2(const float* a, const float* b, std::int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  const __m256 acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  float sum = _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy_avx2(float a, const float* x, float* y, std::int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

#endif  // AIOS_SIMD_AVX2

}  // namespace

RowDecoder row_decoder(io::GgmlType type) {
#if AIOS_SIMD_AVX2
  if (!cpu_has_avx2()) return nullptr;
  switch (type) {
    case io::GgmlType::kQ8_0: return q8_0;
    case io::GgmlType::kQ4_0: return q4_0;
    case io::GgmlType::kQ4_1: return q4_1;
    case io::GgmlType::kQ4_K: return q4_k;
    case io::GgmlType::kQ6_K: return q6_k;
    default: return nullptr;
  }
#else
  (void)type;
  return nullptr;
#endif
}

RowDot row_dot(io::GgmlType type) {
#if AIOS_SIMD_AVX2
  if (!cpu_has_avx2()) return nullptr;
  switch (type) {
    case io::GgmlType::kQ8_0: return dot_q8_0;
    case io::GgmlType::kQ4_1: return dot_q4_1;
    case io::GgmlType::kQ4_K: return dot_q4_k;
    case io::GgmlType::kQ6_K: return dot_q6_k;
    default: return nullptr;
  }
#else
  (void)type;
  return nullptr;
#endif
}

RowDot int8_row_dot() {
#if AIOS_SIMD_AVX2
  if (cpu_has_avx2()) return dot_int8;
#endif
  return nullptr;
}

SchemeDecoder int8_row_decoder() {
#if AIOS_SIMD_AVX2
  if (cpu_has_avx2()) return int8_row;
#endif
  return nullptr;
}

SchemeDecoder int4_row_decoder() {
#if AIOS_SIMD_AVX2
  if (cpu_has_avx2()) return int4_row;
#endif
  return nullptr;
}

GroupDot int4_row_dot(std::int64_t group) {
#if AIOS_SIMD_AVX2
  if (cpu_has_avx2() && group % 32 == 0) return dot_int4;
#endif
  (void)group;
  return nullptr;
}

float dot(const float* a, const float* b, std::int64_t n) {
#if AIOS_SIMD_AVX2
  if (cpu_has_avx2()) return dot_avx2(a, b, n);
#endif
  // Eight independent sums, which the compiler turns into vector code where it can.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy(float a, const float* x, float* y, std::int64_t n) {
#if AIOS_SIMD_AVX2
  if (cpu_has_avx2()) return axpy_avx2(a, x, y, n);
#endif
  for (std::int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace aios::backbone::simd

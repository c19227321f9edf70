// Internal: vector kernels behind PackedMatrix, chosen at run time. One translation unit is compiled
// for AVX2 (with FMA and F16C) and used only where the CPU has those; elsewhere the portable loops
// of dequantize.cpp and packed.cpp run.
#pragma once

#include <cstdint>

#include "aios/io/gguf.h"

namespace aios::backbone::simd {

// Decodes `blocks` consecutive blocks of one type into float32, bit for bit as dequantize.cpp does.
using RowDecoder = void (*)(const std::uint8_t* in, std::int64_t blocks, float* out);

// The vector decoder of `type` (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) when this CPU runs the vector kernels;
// nullptr otherwise.
RowDecoder row_decoder(io::GgmlType type);

// out[m] = sum_k W[k] x[m*K + k] for m < M, W one row of `blocks` blocks of one type, without
// decoding W to memory; sums[m*(K/32) + j] = the sum of x[m*K + 32j ...] over 32 values (types with
// a per-block minimum use it). The same products as decoding then dotting, summed in another order.
using RowDot = void (*)(const std::uint8_t* row, std::int64_t blocks, const float* x, std::int64_t M, std::int64_t K,
                        const float* sums, float* out);
// The fused row product of `type` (Q8_0, Q4_1, Q4_K, Q6_K) on CPUs that run the vector kernels;
// nullptr otherwise.
RowDot row_dot(io::GgmlType type);

// The same for PackedMatrix's int8 rows (`blocks` = K/32) and int4 rows in groups of `group`
// values (a multiple of 32), on CPUs that run the vector kernels; nullptr otherwise.
using GroupDot = void (*)(const std::uint8_t* row, std::int64_t group, const float* x, std::int64_t M, std::int64_t K,
                          const float* sums, float* out);
RowDot int8_row_dot();
GroupDot int4_row_dot(std::int64_t group);

// Decodes one PackedMatrix int8 row (`group` unused) or int4 row in groups of `group` values, `cols`
// values in all, into float32 bit for bit as the portable decoder does; nullptr where the CPU does
// not run the vector kernels.
using SchemeDecoder = void (*)(const std::uint8_t* row, std::int64_t group, std::int64_t cols, float* out);
SchemeDecoder int8_row_decoder();
SchemeDecoder int4_row_decoder();

// sum a[i] * b[i] over n floats, and y += a * x over n floats: vector kernels where the CPU runs
// them, else portable loops.
float dot(const float* a, const float* b, std::int64_t n);
void axpy(float a, const float* x, float* y, std::int64_t n);

}  // namespace aios::backbone::simd

// Internal: frozen weight matrices kept as a checkpoint stores them (ggml block-quantised, or 16-bit),
// and the products that compute through them without expanding the whole matrix.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "aios/io/gguf.h"
#include "dequantize.h"
#include "packed_simd.h"

namespace aios::backbone {

// A frozen matrix [rows, cols] held as row segments, each in one encoding: a Q4_K_M file mixes
// types, and the fused projections stack tensors of different types. Immutable once built, so
// concurrent passes share it without locks.
class PackedMatrix {
 public:
  // How a segment encodes its rows: a ggml type as a GGUF file stores it, or a weight-only
  // quantisation aios makes at load from float weights (LoadOptions::weights kInt8, kInt4).
  enum class Scheme {
    kGgml,
    kInt8,  // per row: float32 s = max|w| / 127, then int8 q = round(w / s) in [-127, 127]; w = q·s
    kInt4,  // per group of `group` values along the row (the last may be shorter): float32
            // s = (max - min) / 15 and min m, then 4-bit q = round((w - m) / s) in [0, 15]; w = q·s + m.
            // Row layout: every group's s, every group's m, then the values two to a byte (low nibble first).
  };
  struct Segment {
    io::GgmlType type;  // kGgml: the type
    at::Tensor bytes;   // uint8 [rows, row_bytes(cols)], CPU, contiguous
    Scheme scheme = Scheme::kGgml;
    int64_t group = 0;  // kInt4: values per group

    int64_t row_bytes(int64_t cols) const;
    // What storage reports call it: the ggml type's name, "int8" or "int4".
    std::string kind() const;
  };
  // Throws Error(kInvalidArgument) naming `field` for a type aios cannot decode, or rows that are
  // not whole blocks.
  PackedMatrix(std::vector<Segment> segments, int64_t cols, const std::string& field);

  // A GGUF tensor [rows, cols], or matrix `slice` of a stacked tensor [n, rows, cols] (a mixture of
  // experts' weights), its bytes copied out of the file.
  static PackedMatrix of(const io::GgufTensor& tensor, const std::string& field, int64_t slice = -1);
  // A dense CPU tensor [rows, cols] of float32, float16 or bfloat16 as one segment of that type.
  static PackedMatrix of(const at::Tensor& dense);
  // A dense CPU tensor [rows, cols] quantised (scheme kInt8, or kInt4 with `group` > 0 values per
  // group) from its float32 values. Throws Error(kDataLoss) naming `field` for a non-finite value.
  static PackedMatrix quantize(const at::Tensor& dense, Scheme scheme, int64_t group, const std::string& field);
  // The parts' rows one after another (equal cols).
  static PackedMatrix stack(const std::vector<PackedMatrix>& parts);
  // Row i of the result is row order[i] (int64 [rows]); each segment keeps its rows.
  PackedMatrix select_rows(const at::Tensor& order) const;

  int64_t rows() const { return starts_.back(); }
  int64_t cols() const { return cols_; }
  const std::vector<Segment>& segments() const { return segments_; }
  std::size_t bytes() const;  // resident bytes of all segments

  // Row `row` decoded to float32, exactly as ggml's reference dequantisation: out [cols].
  void decode_row(int64_t row, float* out) const;
  // out[m] = row `row` · x[m] for m < M (x float32 [M, cols]), fused without decoding to memory,
  // where the row's type has a vector kernel (sums: x's sums over each 32 values, [M, cols/32]);
  // false otherwise.
  bool dot_row(int64_t row, const float* x, int64_t M, const float* sums, float* out) const;
  // Rows [begin, end) as a new tensor [end-begin, cols] in `dtype` (decoded in parallel).
  at::Tensor decode(int64_t begin, int64_t end, c10::ScalarType dtype) const;
  // ids int64 [...] (each in [0, rows)) -> [..., cols] in `dtype`: an embedding lookup.
  at::Tensor gather(const at::Tensor& ids, c10::ScalarType dtype) const;
  // The mean of all rows [cols], accumulated in float32 (float64 when `dtype` is), in `dtype`.
  at::Tensor mean_row(c10::ScalarType dtype) const;

 private:
  std::size_t segment_of(int64_t row) const;

  std::vector<Segment> segments_;
  std::vector<const BlockCodec*> codecs_;             // per segment; nullptr for int8/int4
  std::vector<simd::RowDecoder> vector_decoders_;     // per ggml segment, or nullptr
  std::vector<simd::SchemeDecoder> scheme_decoders_;  // per int8/int4 segment, or nullptr
  std::vector<simd::RowDot> row_dots_;                // per segment, or nullptr
  std::vector<simd::GroupDot> group_dots_;            // per segment: int4's fused product, or nullptr
  std::vector<int64_t> starts_;                       // first row of each segment, then rows()
  int64_t cols_ = 0;
};

// x [..., cols] (CPU; float32, float64, bfloat16 or float16) -> x · Wᵀ [..., rows] in x's dtype,
// equal to the product with W expanded to that dtype up to summation order. Differentiable in x
// (grad_x = grad_y · W, decoded again from the same rows): a backward pass keeps `w`, never an
// expanded copy. A few rows of float32 x (a decoding step) run fused (each weight row decoded into
// a cache-resident buffer and dotted with every x row); more run as dense products over chunks of
// decoded rows.
at::Tensor packed_product(const at::Tensor& x, const std::shared_ptr<const PackedMatrix>& w);

}  // namespace aios::backbone

#include "packed.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/csrc/autograd/custom_function.h>

#include "aios/fail.h"
#include "packed_simd.h"

namespace aios::backbone {

namespace {

using io::GgmlType;

// Rows of x at or below which float32 products run fused: decoding steps and small batches, where
// each weight is read once per call and the product is bound by that read.
constexpr int64_t kFusedRows = 16;
// Elements of one tile of decoded rows on the dense path (256 KB of float32).
constexpr int64_t kTileElements = int64_t{1} << 16;
// Rows of x from which products decode chunks of W (4 MB of float32) for one threaded product each.
constexpr int64_t kLargeRows = 64;
constexpr int64_t kChunkElements = int64_t{1} << 20;

// The first row a parallel scan finds failing a check: a thread stops at rows past one already
// found, so the row an error names does not depend on how the rows were split between threads.
class FirstRow {
 public:
  bool past(int64_t r) const {
    const int64_t found = row_.load();
    return found >= 0 && found < r;
  }
  void found(int64_t r) {
    int64_t first = row_.load();
    while ((first < 0 || r < first) && !row_.compare_exchange_weak(first, r)) {
    }
  }
  int64_t row() const { return row_.load(); }

 private:
  std::atomic<int64_t> row_{-1};
};

int64_t row_bytes(const BlockCodec& codec, int64_t cols) { return cols / codec.block_size * codec.type_size; }

// x [M,K] float32 -> y [M,N], a weight row at a time: dotted in registers by the type's fused kernel
// where it has one (simd::row_dot), else decoded into a buffer that stays in cache and dotted.
at::Tensor fused_forward(const at::Tensor& x, const PackedMatrix& w) {
  const int64_t M = x.size(0), K = w.cols(), N = w.rows();
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xs = x.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  // x's sums over each 32 values, for the kernels of types with a per-block minimum (a plain loop:
  // an ATen reduction costs more than the sums themselves at a decoding step's size).
  std::vector<float> sums(K % 32 == 0 ? static_cast<std::size_t>(M * K / 32) : 0);
  for (std::size_t j = 0; j < sums.size(); ++j) {
    const float* block = xs + 32 * j;
    float sum = 0;
    for (int i = 0; i < 32; ++i) sum += block[i];
    sums[j] = sum;
  }
  const float* ss = sums.empty() ? nullptr : sums.data();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<std::size_t>(K)), dots(static_cast<std::size_t>(M));
    for (int64_t r = begin; r < end; ++r) {
      if (ss != nullptr && w.dot_row(r, xs, M, ss, dots.data())) {
        for (int64_t m = 0; m < M; ++m) ys[m * N + r] = dots[static_cast<std::size_t>(m)];
        continue;
      }
      w.decode_row(r, row.data());
      for (int64_t m = 0; m < M; ++m) ys[m * N + r] = simd::dot(row.data(), xs + m * K, K);
    }
  });
  return y;
}

// g [M,N] float32 -> g · W [M,K]: each thread sums its rows' contributions into its own [M,K].
at::Tensor fused_backward(const at::Tensor& g, const PackedMatrix& w) {
  const int64_t M = g.size(0), K = w.cols(), N = w.rows();
  const int threads = at::get_num_threads();
  at::Tensor partial = at::zeros({threads, M, K}, g.options());
  const float* gs = g.data_ptr<float>();
  float* ps = partial.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    float* mine = ps + static_cast<int64_t>(at::get_thread_num()) * M * K;
    std::vector<float> row(static_cast<std::size_t>(K));
    for (int64_t r = begin; r < end; ++r) {
      w.decode_row(r, row.data());
      for (int64_t m = 0; m < M; ++m) simd::axpy(gs[m * N + r], row.data(), mine + m * K, K);
    }
  });
  return threads == 1 ? partial[0] : partial.sum(0);
}

// Rows of one tile of the dense path: about 256 KB of decoded float32, which stays in the cache of the
// core that decodes it while that core's matrix product reads it.
int64_t tile_rows(const PackedMatrix& w) { return std::min(w.rows(), std::max<int64_t>(kTileElements / w.cols(), 8)); }

// Rows [begin, end) decoded into `buffer` (at least [end-begin, cols], contiguous) in its dtype.
at::Tensor decode_into(const PackedMatrix& w, int64_t begin, int64_t end, at::Tensor& buffer, at::Tensor& scratch) {
  const int64_t n = end - begin, K = w.cols();
  float* out = (buffer.scalar_type() == at::kFloat ? buffer : scratch).data_ptr<float>();
  for (int64_t r = begin; r < end; ++r) w.decode_row(r, out + (r - begin) * K);
  if (buffer.scalar_type() != at::kFloat) buffer.narrow(0, 0, n).copy_(scratch.narrow(0, 0, n));
  return buffer.narrow(0, 0, n);
}

// Calls tile(begin, end, rows) for every tile of w's rows, in parallel: `rows` is that tile
// decoded in x's dtype, in a buffer of the calling thread.
template <typename Tile>
void for_each_tile(const PackedMatrix& w, c10::ScalarType dtype, const Tile& tile) {
  const int64_t N = w.rows(), R = tile_rows(w), tiles = (N + R - 1) / R;
  at::parallel_for(0, tiles, 1, [&](int64_t first, int64_t last) {
    // OpenMP's threads do not inherit the caller's grad mode, and these products (of an autograd
    // function's inputs) must not record.
    at::NoGradGuard no_grad;
    at::Tensor buffer = at::empty({R, w.cols()}, at::TensorOptions().dtype(dtype));
    at::Tensor scratch = dtype == at::kFloat ? buffer : at::empty({R, w.cols()}, at::TensorOptions().dtype(at::kFloat));
    for (int64_t t = first; t < last; ++t) {
      const int64_t begin = t * R, end = std::min(N, begin + R);
      tile(begin, end, decode_into(w, begin, end, buffer, scratch));
    }
  });
}

// Many rows of x (M >= kLargeRows) make the product compute-bound: chunks of W decoded in parallel,
// each used by one threaded product, beat tiles that would each re-pack all of x.
int64_t chunk_rows(const PackedMatrix& w) { return std::max<int64_t>(1, kChunkElements / w.cols()); }

// x [M,K] -> y [M,N] by dense products: yᵀ's rows of a tile (or chunk) are W_tile · xᵀ.
at::Tensor dense_forward(const at::Tensor& x, const PackedMatrix& w) {
  at::Tensor yt = at::empty({w.rows(), x.size(0)}, x.options());
  const at::Tensor xt = x.t();
  if (x.size(0) >= kLargeRows) {
    for (int64_t r = 0, step = chunk_rows(w); r < w.rows(); r += step) {
      const int64_t end = std::min(w.rows(), r + step);
      at::Tensor out = yt.narrow(0, r, end - r);
      at::mm_out(out, w.decode(r, end, x.scalar_type()), xt);
    }
  } else {
    for_each_tile(w, x.scalar_type(), [&](int64_t begin, int64_t end, const at::Tensor& rows) {
      at::Tensor out = yt.narrow(0, begin, end - begin);
      at::mm_out(out, rows, xt);
    });
  }
  return yt.t().contiguous();
}

// g [M,N] -> g · W [M,K]: chunk by chunk, or each thread summing its tiles' products into its own [M,K].
at::Tensor dense_backward(const at::Tensor& g, const PackedMatrix& w) {
  if (g.size(0) >= kLargeRows) {
    at::Tensor gx = at::zeros({g.size(0), w.cols()}, g.options());
    for (int64_t r = 0, step = chunk_rows(w); r < w.rows(); r += step) {
      const int64_t end = std::min(w.rows(), r + step);
      gx.addmm_(g.narrow(1, r, end - r), w.decode(r, end, g.scalar_type()));
    }
    return gx;
  }
  const int threads = at::get_num_threads();
  at::Tensor partial = at::zeros({threads, g.size(0), w.cols()}, g.options());
  for_each_tile(w, g.scalar_type(), [&](int64_t begin, int64_t end, const at::Tensor& rows) {
    partial[at::get_thread_num()].addmm_(g.narrow(1, begin, end - begin), rows);
  });
  return threads == 1 ? partial[0] : partial.sum(0);
}

// One row of aios's own schemes (PackedMatrix::Scheme kInt8, kInt4) decoded: q·s, or q·s + m.
void decode_quantized(const PackedMatrix::Segment& segment, const std::uint8_t* in, int64_t cols, float* out) {
  if (segment.scheme == PackedMatrix::Scheme::kInt8) {
    float scale;
    std::memcpy(&scale, in, 4);
    const auto* q = reinterpret_cast<const std::int8_t*>(in + 4);
    for (int64_t k = 0; k < cols; ++k) out[k] = static_cast<float>(q[k]) * scale;
    return;
  }
  const int64_t group = segment.group, groups = (cols + group - 1) / group;
  const std::uint8_t* nibbles = in + 8 * groups;
  for (int64_t g = 0; g < groups; ++g) {
    float scale, min;
    std::memcpy(&scale, in + 4 * g, 4);
    std::memcpy(&min, in + 4 * (groups + g), 4);
    int64_t k = g * group;
    const int64_t end = std::min(cols, k + group);
    if (k % 2 == 1) {  // an odd group size starts every other group on a high nibble
      out[k] = static_cast<float>(nibbles[k / 2] >> 4) * scale + min;
      ++k;
    }
    for (; k + 1 < end; k += 2) {  // a byte at a time: both its values are in this group
      const std::uint8_t b = nibbles[k / 2];
      out[k] = static_cast<float>(b & 0x0F) * scale + min;
      out[k + 1] = static_cast<float>(b >> 4) * scale + min;
    }
    if (k < end) out[k] = static_cast<float>(nibbles[k / 2] & 0x0F) * scale + min;
  }
}

// Row `in` of `cols` values of dtype (float32, float16, bfloat16) as float32: in itself, or converted
// into `buffer` (also a float32 row a mapped file leaves unaligned).
const float* row_as_float(const std::uint8_t* in, c10::ScalarType dtype, int64_t cols, float* buffer) {
  if (dtype == at::kFloat) {
    if (reinterpret_cast<std::uintptr_t>(in) % alignof(float) == 0) return reinterpret_cast<const float*>(in);
    std::memcpy(buffer, in, static_cast<std::size_t>(cols) * sizeof(float));
    return buffer;
  }
  for (int64_t k = 0; k < cols; ++k) {
    std::uint16_t bits;
    std::memcpy(&bits, in + 2 * k, 2);
    buffer[k] = dtype == at::kHalf ? static_cast<float>(c10::Half(bits, c10::Half::from_bits()))
                                   : static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
  }
  return buffer;
}

bool fused(const at::Tensor& x) { return x.scalar_type() == at::kFloat && x.size(0) <= kFusedRows; }

// What a backward pass keeps of the product: the packed matrix itself.
struct Held : torch::CustomClassHolder {
  explicit Held(std::shared_ptr<const PackedMatrix> matrix) : w(std::move(matrix)) {}
  std::shared_ptr<const PackedMatrix> w;
};

struct PackedProduct : torch::autograd::Function<PackedProduct> {
  // x [M,K] contiguous -> [M,N]
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::shared_ptr<const PackedMatrix>& w) {
    ctx->saved_data["w"] = c10::IValue::make_capsule(c10::make_intrusive<Held>(w));
    return fused(x) ? fused_forward(x, *w) : dense_forward(x, *w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto held = c10::static_intrusive_pointer_cast<Held>(ctx->saved_data["w"].toCapsule());
    const at::Tensor g = grads[0].contiguous();
    return {fused(g) ? fused_backward(g, *held->w) : dense_backward(g, *held->w), at::Tensor()};
  }
};

}  // namespace

int64_t PackedMatrix::Segment::row_bytes(int64_t cols) const {
  switch (scheme) {
    case Scheme::kInt8: return 4 + cols;
    case Scheme::kInt4: return 8 * ((cols + group - 1) / group) + (cols + 1) / 2;
    case Scheme::kGgml: break;
  }
  const BlockCodec* codec = block_codec(type);
  return codec == nullptr ? -1 : backbone::row_bytes(*codec, cols);
}

std::string PackedMatrix::Segment::kind() const {
  switch (scheme) {
    case Scheme::kInt8: return "int8";
    case Scheme::kInt4: return "int4";
    case Scheme::kGgml: break;
  }
  return io::ggml_type_name(type);
}

PackedMatrix::PackedMatrix(std::vector<Segment> segments, int64_t cols, const std::string& field)
    : segments_(std::move(segments)), cols_(cols) {
  starts_.push_back(0);
  for (const Segment& s : segments_) {
    const bool ggml = s.scheme == Scheme::kGgml;
    const BlockCodec* codec = ggml ? block_codec(s.type) : nullptr;
    if (ggml && codec == nullptr) {
      fail(ErrorCode::kInvalidArgument, field, "tensor type {} cannot be kept packed", io::ggml_type_name(s.type));
    }
    if (s.scheme == Scheme::kInt4 && s.group <= 0) fail(ErrorCode::kInvalidArgument, field, "expected int4 groups of at least one value");
    if ((codec != nullptr && cols % codec->block_size != 0) || s.bytes.dim() != 2 || s.bytes.size(1) != s.row_bytes(cols)) {
      fail(ErrorCode::kDataLoss, field, "expected rows of {} {} values{}", cols, s.kind(),
           codec != nullptr ? fmt::format(" in whole blocks of {}", codec->block_size) : std::string());
    }
    codecs_.push_back(codec);
    vector_decoders_.push_back(ggml ? simd::row_decoder(s.type) : nullptr);
    scheme_decoders_.push_back(ggml ? nullptr : s.scheme == Scheme::kInt8 ? simd::int8_row_decoder() : simd::int4_row_decoder());
    row_dots_.push_back(ggml ? simd::row_dot(s.type) : s.scheme == Scheme::kInt8 ? simd::int8_row_dot() : nullptr);
    group_dots_.push_back(s.scheme == Scheme::kInt4 ? simd::int4_row_dot(s.group) : nullptr);
    starts_.push_back(starts_.back() + s.bytes.size(0));
  }
}

PackedMatrix PackedMatrix::of(const io::GgufTensor& t, const std::string& field, int64_t slice) {
  const BlockCodec* codec = block_codec(t.type);
  const std::size_t rank = slice < 0 ? 2 : 3;
  if (t.shape.size() != rank || codec == nullptr || (slice >= 0 && slice >= t.shape[0])) {
    fail(ErrorCode::kInvalidArgument, field, "expected a matrix of a decodable type, got {} [{}]",
         io::ggml_type_name(t.type), t.shape.size());
  }
  const int64_t slices = rank == 3 ? t.shape[0] : 1, rows = t.shape[rank - 2], cols = t.shape[rank - 1];
  if (cols % codec->block_size != 0 ||
      static_cast<std::size_t>(slices * rows * row_bytes(*codec, cols)) != t.size_bytes) {
    fail(ErrorCode::kDataLoss, field, "expected rows of whole {} blocks", io::ggml_type_name(t.type));
  }
  at::Tensor bytes = at::empty({rows, row_bytes(*codec, cols)}, at::TensorOptions().dtype(at::kByte));
  std::memcpy(bytes.data_ptr(), t.data + std::max<int64_t>(slice, 0) * bytes.nbytes(), bytes.nbytes());
  PackedMatrix packed({{t.type, std::move(bytes)}}, cols, field);
  // Decoded once, as expanding it would, a row at a time (no scratch the size of the matrix): a
  // block with a non-finite scale is a corrupt file.
  FirstRow bad;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<std::size_t>(cols));
    for (int64_t r = begin; r < end && !bad.past(r); ++r) {
      packed.decode_row(r, row.data());
      if (!std::all_of(row.begin(), row.end(), [](float v) { return std::isfinite(v); })) return bad.found(r);
    }
  });
  if (bad.row() >= 0) fail(ErrorCode::kDataLoss, field, "row {} decodes to a non-finite value", bad.row());
  return packed;
}

PackedMatrix PackedMatrix::of(const at::Tensor& dense) {
  GgmlType type = GgmlType::kF32;
  at::Tensor values = dense.cpu().contiguous();
  if (values.scalar_type() == at::kHalf) {
    type = GgmlType::kF16;
  } else if (values.scalar_type() == at::kBFloat16) {
    type = GgmlType::kBF16;
  } else {
    values = values.to(at::kFloat);
  }
  at::Tensor bytes = values.view(at::kByte).view({values.size(0), -1});
  return PackedMatrix({{type, std::move(bytes)}}, values.size(1), "weight");
}

PackedMatrix PackedMatrix::quantize(const at::Tensor& dense, Scheme scheme, int64_t group, const std::string& field) {
  at::Tensor values = dense.cpu().contiguous();  // no copy of a contiguous CPU tensor
  const c10::ScalarType dtype = values.scalar_type();
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) values = values.to(at::kFloat);
  const int64_t rows = values.size(0), cols = values.size(1);
  Segment segment{io::GgmlType::kF32, at::Tensor(), scheme, scheme == Scheme::kInt4 ? group : 0};
  if (scheme == Scheme::kGgml || (scheme == Scheme::kInt4 && group <= 0)) {
    fail(ErrorCode::kInvalidArgument, field, "expected int8, or int4 with groups of at least one value");
  }
  const int64_t size = segment.row_bytes(cols);
  segment.bytes = at::empty({rows, size}, at::TensorOptions().dtype(at::kByte));
  const auto* w = static_cast<const std::uint8_t*>(values.data_ptr());
  const int64_t element = static_cast<int64_t>(values.element_size());
  std::uint8_t* out = segment.bytes.data_ptr<std::uint8_t>();
  FirstRow bad;
  // Divisions, not products with reciprocals, and round-half-even (std::nearbyint): the scheme's
  // reference in Python computes each value the same way.
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<std::size_t>(cols));  // a 16-bit row as float32
    for (int64_t r = begin; r < end && !bad.past(r); ++r) {
      const float* x = row_as_float(w + r * cols * element, values.scalar_type(), cols, row.data());
      std::uint8_t* o = out + r * size;
      if (!std::all_of(x, x + cols, [](float v) { return std::isfinite(v); })) return bad.found(r);
      if (scheme == Scheme::kInt8) {
        float amax = 0;
        for (int64_t k = 0; k < cols; ++k) amax = std::max(amax, std::fabs(x[k]));
        const float scale = amax / 127.0f;
        std::memcpy(o, &scale, 4);
        for (int64_t k = 0; k < cols; ++k) {
          const float q = scale > 0 ? std::clamp(std::nearbyint(x[k] / scale), -127.0f, 127.0f) : 0.0f;
          o[4 + k] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
        }
        continue;
      }
      const int64_t groups = (cols + group - 1) / group;
      std::uint8_t* nibbles = o + 8 * groups;
      std::memset(nibbles, 0, static_cast<std::size_t>((cols + 1) / 2));
      for (int64_t g = 0; g < groups; ++g) {
        const float* first = x + g * group;
        const float* last = x + std::min(cols, (g + 1) * group);
        const auto [lo, hi] = std::minmax_element(first, last);
        const float scale = (*hi - *lo) / 15.0f, min = *lo;
        std::memcpy(o + 4 * g, &scale, 4);
        std::memcpy(o + 4 * (groups + g), &min, 4);
        for (const float* v = first; v < last; ++v) {
          const int64_t k = v - x;
          const float q = scale > 0 ? std::clamp(std::nearbyint((*v - min) / scale), 0.0f, 15.0f) : 0.0f;
          nibbles[k / 2] |= static_cast<std::uint8_t>(static_cast<int>(q) << (k % 2 == 0 ? 0 : 4));
        }
      }
    }
  });
  if (bad.row() >= 0) fail(ErrorCode::kDataLoss, field, "row {} holds a non-finite value", bad.row());
  return PackedMatrix({std::move(segment)}, cols, field);
}

PackedMatrix PackedMatrix::stack(const std::vector<PackedMatrix>& parts) {
  std::vector<Segment> segments;
  for (const PackedMatrix& p : parts) segments.insert(segments.end(), p.segments_.begin(), p.segments_.end());
  return PackedMatrix(std::move(segments), parts.front().cols_, "weight");
}

PackedMatrix PackedMatrix::select_rows(const at::Tensor& order) const {
  // Rows move only within their segment: each segment's rows are selected on their own.
  std::vector<Segment> segments;
  for (std::size_t s = 0; s < segments_.size(); ++s) {
    const at::Tensor local = order.slice(0, starts_[s], starts_[s + 1]) - starts_[s];
    segments.push_back(segments_[s]);
    segments.back().bytes = segments_[s].bytes.index_select(0, local);
  }
  return PackedMatrix(std::move(segments), cols_, "weight");
}

std::size_t PackedMatrix::bytes() const {
  std::size_t total = 0;
  for (const Segment& s : segments_) total += s.bytes.nbytes();
  return total;
}

std::size_t PackedMatrix::segment_of(int64_t row) const {
  return static_cast<std::size_t>(std::upper_bound(starts_.begin(), starts_.end(), row) - starts_.begin() - 1);
}

bool PackedMatrix::dot_row(int64_t row, const float* x, int64_t M, const float* sums, float* out) const {
  const std::size_t s = segment_of(row);
  const Segment& segment = segments_[s];
  const std::uint8_t* in = segment.bytes.data_ptr<std::uint8_t>() + (row - starts_[s]) * segment.bytes.size(1);
  if (group_dots_[s] != nullptr) {
    group_dots_[s](in, segment.group, x, M, cols_, sums, out);
    return true;
  }
  if (row_dots_[s] == nullptr) return false;
  row_dots_[s](in, cols_ / (codecs_[s] != nullptr ? codecs_[s]->block_size : 32), x, M, cols_, sums, out);
  return true;
}

void PackedMatrix::decode_row(int64_t row, float* out) const {
  const std::size_t s = segment_of(row);
  const int64_t size = segments_[s].bytes.size(1);
  const std::uint8_t* in = segments_[s].bytes.data_ptr<std::uint8_t>() + (row - starts_[s]) * size;
  if (const simd::SchemeDecoder vector = scheme_decoders_[s]) return vector(in, segments_[s].group, cols_, out);
  if (codecs_[s] == nullptr) return decode_quantized(segments_[s], in, cols_, out);
  const BlockCodec& codec = *codecs_[s];
  if (const simd::RowDecoder vector = vector_decoders_[s]) return vector(in, cols_ / codec.block_size, out);
  switch (codec.type) {
    case GgmlType::kF32: std::memcpy(out, in, static_cast<std::size_t>(cols_) * 4); return;
    case GgmlType::kF16: {
      const auto* h = reinterpret_cast<const c10::Half*>(in);
      for (int64_t i = 0; i < cols_; ++i) out[i] = static_cast<float>(h[i]);
      return;
    }
    case GgmlType::kBF16: {
      const auto* h = reinterpret_cast<const c10::BFloat16*>(in);
      for (int64_t i = 0; i < cols_; ++i) out[i] = static_cast<float>(h[i]);
      return;
    }
    default:
      for (int64_t b = 0; b < cols_ / codec.block_size; ++b) codec.decode(in + b * codec.type_size, out + b * codec.block_size);
  }
}

at::Tensor PackedMatrix::decode(int64_t begin, int64_t end, c10::ScalarType dtype) const {
  at::Tensor out = at::empty({end - begin, cols_}, at::TensorOptions().dtype(at::kFloat));
  float* y = out.data_ptr<float>();
  at::parallel_for(begin, end, 4, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) decode_row(r, y + (r - begin) * cols_);
  });
  return dtype == at::kFloat ? out : out.to(dtype);
}

at::Tensor PackedMatrix::gather(const at::Tensor& ids, c10::ScalarType dtype) const {
  const at::Tensor flat = ids.reshape({-1}).to(at::kCPU, at::kLong).contiguous();
  const int64_t n = flat.numel();
  at::Tensor out = at::empty({n, cols_}, at::TensorOptions().dtype(at::kFloat));
  const int64_t* index = flat.data_ptr<int64_t>();
  float* y = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) decode_row(index[i], y + i * cols_);
  });
  std::vector<int64_t> shape = ids.sizes().vec();
  shape.push_back(cols_);
  return out.view(shape).to(ids.device(), dtype);
}

at::Tensor PackedMatrix::mean_row(c10::ScalarType dtype) const {
  const at::ScalarType precise = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor sum = at::zeros({cols_}, at::TensorOptions().dtype(precise));
  for (int64_t r = 0, step = chunk_rows(*this); r < rows(); r += step) sum += decode(r, std::min(rows(), r + step), precise).sum(0);
  return (sum / static_cast<double>(rows())).to(dtype);
}

at::Tensor packed_product(const at::Tensor& x, const std::shared_ptr<const PackedMatrix>& w) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = w->rows();
  return PackedProduct::apply(x.reshape({-1, w->cols()}).contiguous(), w).view(shape);
}

}  // namespace aios::backbone

#include "aios/client/client.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <type_traits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "aios/fail.h"
#include "aios/wire/messages.h"
#include "aios/wire/wire.h"

namespace aios::client {

static_assert(std::endian::native == std::endian::little, "tensors travel as little-endian bytes, copied as they are");

// ---- dtype conversions -----------------------------------------------------------------------

float half_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero and subnormals: mantissa x 2^-24, exact in float.
  const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  return sign != 0 ? -magnitude : magnitude;
}

float bfloat16_to_float(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

uint16_t float_to_half(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN: a quiet one
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // inf, and 65520 and up round to it
  if (magnitude >= 0x38800000u) {                       // normal in half: rebias, round to nearest even
    const uint32_t rebiased = magnitude - 0x38000000u;
    return sign | static_cast<uint16_t>((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13);
  }
  // Subnormal in half: magnitude x 2^24 rounded to the nearest integer, ties to even (1024 is
  // the smallest normal, whose bits are that integer too).
  const float scaled = std::bit_cast<float>(magnitude) * 16777216.0f;
  return sign | static_cast<uint16_t>(std::nearbyint(scaled));
}

uint16_t float_to_bfloat16(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN: a quiet one
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

namespace {

namespace v1 = aios::v1;

// ---- requests --------------------------------------------------------------------------------

template <typename Scalar, int N>
void write(const Eigen::Tensor<Scalar, N, Eigen::RowMajor>& t, v1::Tensor* out) {
  for (int i = 0; i < N; ++i) out->add_shape(t.dimension(i));
  const auto count = static_cast<std::size_t>(t.size());
  if constexpr (std::is_same_v<Scalar, bool>) {
    out->set_dtype(v1::BOOL);
    std::string bytes(count, '\0');
    for (std::size_t i = 0; i < count; ++i) bytes[i] = t.data()[i] ? 1 : 0;
    out->set_data(std::move(bytes));
  } else {
    static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, int64_t>);
    out->set_dtype(std::is_same_v<Scalar, float> ? v1::FLOAT32 : v1::INT64);
    out->set_data(reinterpret_cast<const char*>(t.data()), count * sizeof(Scalar));
  }
}

// A mask of either rank.
void write(const EigenTensors::Mask& mask, v1::Tensor* out) {
  std::visit([out](const auto& t) { write(t, out); }, mask);
}

// Every tensor of a request, as the two above write it.
constexpr auto kWrite = [](const auto& t, v1::Tensor* out) { write(t, out); };

// ---- replies ---------------------------------------------------------------------------------

// Replies are as trusted as the host, but still checked: a tensor must agree with its shape.
const wire::TensorLimits kReplyLimits{/*max_rank=*/4, /*max_dim=*/int64_t{1} << 40, /*max_bytes=*/int64_t{1} << 40};

// A reply that does not parse is the host's fault, not the caller's: kDataLoss.
wire::CheckedTensor check_reply(const v1::Tensor& t, const std::string& field) {
  try {
    return wire::check_tensor(t, field, kReplyLimits);
  } catch (const Error& e) {
    fail(ErrorCode::kDataLoss, e.field(), "malformed reply from the host: {}", e.message());
  }
}

// The floats of a checked reply tensor, converted from its dtype into `out` (room for all of them).
void convert(const wire::CheckedTensor& w, const std::string& field, float* out) {
  const std::size_t count = w.size_bytes / wire::itemsize(w.dtype);
  switch (w.dtype) {
    case v1::FLOAT32:
      if (count > 0) std::memcpy(out, w.data, w.size_bytes);
      return;
    case v1::BFLOAT16:
    case v1::FLOAT16: {
      const bool brain = w.dtype == v1::BFLOAT16;
      for (std::size_t i = 0; i < count; ++i) {
        uint16_t bits;
        std::memcpy(&bits, w.data + 2 * i, 2);
        out[i] = brain ? bfloat16_to_float(bits) : half_to_float(bits);
      }
      return;
    }
    default:
      fail(ErrorCode::kDataLoss, field, "malformed reply from the host: expected float32, bfloat16 or float16, got {}",
           wire::dtype_name(w.dtype));
  }
}

template <int N>
FloatTensor<N> read_floats(const v1::Tensor& t, const std::string& field) {
  const wire::CheckedTensor w = check_reply(t, field);
  if (w.shape.size() != N) {
    fail(ErrorCode::kDataLoss, field, "malformed reply from the host: expected rank {}, got shape [{}]", N,
         fmt::join(w.shape, ","));
  }
  Eigen::array<Eigen::Index, N> dims;
  for (int i = 0; i < N; ++i) dims[i] = w.shape[i];
  FloatTensor<N> out(dims);
  convert(w, field, out.data());
  return out;
}

template <int N>
IdTensor<N> read_ids(const v1::Tensor& t, const std::string& field) {
  const wire::CheckedTensor w = check_reply(t, field);
  if (w.shape.size() != N || w.dtype != v1::INT64) {
    fail(ErrorCode::kDataLoss, field, "malformed reply from the host: expected int64 of rank {}, got {} [{}]", N,
         wire::dtype_name(w.dtype), fmt::join(w.shape, ","));
  }
  Eigen::array<Eigen::Index, N> dims;
  for (int i = 0; i < N; ++i) dims[i] = w.shape[i];
  IdTensor<N> out(dims);
  if (w.size_bytes > 0) std::memcpy(out.data(), w.data, w.size_bytes);
  return out;
}

float read_scalar(const v1::Tensor& t, const std::string& field) {
  const wire::CheckedTensor w = check_reply(t, field);
  if (w.size_bytes != wire::itemsize(w.dtype)) {
    fail(ErrorCode::kDataLoss, field, "malformed reply from the host: expected one value, got shape [{}]",
         fmt::join(w.shape, ","));
  }
  float value = 0;
  convert(w, field, &value);
  return value;
}

ForwardOutput read_output(const v1::ForwardResponse& r) {
  return wire::messages::read_output<ForwardOutput>(r, read_floats<3>, read_ids<3>);
}

}  // namespace

struct Client::Impl {
  std::shared_ptr<wire::Transport> transport;  // every call goes through it (in chunks when large)
  ModelInfo config;
  HostLimits limits;

  void call(const char* method, const google::protobuf::Message& request, google::protobuf::Message* reply) const {
    wire::call(*transport, {method, {}, std::nullopt}, request, reply);
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

Client Client::connect(const std::string& address, const ConnectOptions& options) {
  return connect(wire::grpc_transport(address, options));
}

Client Client::connect(std::shared_ptr<Transport> transport) {
  auto impl = std::make_unique<Impl>();
  wire::HostDescription host = wire::describe_host(*transport);
  impl->transport = std::move(transport);
  impl->config = std::move(host.model);
  impl->limits = host.limits;
  return Client(std::move(impl));
}

const ModelInfo& Client::config() const { return impl_->config; }
const HostLimits& Client::limits() const { return impl_->limits; }

// Each parameter of a generated call in its field: tensors as they are, the options, cotangents
// and losses by messages.h.
struct Client::Outgoing {
  const Impl& impl;

  template <class T, class Make>
  void write(const T& value, Make make, const char* /*field*/) {
    wire::messages::write_field(value, make, [](const auto& v, auto* out) { put(v, out); });
  }
  void write(const LossOptions& loss, v1::ForwardBackwardRequest& request, const char* /*field*/) {
    wire::messages::write_loss(loss, &request, kWrite);
  }
  void call(const char* method, const google::protobuf::Message& request, google::protobuf::Message* reply) {
    impl.call(method, request, reply);
  }
  template <class T, class Reply>
  T read(const Reply& reply, const char* field) {
    return read_as(std::type_identity<T>(), reply, field);
  }

 private:
  template <class Scalar, int N>
  static void put(const Eigen::Tensor<Scalar, N, Eigen::RowMajor>& t, v1::Tensor* out) {
    client::write(t, out);
  }
  static void put(const ForwardOptions& o, v1::ForwardOptions* out) { wire::messages::write_options(o, out, kWrite); }
  static void put(const Cotangents& c, v1::Cotangents* out) { wire::messages::write_cotangents(c, out, kWrite); }

  template <class T>
  static T read_as(std::type_identity<T>, int64_t v, const char* field) {
    return wire::messages::read_number<T>(v, field);
  }
  template <int N>
  static FloatTensor<N> read_as(std::type_identity<FloatTensor<N>>, const v1::Tensor& t, const char* field) {
    return read_floats<N>(t, field);
  }
  static FloatTensor<3> read_as(std::type_identity<FloatTensor<3>>, const v1::Gradients& g, const char*) {
    return read_floats<3>(g.latents(), "latents");
  }
  static ForwardOutput read_as(std::type_identity<ForwardOutput>, const v1::ForwardResponse& r, const char*) {
    return read_output(r);
  }
  static KeptForward read_as(std::type_identity<KeptForward>, const v1::ForwardResponse& r, const char*) {
    return KeptForward{read_output(r), r.handle()};
  }
  static FusedResult read_as(std::type_identity<FusedResult>, const v1::FusedResult& r, const char*) {
    FusedResult result;
    result.loss = read_scalar(r.loss(), "loss");
    result.losses = read_floats<1>(r.losses(), "losses");
    result.grad = read_floats<3>(r.grad().latents(), "latents");
    return result;
  }
};

Client::Outgoing Client::outgoing() const { return Outgoing{*impl_}; }

#include "client_definitions.inc"

FloatTensor<2> Client::classify(const FloatTensor<2>& hidden) const {
  v1::ClassifyRequest request;
  write(hidden, request.mutable_hidden());
  v1::Tensor out;
  impl_->call("/aios.v1.Latent/Classify", request, &out);
  return read_floats<2>(out, "logits");
}

}  // namespace aios::client

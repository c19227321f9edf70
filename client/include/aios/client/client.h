// aios/client/client.h — a thin C++ client of a backbone hosted by `aios serve`, without LibTorch.
//
// The Latent and Gradient APIs of aios::gradient::Backbone over gRPC, with tensors as Eigen
// tensors (row-major, so element [b,t,d] of a [B,T,D] tensor is data()[(b*T + t)*D + d], the
// layout of the wire): a C++ application trains its own encoder against a hosted, frozen
// backbone with nothing heavier than gRPC, protobuf and Eigen. Link aios::aios_client after
// find_package(aios REQUIRED COMPONENTS client).
//
// Shapes: B = batch, T = sequence length, D = hidden size, V = vocabulary size (config()).
// Floats go to the host as float32; replies arrive in the host's dtype (float32, bfloat16 or
// float16, config().dtype) and are converted to float32 here. Ids travel as int64.
//
// Errors: every call throws the aios::Error (code, field, message) that the host's backbone threw,
// e.g. kInvalidArgument naming "latents" for a wrong hidden size, kNotFound for a released handle;
// a host that cannot be reached, or a missed deadline, is kUnavailable; a reply that does not
// parse is kDataLoss. A Client may be used from several threads at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

#include "aios/gradient_options.h"
#include "aios/error.h"
#include "aios/export.h"
#include "aios/model_info.h"
#include "aios/wire/connect.h"

AIOS_EXPORT_BEGIN

namespace aios::client {

// Row-major Eigen tensors of rank N: the types every call takes and returns.
template <int N>
using FloatTensor = Eigen::Tensor<float, N, Eigen::RowMajor>;
template <int N>
using IdTensor = Eigen::Tensor<int64_t, N, Eigen::RowMajor>;
template <int N>
using BoolTensor = Eigen::Tensor<bool, N, Eigen::RowMajor>;

// A pass kept by the host (forward_keep) for vjp and release.
using Handle = uint64_t;

// api_key, timeout, TLS, the largest reply, and chunk_bytes: a request larger than that goes to
// the host in chunks (Chunked.Call), and so does its reply. The options of RemoteBackbone too.
using ConnectOptions = wire::ConnectOptions;
using Transport = wire::Transport;

// The hosted model's description (aios/model_info.h) and what the host allows (the Info reply).
using wire::HostLimits;

// The tensor vocabulary of the client's calls (aios/forward_options.h): a row-major Eigen tensor of
// the argument's rank, std::optional where it may be absent, and a mask of either rank.
struct EigenTensors {
  template <int N>
  using Floats = FloatTensor<N>;
  template <int N>
  using Ids = IdTensor<N>;
  using Mask = std::variant<BoolTensor<2>, BoolTensor<3>>;  // [B,T] key padding or [B,T,T] full
  template <class X>
  using Maybe = std::optional<X>;
};

// As aios::gradient::ForwardOptions, without what only an in-process caller has (cancellation,
// extensions): positions, mask, layers, allow_non_finite, recompute (gradient calls).
struct ForwardOptions : BasicForwardOptions<EigenTensors>, GradientPassOptions {};

using ForwardOutput = BasicForwardOutput<EigenTensors>;

struct KeptForward {
  ForwardOutput output;
  Handle handle = 0;  // for vjp and release; the host forgets it after release, its budget or time-to-live
};

// The arguments of the gradient calls, as the in-process ones (aios/gradient_options.h).
using Cotangents = BasicCotangents<EigenTensors>;
using CrossEntropy = BasicCrossEntropy<EigenTensors>;
using Distillation = BasicDistillation<EigenTensors>;
using LossOptions = BasicLossOptions<EigenTensors>;  // client.forward_backward(latents, {}, {CrossEntropy{targets, weights}})

struct FusedResult {
  float loss = 0;         // the mean over all weighted tokens
  FloatTensor<1> losses;  // [B]: the same mean per sequence (0 where a row has no weight)
  FloatTensor<3> grad;    // [B,T,D]: d loss / d latents
};

class Client {
 public:
  // Connects to host:port and reads the backbone's description (one call). Throws
  // Error(kUnavailable) when the host does not answer within options.timeout, and
  // Error(kPermissionDenied) for a missing or unknown key of a host with keys.
  static Client connect(const std::string& address, const ConnectOptions& options = {});
  // The same over `transport` (what connect(address) makes is gRPC's; tests may bring their own).
  static Client connect(std::shared_ptr<Transport> transport);
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  const ModelInfo& config() const;
  const HostLimits& limits() const;

  // The calls of the contract (the "aios:" comments of aios.proto), generated from it with this
  // client's types (src/client.types).
#include "aios/client/calls.inc"

  // hidden [N,D] -> logits [N,V].
  FloatTensor<2> classify(const FloatTensor<2>& hidden) const;

 private:
  struct Impl;
  struct Outgoing;  // one request of a generated call being written, sent and its reply read
  Outgoing outgoing() const;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---- dtype conversions (replies in bfloat16 or float16 become float32) ----
// Exact widening of the 16-bit formats' bits (IEEE binary16, bfloat16) to float; NaN stays NaN.
float half_to_float(uint16_t bits);
float bfloat16_to_float(uint16_t bits);
// Narrowing with round-to-nearest-even, as torch converts: out of range -> +-inf, NaN -> a quiet NaN.
uint16_t float_to_half(float value);
uint16_t float_to_bfloat16(float value);

}  // namespace aios::client
AIOS_EXPORT_END

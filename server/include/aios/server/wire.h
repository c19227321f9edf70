// aios/server/wire.h — tensors and errors on the wire (server/proto/aios/v1/aios.proto); no LibTorch.
//
// A Tensor message is checked before anything is allocated for it: a known dtype, a rank and
// dimensions within limits, and prod(shape) x itemsize equal to the byte length (and within the
// byte limit). Errors travel as gRPC statuses whose code is the ErrorCode value, whose message is
// the error's message, and whose trailing metadata "aios-field-bin" names the field (binary
// metadata: a field quotes untrusted bytes, which a text header could not carry); the client
// builds the same aios::Error again.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "aios/error.h"
#include "aios/model_info.h"
#include "aios/server/connect.h"
#include "aios/v1/aios.grpc.pb.h"
#include "aios/v1/aios.pb.h"

namespace aios::server {

struct WireLimits {
  int64_t max_rank = 4;                 // [B,T,T] masks are the highest rank the API takes
  int64_t max_dim = int64_t{1} << 24;   // any one dimension (vocabularies fit)
  int64_t max_bytes = int64_t{1} << 30;  // one tensor
};

// A checked view of a Tensor message; the bytes stay in the message.
struct WireTensor {
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t size_bytes = 0;
};

// Bytes per element; 0 for DTYPE_UNSPECIFIED and values this build does not know.
std::size_t itemsize(v1::DType dtype);
// "float32", "int64", ...
const char* dtype_name(v1::DType dtype);

// Checks `t`, named `field` in errors. Throws Error(kInvalidArgument) for an unknown dtype, a
// negative dimension or a byte length that disagrees with the shape; Error(kResourceExhausted)
// beyond `limits`.
WireTensor check_tensor(const v1::Tensor& t, const std::string& field, const WireLimits& limits = {});

// Host side: the Info reply for `info` and `limits`.
void to_wire(const ModelInfo& info, const HostLimits& limits, v1::ModelInfo* out);
// Client side: what an Info reply describes, checked as untrusted (a client sizes buffers by it):
// Error(kDataLoss) naming "info.FIELD" for a dtype that is not float32, bfloat16 or float16, a
// size outside [1, limits.max_dim], or sliding windows that are not one per layer.
ModelInfo model_info(const v1::ModelInfo& info, const WireLimits& limits = {});
HostLimits host_limits(const v1::ModelInfo& info);

constexpr const char* kFieldMetadata = "aios-field-bin";

// Server side: the status for `e`, with its field added to the call's trailing metadata.
grpc::Status to_status(const Error& e, grpc::ServerContext* context);
// Client side: the aios::Error a failed call carries (transport failures: kUnavailable; a missed
// deadline: kUnavailable naming "deadline").
Error to_error(const grpc::Status& status, const grpc::ClientContext& context);

// Client side: a channel to host:port that accepts replies of up to `max_message_bytes` (at most
// 2^31 - 1; negative: any size) and sends any size, over TLS when `tls` (trusting the PEM file
// `tls_root_certificates`, or the system's certificates when it is empty).
std::shared_ptr<grpc::Channel> open_channel(const std::string& address, int64_t max_message_bytes, bool tls = false,
                                            const std::string& tls_root_certificates = "");

// Client side: the unary call `method` ("/aios.v1.Latent/Forward", ...) through Chunked.Call, its
// request sent in chunks of `chunk_bytes` and its reply gathered from the host's chunks. The
// status is the call's; a reply that does not parse is DATA_LOSS.
grpc::Status call_chunked(v1::Chunked::Stub& stub, grpc::ClientContext& context, const std::string& method,
                          const google::protobuf::Message& request, google::protobuf::Message* reply,
                          std::size_t chunk_bytes);

// Client side, shared by every client of the contract (RemoteBackbone, aios::client::Client): a
// channel to a host and the set-up of each call on it. Thread-safe.
class Connection {
 public:
  // open_channel with the options. Connects lazily: the first call fails with kUnavailable when
  // no host answers. Throws Error(kInvalidArgument, "chunk_bytes") for chunk_bytes < 1.
  Connection(const std::string& address, const ConnectOptions& options);

  const ConnectOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // A call's deadline (`timeout` from now) and, for a non-empty key, "authorization: Bearer KEY".
  void prepare(grpc::ClientContext& context, std::chrono::milliseconds timeout) const;
  void prepare(grpc::ClientContext& context) const { prepare(context, options_.timeout); }

  // `rpc(&context)` on a prepared context (with `add` applied to it, e.g. routing metadata);
  // throws the aios::Error of a failed status.
  template <typename Rpc>
  void call(Rpc&& rpc, const std::function<void(grpc::ClientContext&)>& add = {}) const {
    grpc::ClientContext context;
    prepare(context);
    if (add) add(context);
    const grpc::Status status = rpc(&context);
    if (!status.ok()) throw to_error(status, context);
  }
  // The unary call `method` ("/aios.v1.Latent/Forward") of `stub`: in one message or, for a
  // request larger than options().chunk_bytes, through Chunked.Call.
  template <typename Stub, typename Request, typename Reply>
  void call(const char* method, Stub& stub, grpc::Status (Stub::*unary)(grpc::ClientContext*, const Request&, Reply*),
            const Request& request, Reply* reply, const std::function<void(grpc::ClientContext&)>& add = {}) const {
    call(
        [&](grpc::ClientContext* context) {
          const auto chunk = static_cast<std::size_t>(options_.chunk_bytes);
          if (request.ByteSizeLong() > chunk) return call_chunked(*chunked_, *context, method, request, reply, chunk);
          return (stub.*unary)(context, request, reply);
        },
        add);
  }

 private:
  ConnectOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Chunked::Stub> chunked_;
};

}  // namespace aios::server

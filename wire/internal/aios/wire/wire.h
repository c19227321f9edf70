// aios/wire/wire.h — tensors, errors and calls on the wire (wire/proto/aios/v1/aios.proto); no
// LibTorch. Internal to aios (the host and both clients): not installed, as the generated messages
// it speaks in are not.
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
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "aios/error.h"
#include "aios/export.h"
#include "aios/model_info.h"
#include "aios/wire/connect.h"
#include "aios/v1/aios.pb.h"

AIOS_EXPORT_BEGIN

namespace aios::wire {

// A checked view of a Tensor message; the bytes stay in the message.
struct CheckedTensor {
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
CheckedTensor check_tensor(const v1::Tensor& t, const std::string& field, const TensorLimits& limits = {});

// Host side: the Info reply for `info` and `limits`.
void to_wire(const ModelInfo& info, const HostLimits& limits, v1::ModelInfo* out);
// Client side: what an Info reply describes, checked as untrusted (a client sizes buffers by it):
// Error(kDataLoss) naming "info.FIELD" for a dtype that is not float32, bfloat16 or float16, a
// size outside [1, limits.max_dim], or sliding windows that are not one per layer.
ModelInfo model_info(const v1::ModelInfo& info, const TensorLimits& limits = {});
HostLimits host_limits(const v1::ModelInfo& info);

constexpr const char* kFieldMetadata = "aios-field-bin";

// Server side: the status for `e`, with its field added to the call's trailing metadata.
grpc::Status to_status(const Error& e, grpc::ServerContext* context);

// Client side: the aios::Error of a failed call whose status has `code` (gRPC's numbering, which
// is aios's for aios's codes), `field` (trailing metadata kFieldMetadata) and `message`.
Error to_error(int code, std::string field, std::string message);

// Client side, every call of both clients: `request` through `transport`, its answer parsed into
// `reply` (Error(kDataLoss, "reply") when it does not parse: the host's fault, not the caller's).
void call(Transport& transport, const Call& call, const google::protobuf::Message& request,
          google::protobuf::Message* reply);
// Client side, the first call of both: the host's Info through `transport`, checked as above.
struct HostDescription {
  ModelInfo model;
  HostLimits limits;
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;  // model.dtype's wire value: float32, bfloat16 or float16
};
HostDescription describe_host(Transport& transport);
// The next reply of `stream` parsed into `reply`; false once the stream has ended.
bool next(Transport::Stream& stream, google::protobuf::Message* reply);

}  // namespace aios::wire
AIOS_EXPORT_END

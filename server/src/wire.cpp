#include "aios/server/wire.h"

#include <algorithm>
#include <limits>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "aios/fail.h"
#include "aios/io/safetensors.h"  // io::read_file

namespace aios::server {

std::size_t itemsize(v1::DType dtype) {
  switch (dtype) {
    case v1::FLOAT32: return 4;
    case v1::BFLOAT16: return 2;
    case v1::FLOAT16: return 2;
    case v1::INT32: return 4;
    case v1::INT64: return 8;
    case v1::BOOL: return 1;
    default: return 0;
  }
}

const char* dtype_name(v1::DType dtype) {
  switch (dtype) {
    case v1::FLOAT32: return "float32";
    case v1::BFLOAT16: return "bfloat16";
    case v1::FLOAT16: return "float16";
    case v1::INT32: return "int32";
    case v1::INT64: return "int64";
    case v1::BOOL: return "bool";
    default: return "unspecified";
  }
}

WireTensor check_tensor(const v1::Tensor& t, const std::string& field, const WireLimits& limits) {
  WireTensor out;
  out.dtype = t.dtype();
  const std::size_t size = itemsize(t.dtype());
  if (size == 0) fail(ErrorCode::kInvalidArgument, field + ".dtype", "expected a known dtype, got {}", static_cast<int>(t.dtype()));
  if (t.shape_size() > limits.max_rank) {
    fail(ErrorCode::kResourceExhausted, field + ".shape", "rank {} exceeds the limit {}", t.shape_size(), limits.max_rank);
  }
  uint64_t bytes = size;
  for (int64_t d : t.shape()) {
    if (d < 0) fail(ErrorCode::kInvalidArgument, field + ".shape", "expected dimensions >= 0, got [{}]", fmt::join(t.shape(), ","));
    if (d > limits.max_dim) {
      fail(ErrorCode::kResourceExhausted, field + ".shape", "dimension {} exceeds the limit {}", d, limits.max_dim);
    }
    // Checked by division first, so that no product can wrap around whatever the limits.
    if (d != 0 && bytes > static_cast<uint64_t>(limits.max_bytes) / static_cast<uint64_t>(d)) {
      fail(ErrorCode::kResourceExhausted, field, "shape [{}] of {} exceeds the limit of {} bytes", fmt::join(t.shape(), ","),
           dtype_name(t.dtype()), limits.max_bytes);
    }
    bytes *= static_cast<uint64_t>(d);
    out.shape.push_back(d);
  }
  if (t.data().size() != bytes) {
    fail(ErrorCode::kInvalidArgument, field + ".data", "expected {} bytes for shape [{}] of {}, got {}", bytes,
         fmt::join(t.shape(), ","), dtype_name(t.dtype()), t.data().size());
  }
  out.data = reinterpret_cast<const std::byte*>(t.data().data());
  out.size_bytes = bytes;
  return out;
}

void to_wire(const ModelInfo& info, const HostLimits& limits, v1::ModelInfo* out) {
  out->set_architecture(info.architecture);
  out->set_family(info.family);
  out->set_vocab_size(info.vocab_size);
  out->set_hidden_size(info.hidden_size);
  out->set_intermediate_size(info.intermediate_size);
  out->set_num_layers(info.num_layers);
  out->set_num_heads(info.num_heads);
  out->set_num_kv_heads(info.num_kv_heads);
  out->set_head_dim(info.head_dim);
  out->set_max_positions(info.max_positions);
  out->set_norm(info.norm);
  out->set_norm_eps(info.norm_eps);
  out->set_activation(info.activation);
  if (info.rope) {
    v1::RopeInfo* rope = out->mutable_rope();
    rope->set_type(info.rope->type);
    rope->set_theta(info.rope->theta);
    rope->set_factor(info.rope->factor);
    rope->set_low_freq_factor(info.rope->low_freq_factor);
    rope->set_high_freq_factor(info.rope->high_freq_factor);
    rope->set_original_max_positions(info.rope->original_max_positions);
  }
  out->set_qkv_bias(info.qkv_bias);
  out->set_out_bias(info.out_bias);
  out->set_mlp_bias(info.mlp_bias);
  out->set_tie_word_embeddings(info.tie_word_embeddings);
  for (const auto& window : info.sliding_windows) out->add_sliding_windows(window.value_or(0));
  out->set_attention_scale(info.attention_scale);
  out->set_scale_attn_by_inverse_layer_idx(info.scale_attn_by_inverse_layer_idx);
  for (const v1::DType d : {v1::FLOAT32, v1::BFLOAT16, v1::FLOAT16}) {
    if (info.dtype == dtype_name(d)) out->set_dtype(d);
  }
  out->set_device(info.device);
  if (info.bos_id) out->set_bos_id(*info.bos_id);
  for (int64_t id : info.eos_ids) out->add_eos_ids(id);
  if (info.pad_id) out->set_pad_id(*info.pad_id);
  out->set_max_batch(limits.max_batch);
  out->set_max_request_bytes(limits.max_request_bytes);
}

ModelInfo model_info(const v1::ModelInfo& in, const WireLimits& limits) {
  if (in.dtype() != v1::FLOAT32 && in.dtype() != v1::BFLOAT16 && in.dtype() != v1::FLOAT16) {
    fail(ErrorCode::kDataLoss, "info.dtype", "the host describes its dtype as {}", static_cast<int>(in.dtype()));
  }
  const auto size = [&](int64_t value, const char* name) {
    if (value < 1 || value > limits.max_dim) {
      fail(ErrorCode::kDataLoss, fmt::format("info.{}", name), "expected a size in [1, {}], got {}", limits.max_dim, value);
    }
    return value;
  };
  ModelInfo info;
  info.architecture = in.architecture();
  info.family = in.family();
  info.vocab_size = size(in.vocab_size(), "vocab_size");
  info.hidden_size = size(in.hidden_size(), "hidden_size");
  info.intermediate_size = size(in.intermediate_size(), "intermediate_size");
  info.num_layers = size(in.num_layers(), "num_layers");
  info.num_heads = size(in.num_heads(), "num_heads");
  info.num_kv_heads = size(in.num_kv_heads(), "num_kv_heads");
  info.head_dim = size(in.head_dim(), "head_dim");
  info.max_positions = size(in.max_positions(), "max_positions");
  info.norm = in.norm();
  info.norm_eps = in.norm_eps();
  info.activation = in.activation();
  if (in.has_rope()) {
    const v1::RopeInfo& r = in.rope();
    info.rope = RopeInfo{r.type(), r.theta(), r.factor(), r.low_freq_factor(), r.high_freq_factor(),
                         r.original_max_positions()};
  }
  info.qkv_bias = in.qkv_bias();
  info.out_bias = in.out_bias();
  info.mlp_bias = in.mlp_bias();
  info.tie_word_embeddings = in.tie_word_embeddings();
  if (in.sliding_windows_size() != 0 && in.sliding_windows_size() != info.num_layers) {
    fail(ErrorCode::kDataLoss, "info.sliding_windows", "expected none or one per layer ({}), got {}", info.num_layers,
         in.sliding_windows_size());
  }
  for (int64_t window : in.sliding_windows()) {
    info.sliding_windows.push_back(window > 0 ? std::optional<int64_t>(window) : std::nullopt);
  }
  info.attention_scale = in.attention_scale();
  info.scale_attn_by_inverse_layer_idx = in.scale_attn_by_inverse_layer_idx();
  info.dtype = dtype_name(in.dtype());
  info.device = in.device();
  if (in.has_bos_id()) info.bos_id = in.bos_id();
  info.eos_ids.assign(in.eos_ids().begin(), in.eos_ids().end());
  if (in.has_pad_id()) info.pad_id = in.pad_id();
  return info;
}

HostLimits host_limits(const v1::ModelInfo& info) { return {info.max_batch(), info.max_request_bytes()}; }

grpc::Status to_status(const Error& e, grpc::ServerContext* context) {
  if (context != nullptr && !e.field().empty()) context->AddTrailingMetadata(kFieldMetadata, e.field());
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(e.code())), e.message());
}

Error to_error(const grpc::Status& status, const grpc::ClientContext& context) {
  std::string field;
  const auto& trailing = context.GetServerTrailingMetadata();
  if (auto it = trailing.find(kFieldMetadata); it != trailing.end()) field.assign(it->second.data(), it->second.size());
  switch (status.error_code()) {  // the codes of gRPC that aios does not use itself
    case grpc::StatusCode::UNAUTHENTICATED: return Error(ErrorCode::kPermissionDenied, field, status.error_message());
    case grpc::StatusCode::DEADLINE_EXCEEDED: return Error(ErrorCode::kUnavailable, "deadline", status.error_message());
    case grpc::StatusCode::CANCELLED: return Error(ErrorCode::kUnavailable, field, status.error_message());
    default: break;
  }
  for (const ErrorCodeInfo& info : kErrorCodes) {  // the others are aios's, by number
    if (static_cast<int>(info.code) == status.error_code()) return Error(info.code, field, status.error_message());
  }
  return Error(ErrorCode::kInternal, field, status.error_message());
}

std::shared_ptr<grpc::Channel> open_channel(const std::string& address, int64_t max_message_bytes, bool tls,
                                            const std::string& tls_root_certificates) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(max_message_bytes, std::numeric_limits<int>::max())));
  args.SetMaxSendMessageSize(-1);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (tls) {
    grpc::SslCredentialsOptions options;
    if (!tls_root_certificates.empty()) options.pem_root_certs = io::read_file(tls_root_certificates);
    credentials = grpc::SslCredentials(options);
  }
  return grpc::CreateCustomChannel(address, credentials, args);
}

Connection::Connection(const std::string& address, const ConnectOptions& options) : options_(options) {
  if (options.chunk_bytes < 1) fail(ErrorCode::kInvalidArgument, "chunk_bytes", "expected >= 1, got {}", options.chunk_bytes);
  channel_ = open_channel(address, options.max_message_bytes, options.tls, options.tls_root_certificates);
  chunked_ = v1::Chunked::NewStub(channel_);
}

void Connection::prepare(grpc::ClientContext& context, std::chrono::milliseconds timeout) const {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  if (!options_.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options_.api_key);
}

grpc::Status call_chunked(v1::Chunked::Stub& stub, grpc::ClientContext& context, const std::string& method,
                          const google::protobuf::Message& request, google::protobuf::Message* reply,
                          std::size_t chunk_bytes) {
  const std::string bytes = request.SerializeAsString();
  const auto stream = stub.Call(&context);
  std::size_t offset = 0;
  do {
    v1::Chunk chunk;
    if (offset == 0) chunk.set_method(method);
    chunk.set_data(bytes.data() + offset, std::min(chunk_bytes, bytes.size() - offset));
    if (!stream->Write(chunk)) break;  // the host ended the call: Finish says why
    offset += chunk_bytes;
  } while (offset < bytes.size());
  stream->WritesDone();
  std::string gathered;
  v1::Chunk chunk;
  while (stream->Read(&chunk)) gathered += chunk.data();
  const grpc::Status status = stream->Finish();
  if (status.ok() && !reply->ParseFromString(gathered)) {
    return grpc::Status(grpc::StatusCode::DATA_LOSS, "the host's chunks do not form a valid reply");
  }
  return status;
}

}  // namespace aios::server

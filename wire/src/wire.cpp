#include "aios/wire/wire.h"

#include <algorithm>
#include <functional>
#include <limits>

#include <grpcpp/create_channel.h>
#include <grpcpp/impl/client_unary_call.h>
#include <grpcpp/impl/rpc_method.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/sync_stream.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "aios/fail.h"
#include "aios/io/files.h"
#include "aios/v1/aios.grpc.pb.h"

namespace aios::wire {

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

CheckedTensor check_tensor(const v1::Tensor& t, const std::string& field, const TensorLimits& limits) {
  CheckedTensor out;
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
    rope->set_rotary_dim(info.rope->rotary_dim);
    rope->set_attention_factor(info.rope->attention_factor);
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
  out->set_weights(info.weights);
  for (const WeightKind& k : info.storage) {
    v1::WeightKind* kind = out->add_storage();
    kind->set_kind(k.kind);
    kind->set_tensors(k.tensors);
    kind->set_elements(k.elements);
    kind->set_bytes(k.bytes);
  }
  out->set_max_batch(limits.max_batch);
  out->set_max_request_bytes(limits.max_request_bytes);
}

ModelInfo model_info(const v1::ModelInfo& in, const TensorLimits& limits) {
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
    RopeInfo& rope = info.rope.emplace();
    rope.type = r.type();
    rope.theta = r.theta();
    rope.rotary_dim = size(r.rotary_dim(), "rope.rotary_dim");
    rope.factor = r.factor();
    rope.low_freq_factor = r.low_freq_factor();
    rope.high_freq_factor = r.high_freq_factor();
    rope.original_max_positions = r.original_max_positions();
    rope.attention_factor = r.attention_factor();
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
  info.weights = in.weights();
  for (const v1::WeightKind& k : in.storage()) info.storage.push_back({k.kind(), k.tensors(), k.elements(), k.bytes()});
  return info;
}

HostLimits host_limits(const v1::ModelInfo& info) { return {info.max_batch(), info.max_request_bytes()}; }

HostDescription describe_host(Transport& transport) {
  v1::ModelInfo info;
  call(transport, {"/aios.v1.Latent/Info", {}, std::nullopt}, v1::InfoRequest(), &info);
  return {model_info(info), host_limits(info), info.dtype()};
}

grpc::Status to_status(const Error& e, grpc::ServerContext* context) {
  if (context != nullptr && !e.field().empty()) context->AddTrailingMetadata(kFieldMetadata, e.field());
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(e.code())), e.message());
}

Error to_error(int code, std::string field, std::string message) {
  switch (code) {  // the codes of gRPC that aios does not use itself
    case grpc::StatusCode::UNAUTHENTICATED: return Error(ErrorCode::kPermissionDenied, std::move(field), std::move(message));
    case grpc::StatusCode::DEADLINE_EXCEEDED: return Error(ErrorCode::kUnavailable, "deadline", std::move(message));
    case grpc::StatusCode::CANCELLED: return Error(ErrorCode::kUnavailable, std::move(field), std::move(message));
    default: break;
  }
  for (const ErrorCodeInfo& info : kErrorCodes) {  // the others are aios's, by number
    if (static_cast<int>(info.code) == code) return Error(info.code, std::move(field), std::move(message));
  }
  return Error(ErrorCode::kInternal, std::move(field), std::move(message));
}

namespace {

Error to_error(const grpc::Status& status, const grpc::ClientContext& context) {
  std::string field;
  const auto& trailing = context.GetServerTrailingMetadata();
  if (auto it = trailing.find(kFieldMetadata); it != trailing.end()) field.assign(it->second.data(), it->second.size());
  return wire::to_error(status.error_code(), std::move(field), status.error_message());
}

// A buffer that owns `bytes` without copying them.
grpc::ByteBuffer to_buffer(std::string bytes) {
  auto* owned = new std::string(std::move(bytes));
  grpc::Slice slice(owned->data(), owned->size(), [](void* p) { delete static_cast<std::string*>(p); }, owned);
  return grpc::ByteBuffer(&slice, 1);
}

std::string to_bytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return bytes;
}

// A unary call through Chunked.Call: the request in chunks of `chunk_bytes`, the reply gathered
// from the host's chunks.
grpc::Status call_chunked(v1::Chunked::Stub& stub, grpc::ClientContext& context, const std::string& method,
                          const std::string& bytes, std::string* reply, std::size_t chunk_bytes) {
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
  v1::Chunk chunk;
  while (stream->Read(&chunk)) *reply += chunk.data();
  return stream->Finish();
}

std::shared_ptr<grpc::Channel> open_channel(const std::string& address, const ConnectOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(options.max_message_bytes, std::numeric_limits<int>::max())));
  args.SetMaxSendMessageSize(-1);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_root_certificates.empty()) ssl.pem_root_certs = io::read_file(options.tls_root_certificates);
    credentials = grpc::SslCredentials(ssl);
  }
  return grpc::CreateCustomChannel(address, credentials, args);
}

class GrpcStream final : public Transport::Stream {
 public:
  GrpcStream(grpc::ChannelInterface* channel, const std::string& method, std::string request,
             const std::function<void(grpc::ClientContext&)>& prepare)
      : method_(method) {
    prepare(context_);
    const grpc::internal::RpcMethod rpc(method_.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING);
    reader_.reset(grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel, rpc, &context_,
                                                                                 to_buffer(std::move(request))));
  }
  ~GrpcStream() override {
    if (done_) return;
    context_.TryCancel();  // the host stops at its next step
    reader_->Finish();
  }
  std::optional<std::string> next() override {
    if (done_) return std::nullopt;
    grpc::ByteBuffer reply;
    if (reader_->Read(&reply)) return to_bytes(reply);
    done_ = true;
    const grpc::Status status = reader_->Finish();
    if (!status.ok()) throw to_error(status, context_);
    return std::nullopt;
  }

 private:
  std::string method_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader_;
  bool done_ = false;
};

class GrpcTransport final : public Transport {
 public:
  GrpcTransport(const std::string& address, const ConnectOptions& options)
      : options_(options), channel_(open_channel(address, options)), chunked_(v1::Chunked::NewStub(channel_)) {}

  std::string call(const Call& call, std::string request) override {
    grpc::ClientContext context;
    prepare(call, context);
    grpc::Status status;
    std::string reply;
    if (const auto chunk = static_cast<std::size_t>(options_.chunk_bytes); request.size() > chunk) {
      status = call_chunked(*chunked_, context, call.method, request, &reply, chunk);
    } else {
      const grpc::internal::RpcMethod rpc(call.method.c_str(), grpc::internal::RpcMethod::NORMAL_RPC);
      grpc::ByteBuffer answer;
      status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
          channel_.get(), rpc, &context, to_buffer(std::move(request)), &answer);
      if (status.ok()) reply = to_bytes(answer);
    }
    if (!status.ok()) throw to_error(status, context);
    return reply;
  }

  std::unique_ptr<Stream> stream(const Call& call, std::string request) override {
    return std::make_unique<GrpcStream>(channel_.get(), call.method, std::move(request),
                                        [&](grpc::ClientContext& context) { prepare(call, context); });
  }

 private:
  void prepare(const Call& call, grpc::ClientContext& context) const {
    context.set_deadline(std::chrono::system_clock::now() + std::min(call.timeout.value_or(options_.timeout), options_.timeout));
    if (!options_.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options_.api_key);
    for (const auto& [key, value] : call.metadata) context.AddMetadata(key, value);
  }

  ConnectOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Chunked::Stub> chunked_;
};

}  // namespace

std::shared_ptr<Transport> grpc_transport(const std::string& address, const ConnectOptions& options) {
  if (options.chunk_bytes < 1) fail(ErrorCode::kInvalidArgument, "chunk_bytes", "expected >= 1, got {}", options.chunk_bytes);
  return std::make_shared<GrpcTransport>(address, options);
}

void call(Transport& transport, const Call& call, const google::protobuf::Message& request,
          google::protobuf::Message* reply) {
  if (!reply->ParseFromString(transport.call(call, request.SerializeAsString()))) {
    fail(ErrorCode::kDataLoss, "reply", "the host's reply to {} does not parse", call.method);
  }
}

bool next(Transport::Stream& stream, google::protobuf::Message* reply) {
  const std::optional<std::string> bytes = stream.next();
  if (!bytes) return false;
  if (!reply->ParseFromString(*bytes)) fail(ErrorCode::kDataLoss, "reply", "a streamed reply of the host does not parse");
  return true;
}

}  // namespace aios::wire

#include "aios/server/remote_backbone.h"

#include <grpcpp/grpcpp.h>

#include "aios/fail.h"
#include "aios/v1/aios.grpc.pb.h"
#include "tensors.h"

namespace aios::server {
namespace {

// Responses are as trusted as the host, but still checked: a tensor must agree with its shape.
const WireLimits kResponseLimits{/*max_rank=*/4, /*max_dim=*/int64_t{1} << 40, /*max_bytes=*/int64_t{1} << 40};

// A reply that does not parse is the host's fault, not the caller's: kDataLoss.
at::Tensor from_wire(const v1::Tensor& t, const char* field) {
  try {
    return to_torch(t, field, kResponseLimits);
  } catch (const Error& e) {
    fail(ErrorCode::kDataLoss, e.field(), "malformed reply from the host: {}", e.message());
  }
}

ForwardOutput read_output(const v1::ForwardResponse& r) {
  ForwardOutput out;
  out.hidden = from_wire(r.hidden(), "hidden");
  for (const auto& layer : r.layers()) out.layers.push_back(from_wire(layer, "layers"));
  return out;
}

[[noreturn]] void unsupported(const char* what) {
  fail(ErrorCode::kUnimplemented, what, "not offered by a hosted backbone yet (it runs in-process only)");
}

void no_extension(const ali::Extension* extension) {
  if (extension != nullptr) unsupported("extension");
}

void write_options(const ForwardOptions& o, v1::ForwardOptions* out) {
  if (o.positions) to_wire(*o.positions, out->mutable_positions());
  if (o.mask) to_wire(*o.mask, out->mutable_mask());
  for (int64_t l : o.layers) out->add_layers(l);
  out->set_allow_non_finite(o.allow_non_finite);
  out->set_recompute(o.recompute);
  if (o.extension) unsupported("extension");
}

void write_cotangents(const gradient::Cotangents& c, v1::Cotangents* out) {
  if (c.hidden.defined()) to_wire(c.hidden, out->mutable_hidden());
  for (const at::Tensor& layer : c.layers) {
    v1::Tensor* slot = out->add_layers();  // left empty for an undefined (zero) cotangent
    if (layer.defined()) to_wire(layer, slot);
  }
  if (c.logits.defined()) to_wire(c.logits, out->mutable_logits());
}

// A call about a kept pass names, in its metadata, the replica that keeps it (the top 16 bits of
// the handle): a load balancer in front of several hosts routes on it (docs/hosting.md).
void route_to_keeper(grpc::ClientContext* context, gradient::Handle handle) {
  context->AddMetadata("aios-replica", std::to_string(handle >> 48));
}

gradient::Gradients read_gradients(const v1::Gradients& g) {
  gradient::Gradients out;
  out.latents = from_wire(g.latents(), "latents");
  return out;
}

}  // namespace

struct RemoteBackbone::Impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Latent::Stub> latent;
  std::unique_ptr<v1::Gradient::Stub> gradient;
  ConnectOptions options;
  ModelConfig config;
  c10::ScalarType dtype = at::kFloat;

  // One call with the configured deadline; a failed status becomes the aios::Error it carries.
  template <typename Call>
  void call(Call&& rpc) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + options.timeout);
    if (!options.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options.api_key);
    const grpc::Status status = rpc(&context);
    if (!status.ok()) throw to_error(status, context);
  }
};

RemoteBackbone::RemoteBackbone(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemoteBackbone::~RemoteBackbone() = default;

std::shared_ptr<RemoteBackbone> RemoteBackbone::connect(const std::string& address, const ConnectOptions& options) {
  auto impl = std::make_unique<Impl>();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(options.max_message_bytes, std::numeric_limits<int>::max())));
  args.SetMaxSendMessageSize(-1);
  impl->channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  impl->latent = v1::Latent::NewStub(impl->channel);
  impl->gradient = v1::Gradient::NewStub(impl->channel);
  impl->options = options;

  v1::ModelInfo info;
  impl->call([&](grpc::ClientContext* c) { return impl->latent->Info(c, v1::InfoRequest(), &info); });
  ModelConfig& cfg = impl->config;
  cfg.architecture = info.architecture();
  cfg.vocab_size = info.vocab_size();
  cfg.hidden_size = info.hidden_size();
  cfg.num_layers = info.num_layers();
  cfg.num_heads = info.num_heads();
  cfg.num_kv_heads = info.num_kv_heads();
  cfg.head_dim = info.head_dim();
  cfg.intermediate_size = info.intermediate_size();
  cfg.max_positions = info.max_positions();
  cfg.tie_word_embeddings = info.tie_word_embeddings();
  if (itemsize(info.dtype()) == 0 || !at::isFloatingType(torch_dtype(info.dtype()))) {
    fail(ErrorCode::kDataLoss, "dtype", "the host describes its dtype as {}", static_cast<int>(info.dtype()));
  }
  impl->dtype = torch_dtype(info.dtype());
  return std::shared_ptr<RemoteBackbone>(new RemoteBackbone(std::move(impl)));
}

const ModelConfig& RemoteBackbone::config() const { return impl_->config; }
c10::Device RemoteBackbone::device() const { return at::kCPU; }
c10::ScalarType RemoteBackbone::dtype() const { return impl_->dtype; }

at::Tensor RemoteBackbone::embed(const at::Tensor& ids, const ali::Extension* extension) {
  no_extension(extension);
  v1::EmbedRequest request;
  to_wire(ids, request.mutable_ids());
  v1::Tensor out;
  impl_->call([&](grpc::ClientContext* c) { return impl_->latent->Embed(c, request, &out); });
  return from_wire(out, "latents");
}

ForwardOutput RemoteBackbone::forward(const at::Tensor& latents, const ForwardOptions& options) {
  v1::ForwardRequest request;
  to_wire(latents, request.mutable_latents());
  write_options(options, request.mutable_options());
  v1::ForwardResponse out;
  impl_->call([&](grpc::ClientContext* c) { return impl_->latent->Forward(c, request, &out); });
  return read_output(out);
}

at::Tensor RemoteBackbone::classify(const at::Tensor& hidden, const ali::Extension* extension) {
  no_extension(extension);
  v1::ClassifyRequest request;
  to_wire(hidden, request.mutable_hidden());
  v1::Tensor out;
  impl_->call([&](grpc::ClientContext* c) { return impl_->latent->Classify(c, request, &out); });
  return from_wire(out, "logits");
}

std::shared_ptr<ali::Extension> RemoteBackbone::extend(const std::vector<std::string>&, const ali::ExtendOptions&) {
  unsupported("extend");
}
std::shared_ptr<const tokenizer::Tokenizer> RemoteBackbone::tokenizer() { return nullptr; }
std::optional<std::string> RemoteBackbone::chat_template() { return std::nullopt; }
std::unique_ptr<ali::Generation> RemoteBackbone::start_generation(const at::Tensor&, const ali::GenerateOptions&) {
  unsupported("generate");
}
std::shared_ptr<ali::Session> RemoteBackbone::new_session() { unsupported("new_session"); }

gradient::KeptForward RemoteBackbone::forward_keep(const at::Tensor& latents, const ForwardOptions& options) {
  v1::ForwardRequest request;
  to_wire(latents, request.mutable_latents());
  write_options(options, request.mutable_options());
  v1::ForwardResponse out;
  impl_->call([&](grpc::ClientContext* c) { return impl_->gradient->ForwardKeep(c, request, &out); });
  return gradient::KeptForward{read_output(out), out.handle()};
}

gradient::Gradients RemoteBackbone::vjp(gradient::Handle handle, const gradient::Cotangents& cotangents) {
  v1::VjpRequest request;
  request.set_handle(handle);
  write_cotangents(cotangents, request.mutable_cotangents());
  v1::Gradients out;
  impl_->call([&](grpc::ClientContext* c) {
    route_to_keeper(c, handle);
    return impl_->gradient->Vjp(c, request, &out);
  });
  return read_gradients(out);
}

void RemoteBackbone::release(gradient::Handle handle) {
  v1::ReleaseRequest request;
  request.set_handle(handle);
  v1::Empty out;
  impl_->call([&](grpc::ClientContext* c) {
    route_to_keeper(c, handle);
    return impl_->gradient->Release(c, request, &out);
  });
}

gradient::Gradients RemoteBackbone::vjp(const at::Tensor& latents, const ForwardOptions& options,
                                        const gradient::Cotangents& cotangents) {
  v1::VjpStatelessRequest request;
  to_wire(latents, request.mutable_latents());
  write_options(options, request.mutable_options());
  write_cotangents(cotangents, request.mutable_cotangents());
  v1::Gradients out;
  impl_->call([&](grpc::ClientContext* c) { return impl_->gradient->VjpStateless(c, request, &out); });
  return read_gradients(out);
}

gradient::FusedResult RemoteBackbone::forward_backward(const at::Tensor& latents, const ForwardOptions& options,
                                                       const gradient::LossOptions& loss) {
  v1::ForwardBackwardRequest request;
  to_wire(latents, request.mutable_latents());
  write_options(options, request.mutable_options());
  request.set_chunk_tokens(loss.chunk_tokens);
  if (const auto* ce = std::get_if<gradient::CrossEntropy>(&loss.loss)) {
    auto* out = request.mutable_cross_entropy();
    to_wire(ce->targets, out->mutable_targets());
    if (ce->weights.defined()) to_wire(ce->weights, out->mutable_weights());
  } else {
    const auto& d = std::get<gradient::Distillation>(loss.loss);
    auto* out = request.mutable_distillation();
    if (d.teacher_probs.defined()) to_wire(d.teacher_probs, out->mutable_teacher_probs());
    if (d.teacher_logits.defined()) to_wire(d.teacher_logits, out->mutable_teacher_logits());
    if (d.teacher_latents.defined()) {
      to_wire(d.teacher_latents, out->mutable_teacher_latents());
      write_options(d.teacher_options, out->mutable_teacher_options());
    }
    if (d.teacher_index.defined()) to_wire(d.teacher_index, out->mutable_teacher_index());
    if (d.weights.defined()) to_wire(d.weights, out->mutable_weights());
    out->set_temperature(d.temperature);
  }
  v1::FusedResult out;
  impl_->call([&](grpc::ClientContext* c) { return impl_->gradient->ForwardBackward(c, request, &out); });
  gradient::FusedResult result;
  result.loss = from_wire(out.loss(), "loss").squeeze();
  result.losses = from_wire(out.losses(), "losses");
  result.grad = read_gradients(out.grad());
  return result;
}

}  // namespace aios::server

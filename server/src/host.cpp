#include "aios/server/host.h"

#include <cstdio>
#include <mutex>
#include <random>
#include <string_view>

#include <ATen/Parallel.h>  // at::internal::GRAIN_SIZE
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>

#include "aios/fail.h"
#include "aios/io/files.h"
#include "aios/v1/aios.grpc.pb.h"
#include "batcher.h"
#include "requests.h"
#include "services.h"

namespace aios::server {
namespace {

using gradient::Cotangents;
using gradient::ForwardOptions;
using Clock = std::chrono::steady_clock;

// Handles as the wire carries them: the top 16 bits name the replica that keeps the pass (so a
// load balancer can route Vjp and Release back to it), the low 48 bits are the backbone's handle
// shifted by a random offset drawn at start, so a replica restarted under the same number does not
// take the handles of its previous life for its own. The backbone's handles are a store tag in
// their top 16 bits (the same for all of them) and a sequence number below.
class WireHandles {
 public:
  explicit WireHandles(int64_t replica) : replica_(static_cast<uint64_t>(replica)), offset_(std::random_device{}()) {
    offset_ = ((offset_ << 32) ^ std::random_device{}()) & kLow;
  }

  uint64_t encode(gradient::Handle local) {
    uint64_t tag = kNoTag;
    if (!tag_.compare_exchange_strong(tag, local >> kShift) && tag != local >> kShift) {
      fail(ErrorCode::kInternal, "handle", "the backbone's handles carry tags {} and {}", tag, local >> kShift);
    }
    return (replica_ << kShift) | ((local + offset_) & kLow);
  }

  // The backbone's handle under `wire`; Error(kNotFound) for a handle of another replica.
  gradient::Handle decode(uint64_t wire) const {
    if (wire >> kShift != replica_) {
      fail(ErrorCode::kNotFound, "handle", "handle {} was kept by replica {}, not by this one ({})", wire, wire >> kShift,
           replica_);
    }
    const uint64_t tag = tag_.load();
    if (tag == kNoTag) fail(ErrorCode::kNotFound, "handle", "handle {} is unknown, released, expired or evicted", wire);
    return (tag << kShift) | ((wire - offset_) & kLow);
  }

 private:
  static constexpr int kShift = 48;
  static constexpr uint64_t kLow = (uint64_t{1} << kShift) - 1;
  static constexpr uint64_t kNoTag = ~uint64_t{0};
  uint64_t replica_;
  uint64_t offset_;
  std::atomic<uint64_t> tag_{kNoTag};
};

// Adds "aios-replica: N" to the initial metadata of every reply (errors included), so operators
// and tests can see which replica answered a call that went through a load balancer.
class ReplicaTag final : public grpc::experimental::Interceptor {
 public:
  explicit ReplicaTag(const std::string& replica) : replica_(replica) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("aios-replica", replica_);
    }
    methods->Proceed();
  }

 private:
  const std::string replica_;
};

// gRPC answers a request whose bytes do not parse as the method's message with INTERNAL and an
// empty message, which would say the host failed; the caller's bytes are what is wrong. A unary or
// server-streaming call receives exactly one message, so none after the receipt is such a failure.
class UnparsedRequest final : public grpc::experimental::Interceptor {
 public:
  explicit UnparsedRequest(const char* method) : method_(method) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsed_ = true;
    }
    if (unparsed_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::INTERNAL) {
      methods->ModifySendStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                             fmt::format("the request's bytes are not a message of {}", method_)));
      methods->GetSendTrailingMetadata()->emplace(kFieldMetadata, "request");
    }
    methods->Proceed();
  }

 private:
  const char* method_;
  bool unparsed_ = false;
};

class UnparsedRequests final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    using Type = grpc::experimental::ServerRpcInfo::Type;
    // A stream of requests ends with no message too: its handler finds a cut request itself.
    if (info->type() != Type::UNARY && info->type() != Type::SERVER_STREAMING) return nullptr;
    return new UnparsedRequest(info->method());
  }
};

class ReplicaTags final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReplicaTags(int64_t replica) : replica_(std::to_string(replica)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo*) override {
    return new ReplicaTag(replica_);
  }

 private:
  std::string replica_;
};


void write_output(const gradient::ForwardOutput& output, v1::ForwardResponse* out) {
  to_wire(output.hidden, out->mutable_hidden());
  for (const auto& layer : output.layers) to_wire(layer, out->add_layers());
}

// A lookup of so few embedding rows that LibTorch copies them without a parallel region (at most
// its grain size of elements), and no extension rows to write: bookkeeping (requests.h). The ids'
// bytes over 4 (int32, the smallest id type) bound their count before the request is checked.
bool few_rows(const v1::EmbedRequest& request, int64_t hidden_size) {
  const auto most_ids = static_cast<int64_t>(request.ids().data().size() / sizeof(int32_t));
  return !request.has_extension() && most_ids * hidden_size <= at::internal::GRAIN_SIZE;
}

class LatentService final : public v1::Latent::Service {
 public:
  explicit LatentService(Requests& requests)
      : r_(requests),
        batcher_(requests.options().batch_forwards
                     ? std::make_unique<ForwardBatcher>(requests.backbone(), requests.options().max_batch)
                     : nullptr) {}

  grpc::Status Info(grpc::ServerContext* context, const v1::InfoRequest*, v1::ModelInfo* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      to_wire(r_.backbone().config(), HostLimits{r_.options().max_batch, r_.options().limits.max_bytes}, out);
    }, Work::kBookkeeping);
  }

  grpc::Status Embed(grpc::ServerContext* context, const v1::EmbedRequest* request, v1::Tensor* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      const at::Tensor ids = r_.tensor(request->ids(), "ids");
      if (ids.dim() == 2) r_.check_tokens(caller, ids.size(0), ids.numel(), "ids");
      const auto extension =
          request->has_extension() ? r_.extension(caller, request->extension(), "extension") : nullptr;
      to_wire(r_.backbone().embed(ids, extension.get()), out);
    }, few_rows(*request, r_.backbone().config().hidden_size) ? Work::kBookkeeping : Work::kCompute);
  }

  grpc::Status Forward(grpc::ServerContext* context, const v1::ForwardRequest* request,
                       v1::ForwardResponse* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      const at::Tensor latents = r_.latents(caller, request->latents(), "latents");
      const gradient::ForwardOptions options = r_.forward_options(caller, request->options(), "options", *context);
      if (batcher_ && ForwardBatcher::batchable(options)) {
        to_wire(batcher_->forward(latents), out->mutable_hidden());
      } else {
        write_output(r_.backbone().forward(latents, options), out);
      }
    });
  }

  grpc::Status Classify(grpc::ServerContext* context, const v1::ClassifyRequest* request, v1::Tensor* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      const at::Tensor hidden = r_.floating(request->hidden(), "hidden");
      const int64_t rows = hidden.dim() > 0 ? hidden.numel() / std::max<int64_t>(1, hidden.size(-1)) : 0;
      r_.check_tokens(caller, 1, rows, "hidden");
      const auto extension =
          request->has_extension() ? r_.extension(caller, request->extension(), "extension") : nullptr;
      // The reply holds rows x (V+K) logits: refuse before computing what could not be sent.
      const int64_t columns = r_.backbone().config().vocab_size + (extension ? extension->size() : 0);
      const int64_t reply = rows * columns * static_cast<int64_t>(hidden.element_size());
      if (reply > r_.options().limits.max_bytes) {
        fail(ErrorCode::kResourceExhausted, "hidden", "{} rows of logits ({} bytes) exceed the host's limit of {} bytes",
             rows, reply, r_.options().limits.max_bytes);
      }
      to_wire(r_.backbone().classify(hidden, extension.get()), out);
    });
  }

 private:
  Requests& r_;
  std::unique_ptr<ForwardBatcher> batcher_;  // null when HostOptions::batch_forwards is off
};

void write_gradients(const gradient::Gradients& g, v1::Gradients* out) {
  to_wire(g.latents, out->mutable_latents());
  if (g.embedding_rows.defined()) to_wire(g.embedding_rows, out->mutable_embedding_rows());
  if (g.classifier_rows.defined()) to_wire(g.classifier_rows, out->mutable_classifier_rows());
}

// The caller's kept passes, counted against its store quota. A handle of another tenant is not in
// the caller's table: NOT_FOUND, as an unknown one.
class KeptPasses {
 public:
  explicit KeptPasses(Caller& caller) : tenant_(caller.state()) {}

  // Takes out of `tenant`'s table the passes unused for options.handle_ttl (the store's
  // time-to-live: expired there too, unless the store keeps them longer) and those that no Vjp or
  // Release claimed within options.unclaimed_ttl (their caller most likely left before the reply
  // reached it); the caller releases them.
  static std::vector<gradient::Handle> prune(TenantState& tenant, const HostOptions& options) {
    std::vector<gradient::Handle> gone;
    std::lock_guard lock(tenant.mutex);
    const auto now = Clock::now();
    for (auto it = tenant.handles.begin(); it != tenant.handles.end();) {
      const auto idle = now - it->second.last_use;
      if (idle > options.handle_ttl || (!it->second.claimed && idle > options.unclaimed_ttl)) {
        gone.push_back(it->first);
        tenant.kept_bytes -= it->second.bytes;
        it = tenant.handles.erase(it);
      } else {
        ++it;
      }
    }
    return gone;
  }

  // Refuses before any work when the tenant's quota is used up.
  void check_room() {
    std::lock_guard lock(tenant_.mutex);
    check_room(0);
  }
  // Forgets the passes the store dropped to keep `kept` (the tenant's own: see
  // gradient::StoreOwner), then counts `kept` within the quota (checked and counted under one lock).
  void keep(const gradient::KeptForward& kept, std::shared_ptr<CurrentCall> call) {
    std::lock_guard lock(tenant_.mutex);
    for (gradient::Handle gone : kept.dropped) forget(gone);
    check_room(kept.bytes);
    tenant_.handles[kept.handle] = {kept.bytes, Clock::now(), /*claimed=*/false, std::move(call)};
    tenant_.kept_bytes += kept.bytes;
  }
  // The pass's current-call slot (see CurrentCall).
  std::shared_ptr<CurrentCall> use(gradient::Handle handle) {
    std::lock_guard lock(tenant_.mutex);
    auto it = tenant_.handles.find(handle);
    if (it == tenant_.handles.end()) {
      fail(ErrorCode::kNotFound, "handle", "handle {} is unknown, released, expired or evicted", handle);
    }
    it->second.last_use = Clock::now();
    it->second.claimed = true;
    return it->second.call;
  }
  void remove(gradient::Handle handle) {
    std::lock_guard lock(tenant_.mutex);
    forget(handle);
  }

 private:
  // Under the tenant's lock.
  void forget(gradient::Handle handle) {
    auto it = tenant_.handles.find(handle);
    if (it == tenant_.handles.end()) return;
    tenant_.kept_bytes -= it->second.bytes;
    tenant_.handles.erase(it);
  }

  void check_room(std::size_t bytes) const {
    if (tenant_.kept_bytes + bytes > tenant_.quota.max_store_bytes) {
      fail(ErrorCode::kResourceExhausted, "activation_store",
           "keeping this pass ({} bytes) would exceed the tenant's quota of {} bytes ({} held; release handles "
           "or use recompute)",
           bytes, tenant_.quota.max_store_bytes, tenant_.kept_bytes);
    }
  }

  TenantState& tenant_;
};

class GradientService final : public v1::Gradient::Service {
 public:
  explicit GradientService(Requests& requests) : r_(requests), handles_(requests.options().replica) {}

  grpc::Status ForwardKeep(grpc::ServerContext* context, const v1::ForwardRequest* request,
                           v1::ForwardResponse* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      // Every tenant's passes that are gone or unclaimed are released before a new one is kept.
      for (TenantState* tenant : r_.tenants()) {
        for (gradient::Handle handle : KeptPasses::prune(*tenant, r_.options())) {
          try {
            r_.backbone().release(handle);
          } catch (const Error&) {
            // evicted meanwhile: nothing left to free
          }
        }
      }
      KeptPasses passes(caller);
      passes.check_room();
      gradient::ForwardOptions options = r_.forward_options(caller, request->options(), "options", *context);
      options.store_owner = caller.state().store_owner;  // room for it is made from this tenant's passes only
      auto call = std::make_shared<CurrentCall>();
      options.cancelled = [call] { return call->cancelled(); };
      gradient::KeptForward kept;
      {
        CurrentCall::Scope computing(*call, *context);
        kept = r_.backbone().forward_keep(r_.latents(caller, request->latents(), "latents"), options);
      }
      try {
        passes.keep(kept, call);
        // A caller that left (disconnected or out of time) never learns the handle: free the pass now.
        if (context->IsCancelled()) fail(ErrorCode::kUnavailable, "handle", "the call was cancelled; its pass is released");
        write_output(kept.output, out);
        out->set_handle(handles_.encode(kept.handle));
      } catch (...) {
        passes.remove(kept.handle);
        r_.backbone().release(kept.handle);
        throw;
      }
    });
  }

  grpc::Status Vjp(grpc::ServerContext* context, const v1::VjpRequest* request, v1::Gradients* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      KeptPasses passes(caller);
      const gradient::Handle handle = handles_.decode(request->handle());
      const std::shared_ptr<CurrentCall> call = passes.use(handle);
      try {
        CurrentCall::Scope computing(*call, *context);
        write_gradients(r_.backbone().vjp(handle, r_.cotangents(request->cotangents())), out);
      } catch (const Error& e) {
        if (e.code() == ErrorCode::kNotFound) passes.remove(handle);  // evicted or expired
        throw;
      }
    });
  }

  grpc::Status Release(grpc::ServerContext* context, const v1::ReleaseRequest* request, v1::Empty*) override {
    return guarded(r_, context, [&](Caller& caller) {
      KeptPasses passes(caller);
      const gradient::Handle handle = handles_.decode(request->handle());
      passes.use(handle);
      passes.remove(handle);
      r_.backbone().release(handle);
    }, Work::kBookkeeping);
  }

  grpc::Status VjpStateless(grpc::ServerContext* context, const v1::VjpStatelessRequest* request,
                            v1::Gradients* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      write_gradients(r_.backbone().vjp(r_.latents(caller, request->latents(), "latents"),
                                        r_.forward_options(caller, request->options(), "options", *context),
                                        r_.cotangents(request->cotangents())),
                      out);
    });
  }

  grpc::Status ForwardBackward(grpc::ServerContext* context, const v1::ForwardBackwardRequest* request,
                               v1::FusedResult* out) override {
    return guarded(r_, context, [&](Caller& caller) {
      gradient::LossOptions loss;
      if (request->has_chunk_tokens()) {
        // One chunk of logits is chunk_tokens x V floats: bounded like a request's tokens.
        r_.check_tokens(caller, 1, request->chunk_tokens(), "chunk_tokens");
        loss.chunk_tokens = request->chunk_tokens();
      }
      if (request->has_cross_entropy()) {
        const auto& ce = request->cross_entropy();
        loss.loss = gradient::CrossEntropy{r_.tensor(ce.targets(), "cross_entropy.targets"),
                                           ce.has_weights() ? r_.tensor(ce.weights(), "cross_entropy.weights") : at::Tensor()};
      } else if (request->has_distillation()) {
        const auto& d = request->distillation();
        gradient::Distillation out_loss;
        if (d.has_teacher_logits()) out_loss.teacher_logits = r_.floating(d.teacher_logits(), "distillation.teacher_logits");
        if (d.has_teacher_probs()) out_loss.teacher_probs = r_.floating(d.teacher_probs(), "distillation.teacher_probs");
        if (d.has_teacher_latents()) {
          out_loss.teacher_latents = r_.latents(caller, d.teacher_latents(), "distillation.teacher_latents");
          out_loss.teacher_options =
              r_.forward_options(caller, d.teacher_options(), "distillation.teacher_options", *context);
        }
        if (d.has_teacher_index()) out_loss.teacher_index = r_.tensor(d.teacher_index(), "distillation.teacher_index");
        if (d.has_weights()) out_loss.weights = r_.tensor(d.weights(), "distillation.weights");
        if (d.has_temperature()) out_loss.temperature = d.temperature();
        loss.loss = out_loss;
      } else {
        fail(ErrorCode::kInvalidArgument, "loss", "expected cross_entropy or distillation, got neither");
      }
      const auto result = r_.backbone().forward_backward(r_.latents(caller, request->latents(), "latents"),
                                                         r_.forward_options(caller, request->options(), "options", *context),
                                                         loss);
      to_wire(result.loss, out->mutable_loss());
      to_wire(result.losses, out->mutable_losses());
      write_gradients(result.grad, out->mutable_grad());
    });
  }

 private:
  Requests& r_;
  WireHandles handles_;
};

// protobuf logs an error line for every string field of invalid UTF-8 it parses, so without this
// any caller could write to the host's log at will (its call is answered INVALID_ARGUMENT anyway).
// Other messages go to stderr as protobuf's own handler writes them.
void protobuf_log(google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
  if (level == google::protobuf::LOGLEVEL_ERROR && std::string_view(file).ends_with("wire_format_lite.cc")) return;
  static const char* const kLevels[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", kLevels[level], file, line, message.c_str());
}

}  // namespace

struct Host::Impl {
  Impl(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options)
      : requests(std::move(backbone), options),
        latent(requests),
        gradient(requests),
        tokenizer(make_tokenizer_service(requests)),
        generation(make_generation_service(requests)),
        chunked(make_chunked_service(requests, {latent, gradient, *tokenizer, *generation})) {}
  Requests requests;
  LatentService latent;
  GradientService gradient;
  std::unique_ptr<grpc::Service> tokenizer;
  std::unique_ptr<grpc::Service> generation;
  std::unique_ptr<grpc::Service> chunked;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

Host::Host(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options) {
  if (options.replica < 0 || options.replica > 0xffff) {
    fail(ErrorCode::kInvalidArgument, "replica", "expected a number in [0, 65535], got {}", options.replica);
  }
  // The dtypes the wire's model description carries (a client of a float64 host could not read it).
  const std::string& dtype = backbone->config().dtype;
  if (dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
    fail(ErrorCode::kInvalidArgument, "dtype", "a host serves float32, bfloat16 or float16 backbones, got {}", dtype);
  }
  impl_ = std::make_unique<Impl>(std::move(backbone), options);
  static std::once_flag quiet_protobuf;
  std::call_once(quiet_protobuf, [] { google::protobuf::SetLogHandler(protobuf_log); });
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_certificate.empty() || !options.tls_private_key.empty()) {
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back({io::read_file(options.tls_private_key), io::read_file(options.tls_certificate)});
    credentials = grpc::SslServerCredentials(tls);
  }
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<ReplicaTags>(options.replica));
  interceptors.push_back(std::make_unique<UnparsedRequests>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.AddListeningPort(options.listen, credentials, &impl_->port);
  if (options.max_message_bytes < 1024) {
    fail(ErrorCode::kInvalidArgument, "max_message_bytes", "expected at least 1024, got {}", options.max_message_bytes);
  }
  const int64_t message_limit = std::min<int64_t>(std::numeric_limits<int>::max(), options.max_message_bytes);
  builder.SetMaxReceiveMessageSize(static_cast<int>(message_limit));
  builder.SetMaxSendMessageSize(static_cast<int>(message_limit));
  builder.RegisterService(&impl_->latent);
  builder.RegisterService(&impl_->gradient);
  builder.RegisterService(impl_->tokenizer.get());
  builder.RegisterService(impl_->generation.get());
  builder.RegisterService(impl_->chunked.get());
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) {
    fail(ErrorCode::kUnavailable, "listen", "cannot listen on {}", options.listen);
  }
}

Host::~Host() { shutdown(std::chrono::seconds(1)); }

int Host::port() const { return impl_->port; }

void Host::wait() { impl_->server->Wait(); }

void Host::shutdown(std::chrono::milliseconds grace) {
  impl_->server->Shutdown(std::chrono::system_clock::now() + grace);
}

}  // namespace aios::server

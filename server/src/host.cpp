#include "aios/server/host.h"

#include <atomic>
#include <new>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <unordered_map>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>

#include "aios/fail.h"
#include "aios/v1/aios.grpc.pb.h"
#include "tensors.h"

namespace aios::server {
namespace {

using gradient::Cotangents;
using gradient::ForwardOptions;

// Who is calling: the tenant their API key names.
class Tenants {
 public:
  explicit Tenants(const HostOptions& options) : keys_(options.api_keys), limit_(options.max_concurrent_per_tenant) {
    for (const auto& [key, tenant] : keys_) in_flight_[tenant] = 0;
    in_flight_[""];  // the one tenant of a host without keys
  }

  // The caller's tenant; throws Error(kPermissionDenied) for a missing or unknown key.
  const std::string& authenticate(const grpc::ServerContext& context) const {
    if (keys_.empty()) return anonymous_;
    const auto& metadata = context.client_metadata();
    auto it = metadata.find("authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (it != metadata.end()) {
      const std::string_view value(it->second.data(), it->second.size());
      if (value.starts_with(kBearer)) {
        auto key = keys_.find(std::string(value.substr(kBearer.size())));
        if (key != keys_.end()) return key->second;
      }
    }
    // The message never repeats what was sent: keys stay out of logs and replies.
    fail(ErrorCode::kPermissionDenied, "api_key", "expected a valid API key in \"authorization: Bearer KEY\"");
  }

  // Counts a call in flight for `tenant` while it lives; throws Error(kResourceExhausted) past the limit.
  class Call {
   public:
    Call(std::atomic<int64_t>& counter, int64_t limit) : counter_(counter) {
      if (counter_.fetch_add(1) >= limit) {
        counter_.fetch_sub(1);
        fail(ErrorCode::kResourceExhausted, "tenant", "more than {} calls in flight", limit);
      }
    }
    ~Call() { counter_.fetch_sub(1); }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

   private:
    std::atomic<int64_t>& counter_;
  };
  std::atomic<int64_t>& in_flight(const std::string& tenant) { return in_flight_.at(tenant); }
  int64_t limit() const { return limit_; }

 private:
  std::map<std::string, std::string> keys_;
  int64_t limit_;
  std::map<std::string, std::atomic<int64_t>> in_flight_;  // keys fixed at construction: safe to read concurrently
  const std::string anonymous_;
};

// Which tenant kept which pass: a handle of another tenant is reported as unknown.
class HandleOwners {
 public:
  void add(gradient::Handle handle, const std::string& tenant) {
    std::lock_guard lock(mutex_);
    owners_[handle] = tenant;
  }
  void check(gradient::Handle handle, const std::string& tenant) {
    std::lock_guard lock(mutex_);
    auto it = owners_.find(handle);
    if (it == owners_.end() || it->second != tenant) {
      fail(ErrorCode::kNotFound, "handle", "handle {} is unknown, released, expired or evicted", handle);
    }
  }
  void remove(gradient::Handle handle) {
    std::lock_guard lock(mutex_);
    owners_.erase(handle);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<gradient::Handle, std::string> owners_;
};

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

class ReplicaTags final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReplicaTags(int64_t replica) : replica_(std::to_string(replica)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo*) override {
    return new ReplicaTag(replica_);
  }

 private:
  std::string replica_;
};

// Runs `body(tenant)` for an authenticated caller within its tenant's limits, turning aios errors
// (and anything else) into the call's status.
template <typename F>
grpc::Status guarded(Tenants& tenants, grpc::ServerContext* context, F&& body) {
  try {
    const std::string& tenant = tenants.authenticate(*context);
    Tenants::Call call(tenants.in_flight(tenant), tenants.limit());
    body(tenant);
    return grpc::Status::OK;
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kPermissionDenied && e.field() == "api_key") {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, e.message());
    }
    return to_status(e, context);
  } catch (const c10::OutOfMemoryError&) {
    return to_status(Error(ErrorCode::kResourceExhausted, "memory", "the host ran out of device memory"), context);
  } catch (const std::bad_alloc&) {
    return to_status(Error(ErrorCode::kResourceExhausted, "memory", "the host ran out of memory"), context);
  } catch (const std::exception& e) {
    // The details (paths, library internals) stay in the host's log, not in the reply.
    fmt::print(stderr, "aios serve: internal error: {}\n", e.what());
    return to_status(Error(ErrorCode::kInternal, "", "internal error in the host (see its log)"), context);
  }
}

// What both services share: the backbone and the checks of what requests carry.
class Requests {
 public:
  Requests(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options)
      : backbone_(std::move(backbone)), options_(options), tenants(options), handles(options.replica) {}

  gradient::Backbone& backbone() { return *backbone_; }
  const HostOptions& options() const { return options_; }

  at::Tensor tensor(const v1::Tensor& t, const std::string& field) { return to_torch(t, field, options_.limits); }

  // [B,T,D] floating latents within the batch and token limits, in the backbone's dtype and device.
  at::Tensor latents(const v1::Tensor& t, const std::string& field) {
    at::Tensor x = tensor(t, field);
    if (x.dim() != 3 || !at::isFloatingType(x.scalar_type())) {
      fail(ErrorCode::kInvalidArgument, field, "expected a floating tensor [B,T,D], got {} of rank {}",
           c10::toString(x.scalar_type()), x.dim());
    }
    check_batch(x.size(0), x.size(1), field);
    return x.to(backbone_->device(), backbone_->dtype());
  }

  // A cotangent or hidden state: floating, moved to the backbone's dtype and device.
  at::Tensor floating(const v1::Tensor& t, const std::string& field) {
    at::Tensor x = tensor(t, field);
    if (!at::isFloatingType(x.scalar_type())) {
      fail(ErrorCode::kInvalidArgument, field, "expected a floating tensor, got {}", c10::toString(x.scalar_type()));
    }
    return x.to(backbone_->device(), backbone_->dtype());
  }

  void check_batch(int64_t B, int64_t T, const std::string& field) const {
    if (B > options_.max_batch) {
      fail(ErrorCode::kResourceExhausted, field, "batch {} exceeds the host's limit of {}", B, options_.max_batch);
    }
    if (B * T > options_.max_tokens) {
      fail(ErrorCode::kResourceExhausted, field, "{} tokens exceed the host's limit of {} per request", B * T,
           options_.max_tokens);
    }
  }

  ForwardOptions forward_options(const v1::ForwardOptions& o, const std::string& field) {
    ForwardOptions out;
    if (o.has_positions()) out.positions = tensor(o.positions(), field + ".positions");
    if (o.has_mask()) out.mask = tensor(o.mask(), field + ".mask");
    // Each requested layer is one more [B,T,D] in the reply: at most one per layer index.
    if (o.layers_size() > backbone_->config().num_layers + 1) {
      fail(ErrorCode::kInvalidArgument, field + ".layers", "expected at most {} layers, got {}",
           backbone_->config().num_layers + 1, o.layers_size());
    }
    out.layers.assign(o.layers().begin(), o.layers().end());
    out.allow_non_finite = o.allow_non_finite();
    out.recompute = o.recompute();
    return out;
  }

  Cotangents cotangents(const v1::Cotangents& c) {
    Cotangents out;
    if (c.has_hidden()) out.hidden = floating(c.hidden(), "cotangents.hidden");
    for (int i = 0; i < c.layers_size(); ++i) {
      const v1::Tensor& layer = c.layers(i);
      // A layer cotangent sent as an empty message stands for zero.
      out.layers.push_back(layer.dtype() == v1::DTYPE_UNSPECIFIED && layer.shape_size() == 0
                               ? at::Tensor()
                               : floating(layer, fmt::format("cotangents.layers[{}]", i)));
    }
    if (c.has_logits()) out.logits = floating(c.logits(), "cotangents.logits");
    return out;
  }

 private:
  std::shared_ptr<gradient::Backbone> backbone_;
  HostOptions options_;

 public:
  Tenants tenants;
  HandleOwners owners;
  WireHandles handles;
};

void write_output(const gradient::ForwardOutput& output, v1::ForwardResponse* out) {
  to_wire(output.hidden, out->mutable_hidden());
  for (const auto& layer : output.layers) to_wire(layer, out->add_layers());
}

class LatentService final : public v1::Latent::Service {
 public:
  explicit LatentService(Requests& requests) : r_(requests) {}

  grpc::Status Info(grpc::ServerContext* context, const v1::InfoRequest*, v1::ModelInfo* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      const auto& c = r_.backbone().config();
      out->set_architecture(c.architecture);
      out->set_vocab_size(c.vocab_size);
      out->set_hidden_size(c.hidden_size);
      out->set_num_layers(c.num_layers);
      out->set_num_heads(c.num_heads);
      out->set_num_kv_heads(c.num_kv_heads);
      out->set_head_dim(c.head_dim);
      out->set_intermediate_size(c.intermediate_size);
      out->set_max_positions(c.max_positions);
      out->set_tie_word_embeddings(c.tie_word_embeddings);
      out->set_dtype(wire_dtype(r_.backbone().dtype()));
      out->set_device(r_.backbone().device().str());
      out->set_max_batch(r_.options().max_batch);
      out->set_max_request_bytes(r_.options().limits.max_bytes);
    });
  }

  grpc::Status Embed(grpc::ServerContext* context, const v1::EmbedRequest* request, v1::Tensor* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      const at::Tensor ids = r_.tensor(request->ids(), "ids");
      if (ids.dim() == 2) r_.check_batch(ids.size(0), ids.size(1), "ids");
      to_wire(r_.backbone().embed(ids), out);
    });
  }

  grpc::Status Forward(grpc::ServerContext* context, const v1::ForwardRequest* request,
                       v1::ForwardResponse* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      write_output(r_.backbone().forward(r_.latents(request->latents(), "latents"),
                                         r_.forward_options(request->options(), "options")),
                   out);
    });
  }

  grpc::Status Classify(grpc::ServerContext* context, const v1::ClassifyRequest* request, v1::Tensor* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      const at::Tensor hidden = r_.floating(request->hidden(), "hidden");
      const int64_t rows = hidden.dim() > 0 ? hidden.numel() / std::max<int64_t>(1, hidden.size(-1)) : 0;
      r_.check_batch(1, rows, "hidden");
      // The reply holds rows x V logits: refuse before computing what could not be sent.
      const int64_t reply = rows * r_.backbone().config().vocab_size * static_cast<int64_t>(hidden.element_size());
      if (reply > r_.options().limits.max_bytes) {
        fail(ErrorCode::kResourceExhausted, "hidden", "{} rows of logits ({} bytes) exceed the host's limit of {} bytes",
             rows, reply, r_.options().limits.max_bytes);
      }
      to_wire(r_.backbone().classify(hidden), out);
    });
  }

 private:
  Requests& r_;
};

void write_gradients(const gradient::Gradients& g, v1::Gradients* out) { to_wire(g.latents, out->mutable_latents()); }

class GradientService final : public v1::Gradient::Service {
 public:
  explicit GradientService(Requests& requests) : r_(requests) {}

  grpc::Status ForwardKeep(grpc::ServerContext* context, const v1::ForwardRequest* request,
                           v1::ForwardResponse* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      const auto kept = r_.backbone().forward_keep(r_.latents(request->latents(), "latents"),
                                                   r_.forward_options(request->options(), "options"));
      try {
        // A caller that left (disconnected or out of time) never learns the handle: free the pass now.
        if (context->IsCancelled()) fail(ErrorCode::kUnavailable, "handle", "the call was cancelled; its pass is released");
        write_output(kept.output, out);
        out->set_handle(r_.handles.encode(kept.handle));
      } catch (...) {
        r_.backbone().release(kept.handle);
        throw;
      }
      r_.owners.add(kept.handle, tenant);
    });
  }

  grpc::Status Vjp(grpc::ServerContext* context, const v1::VjpRequest* request, v1::Gradients* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      const gradient::Handle handle = r_.handles.decode(request->handle());
      r_.owners.check(handle, tenant);
      try {
        write_gradients(r_.backbone().vjp(handle, r_.cotangents(request->cotangents())), out);
      } catch (const Error& e) {
        if (e.code() == ErrorCode::kNotFound) r_.owners.remove(handle);  // evicted or expired
        throw;
      }
    });
  }

  grpc::Status Release(grpc::ServerContext* context, const v1::ReleaseRequest* request, v1::Empty*) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      const gradient::Handle handle = r_.handles.decode(request->handle());
      r_.owners.check(handle, tenant);
      r_.owners.remove(handle);
      r_.backbone().release(handle);
    });
  }

  grpc::Status VjpStateless(grpc::ServerContext* context, const v1::VjpStatelessRequest* request,
                            v1::Gradients* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      write_gradients(r_.backbone().vjp(r_.latents(request->latents(), "latents"),
                                        r_.forward_options(request->options(), "options"),
                                        r_.cotangents(request->cotangents())),
                      out);
    });
  }

  grpc::Status ForwardBackward(grpc::ServerContext* context, const v1::ForwardBackwardRequest* request,
                               v1::FusedResult* out) override {
    return guarded(r_.tenants, context, [&](const std::string& tenant) {
      gradient::LossOptions loss;
      if (request->has_chunk_tokens()) {
        // One chunk of logits is chunk_tokens x V floats: bounded like a request's tokens.
        if (request->chunk_tokens() > r_.options().max_tokens) {
          fail(ErrorCode::kResourceExhausted, "chunk_tokens", "{} exceeds the host's limit of {}", request->chunk_tokens(),
               r_.options().max_tokens);
        }
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
          out_loss.teacher_latents = r_.latents(d.teacher_latents(), "distillation.teacher_latents");
          out_loss.teacher_options = r_.forward_options(d.teacher_options(), "distillation.teacher_options");
        }
        if (d.has_teacher_index()) out_loss.teacher_index = r_.tensor(d.teacher_index(), "distillation.teacher_index");
        if (d.has_weights()) out_loss.weights = r_.tensor(d.weights(), "distillation.weights");
        if (d.has_temperature()) out_loss.temperature = d.temperature();
        loss.loss = out_loss;
      } else {
        fail(ErrorCode::kInvalidArgument, "loss", "expected cross_entropy or distillation, got neither");
      }
      const auto result = r_.backbone().forward_backward(r_.latents(request->latents(), "latents"),
                                                         r_.forward_options(request->options(), "options"), loss);
      to_wire(result.loss, out->mutable_loss());
      to_wire(result.losses, out->mutable_losses());
      write_gradients(result.grad, out->mutable_grad());
    });
  }

 private:
  Requests& r_;
};

}  // namespace

std::map<std::string, std::string> read_key_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(ErrorCode::kNotFound, path, "cannot open the key file");
  std::map<std::string, std::string> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    std::istringstream fields(line);
    std::string tenant, key, extra;
    if (!(fields >> tenant) || tenant.starts_with("#")) continue;
    if (!(fields >> key) || (fields >> extra)) {
      fail(ErrorCode::kInvalidArgument, fmt::format("{}:{}", path, number), "expected \"TENANT KEY\"");
    }
    if (!keys.emplace(key, tenant).second) {
      fail(ErrorCode::kInvalidArgument, fmt::format("{}:{}", path, number), "this key was given to another tenant already");
    }
  }
  if (keys.empty()) fail(ErrorCode::kInvalidArgument, path, "expected at least one \"TENANT KEY\" line, got none");
  return keys;
}

struct Host::Impl {
  Impl(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options)
      : requests(std::move(backbone), options), latent(requests), gradient(requests) {}
  Requests requests;
  LatentService latent;
  GradientService gradient;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

Host::Host(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options) {
  if (options.replica < 0 || options.replica > 0xffff) {
    fail(ErrorCode::kInvalidArgument, "replica", "expected a number in [0, 65535], got {}", options.replica);
  }
  impl_ = std::make_unique<Impl>(std::move(backbone), options);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<ReplicaTags>(options.replica));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &impl_->port);
  // The tensor limit bounds a request; the message limit leaves room for several tensors in one.
  const int64_t message_limit = std::min<int64_t>(std::numeric_limits<int>::max(), 4 * options.limits.max_bytes);
  builder.SetMaxReceiveMessageSize(static_cast<int>(message_limit));
  builder.SetMaxSendMessageSize(static_cast<int>(message_limit));
  builder.RegisterService(&impl_->latent);
  builder.RegisterService(&impl_->gradient);
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

// The Gradient service: kept passes and their vector-Jacobian products, stateless ones, and the
// fused losses.
#include <atomic>
#include <random>

#include "aios/v1/aios.pb.h"
#include "aios/wire/messages.h"
#include "services.h"

namespace aios::server {
namespace {

namespace messages = wire::messages;

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
  // How many passes the tenant keeps, and their bytes.
  std::pair<std::size_t, std::size_t> totals() const {
    std::lock_guard lock(tenant_.mutex);
    return {tenant_.handles.size(), tenant_.kept_bytes};
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

class GradientService final : public Handlers {
 public:
  GradientService(Requests& requests, Calls& calls) : r_(requests), handles_(requests.options().replica) {
    calls.add("Gradient.ForwardKeep", this, &GradientService::forward_keep);
    calls.add("Gradient.Vjp", this, &GradientService::vjp);
    calls.add("Gradient.Release", this, &GradientService::release);
    calls.add("Gradient.VjpStateless", this, &GradientService::vjp_stateless);
    calls.add("Gradient.ForwardBackward", this, &GradientService::forward_backward);
    calls.add("Gradient.Kept", this, &GradientService::kept);
  }

  grpc::Status forward_keep(grpc::ServerContext* context, const v1::ForwardRequest* request,
                           v1::ForwardResponse* out) {
    return guarded(r_, context, [&](Caller& caller) {
      // Every tenant's passes that are gone or unclaimed are released before a new one is kept.
      for (TenantState* tenant : r_.tenants()) free_passes(KeptPasses::prune(*tenant, r_.options()));
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
        messages::write_output(kept.output, out, kWriteTensor);
        out->set_handle(handles_.encode(kept.handle));
      } catch (...) {
        passes.remove(kept.handle);
        r_.backbone().release(kept.handle);
        throw;
      }
    });
  }

  grpc::Status vjp(grpc::ServerContext* context, const v1::VjpRequest* request, v1::Gradients* out) {
    return guarded(r_, context, [&](Caller& caller) {
      KeptPasses passes(caller);
      const gradient::Handle handle = handles_.decode(request->handle());
      const std::shared_ptr<CurrentCall> call = passes.use(handle);
      try {
        CurrentCall::Scope computing(*call, *context);
        messages::write_gradients(r_.backbone().vjp(handle, cotangents(request->cotangents())), out, kWriteTensor);
      } catch (const Error& e) {
        if (e.code() == ErrorCode::kNotFound) passes.remove(handle);  // evicted or expired
        throw;
      }
    });
  }

  grpc::Status release(grpc::ServerContext* context, const v1::ReleaseRequest* request, v1::Empty*) {
    return guarded(r_, context, [&](Caller& caller) {
      KeptPasses passes(caller);
      const gradient::Handle handle = handles_.decode(request->handle());
      passes.use(handle);
      passes.remove(handle);
      r_.backbone().release(handle);
    }, Work::kBookkeeping);
  }

  grpc::Status vjp_stateless(grpc::ServerContext* context, const v1::VjpStatelessRequest* request,
                            v1::Gradients* out) {
    return guarded(r_, context, [&](Caller& caller) {
      messages::write_gradients(r_.backbone().vjp(r_.latents(caller, request->latents(), "latents"),
                                                  r_.forward_options(caller, request->options(), "options", *context),
                                                  cotangents(request->cotangents())),
                                out, kWriteTensor);
    });
  }

  grpc::Status forward_backward(grpc::ServerContext* context, const v1::ForwardBackwardRequest* request,
                               v1::FusedResult* out) {
    return guarded(r_, context, [&](Caller& caller) {
      RequestReader in{r_, caller, *context};
      const gradient::LossOptions loss = messages::read_loss<ali::TorchTensors>(*request, in);
      // One chunk of logits is chunk_tokens x V floats: bounded like a request's tokens.
      if (request->has_chunk_tokens()) r_.check_tokens(caller, 1, loss.chunk_tokens, "chunk_tokens");
      const auto result = r_.backbone().forward_backward(r_.latents(caller, request->latents(), "latents"),
                                                         r_.forward_options(caller, request->options(), "options", *context),
                                                         loss);
      wire::to_wire(result.loss, out->mutable_loss());
      wire::to_wire(result.losses, out->mutable_losses());
      messages::write_gradients(result.grad, out->mutable_grad(), kWriteTensor);
    });
  }

  // The caller's tenant's passes, after letting go of those past their time-to-lives (as a
  // ForwardKeep does first).
  grpc::Status kept(grpc::ServerContext* context, const v1::KeptRequest*, v1::KeptInfo* out) {
    return guarded(r_, context, [&](Caller& caller) {
      free_passes(KeptPasses::prune(caller.state(), r_.options()));
      const auto [passes, bytes] = KeptPasses(caller).totals();
      out->set_passes(static_cast<int64_t>(passes));
      out->set_bytes(static_cast<int64_t>(bytes));
    }, Work::kBookkeeping);
  }

 private:
  gradient::Cotangents cotangents(const v1::Cotangents& c) { return messages::read_cotangents<ali::TorchTensors>(c, r_); }

  // Frees in the backbone the passes a tenant's table let go.
  void free_passes(const std::vector<gradient::Handle>& gone) {
    for (gradient::Handle handle : gone) {
      try {
        r_.backbone().release(handle);
      } catch (const Error&) {
        // evicted meanwhile: nothing left to free
      }
    }
  }

  Requests& r_;
  WireHandles handles_;
};

}  // namespace

std::unique_ptr<Handlers> add_gradient_calls(Requests& requests, Calls& calls) {
  return std::make_unique<GradientService>(requests, calls);
}

}  // namespace aios::server

// What the host's services share (internal to aios_server): tenants and their state, the checks
// of what requests carry, and the wrapper that turns a call's failures into its status.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include <grpcpp/server_context.h>

#include "aios/fail.h"
#include "aios/gradient_api/backbone.h"
#include "aios/server/host.h"
#include "compute.h"
#include "memory.h"
#include "tensors.h"

namespace aios::server {

// The call computing with a kept pass now (its ForwardKeep, then each Vjp in turn), whose leaving
// stops the pass's forward or backward between blocks (ForwardOptions::cancelled); none between
// calls.
class CurrentCall {
 public:
  bool cancelled() const {
    std::lock_guard lock(mutex_);
    return context_ != nullptr && context_->IsCancelled();
  }
  // Makes `context` the current call while it lives.
  class Scope {
   public:
    Scope(CurrentCall& call, const grpc::ServerContext& context) : call_(call) { call_.set(&context); }
    ~Scope() { call_.set(nullptr); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CurrentCall& call_;
  };

 private:
  void set(const grpc::ServerContext* context) {
    std::lock_guard lock(mutex_);
    context_ = context;
  }
  mutable std::mutex mutex_;
  const grpc::ServerContext* context_ = nullptr;
};

// One tenant: its quota and what it holds on the host. Other tenants never reach it.
struct TenantState {
  std::string name;
  TenantQuota quota;
  // The tenant's passes in the activation store: unique in the process (hosts may share a
  // backbone), so that making room for a pass evicts only this tenant's own.
  gradient::StoreOwner store_owner = 0;
  std::atomic<int64_t> in_flight{0};

  // The tenant's folders in the state folder: shared to read them, exclusive to change them, so
  // that a load never sees half of a save. Taken before `mutex`, never while holding it.
  std::shared_mutex files;

  std::mutex mutex;  // guards everything below
  struct Kept {
    std::size_t bytes = 0;
    std::chrono::steady_clock::time_point last_use;
    bool claimed = false;  // used by a Vjp or Release since it was kept
    std::shared_ptr<CurrentCall> call;
  };
  // Every pass the tenant keeps, until released, dropped by the store (reported by the tenant's
  // own ForwardKeep, the only call that evicts its passes), found gone by a Vjp, or pruned.
  std::unordered_map<gradient::Handle, Kept> handles;
  std::size_t kept_bytes = 0;
  std::map<std::string, std::shared_ptr<ali::Extension>> extensions;  // id -> live extension
  std::map<std::string, std::filesystem::path> decoders;              // name -> its folder
};

// The tenant a call runs for, counted in flight while the Caller lives.
class Caller {
 public:
  explicit Caller(TenantState& tenant);
  ~Caller();
  Caller(const Caller&) = delete;
  Caller& operator=(const Caller&) = delete;

  TenantState& state() const { return tenant_; }
  const TenantQuota& quota() const { return tenant_.quota; }

 private:
  TenantState& tenant_;
};

// Names a client chooses (saved extensions, decoders, decoder files) become file names: a plain
// [A-Za-z0-9_.-] name of 1 to 64 characters, not starting with a dot. Throws
// Error(kInvalidArgument, field).
void check_name(const std::string& name, const std::string& field);

class Requests {
 public:
  Requests(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options);
  ~Requests();

  gradient::Backbone& backbone() { return *backbone_; }
  const HostOptions& options() const { return options_; }
  // The folder of `tenant`'s saved state, `kind` = "extensions" or "decoders" (created on demand).
  std::filesystem::path state_folder(const TenantState& tenant, const char* kind) const;
  bool has_state_dir() const { return !options_.state_dir.empty(); }
  IdleRelease& idle_release() { return idle_release_; }
  // Runs `work` on a compute thread unless the caller left (or its deadline passed) while it
  // waited for one: Error(kUnavailable) then, nothing computed.
  void compute(const grpc::ServerContext& context, const std::function<void()>& work);

  std::vector<TenantState*> tenants() const;
  // The caller's tenant; throws Error(kPermissionDenied, "api_key") for a missing or unknown key.
  TenantState& authenticate(const grpc::ServerContext& context);

  at::Tensor tensor(const v1::Tensor& t, const std::string& field) { return to_torch(t, field, options_.limits); }
  // [B,T,D] floating latents within the batch limit and the caller's token quota, in the
  // backbone's dtype and device.
  at::Tensor latents(const Caller& caller, const v1::Tensor& t, const std::string& field);
  // A floating tensor (cotangent, hidden state, rows) in the backbone's dtype and device.
  at::Tensor floating(const v1::Tensor& t, const std::string& field);
  void check_tokens(const Caller& caller, int64_t B, int64_t tokens, const std::string& field) const;

  // With ForwardOptions::cancelled asking whether `context`'s caller has left.
  gradient::ForwardOptions forward_options(const Caller& caller, const v1::ForwardOptions& o, const std::string& field,
                                           const grpc::ServerContext& context);
  gradient::Cotangents cotangents(const v1::Cotangents& c);
  // The caller's live extension `id` (NOT_FOUND otherwise), with `rows` written into it first.
  std::shared_ptr<ali::Extension> extension(const Caller& caller, const std::string& id, const v1::ExtensionRows* rows,
                                            const std::string& field);
  std::shared_ptr<ali::Extension> extension(const Caller& caller, const v1::ExtensionRef& ref, const std::string& field) {
    return extension(caller, ref.id(), ref.has_rows() ? &ref.rows() : nullptr, field);
  }
  // Writes `rows` ([K,D] each) into `extension`'s live rows.
  void assign_rows(ali::Extension& extension, const v1::ExtensionRows& rows, const std::string& field);

 private:
  std::shared_ptr<gradient::Backbone> backbone_;
  HostOptions options_;
  std::map<std::string, std::unique_ptr<TenantState>> tenants_;  // fixed after construction
  // SHA-256 of each API key: a sent key's digest is compared with all of them in constant time,
  // so that the time to answer does not say how much of a key was right.
  struct KeyDigest {
    std::array<unsigned char, 32> digest;
    TenantState* tenant;
  };
  std::vector<KeyDigest> keys_;
  std::filesystem::path scratch_;  // decoders of a host without a state folder
  IdleRelease idle_release_;
  ComputeThreads compute_;
};

void write_rows(const ali::Extension& extension, v1::ExtensionRows* out);

// Where a call's body runs: tensor work on the host's compute threads (compute.h); bookkeeping that
// enters none of LibTorch's parallel regions (lookups, the tokenizer, a few embedding rows) on the
// gRPC thread it arrived on, sparing the ~20 us of handing it over.
enum class Work { kCompute, kBookkeeping };

// Runs `body(caller)` for an authenticated caller within its tenant's limits, turning aios errors
// (and anything else) into the call's status.
grpc::Status guarded(Requests& requests, grpc::ServerContext* context, const std::function<void(Caller&)>& body,
                     Work work = Work::kCompute);

}  // namespace aios::server

// The host's tenants (internal to aios_server): who a call runs for, found by its key in constant
// time, and what each tenant holds on the host. Other tenants never reach a tenant's state.
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
#include <vector>

#include <grpcpp/server_context.h>

#include "aios/gradient_api/backbone.h"
#include "aios/server/host.h"

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
  struct HeldSession {
    std::shared_ptr<ali::Session> session;
    std::size_t bytes = 0;  // its cache's, as of its last generation
    std::chrono::steady_clock::time_point last_use;
    bool busy = false;  // a generation is using it
  };
  std::map<std::string, HeldSession> sessions;  // id -> a KV cache kept between generations
  std::size_t session_bytes = 0;                // of all of them
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

// The tenants of a host: one per tenant named by HostOptions::api_keys (the tenant "" for a host
// without keys), each with its quota (HostOptions::quotas, else HostOptions::quota) and an owner of
// kept passes of its own. Fixed after construction.
class Tenants {
 public:
  // Throws Error(kInvalidArgument) for an empty key or a tenant name check_name refuses.
  explicit Tenants(const HostOptions& options);
  std::vector<TenantState*> all() const;
  // The caller's tenant; throws Error(kPermissionDenied, "api_key") for a missing or unknown key.
  TenantState& authenticate(const grpc::ServerContext& context) const;

 private:
  std::map<std::string, std::unique_ptr<TenantState>> tenants_;
  // SHA-256 of each API key: a sent key's digest is compared with all of them in constant time,
  // so that the time to answer does not say how much of a key was right.
  struct KeyDigest {
    std::array<unsigned char, 32> digest;
    TenantState* tenant;
  };
  std::vector<KeyDigest> keys_;
};

}  // namespace aios::server

// What the host's services share (internal to aios_server): the backbone, the tenants
// (tenants.h), the checks and decoding of what requests carry, the compute threads, and the
// wrapper that turns a call's failures into its status.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/server_context.h>

#include "aios/fail.h"
#include "aios/gradient_api/backbone.h"
#include "aios/server/host.h"
#include "aios/wire/tensors.h"
#include "compute.h"
#include "memory.h"
#include "tenants.h"

namespace aios::server {

class Requests {
 public:
  Requests(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options);
  ~Requests();

  gradient::Backbone& backbone() { return *backbone_; }
  const HostOptions& options() const { return options_; }
  // The folder of `tenant`'s saved state, `kind` = "extensions" or "decoders" (created on demand).
  std::filesystem::path state_folder(const TenantState& tenant, const char* kind) const;
  bool has_state_dir() const { return !options_.state_dir.empty(); }
  // An id for what the host keeps for a tenant (an extension, a session), "REPLICA.EPOCH.N": a load
  // balancer routes calls naming it to this host (RemoteBackbone sends the replica), and a
  // restarted host does not take the ids of its previous life for its own.
  std::string new_id() { return fmt::format("{}.{:x}.{}", options_.replica, epoch_, next_id_.fetch_add(1)); }
  IdleRelease& idle_release() { return idle_release_; }
  // Runs `work` on a compute thread unless the caller left (or its deadline passed) while it
  // waited for one: Error(kUnavailable) then, nothing computed.
  void compute(const grpc::ServerContext& context, const std::function<void()>& work);

  std::vector<TenantState*> tenants() const { return tenants_.all(); }
  TenantState& authenticate(const grpc::ServerContext& context) const { return tenants_.authenticate(context); }

  at::Tensor tensor(const v1::Tensor& t, const std::string& field) { return wire::to_torch(t, field, options_.limits); }
  // [B,T,D] floating latents within the batch limit and the caller's token quota, in the
  // backbone's dtype and device.
  at::Tensor latents(const Caller& caller, const v1::Tensor& t, const std::string& field);
  // A floating tensor (cotangent, hidden state, rows) in the backbone's dtype and device.
  at::Tensor floating(const v1::Tensor& t, const std::string& field);
  void check_tokens(const Caller& caller, int64_t B, int64_t tokens, const std::string& field) const;

  // With ForwardOptions::cancelled asking whether `context`'s caller has left.
  gradient::ForwardOptions forward_options(const Caller& caller, const v1::ForwardOptions& o, const std::string& field,
                                           const grpc::ServerContext& context);
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
  Tenants tenants_;
  std::filesystem::path scratch_;  // decoders of a host without a state folder
  IdleRelease idle_release_;
  ComputeThreads compute_;
  const uint32_t epoch_ = std::random_device{}();
  std::atomic<uint64_t> next_id_{1};
};

void write_rows(const ali::Extension& extension, v1::ExtensionRows* out);

// How the host reads the tensors of one caller's request (wire/messages.h reads its messages
// through it): as sent, floating in the backbone's dtype and device, latents within the caller's
// quota, and a teacher's forward options as the call's own.
struct RequestReader {
  Requests& requests;
  const Caller& caller;
  const grpc::ServerContext& context;

  at::Tensor tensor(const v1::Tensor& t, const std::string& field) { return requests.tensor(t, field); }
  at::Tensor floating(const v1::Tensor& t, const std::string& field) { return requests.floating(t, field); }
  at::Tensor latents(const v1::Tensor& t, const std::string& field) { return requests.latents(caller, t, field); }
  gradient::ForwardOptions options(const v1::ForwardOptions& o, const std::string& field) {
    return requests.forward_options(caller, o, field, context);
  }
};

// Every tensor of a reply.
inline constexpr auto kWriteTensor = [](const at::Tensor& t, v1::Tensor* out) { wire::to_wire(t, out); };

// Where a call's body runs: tensor work on the host's compute threads (compute.h); bookkeeping that
// enters none of LibTorch's parallel regions (lookups, the tokenizer, a few embedding rows) on the
// gRPC thread it arrived on, sparing the ~20 us of handing it over.
enum class Work { kCompute, kBookkeeping };

// Runs `body(caller)` for an authenticated caller within its tenant's limits, turning aios errors
// (and anything else) into the call's status.
grpc::Status guarded(Requests& requests, grpc::ServerContext* context, const std::function<void(Caller&)>& body,
                     Work work = Work::kCompute);

}  // namespace aios::server

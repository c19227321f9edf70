// aios/server/host.h — a backbone hosted over gRPC: the Latent and Gradient services of
// server/proto/aios/v1/aios.proto, plus the standard gRPC health service.
//
// Every request is checked before any work (wire.h for its tensors; HostOptions for batch and
// token limits); errors go back as statuses with the ErrorCode as code and the field in the
// trailing metadata. Calls run concurrently on gRPC's thread pool (the backbone is thread-safe).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "aios/gradient_api/backbone.h"
#include "aios/server/wire.h"

namespace aios::server {

struct HostOptions {
  // host:port to listen on; loopback unless the caller says otherwise. Port 0 = any free port
  // (Host::port() tells which).
  std::string listen = "127.0.0.1:50051";
  WireLimits limits;
  int64_t max_batch = 256;      // B of one request
  int64_t max_tokens = 1 << 16;  // B x T of one request
  // API key -> tenant name. Callers send "authorization: Bearer KEY"; a missing or unknown key is
  // PERMISSION_DENIED (UNAUTHENTICATED on the wire). Empty: no key is needed and every caller is
  // one tenant (for loopback use). A tenant's handles are invisible to the others (NOT_FOUND).
  std::map<std::string, std::string> api_keys;
  int64_t max_concurrent_per_tenant = 16;  // calls in flight per tenant; more are RESOURCE_EXHAUSTED
  // Which of several replicas behind one load balancer this host is, in [0, 65535]. The top 16
  // bits of every handle it gives out name it, so that handle-bearing calls can be routed back to
  // it (RemoteBackbone sends them with "aios-replica: N"); a handle naming another replica is
  // NOT_FOUND here. Every reply carries "aios-replica: N" in its initial metadata.
  int64_t replica = 0;
};

// Reads a key file: one "TENANT KEY" pair per line; blank lines and lines starting with # are
// skipped. Throws Error(kNotFound) for a missing file, Error(kInvalidArgument) naming the line
// number (never the key) for a malformed line or a key given twice, and for a file without keys
// (which would leave the host open to everyone).
std::map<std::string, std::string> read_key_file(const std::string& path);

class Host {
 public:
  // Starts serving `backbone` (its calls may run from several threads at once). Throws
  // Error(kUnavailable, "listen") when the address cannot be bound.
  Host(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options = {});
  ~Host();  // shuts down, cancelling calls still running after a short grace period
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  int port() const;
  // Blocks until shutdown() is called from another thread.
  void wait();
  // Stops taking calls and lets those in flight finish for up to `grace`, then cancels them.
  void shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::server

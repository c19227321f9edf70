// aios/server/host.h — a backbone hosted over gRPC: the Latent, Gradient, Tokenizer and Generation
// services of wire/proto/aios/v1/aios.proto, plus the standard gRPC health service.
//
// Every request is checked before any work (aios/wire/connect.h for its tensors; HostOptions for batch and
// tenant quotas); errors go back as statuses with the ErrorCode as code and the field in the
// trailing metadata. Calls run concurrently on gRPC's thread pool (the backbone is thread-safe).
#pragma once

#include <chrono>
#include <limits>
#include <map>
#include <memory>
#include <string>

#include "aios/export.h"
#include "aios/gradient_api/backbone.h"
#include "aios/wire/connect.h"

AIOS_EXPORT_BEGIN

namespace aios::server {

// What one tenant may use at a time; beyond it a request is RESOURCE_EXHAUSTED before any work.
struct TenantQuota {
  // Tokens of one request: B x T of latents or ids, B x (T + max_new_tokens) of a generation, the
  // ids an Encode returns, the rows of logits a Classify returns.
  int64_t max_tokens = 1 << 16;
  // Activations kept under the tenant's handles (ForwardKeep), by the backbone's own estimate.
  // Unlimited by default: the activation store's own budget bounds all tenants together.
  std::size_t max_store_bytes = std::numeric_limits<std::size_t>::max();
  int64_t max_concurrent = 16;   // calls in flight
  int64_t max_extensions = 64;   // live vocabulary extensions
  int64_t max_decoders = 16;     // registered decoders
  int64_t max_sessions = 16;     // KV caches kept between generations (CreateSession)
  // Memory of those caches together, checked before each generation against the most its cache
  // can grow to.
  std::size_t max_session_bytes = std::size_t{1} << 30;
};

struct HostOptions {
  // host:port to listen on; loopback unless the caller says otherwise. Port 0 = any free port
  // (Host::port() tells which). "unix:PATH" listens on a Unix socket (clients connect to the same
  // string; Host::port() is then not a TCP port).
  std::string listen = "127.0.0.1:50051";
  wire::TensorLimits limits;
  // One gRPC message, received or sent. A larger request comes through Chunked.Call (clients of
  // aios split it), whose reply is sent in chunks below this size.
  int64_t max_message_bytes = std::numeric_limits<int32_t>::max();
  int64_t max_batch = 256;  // B of one request, for every tenant
  // API key -> tenant name. Callers send "authorization: Bearer KEY"; a missing or unknown key is
  // PERMISSION_DENIED (UNAUTHENTICATED on the wire). Empty: no key is needed and every caller is
  // one tenant, "" (for loopback use). A tenant's handles, extensions and decoders are invisible to
  // the others (NOT_FOUND).
  std::map<std::string, std::string> api_keys;
  TenantQuota quota;                            // every tenant's, unless named in `quotas`
  std::map<std::string, TenantQuota> quotas;    // tenant -> its own
  // A kept pass is counted against its tenant's store quota until released, found gone by a Vjp,
  // or unused for this long (the activation store's time-to-live: it has expired there too).
  std::chrono::milliseconds handle_ttl = std::chrono::minutes(10);
  // A kept pass whose handle no Vjp or Release has used for this long after ForwardKeep is
  // released: its caller most likely left before the reply reached it.
  std::chrono::milliseconds unclaimed_ttl = std::chrono::minutes(1);
  // A session that no call has used for this long is deleted (its caller most likely left).
  std::chrono::milliseconds session_ttl = std::chrono::minutes(10);
  // TLS: PEM files of the host's certificate (chain) and private key. Both empty: plaintext (for
  // loopback and trusted networks; keys then travel in clear text).
  std::string tls_certificate;
  std::string tls_private_key;
  // Where saved extensions and registered decoders live, one folder per tenant. Empty: decoders go
  // to a temporary folder removed with the host, and SaveExtension is FAILED_PRECONDITION.
  std::string state_dir;
  // Which of several replicas behind one load balancer this host is, in [0, 65535]. The top 16
  // bits of every handle it gives out name it, so that handle-bearing calls can be routed back to
  // it (RemoteBackbone sends them with "aios-replica: N"); a handle naming another replica is
  // NOT_FOUND here. Every reply carries "aios-replica: N" in its initial metadata.
  int64_t replica = 0;
  // Threads that calls compute on: this many calls compute at once (more wait their turn), each
  // with LibTorch's intra-op threads; a lone caller always on the same one, so that its OpenMP
  // workers stay warm. gRPC's threads receive, reply and do the bookkeeping calls (Release, lists,
  // the tokenizer) themselves.
  int64_t compute_threads = 4;
  // Plain forwards (no positions, mask, layers or extension) that wait while another forward of
  // their shape computes are computed as one batch when it is done (at most max_batch rows),
  // each caller getting its rows: equal to separate calls to float tolerance, not bit for bit (a
  // batch's matrix products sum in another order). Concurrent callers are batched only as far as
  // compute threads hold them.
  bool batch_forwards = true;
  // Once no call has been in flight for this long, the memory the allocator keeps for reuse goes
  // back to the system (see tune_allocator_for_hosting). Zero: never.
  std::chrono::milliseconds release_memory_after = std::chrono::seconds(2);
};

// A key file: one "TENANT KEY [max_tokens=N] [max_store_bytes=N] [max_concurrent=N]
// [max_extensions=N] [max_decoders=N] [max_sessions=N] [max_session_bytes=N]" per line (a tenant's quota fields on any of its lines);
// blank lines and lines starting with # are skipped.
struct KeyFile {
  std::map<std::string, std::string> api_keys;    // key -> tenant
  std::map<std::string, TenantQuota> quotas;      // tenants with quota fields: `defaults` overridden by them
};

// Throws Error(kNotFound) for a missing file, Error(kInvalidArgument) naming the line number (never
// the key) for a malformed line, an unknown quota field, a key given twice or a tenant name outside
// [A-Za-z0-9_.-], and for a file without keys (which would leave the host open to everyone).
KeyFile read_key_file(const std::string& path, const TenantQuota& defaults = {});
// The same for a key file's text; `path` names it in errors.
KeyFile parse_key_file(const std::string& text, const std::string& path, const TenantQuota& defaults = {});

// Sets this process's allocator (glibc's malloc) up for a host: one heap for all threads, whose
// freed memory (of blocks up to 32 MiB, glibc's limit; larger ones are still mapped afresh each
// time) stays for the next call instead of going back to the system at every free, so that
// the pages of a large pass are not faulted in afresh by every call (about 0.8M page faults, 1-5 s
// of system time, per 8x256 forward+vjp of the default model); a Host gives it back once idle
// (HostOptions::release_memory_after). Call it first in main(), before other threads start. Leaves
// the allocator as it is when the environment configures it (MALLOC_* variables or GLIBC_TUNABLES),
// and does nothing on other C libraries. `aios serve` calls it.
void tune_allocator_for_hosting();

class Host {
 public:
  // Starts serving `backbone` (its calls may run from several threads at once). Throws
  // Error(kUnavailable, "listen") when the address cannot be bound, Error(kInvalidArgument,
  // "dtype") for a backbone in a dtype other than float32, bfloat16 or float16.
  Host(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options = {});
  ~Host();  // shuts down, cancelling calls still running after a short grace period
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  int port() const;
  // What the gRPC health service says (SERVING from the start): false while the backbone cannot
  // compute (a pipeline stage lost), true once it can again.
  void set_serving(bool serving);
  // Blocks until shutdown() is called from another thread.
  void wait();
  // Stops taking calls and lets those in flight finish for up to `grace`, then cancels them.
  void shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::server
AIOS_EXPORT_END

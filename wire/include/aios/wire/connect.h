// aios/wire/connect.h — how the two ends of the wire contract (wire/proto/aios/v1/aios.proto)
// meet: the options both clients take (RemoteBackbone and the thin aios::client::Client), the
// transport their calls go through, and the limits a host sets. The one public header of aios_wire:
// the messages protoc generates stay internal to aios. No gRPC, no LibTorch.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::wire {

struct ConnectOptions {
  std::string api_key;  // sent as "authorization: Bearer KEY"; empty for a host without keys
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  // deadline of each call
  int64_t max_message_bytes = int64_t{1} << 31;                // largest reply message accepted
  // TLS: a host started with a certificate. tls_root_certificates: a PEM file of the certificates
  // to trust (a self-signed host's own); empty = the system's.
  bool tls = false;
  std::string tls_root_certificates;
  // A request larger than this goes to the host in chunks of this size (Chunked.Call), and its
  // reply comes back in chunks: no single message exceeds what the host or a proxy accepts. >= 1.
  int64_t chunk_bytes = int64_t{32} << 20;
};

// What one tensor of a request may be (a host's HostOptions::limits; a client reads replies with
// its own): beyond it the request is kResourceExhausted before anything is allocated for it.
struct TensorLimits {
  int64_t max_rank = 4;                 // [B,T,T] masks are the highest rank the API takes
  int64_t max_dim = int64_t{1} << 24;   // any one dimension (vocabularies fit)
  int64_t max_bytes = int64_t{1} << 30;  // one tensor
};

// What a host allows (its Info reply): requests beyond it fail with kResourceExhausted before any work.
struct HostLimits {
  int64_t max_batch = 0;          // largest B per request
  int64_t max_request_bytes = 0;  // largest tensor per request
};

// One call of the contract as a transport carries it: the method, its routing metadata and
// optionally a deadline (the call gets the shorter of it and the transport's own).
struct Call {
  std::string method;  // "/aios.v1.Latent/Forward": "/" + service full name + "/" + method name
  std::vector<std::pair<std::string, std::string>> metadata;  // e.g. {"aios-replica", "3"} for a load balancer
  std::optional<std::chrono::milliseconds> timeout;           // absent: the transport's own
};

// How the calls of a client reach a host: serialized requests out, serialized replies back. Both
// clients make every call through one, so a host's bytes reach the same checks whatever carries
// them. grpc_transport() is the one connect(address) makes; a test or a fuzz target may
// give a client its own. Implementations are thread-safe.
class Transport {
 public:
  virtual ~Transport() = default;

  // The unary call: returns the reply's bytes. Throws the aios::Error a failed call carries
  // (kUnavailable for a host that does not answer in time). The request is the transport's to keep.
  virtual std::string call(const Call& call, std::string request) = 0;

  // A call the host answers with a stream of replies (Generation.Generate).
  class Stream {
   public:
    virtual ~Stream() = default;  // cancels a stream that has not ended
    // The next reply's bytes; nullopt once the stream has ended well. Throws the call's aios::Error.
    virtual std::optional<std::string> next() = 0;
  };
  virtual std::unique_ptr<Stream> stream(const Call& call, std::string request) = 0;
};

// The transport to the host at `address` ("host:port", "unix:PATH") over gRPC with the options:
// TLS, the key ("authorization: Bearer KEY"), each call's deadline, the largest reply; a request
// larger than chunk_bytes goes through Chunked.Call in chunks of that size, and its reply comes back
// in chunks. A failed call throws the aios::Error its status carries (transport failures:
// kUnavailable; a missed deadline: kUnavailable naming "deadline"). Connects lazily: the first call
// fails with kUnavailable when no host answers. Throws Error(kInvalidArgument, "chunk_bytes") for
// chunk_bytes < 1.
std::shared_ptr<Transport> grpc_transport(const std::string& address, const ConnectOptions& options);

}  // namespace aios::wire
AIOS_EXPORT_END

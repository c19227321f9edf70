// aios/server/connect.h — how a client reaches a host (`aios serve`): the options both clients of
// the contract take, RemoteBackbone and the thin aios::client::Client. No gRPC, no LibTorch.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace aios::server {

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

// What a host allows (its Info reply): requests beyond it fail with kResourceExhausted before any work.
struct HostLimits {
  int64_t max_batch = 0;          // largest B per request
  int64_t max_request_bytes = 0;  // largest tensor per request
};

}  // namespace aios::server

// The host's services (internal to aios_server): each adds its handlers to the table of calls
// (calls.h) and keeps what they share; host.cpp makes them and registers the table with gRPC.
#pragma once

#include <memory>

#include <grpcpp/impl/service_type.h>

#include "calls.h"
#include "requests.h"

namespace aios::server {

// The state of one service's handlers: it must outlive the table's use of them.
class Handlers {
 public:
  virtual ~Handlers() = default;
};

std::unique_ptr<Handlers> add_latent_calls(Requests& requests, Calls& calls);
std::unique_ptr<Handlers> add_gradient_calls(Requests& requests, Calls& calls);
std::unique_ptr<Handlers> add_tokenizer_calls(Requests& requests, Calls& calls);
std::unique_ptr<Handlers> add_generation_calls(Requests& requests, Calls& calls);

// Chunked.Call: any unary call of `calls`, its request and reply carried as streams of chunks.
std::unique_ptr<grpc::Service> make_chunked_service(Requests& requests, const Calls& calls);

// The size of the chunks of a reply (smaller where the host's message limit is).
constexpr std::size_t kChunkBytes = std::size_t{4} << 20;

}  // namespace aios::server

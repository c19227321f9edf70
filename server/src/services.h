// The Tokenizer, Generation and Chunked services (internal to aios_server; host.cpp registers them).
#pragma once

#include <memory>

#include <grpcpp/impl/service_type.h>

#include "requests.h"

namespace aios::server {

std::unique_ptr<grpc::Service> make_tokenizer_service(Requests& requests);
std::unique_ptr<grpc::Service> make_generation_service(Requests& requests);

// The services whose unary calls the Chunked service carries.
struct ServiceSet {
  grpc::Service& latent;
  grpc::Service& gradient;
  grpc::Service& tokenizer;
  grpc::Service& generation;
};
std::unique_ptr<grpc::Service> make_chunked_service(Requests& requests, const ServiceSet& services);

// The size of the chunks of a reply (smaller where the host's message limit is).
constexpr std::size_t kChunkBytes = std::size_t{4} << 20;

}  // namespace aios::server

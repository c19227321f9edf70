// The Tokenizer and Generation services (internal to aios_server; host.cpp registers them).
#pragma once

#include <memory>

#include <grpcpp/impl/service_type.h>

#include "requests.h"

namespace aios::server {

std::unique_ptr<grpc::Service> make_tokenizer_service(Requests& requests);
std::unique_ptr<grpc::Service> make_generation_service(Requests& requests);

}  // namespace aios::server

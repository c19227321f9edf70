// The host's calls (internal to aios_server): one table keyed by method path, which gRPC and
// Chunked.Call both dispatch through. The paths come from the contract's service descriptors
// (aios.proto); each handler is registered once, next to its code, and checked there against the
// descriptor's messages; the host refuses to start while a method of the contract has no handler.
// So a new call is one handler on the host and no list elsewhere.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include <google/protobuf/message.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/sync_stream.h>

#include "aios/export.h"

// Exported for the C++ tests, which reach this internal class (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::server {

class Calls {
 public:
  using Message = google::protobuf::Message;
  // The replies of a streaming call: false once the caller is gone.
  using Write = std::function<bool(const Message&)>;

  // One call of the contract: its messages and the handler that answers it.
  struct Entry {
    const Message* request = nullptr;  // prototypes: New() makes an empty one
    const Message* reply = nullptr;
    std::function<grpc::Status(grpc::ServerContext*, const Message&, Message*)> unary;  // or
    std::function<grpc::Status(grpc::ServerContext*, const Message&, const Write&)> streaming;  // server streaming
  };

  // Registers `handler`, a member of `service`, as the contract's method `name` ("Latent.Forward":
  // service and method as aios.proto names them). Error(kInternal) when the contract has no such
  // method of that kind, when its messages are not Request and Reply, or when it has a handler.
  template <class Service, class Request, class Reply>
  void add(std::string_view name, Service* service,
           grpc::Status (Service::*handler)(grpc::ServerContext*, const Request*, Reply*)) {
    Entry entry = messages<Request, Reply>();
    entry.unary = [service, handler](grpc::ServerContext* context, const Message& request, Message* reply) {
      return (service->*handler)(context, static_cast<const Request*>(&request), static_cast<Reply*>(reply));
    };
    add(name, std::move(entry));
  }
  // The same for a call whose replies stream.
  template <class Service, class Request, class Reply>
  void add(std::string_view name, Service* service,
           grpc::Status (Service::*handler)(grpc::ServerContext*, const Request*, const std::function<bool(const Reply&)>&)) {
    Entry entry = messages<Request, Reply>();
    entry.streaming = [service, handler](grpc::ServerContext* context, const Message& request, const Write& write) {
      return (service->*handler)(context, static_cast<const Request*>(&request),
                                 [&write](const Reply& reply) { return write(reply); });
    };
    add(name, std::move(entry));
  }

  // The unary call at `path` ("/aios.v1.Latent/Forward"), null for none.
  const Entry* unary(const std::string& path) const;

  // The gRPC service that carries every call of the table (register it with the server; it refers
  // to the table, which must outlive it). Error(kInternal) when a method of the contract's services
  // (but Chunked, which carries the others) has no handler.
  std::unique_ptr<grpc::Service> service() const;

 private:
  template <class Request, class Reply>
  static Entry messages() {
    Entry entry;
    entry.request = &Request::default_instance();
    entry.reply = &Reply::default_instance();
    return entry;
  }
  void add(std::string_view name, Entry entry);

  std::map<std::string, Entry, std::less<>> entries_;  // by path; a map's keys stay where they are
};

}  // namespace aios::server
AIOS_EXPORT_END

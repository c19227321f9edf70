#include "calls.h"

#include <google/protobuf/descriptor.h>
#include <grpcpp/impl/codegen/proto_utils.h>  // GenericSerialize, GenericDeserialize: what gRPC itself uses
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/method_handler.h>

#include "aios/fail.h"
#include "aios/wire/wire.h"
#include "aios/v1/aios.pb.h"

namespace aios::server {
namespace {

using google::protobuf::MethodDescriptor;
using google::protobuf::ServiceDescriptor;
using grpc::ByteBuffer;

std::string path_of(const MethodDescriptor& method) {
  return "/" + method.service()->full_name() + "/" + method.name();
}

bool streams_replies(const MethodDescriptor& method) { return method.server_streaming(); }
bool carried(const MethodDescriptor& method) { return !method.client_streaming(); }  // Chunked.Call is its own service

// The services of the contract, whose methods the table carries.
std::vector<const ServiceDescriptor*> contract() {
  const google::protobuf::FileDescriptor* file = v1::Tensor::descriptor()->file();
  std::vector<const ServiceDescriptor*> services;
  for (int i = 0; i < file->service_count(); ++i) services.push_back(file->service(i));
  return services;
}

// A request's bytes as the call's message; the caller's bytes are what is wrong when they do not parse.
grpc::Status parse(const ByteBuffer& in, const std::string& path, google::protobuf::Message* request,
                   grpc::ServerContext* context) {
  ByteBuffer bytes(in);  // shares the slices; parsing consumes the copy
  if (grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(&bytes, request).ok()) {
    return grpc::Status::OK;
  }
  return wire::to_status(Error(ErrorCode::kInvalidArgument, "request",
                         fmt::format("the request's bytes are not a message of {}", path)),
                   context);
}

void serialize(const google::protobuf::Message& reply, ByteBuffer* out) {
  bool own = false;
  const grpc::Status status = grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(reply, out, &own);
  if (!status.ok()) fail(ErrorCode::kInternal, "reply", "cannot serialize a {}", reply.GetTypeName());
}

// Every call of the table as gRPC methods taking and giving bytes (gRPC's raw form): the table's
// handlers parse and serialize them.
class Carrier final : public grpc::Service {
 public:
  explicit Carrier(const std::map<std::string, Calls::Entry, std::less<>>& entries) {
    for (const auto& [path, entry] : entries) {
      const Calls::Entry* e = &entry;
      const std::string* p = &path;
      if (entry.unary) {
        AddMethod(new grpc::internal::RpcServiceMethod(
            path.c_str(), grpc::internal::RpcMethod::NORMAL_RPC,
            new grpc::internal::RpcMethodHandler<Carrier, ByteBuffer, ByteBuffer>(
                [e, p](Carrier*, grpc::ServerContext* context, const ByteBuffer* in, ByteBuffer* out) {
                  std::unique_ptr<google::protobuf::Message> request(e->request->New());
                  grpc::Status status = parse(*in, *p, request.get(), context);
                  if (!status.ok()) return status;
                  std::unique_ptr<google::protobuf::Message> reply(e->reply->New());
                  status = e->unary(context, *request, reply.get());
                  if (status.ok()) serialize(*reply, out);
                  return status;
                },
                this)));
      } else {
        AddMethod(new grpc::internal::RpcServiceMethod(
            path.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING,
            new grpc::internal::ServerStreamingHandler<Carrier, ByteBuffer, ByteBuffer>(
                [e, p](Carrier*, grpc::ServerContext* context, const ByteBuffer* in, grpc::ServerWriter<ByteBuffer>* writer) {
                  std::unique_ptr<google::protobuf::Message> request(e->request->New());
                  const grpc::Status status = parse(*in, *p, request.get(), context);
                  if (!status.ok()) return status;
                  return e->streaming(context, *request, [writer](const google::protobuf::Message& reply) {
                    ByteBuffer bytes;
                    serialize(reply, &bytes);
                    return writer->Write(bytes);
                  });
                },
                this)));
      }
    }
  }
};

}  // namespace

void Calls::add(std::string_view name, Entry entry) {
  const MethodDescriptor* method =
      google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(fmt::format("aios.v1.{}", name));
  if (method == nullptr || !carried(*method) || streams_replies(*method) != static_cast<bool>(entry.streaming)) {
    fail(ErrorCode::kInternal, "calls", "the contract has no {} method {}", entry.streaming ? "streaming" : "unary", name);
  }
  if (method->input_type() != entry.request->GetDescriptor() || method->output_type() != entry.reply->GetDescriptor()) {
    fail(ErrorCode::kInternal, "calls", "{} takes {} and answers {}", name, method->input_type()->full_name(),
         method->output_type()->full_name());
  }
  if (!entries_.emplace(path_of(*method), std::move(entry)).second) {
    fail(ErrorCode::kInternal, "calls", "{} has a handler already", name);
  }
}

const Calls::Entry* Calls::unary(const std::string& path) const {
  auto found = entries_.find(path);
  return found == entries_.end() || !found->second.unary ? nullptr : &found->second;
}

std::unique_ptr<grpc::Service> Calls::service() const {
  for (const ServiceDescriptor* service : contract()) {
    for (int i = 0; i < service->method_count(); ++i) {
      const MethodDescriptor& method = *service->method(i);
      if (carried(method) && !entries_.contains(path_of(method))) {
        fail(ErrorCode::kInternal, "calls", "the host has no handler for {}", method.full_name());
      }
    }
  }
  return std::make_unique<Carrier>(entries_);
}

}  // namespace aios::server

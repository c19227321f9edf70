// The Chunked service: any unary call of the other services, with its request and reply carried
// as streams of chunks.
#include <limits>
#include <unordered_map>

#include "aios/v1/aios.grpc.pb.h"
#include "services.h"

namespace aios::server {
namespace {


// One unary method: the serialized request in, the serialized reply out.
using Handler = std::function<grpc::Status(grpc::ServerContext*, const std::string&, std::string*)>;

template <typename Service, typename Request, typename Reply>
Handler unary(grpc::Service& service, grpc::Status (Service::*method)(grpc::ServerContext*, const Request*, Reply*)) {
  auto* typed = dynamic_cast<Service*>(&service);
  return [typed, method](grpc::ServerContext* context, const std::string& in, std::string* out) {
    Request request;
    if (!request.ParseFromString(in)) {
      return to_status(Error(ErrorCode::kInvalidArgument, "data", "the chunks do not form a valid request"), context);
    }
    Reply reply;
    const grpc::Status status = (typed->*method)(context, &request, &reply);  // the service's own override
    if (status.ok()) reply.SerializeToString(out);
    return status;
  };
}

class ChunkedService final : public v1::Chunked::Service {
 public:
  ChunkedService(Requests& requests, const ServiceSet& services) : r_(requests) {
    using L = v1::Latent::Service;
    using G = v1::Gradient::Service;
    using K = v1::Tokenizer::Service;
    handlers_ = {
        {"/aios.v1.Latent/Info", unary(services.latent, &L::Info)},
        {"/aios.v1.Latent/Embed", unary(services.latent, &L::Embed)},
        {"/aios.v1.Latent/Forward", unary(services.latent, &L::Forward)},
        {"/aios.v1.Latent/Classify", unary(services.latent, &L::Classify)},
        {"/aios.v1.Gradient/ForwardKeep", unary(services.gradient, &G::ForwardKeep)},
        {"/aios.v1.Gradient/Vjp", unary(services.gradient, &G::Vjp)},
        {"/aios.v1.Gradient/Release", unary(services.gradient, &G::Release)},
        {"/aios.v1.Gradient/VjpStateless", unary(services.gradient, &G::VjpStateless)},
        {"/aios.v1.Gradient/ForwardBackward", unary(services.gradient, &G::ForwardBackward)},
        {"/aios.v1.Tokenizer/Encode", unary(services.tokenizer, &K::Encode)},
        {"/aios.v1.Tokenizer/Decode", unary(services.tokenizer, &K::Decode)},
        {"/aios.v1.Tokenizer/CreateExtension", unary(services.tokenizer, &K::CreateExtension)},
        {"/aios.v1.Tokenizer/WriteRows", unary(services.tokenizer, &K::WriteRows)},
        {"/aios.v1.Generation/RegisterDecoder", unary(services.generation, &v1::Generation::Service::RegisterDecoder)},
    };
  }

  grpc::Status Call(grpc::ServerContext* context, grpc::ServerReaderWriter<v1::Chunk, v1::Chunk>* stream) override {
    std::string request, reply;
    Handler* handler = nullptr;
    // Gathering counts as a call of the tenant (on gRPC's thread); the handler counts its own afterwards.
    const grpc::Status gathered = guarded(r_, context, [&](Caller&) {
      const auto limit = static_cast<std::size_t>(
          std::min<int64_t>(std::numeric_limits<int32_t>::max(), 4 * r_.options().limits.max_bytes));
      v1::Chunk chunk;
      while (stream->Read(&chunk)) {
        if (handler == nullptr) {  // the first chunk names the call: nothing is gathered for an unknown one
          auto found = handlers_.find(chunk.method());
          if (found == handlers_.end()) {
            fail(ErrorCode::kUnimplemented, "method", "no unary call \"{}\" to carry", chunk.method());
          }
          handler = &found->second;
        }
        if (request.size() + chunk.data().size() > limit) {
          fail(ErrorCode::kResourceExhausted, "data", "the request exceeds the host's limit of {} bytes", limit);
        }
        request += chunk.data();
      }
      if (handler == nullptr) fail(ErrorCode::kInvalidArgument, "method", "expected at least one chunk");
    }, Work::kBookkeeping);  // waiting on the network, not computing
    if (!gathered.ok()) return gathered;
    const grpc::Status status = (*handler)(context, request, &reply);
    if (!status.ok()) return status;
    // At least one chunk, so that an empty reply is still a reply.
    const std::size_t size = std::min<std::size_t>(kChunkBytes, r_.options().max_message_bytes / 2);
    std::size_t offset = 0;
    do {
      v1::Chunk out;
      out.set_data(reply.data() + offset, std::min(size, reply.size() - offset));
      if (!stream->Write(out)) break;  // the caller left
      offset += size;
    } while (offset < reply.size());
    return grpc::Status::OK;
  }

 private:
  Requests& r_;
  std::unordered_map<std::string, Handler> handlers_;
};

}  // namespace

std::unique_ptr<grpc::Service> make_chunked_service(Requests& requests, const ServiceSet& services) {
  return std::make_unique<ChunkedService>(requests, services);
}

}  // namespace aios::server

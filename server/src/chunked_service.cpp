// The Chunked service: any unary call of the contract (the host's table of calls), with its
// request and reply carried as streams of chunks.
#include <limits>

#include "aios/v1/aios.grpc.pb.h"
#include "services.h"

namespace aios::server {
namespace {

class ChunkedService final : public v1::Chunked::Service {
 public:
  ChunkedService(Requests& requests, const Calls& calls) : r_(requests), calls_(calls) {}

  grpc::Status Call(grpc::ServerContext* context, grpc::ServerReaderWriter<v1::Chunk, v1::Chunk>* stream) override {
    std::string request, reply;
    const Calls::Entry* call = nullptr;
    // Gathering counts as a call of the tenant (on gRPC's thread); the handler counts its own afterwards.
    const grpc::Status gathered = guarded(r_, context, [&](Caller&) {
      const auto limit = static_cast<std::size_t>(
          std::min<int64_t>(std::numeric_limits<int32_t>::max(), 4 * r_.options().limits.max_bytes));
      v1::Chunk chunk;
      while (stream->Read(&chunk)) {
        if (call == nullptr) {  // the first chunk names the call: nothing is gathered for an unknown one
          call = calls_.unary(chunk.method());
          if (call == nullptr) fail(ErrorCode::kUnimplemented, "method", "no unary call \"{}\" to carry", chunk.method());
        }
        if (request.size() + chunk.data().size() > limit) {
          fail(ErrorCode::kResourceExhausted, "data", "the request exceeds the host's limit of {} bytes", limit);
        }
        request += chunk.data();
      }
      if (call == nullptr) fail(ErrorCode::kInvalidArgument, "method", "expected at least one chunk");
    }, Work::kBookkeeping);  // waiting on the network, not computing
    if (!gathered.ok()) return gathered;
    std::unique_ptr<google::protobuf::Message> message(call->request->New());
    if (!message->ParseFromString(request)) {
      return wire::to_status(Error(ErrorCode::kInvalidArgument, "data", "the chunks do not form a valid request"), context);
    }
    std::unique_ptr<google::protobuf::Message> answer(call->reply->New());
    const grpc::Status status = call->unary(context, *message, answer.get());
    if (!status.ok()) return status;
    answer->SerializeToString(&reply);
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
  const Calls& calls_;
};

}  // namespace

std::unique_ptr<grpc::Service> make_chunked_service(Requests& requests, const Calls& calls) {
  return std::make_unique<ChunkedService>(requests, calls);
}

}  // namespace aios::server

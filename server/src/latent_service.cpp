// The Latent service: the backbone's description, embeddings, forward passes and the token
// classifier.
#include <ATen/Parallel.h>  // at::internal::GRAIN_SIZE

#include "aios/v1/aios.pb.h"
#include "aios/wire/messages.h"
#include "batcher.h"
#include "services.h"

namespace aios::server {
namespace {

// A lookup of so few embedding rows that LibTorch copies them without a parallel region (at most
// its grain size of elements), and no extension rows to write: bookkeeping (requests.h). The ids'
// bytes over 4 (int32, the smallest id type) bound their count before the request is checked.
bool few_rows(const v1::EmbedRequest& request, int64_t hidden_size) {
  const auto most_ids = static_cast<int64_t>(request.ids().data().size() / sizeof(int32_t));
  return !request.has_extension() && most_ids * hidden_size <= at::internal::GRAIN_SIZE;
}

class LatentService final : public Handlers {
 public:
  LatentService(Requests& requests, Calls& calls)
      : r_(requests),
        batcher_(requests.options().batch_forwards
                     ? std::make_unique<ForwardBatcher>(requests.backbone(), requests.options().max_batch)
                     : nullptr) {
    calls.add("Latent.Info", this, &LatentService::info);
    calls.add("Latent.Embed", this, &LatentService::embed);
    calls.add("Latent.Forward", this, &LatentService::forward);
    calls.add("Latent.Classify", this, &LatentService::classify);
  }

  grpc::Status info(grpc::ServerContext* context, const v1::InfoRequest*, v1::ModelInfo* out) {
    return guarded(r_, context, [&](Caller& caller) {
      wire::to_wire(r_.backbone().config(), wire::HostLimits{r_.options().max_batch, r_.options().limits.max_bytes}, out);
    }, Work::kBookkeeping);
  }

  grpc::Status embed(grpc::ServerContext* context, const v1::EmbedRequest* request, v1::Tensor* out) {
    return guarded(r_, context, [&](Caller& caller) {
      const at::Tensor ids = r_.tensor(request->ids(), "ids");
      if (ids.dim() == 2) r_.check_tokens(caller, ids.size(0), ids.numel(), "ids");
      const auto extension =
          request->has_extension() ? r_.extension(caller, request->extension(), "extension") : nullptr;
      wire::to_wire(r_.backbone().embed(ids, extension.get()), out);
    }, few_rows(*request, r_.backbone().config().hidden_size) ? Work::kBookkeeping : Work::kCompute);
  }

  grpc::Status forward(grpc::ServerContext* context, const v1::ForwardRequest* request,
                       v1::ForwardResponse* out) {
    return guarded(r_, context, [&](Caller& caller) {
      const at::Tensor latents = r_.latents(caller, request->latents(), "latents");
      const gradient::ForwardOptions options = r_.forward_options(caller, request->options(), "options", *context);
      if (batcher_ && ForwardBatcher::batchable(options)) {
        wire::to_wire(batcher_->forward(latents), out->mutable_hidden());
      } else {
        wire::messages::write_output(r_.backbone().forward(latents, options), out, kWriteTensor);
      }
    });
  }

  grpc::Status classify(grpc::ServerContext* context, const v1::ClassifyRequest* request, v1::Tensor* out) {
    return guarded(r_, context, [&](Caller& caller) {
      const at::Tensor hidden = r_.floating(request->hidden(), "hidden");
      const int64_t rows = hidden.dim() > 0 ? hidden.numel() / std::max<int64_t>(1, hidden.size(-1)) : 0;
      r_.check_tokens(caller, 1, rows, "hidden");
      const auto extension =
          request->has_extension() ? r_.extension(caller, request->extension(), "extension") : nullptr;
      // The reply holds rows x (V+K) logits: refuse before computing what could not be sent.
      const int64_t columns = r_.backbone().config().vocab_size + (extension ? extension->size() : 0);
      const int64_t reply = rows * columns * static_cast<int64_t>(hidden.element_size());
      if (reply > r_.options().limits.max_bytes) {
        fail(ErrorCode::kResourceExhausted, "hidden", "{} rows of logits ({} bytes) exceed the host's limit of {} bytes",
             rows, reply, r_.options().limits.max_bytes);
      }
      wire::to_wire(r_.backbone().classify(hidden, extension.get()), out);
    });
  }

 private:
  Requests& r_;
  std::unique_ptr<ForwardBatcher> batcher_;  // null when HostOptions::batch_forwards is off
};

}  // namespace

std::unique_ptr<Handlers> add_latent_calls(Requests& requests, Calls& calls) {
  return std::make_unique<LatentService>(requests, calls);
}

}  // namespace aios::server

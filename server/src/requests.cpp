#include "requests.h"

#include <ATen/core/grad_mode.h>
#include <fmt/ranges.h>
#include <new>
#include <random>

#include "aios/io/files.h"
#include "aios/wire/messages.h"
#include "state_files.h"

namespace aios::server {
namespace fs = std::filesystem;

Requests::Requests(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options)
    : backbone_(std::move(backbone)), options_(options), tenants_(options_), idle_release_(options.release_memory_after),
      compute_(options.compute_threads) {
  // Decoders registered before a restart are still there; what interrupted changes left is not.
  for (TenantState* tenant : tenants_.all()) {
    if (options_.state_dir.empty()) break;
    remove_leftovers(state_folder(*tenant, "extensions"));
    remove_leftovers(state_folder(*tenant, "decoders"));
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(state_folder(*tenant, "decoders"), error)) {
      const std::string decoder = entry.path().filename().string();
      if (entry.is_directory() && !decoder.starts_with(".")) tenant->decoders[decoder] = entry.path();
    }
  }
  if (options_.state_dir.empty()) {
    std::random_device random;
    scratch_ = fs::temp_directory_path() / fmt::format("aios-host-{:016x}", (uint64_t{random()} << 32) | random());
  }
}

Requests::~Requests() {
  std::error_code ignored;
  if (!scratch_.empty()) fs::remove_all(scratch_, ignored);
}

fs::path Requests::state_folder(const TenantState& tenant, const char* kind) const {
  // The tenant "" of a host without keys gets a folder of its own name too.
  const fs::path root = options_.state_dir.empty() ? scratch_ : fs::path(options_.state_dir);
  const fs::path folder = root / "tenants" / (tenant.name.empty() ? std::string("_") : tenant.name) / kind;
  try {
    io::create_folders(folder.string());
  } catch (const Error&) {
    // The host's paths stay out of replies.
    fail(ErrorCode::kUnavailable, "state_dir", "cannot create the host's state folder");
  }
  return folder;
}

at::Tensor Requests::latents(const Caller& caller, const v1::Tensor& t, const std::string& field) {
  at::Tensor x = tensor(t, field);
  if (x.dim() != 3 || !at::isFloatingType(x.scalar_type())) {
    fail(ErrorCode::kInvalidArgument, field, "expected a floating tensor [B,T,D], got {} of rank {}",
         c10::toString(x.scalar_type()), x.dim());
  }
  check_tokens(caller, x.size(0), x.size(0) * x.size(1), field);
  return x.to(backbone_->device(), backbone_->dtype());
}

at::Tensor Requests::floating(const v1::Tensor& t, const std::string& field) {
  at::Tensor x = tensor(t, field);
  if (!at::isFloatingType(x.scalar_type())) {
    fail(ErrorCode::kInvalidArgument, field, "expected a floating tensor, got {}", c10::toString(x.scalar_type()));
  }
  return x.to(backbone_->device(), backbone_->dtype());
}

void Requests::check_tokens(const Caller& caller, int64_t B, int64_t tokens, const std::string& field) const {
  if (B > options_.max_batch) {
    fail(ErrorCode::kResourceExhausted, field, "batch {} exceeds the host's limit of {}", B, options_.max_batch);
  }
  if (tokens > caller.quota().max_tokens) {
    fail(ErrorCode::kResourceExhausted, field, "{} tokens exceed the tenant's quota of {} per request", tokens,
         caller.quota().max_tokens);
  }
}

gradient::ForwardOptions Requests::forward_options(const Caller& caller, const v1::ForwardOptions& o, const std::string& field,
                                                   const grpc::ServerContext& context) {
  gradient::ForwardOptions out;
  wire::messages::read_options(o, field, *this, &out);
  out.cancelled = [&context] { return context.IsCancelled(); };
  // Each requested layer is one more [B,T,D] in the reply: at most one per layer index.
  if (o.layers_size() > backbone_->config().num_layers + 1) {
    fail(ErrorCode::kInvalidArgument, field + ".layers", "expected at most {} layers, got {}",
         backbone_->config().num_layers + 1, o.layers_size());
  }
  if (o.has_extension()) out.extension = extension(caller, o.extension(), field + ".extension");
  return out;
}

std::shared_ptr<ali::Extension> Requests::extension(const Caller& caller, const std::string& id,
                                                    const v1::ExtensionRows* rows, const std::string& field) {
  std::shared_ptr<ali::Extension> found;
  {
    std::lock_guard lock(caller.state().mutex);
    auto it = caller.state().extensions.find(id);
    if (it != caller.state().extensions.end()) found = it->second;
  }
  if (!found) fail(ErrorCode::kNotFound, field, "no extension \"{}\" (unknown or deleted)", id);
  if (rows != nullptr) assign_rows(*found, *rows, field + ".rows");
  return found;
}

void Requests::assign_rows(ali::Extension& extension, const v1::ExtensionRows& rows, const std::string& field) {
  const int64_t K = extension.size(), D = backbone_->config().hidden_size;
  // Both are checked before either is written: a bad request changes nothing.
  const at::Tensor embedding = floating(rows.embedding_rows(), field + ".embedding_rows");
  const at::Tensor classifier = floating(rows.classifier_rows(), field + ".classifier_rows");
  for (const auto& [t, name] : {std::pair{&embedding, "embedding_rows"}, std::pair{&classifier, "classifier_rows"}}) {
    if (t->sizes() != at::IntArrayRef{K, D}) {
      fail(ErrorCode::kInvalidArgument, fmt::format("{}.{}", field, name), "expected [{},{}], got [{}]", K, D,
           fmt::join(t->sizes(), ","));
    }
    if (!at::isfinite(*t).all().item<bool>()) {
      fail(ErrorCode::kInvalidArgument, fmt::format("{}.{}", field, name), "expected finite values");
    }
  }
  at::NoGradGuard no_grad;
  extension.embedding_rows().copy_(embedding);
  extension.classifier_rows().copy_(classifier);
}

void Requests::compute(const grpc::ServerContext& context, const std::function<void()>& work) {
  compute_.run([&] {
    if (context.IsCancelled()) fail(ErrorCode::kUnavailable, "", "the call was cancelled before it computed");
    work();
  });
}

void write_rows(const ali::Extension& extension, v1::ExtensionRows* out) {
  wire::to_wire(extension.embedding_rows(), out->mutable_embedding_rows());
  wire::to_wire(extension.classifier_rows(), out->mutable_classifier_rows());
}

grpc::Status guarded(Requests& requests, grpc::ServerContext* context, const std::function<void(Caller&)>& body,
                     Work work) {
  IdleRelease::Busy busy(requests.idle_release());
  try {
    Caller caller(requests.authenticate(*context));
    if (work == Work::kBookkeeping) {
      body(caller);
    } else {
      requests.compute(*context, [&] { body(caller); });
    }
    return grpc::Status::OK;
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kPermissionDenied && e.field() == "api_key") {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, e.message());
    }
    return wire::to_status(e, context);
  } catch (const c10::OutOfMemoryError&) {
    return wire::to_status(Error(ErrorCode::kResourceExhausted, "memory", "the host ran out of device memory"), context);
  } catch (const std::bad_alloc&) {
    return wire::to_status(Error(ErrorCode::kResourceExhausted, "memory", "the host ran out of memory"), context);
  } catch (const std::exception& e) {
    // The details (paths, library internals) stay in the host's log, not in the reply.
    fmt::print(stderr, "aios serve: internal error: {}\n", e.what());
    return wire::to_status(Error(ErrorCode::kInternal, "", "internal error in the host (see its log)"), context);
  }
}

}  // namespace aios::server

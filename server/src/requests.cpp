#include "requests.h"

#include <ATen/core/grad_mode.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <fmt/ranges.h>
#include <fstream>
#include <new>
#include <random>
#include <sstream>

#include "aios/io/files.h"
#include "state_files.h"

namespace aios::server {
namespace fs = std::filesystem;

Caller::Caller(TenantState& tenant) : tenant_(tenant) {
  if (tenant_.in_flight.fetch_add(1) >= tenant_.quota.max_concurrent) {
    tenant_.in_flight.fetch_sub(1);
    fail(ErrorCode::kResourceExhausted, "tenant", "more than {} calls in flight", tenant_.quota.max_concurrent);
  }
}

Caller::~Caller() { tenant_.in_flight.fetch_sub(1); }

void check_name(const std::string& name, const std::string& field) {
  // A leading dot is the host's own (staging folders).
  const bool plain = !name.empty() && name.size() <= 64 && name[0] != '.' &&
                     name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") ==
                         std::string::npos;
  if (!plain) fail(ErrorCode::kInvalidArgument, field, "expected 1 to 64 characters of [A-Za-z0-9_.-], not starting with .");
}

namespace {

// Store owners of every host in the process: hosts may share one backbone, and so its store.
std::atomic<gradient::StoreOwner> next_store_owner{1};

std::array<unsigned char, 32> sha256(std::string_view bytes) {
  std::array<unsigned char, 32> out{};
  unsigned int size = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), out.data(), &size, EVP_sha256(), nullptr) != 1 || size != out.size()) {
    fail(ErrorCode::kInternal, "api_key", "cannot compute SHA-256");
  }
  return out;
}

TenantQuota quota_of(const HostOptions& options, const std::string& tenant) {
  auto it = options.quotas.find(tenant);
  return it == options.quotas.end() ? options.quota : it->second;
}

}  // namespace

Requests::Requests(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options)
    : backbone_(std::move(backbone)), options_(options), idle_release_(options.release_memory_after),
      compute_(options.compute_threads) {
  auto add = [&](const std::string& name) -> TenantState* {
    auto& state = tenants_[name];
    if (!state) {
      state = std::make_unique<TenantState>();
      state->name = name;
      state->quota = quota_of(options_, name);
      state->store_owner = next_store_owner.fetch_add(1);
    }
    return state.get();
  };
  if (options_.api_keys.empty()) add("");  // the one tenant of a host without keys
  for (const auto& [key, tenant] : options_.api_keys) {
    if (key.empty()) fail(ErrorCode::kInvalidArgument, "api_keys", "expected non-empty keys, got an empty one");
    check_name(tenant, "tenant");
    keys_.push_back({sha256(key), add(tenant)});
  }
  // Decoders registered before a restart are still there; what interrupted changes left is not.
  for (auto& [name, tenant] : tenants_) {
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

std::vector<TenantState*> Requests::tenants() const {
  std::vector<TenantState*> out;
  for (const auto& [name, tenant] : tenants_) out.push_back(tenant.get());
  return out;
}

TenantState& Requests::authenticate(const grpc::ServerContext& context) {
  if (options_.api_keys.empty()) return *tenants_.at("");
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  constexpr std::string_view kBearer = "Bearer ";
  std::string_view sent;  // no key: compared all the same, matching none (no key digests to "")
  bool bearer = false;
  if (it != metadata.end()) {
    const std::string_view value(it->second.data(), it->second.size());
    bearer = value.starts_with(kBearer);
    if (bearer) sent = value.substr(kBearer.size());
  }
  // Every stored digest is compared, each in constant time, without stopping at a match: the time
  // depends on the sent key's length and the number of keys only.
  const std::array<unsigned char, 32> digest = sha256(sent);
  TenantState* found = nullptr;
  for (const KeyDigest& key : keys_) {
    const bool same = CRYPTO_memcmp(digest.data(), key.digest.data(), digest.size()) == 0;
    found = same ? key.tenant : found;
  }
  if (bearer && !sent.empty() && found != nullptr) return *found;
  // The message never repeats what was sent: keys stay out of logs and replies.
  fail(ErrorCode::kPermissionDenied, "api_key", "expected a valid API key in \"authorization: Bearer KEY\"");
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
  out.cancelled = [&context] { return context.IsCancelled(); };
  if (o.has_positions()) out.positions = tensor(o.positions(), field + ".positions");
  if (o.has_mask()) out.mask = tensor(o.mask(), field + ".mask");
  // Each requested layer is one more [B,T,D] in the reply: at most one per layer index.
  if (o.layers_size() > backbone_->config().num_layers + 1) {
    fail(ErrorCode::kInvalidArgument, field + ".layers", "expected at most {} layers, got {}",
         backbone_->config().num_layers + 1, o.layers_size());
  }
  out.layers.assign(o.layers().begin(), o.layers().end());
  out.allow_non_finite = o.allow_non_finite();
  out.recompute = o.recompute();
  if (o.has_extension()) out.extension = extension(caller, o.extension(), field + ".extension");
  if (o.has_ids()) out.ids = tensor(o.ids(), field + ".ids");
  return out;
}

gradient::Cotangents Requests::cotangents(const v1::Cotangents& c) {
  gradient::Cotangents out;
  if (c.has_hidden()) out.hidden = floating(c.hidden(), "cotangents.hidden");
  for (int i = 0; i < c.layers_size(); ++i) {
    const v1::Tensor& layer = c.layers(i);
    // A layer cotangent sent as an empty message stands for zero.
    out.layers.push_back(layer.dtype() == v1::DTYPE_UNSPECIFIED && layer.shape_size() == 0
                             ? at::Tensor()
                             : floating(layer, fmt::format("cotangents.layers[{}]", i)));
  }
  if (c.has_logits()) out.logits = floating(c.logits(), "cotangents.logits");
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
  to_wire(extension.embedding_rows(), out->mutable_embedding_rows());
  to_wire(extension.classifier_rows(), out->mutable_classifier_rows());
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
    return to_status(e, context);
  } catch (const c10::OutOfMemoryError&) {
    return to_status(Error(ErrorCode::kResourceExhausted, "memory", "the host ran out of device memory"), context);
  } catch (const std::bad_alloc&) {
    return to_status(Error(ErrorCode::kResourceExhausted, "memory", "the host ran out of memory"), context);
  } catch (const std::exception& e) {
    // The details (paths, library internals) stay in the host's log, not in the reply.
    fmt::print(stderr, "aios serve: internal error: {}\n", e.what());
    return to_status(Error(ErrorCode::kInternal, "", "internal error in the host (see its log)"), context);
  }
}

KeyFile read_key_file(const std::string& path, const TenantQuota& defaults) {
  std::ifstream text(path);
  if (!text) fail(ErrorCode::kNotFound, path, "cannot open the key file");
  std::ostringstream bytes;
  bytes << text.rdbuf();
  return parse_key_file(bytes.str(), path, defaults);
}

KeyFile parse_key_file(const std::string& text, const std::string& path, const TenantQuota& defaults) {
  std::istringstream in(text);
  KeyFile file;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const std::string where = fmt::format("{}:{}", path, number);
    std::istringstream fields(line);
    std::string tenant, key, extra;
    if (!(fields >> tenant) || tenant.starts_with("#")) continue;
    if (!(fields >> key)) fail(ErrorCode::kInvalidArgument, where, "expected \"TENANT KEY [quota=N ...]\"");
    check_name(tenant, where);
    if (!file.api_keys.emplace(key, tenant).second) {
      fail(ErrorCode::kInvalidArgument, where, "this key was given to another tenant already");
    }
    // A field that is not a quota may be a key written in the wrong place (a second key, a key
    // with '=' in it): messages name its position on the line, never its text.
    for (int position = 3; fields >> extra; ++position) {
      const auto equals = extra.find('=');
      const std::string name = extra.substr(0, equals);
      int64_t value = -1;
      try {
        std::size_t used = 0;
        if (equals != std::string::npos) value = std::stoll(extra.substr(equals + 1), &used);
        if (used != extra.size() - equals - 1) value = -1;
      } catch (const std::exception&) {
        value = -1;
      }
      const bool known = name == "max_tokens" || name == "max_store_bytes" || name == "max_concurrent" ||
                         name == "max_extensions" || name == "max_decoders";
      if (!known || value < 0) {
        fail(ErrorCode::kInvalidArgument, where,
             "expected field {} to be a quota: max_tokens, max_store_bytes, max_concurrent, max_extensions or "
             "max_decoders, as NAME=N with N >= 0 (the field is not repeated here: it may be a key)",
             position);
      }
      TenantQuota& q = file.quotas.try_emplace(tenant, defaults).first->second;
      if (name == "max_tokens") q.max_tokens = value;
      else if (name == "max_store_bytes") q.max_store_bytes = static_cast<std::size_t>(value);
      else if (name == "max_concurrent") q.max_concurrent = value;
      else if (name == "max_extensions") q.max_extensions = value;
      else q.max_decoders = value;
    }
  }
  if (file.api_keys.empty()) fail(ErrorCode::kInvalidArgument, path, "expected at least one \"TENANT KEY\" line, got none");
  return file;
}

}  // namespace aios::server

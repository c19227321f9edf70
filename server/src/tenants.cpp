#include "tenants.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <sstream>
#include <string_view>

#include <fmt/format.h>

#include "aios/fail.h"
#include "aios/io/files.h"

namespace aios::server {

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

// The quota fields a key file may set, by their names there.
struct QuotaField {
  const char* name;
  void (*set)(TenantQuota& quota, int64_t value);
};
constexpr std::array<QuotaField, 7> kQuotaFields{{
    {"max_tokens", [](TenantQuota& q, int64_t v) { q.max_tokens = v; }},
    {"max_store_bytes", [](TenantQuota& q, int64_t v) { q.max_store_bytes = static_cast<std::size_t>(v); }},
    {"max_concurrent", [](TenantQuota& q, int64_t v) { q.max_concurrent = v; }},
    {"max_extensions", [](TenantQuota& q, int64_t v) { q.max_extensions = v; }},
    {"max_decoders", [](TenantQuota& q, int64_t v) { q.max_decoders = v; }},
    {"max_sessions", [](TenantQuota& q, int64_t v) { q.max_sessions = v; }},
    {"max_session_bytes", [](TenantQuota& q, int64_t v) { q.max_session_bytes = static_cast<std::size_t>(v); }},
}};

std::string quota_names() {
  std::string names;
  for (const QuotaField& f : kQuotaFields) names += (names.empty() ? "" : ", ") + std::string(f.name);
  return names;
}

TenantQuota quota_of(const HostOptions& options, const std::string& tenant) {
  auto it = options.quotas.find(tenant);
  return it == options.quotas.end() ? options.quota : it->second;
}

}  // namespace

Tenants::Tenants(const HostOptions& options) {
  auto add = [&](const std::string& name) -> TenantState* {
    auto& state = tenants_[name];
    if (!state) {
      state = std::make_unique<TenantState>();
      state->name = name;
      state->quota = quota_of(options, name);
      state->store_owner = next_store_owner.fetch_add(1);
    }
    return state.get();
  };
  if (options.api_keys.empty()) add("");  // the one tenant of a host without keys
  for (const auto& [key, tenant] : options.api_keys) {
    if (key.empty()) fail(ErrorCode::kInvalidArgument, "api_keys", "expected non-empty keys, got an empty one");
    check_name(tenant, "tenant");
    keys_.push_back({sha256(key), add(tenant)});
  }
}

std::vector<TenantState*> Tenants::all() const {
  std::vector<TenantState*> out;
  for (const auto& [name, tenant] : tenants_) out.push_back(tenant.get());
  return out;
}

TenantState& Tenants::authenticate(const grpc::ServerContext& context) const {
  if (keys_.empty()) return *tenants_.at("");
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

KeyFile read_key_file(const std::string& path, const TenantQuota& defaults) {
  return parse_key_file(io::read_file(path), path, defaults);
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
      const auto field = std::find_if(kQuotaFields.begin(), kQuotaFields.end(), [&](const QuotaField& f) { return name == f.name; });
      if (field == kQuotaFields.end() || value < 0) {
        fail(ErrorCode::kInvalidArgument, where,
             "expected field {} to be a quota: {}, as NAME=N with N >= 0 (the field is not repeated here: it may be a key)",
             position, quota_names());
      }
      field->set(file.quotas.try_emplace(tenant, defaults).first->second, value);
    }
  }
  if (file.api_keys.empty()) fail(ErrorCode::kInvalidArgument, path, "expected at least one \"TENANT KEY\" line, got none");
  return file;
}

}  // namespace aios::server

// Sessions on a host: a KV cache kept for its tenant between generations, continued as an
// in-process session is, counted against the tenant's quotas, invisible to other tenants, and gone
// after deletion, its caller's last reference or its time-to-live.
#include <chrono>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "aios/error.h"
#include "aios/server/host.h"
#include "aios/server/remote_backbone.h"
#include "aios/wire/wire.h"
#include "catch_torch.h"
#include "error_code.h"
#include "hosted.h"

using aios::ErrorCode;
using aios_test::code_of;
using aios_test::kD;
using aios_test::Loopback;
namespace v1 = aios::v1;

namespace {

// Greedy generation of `tokens` tokens after `prompt` ([1,T,D]) in `session`.
at::Tensor continue_in(aios::ali::Backbone& backbone, std::shared_ptr<aios::ali::Session> session,
                       const at::Tensor& prompt, int64_t tokens) {
  aios::ali::GenerateOptions options;
  options.max_new_tokens = tokens;
  options.session = std::move(session);
  auto generation = backbone.start_generation(prompt, options);
  return aios::ali::run_generation(*generation).ids;
}

// DescribeSession of `id` as a raw call (throws the host's error).
bool described(aios::wire::Transport& transport, const std::string& id) {
  v1::SessionId request;
  request.set_id(id);
  v1::SessionInfo info;
  aios::wire::call(transport, {"/aios.v1.Generation/DescribeSession", {}, std::nullopt}, request, &info);
  return info.id() == id;
}

std::string create(aios::wire::Transport& transport) {
  v1::SessionInfo info;
  aios::wire::call(transport, {"/aios.v1.Generation/CreateSession", {}, std::nullopt}, v1::CreateSessionRequest(),
                     &info);
  return info.id();
}

}  // namespace

TEST_CASE("a hosted session continues its context as an in-process one does", "[server]") {
  auto& l = Loopback::get();
  torch::manual_seed(3);
  const at::Tensor first = torch::randn({1, 5, kD}), second = torch::randn({1, 3, kD});
  auto local = l.local->new_session();
  auto remote = l.remote->new_session();
  CHECK(remote->batch_size() == 0);
  CHECK(!remote->next_positions().defined());
  CHECK(at::equal(continue_in(*l.remote, remote, first, 4), continue_in(*l.local, local, first, 4)));
  CHECK(at::equal(continue_in(*l.remote, remote, second, 4), continue_in(*l.local, local, second, 4)));
  CHECK(remote->batch_size() == 1);
  CHECK(remote->length() == local->length());
  CHECK(at::equal(remote->next_positions(), local->next_positions()));
  CHECK(remote->bytes() == local->bytes());

  // A prompt of another batch size, and a session of another backbone, are refused as in-process.
  std::string field;
  CHECK(code_of([&] { continue_in(*l.remote, remote, torch::randn({2, 3, kD}), 1); }, &field) ==
        ErrorCode::kInvalidArgument);
  CHECK(field == "session");
  CHECK(code_of([&] { continue_in(*l.remote, local, first, 1); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "session");
}

TEST_CASE("hosted sessions: quotas, tenants, deletion and time-to-live", "[server]") {
  auto& l = Loopback::get();
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  // Room for one cache of 16 slots and one row (the tiny model: 2 blocks, 2 key/value heads of 8
  // float32 values each: 2 x 2 x 2 x 8 x 4 + 9 = 265 bytes a slot), not for two.
  const auto file = aios::server::parse_key_file(
      fmt::format("alice key-a max_sessions=2 max_session_bytes={}\nbob key-b max_sessions=2\n", 265 * 16 + 100), "keys");
  CHECK(file.quotas.at("bob").max_session_bytes == options.quota.max_session_bytes);
  options.api_keys = file.api_keys;
  options.quotas = file.quotas;
  options.session_ttl = std::chrono::milliseconds(300);
  aios::server::Host host(l.local, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  aios::wire::ConnectOptions alice_key, bob_key;
  alice_key.api_key = "key-a";
  bob_key.api_key = "key-b";
  auto alice = aios::server::RemoteBackbone::connect(address, alice_key);
  auto alice_transport = aios::wire::grpc_transport(address, alice_key);
  auto bob_transport = aios::wire::grpc_transport(address, bob_key);
  REQUIRE(l.local->config().num_layers * l.local->config().num_kv_heads * l.local->config().head_dim == 2 * 2 * 8);

  // The count: a third session is refused until one is deleted (here, by dropping it).
  auto one = alice->new_session();
  auto two = alice->new_session();
  std::string field;
  CHECK(code_of([&] { alice->new_session(); }, &field) == ErrorCode::kResourceExhausted);
  CHECK(field == "sessions");
  two.reset();  // deletes the host's copy
  auto three = alice->new_session();

  // The bytes: a generation that could take the tenant's caches past the quota never starts.
  const at::Tensor prompt = torch::randn({1, 3, kD});
  continue_in(*alice, one, prompt, 2);  // 5 positions: a cache of 16 slots
  CHECK(one->bytes() > 0);
  CHECK(code_of([&] { continue_in(*alice, three, prompt, 2); }, &field) == ErrorCode::kResourceExhausted);
  CHECK(field == "session");
  CHECK(three->length() == 0);  // refused before any work
  CHECK(code_of([&] { continue_in(*alice, one, torch::randn({1, 8, kD}), 8); }) == ErrorCode::kResourceExhausted);

  // Another tenant sees none of them; its own are its own.
  const std::string bobs = create(*bob_transport);
  CHECK(described(*bob_transport, bobs));
  CHECK(code_of([&] { described(*alice_transport, bobs); }) == ErrorCode::kNotFound);
  three.reset();
  const std::string alices = create(*alice_transport);  // alice's second, with `one`
  CHECK(code_of([&] { described(*bob_transport, alices); }) == ErrorCode::kNotFound);

  // Unused past the time-to-live, a session is gone (its memory with it).
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  CHECK(code_of([&] { described(*alice_transport, alices); }) == ErrorCode::kNotFound);
  CHECK(code_of([&] { one->length(); }) == ErrorCode::kNotFound);
  CHECK(code_of([&] { described(*bob_transport, bobs); }) == ErrorCode::kNotFound);
}

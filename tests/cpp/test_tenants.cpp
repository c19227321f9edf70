// Tenants of a host on loopback: keys, quotas (tokens, kept bytes, extensions, decoders, calls in
// flight), and what stays with its tenant (handles, extensions, kept passes and their eviction).
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include "aios/adapters/storage.h"
#include "aios/error.h"
#include "aios/local/local_backbone.h"
#include "aios/server/host.h"
#include "aios/server/remote_backbone.h"
#include "aios/wire/wire.h"
#include "aios/v1/aios.grpc.pb.h"
#include "batcher.h"
#include "catch_torch.h"
#include "error_code.h"
#include "hosted.h"
#include "tiny_checkpoint.h"

using aios::Error;
using aios::ErrorCode;
using aios_test::code_of;
using aios::local::LocalBackbone;
using aios_test::kD;
using aios_test::kVocab;
using aios_test::TinyCheckpoint;
using aios_test::GatedBackbone;
using aios_test::Loopback;
using aios_test::raw;
namespace v1 = aios::v1;

TEST_CASE("tenants: keys are required, handles stay with their tenant", "[server]") {
  auto& l = Loopback::get();
  const std::filesystem::path keys = std::filesystem::temp_directory_path() / ("aios_test_keys_" + std::to_string(::getpid()));
  std::ofstream(keys) << "# tenant key\nalice key-a\n\nbob key-b\n";
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.api_keys = aios::server::read_key_file(keys.string()).api_keys;
  CHECK(options.api_keys.size() == 2);
  aios::server::Host host(l.local, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());

  std::string field;
  CHECK(code_of([&] { aios::server::RemoteBackbone::connect(address); }, &field) == ErrorCode::kPermissionDenied);
  aios::wire::ConnectOptions wrong;
  wrong.api_key = "key-c";
  CHECK(code_of([&] { aios::server::RemoteBackbone::connect(address, wrong); }) == ErrorCode::kPermissionDenied);

  aios::wire::ConnectOptions a, b;
  a.api_key = "key-a";
  b.api_key = "key-b";
  auto alice = aios::server::RemoteBackbone::connect(address, a);
  auto bob = aios::server::RemoteBackbone::connect(address, b);
  const at::Tensor latents = torch::randn({1, 3, kD});
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({1, 3, kD});
  const auto kept = alice->forward_keep(latents);
  CHECK(code_of([&] { bob->vjp(kept.handle, cot); }, &field) == ErrorCode::kNotFound);
  CHECK(field == "handle");
  CHECK(code_of([&] { bob->release(kept.handle); }) == ErrorCode::kNotFound);
  CHECK(at::allclose(alice->vjp(kept.handle, cot).latents, l.local->vjp(latents, {}, cot).latents, 1e-6, 1e-6));
  alice->release(kept.handle);

  // Malformed key files name the line, never the key.
  std::ofstream(keys) << "alice key-a\nbob\n";
  CHECK(code_of([&] { aios::server::read_key_file(keys.string()); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == keys.string() + ":2");
  std::ofstream(keys) << "# nobody\n";
  CHECK(code_of([&] { aios::server::read_key_file(keys.string()); }) == ErrorCode::kInvalidArgument);
  std::ofstream(keys) << "alice key-a\nbob key-a\n";
  try {
    aios::server::read_key_file(keys.string());
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("key-a") == std::string::npos);
  }
  // A second key where quota fields go, or a key with '=' in it: the message names the field's
  // place, never its text.
  for (const char* line : {"alice key-a key-b\n", "alice key-a key-b=5\n", "alice key-a a2V5LWI=\n"}) {
    std::ofstream(keys) << line;
    try {
      aios::server::read_key_file(keys.string());
      FAIL("expected an error");
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(e.field() == keys.string() + ":1");
      CHECK(std::string(e.what()).find("field 3") != std::string::npos);
      for (const char* secret : {"key-a", "key-b", "a2V5LWI"}) CHECK(std::string(e.what()).find(secret) == std::string::npos);
    }
  }
  std::filesystem::remove(keys);
}

TEST_CASE("tenants: a key matches only itself, whole", "[server]") {
  auto& l = Loopback::get();
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  // Keys that are prefixes of each other; each tenant's token quota tells which one a call ran as.
  options.api_keys = {{"k", "one"}, {"k-longer", "two"}, {"k-longer-still", "three"}};
  for (const auto& [tenant, tokens] : {std::pair{"one", 1}, std::pair{"two", 2}, std::pair{"three", 3}}) {
    options.quotas[tenant].max_tokens = tokens;
  }
  aios::server::Host host(l.local, options);
  auto stub = v1::Latent::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(host.port()), grpc::InsecureChannelCredentials()));
  auto forward = [&](const std::string& authorization, int64_t T) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", authorization);
    v1::ForwardRequest request;
    *request.mutable_latents() = raw(v1::FLOAT32, {1, T, kD}, 4 * T * kD);
    v1::ForwardResponse response;
    return stub->Forward(&context, request, &response).error_code();
  };
  for (const auto& [key, tokens] : {std::pair{"k", 1}, std::pair{"k-longer", 2}, std::pair{"k-longer-still", 3}}) {
    INFO(key);
    CHECK(forward(std::string("Bearer ") + key, tokens) == grpc::StatusCode::OK);
    CHECK(forward(std::string("Bearer ") + key, tokens + 1) == grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  for (const char* authorization : {"Bearer k-longe", "Bearer k-longer-stil", "Bearer k-longer-still-", "Bearer K",
                                    "Bearer ", "Bearer", "k", "Bearer  k", "bearer k"}) {
    INFO(authorization);
    CHECK(forward(authorization, 1) == grpc::StatusCode::UNAUTHENTICATED);
  }
  options.api_keys[""] = "four";
  std::string field;
  CHECK(code_of([&] { aios::server::Host empty_key(l.local, options); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "api_keys");
}

TEST_CASE("quotas hold per tenant: tokens, kept bytes, extensions; extensions stay with their tenant", "[server]") {
  auto& l = Loopback::get();
  const at::Tensor latents = torch::randn({1, 4, kD});
  const auto probe = l.local->forward_keep(latents);
  l.local->release(probe.handle);
  REQUIRE(probe.bytes > 0);

  const std::filesystem::path keys = std::filesystem::temp_directory_path() / ("aios_test_quota_" + std::to_string(::getpid()));
  std::ofstream(keys) << fmt::format("alice key-a max_tokens=8 max_store_bytes={} max_extensions=1\nbob key-b\n",
                                     probe.bytes + probe.bytes / 2);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  auto file = aios::server::read_key_file(keys.string());
  options.api_keys = file.api_keys;
  options.quotas = file.quotas;
  CHECK(file.quotas.size() == 1);
  CHECK(file.quotas.at("alice").max_tokens == 8);
  CHECK(file.quotas.at("alice").max_concurrent == options.quota.max_concurrent);
  aios::server::Host host(l.local, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  aios::wire::ConnectOptions a, b;
  a.api_key = "key-a";
  b.api_key = "key-b";
  auto alice = aios::server::RemoteBackbone::connect(address, a);
  auto bob = aios::server::RemoteBackbone::connect(address, b);

  // Tokens per request.
  std::string field;
  CHECK(code_of([&] { alice->forward(torch::randn({3, 3, kD})); }, &field) == ErrorCode::kResourceExhausted);
  CHECK(field == "latents");
  CHECK(bob->forward(torch::randn({3, 3, kD})).hidden.size(0) == 3);

  // Bytes kept under handles: one pass fits, two do not, until one is released.
  const auto first = alice->forward_keep(latents);
  CHECK(code_of([&] { alice->forward_keep(latents); }, &field) == ErrorCode::kResourceExhausted);
  CHECK(field == "activation_store");
  const auto other = bob->forward_keep(latents);  // bob's quota is his own
  alice->release(first.handle);
  const auto second = alice->forward_keep(latents);
  alice->release(second.handle);
  bob->release(other.handle);

  // Live extensions: dropping the last reference deletes the host's copy.
  auto ext = alice->extend({"<x>"});
  CHECK(code_of([&] { alice->extend({"<y>"}); }, &field) == ErrorCode::kResourceExhausted);
  ext.reset();
  ext = alice->extend({"<y>"});

  // Another tenant cannot name it: raw calls with each key.
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto tokenizer = v1::Tokenizer::NewStub(channel);
  auto latent = v1::Latent::NewStub(channel);
  auto with_key = [](grpc::ClientContext& c, const char* key) { c.AddMetadata("authorization", std::string("Bearer ") + key); };
  v1::ExtensionList list;
  {
    grpc::ClientContext c;
    with_key(c, "key-a");
    REQUIRE(tokenizer->ListExtensions(&c, v1::ListExtensionsRequest(), &list).ok());
  }
  REQUIRE(list.live_size() == 1);
  CHECK(list.live(0).tokens(0) == "<y>");
  CHECK(list.live(0).first_id() == kVocab);
  CHECK(list.live(0).id().rfind("0.", 0) == 0);  // names its replica, for a load balancer
  v1::EmbedRequest embed;
  embed.mutable_ids()->CopyFrom(raw(v1::INT64, {1, 1}, 8));
  embed.mutable_extension()->set_id(list.live(0).id());
  v1::Tensor out;
  for (const auto& [key, code] : {std::pair{"key-a", grpc::StatusCode::OK}, std::pair{"key-b", grpc::StatusCode::NOT_FOUND}}) {
    grpc::ClientContext c;
    with_key(c, key);
    CHECK(latent->Embed(&c, embed, &out).error_code() == code);
    grpc::ClientContext r;
    with_key(r, key);
    v1::ExtensionId id;
    id.set_id(list.live(0).id());
    v1::ExtensionRows rows;
    CHECK(tokenizer->ReadRows(&r, id, &rows).error_code() == code);
  }
  {
    grpc::ClientContext c;
    with_key(c, "key-b");
    v1::ExtensionList empty;
    REQUIRE(tokenizer->ListExtensions(&c, v1::ListExtensionsRequest(), &empty).ok());
    CHECK(empty.live_size() == 0);
  }
  // Saving needs a state folder.
  {
    grpc::ClientContext c;
    with_key(c, "key-a");
    v1::SaveExtensionRequest save;
    save.set_id(list.live(0).id());
    save.set_name("mine");
    v1::Empty done;
    CHECK(tokenizer->SaveExtension(&c, save, &done).error_code() ==
          static_cast<grpc::StatusCode>(ErrorCode::kFailedPrecondition));
  }

  // Quota fields in key files are checked.
  for (const char* line : {"alice key-a max_tokens=-1\n", "alice key-a max_tokns=5\n", "alice key-a max_tokens\n",
                           "../x key-a\n"}) {
    std::ofstream(keys) << line;
    CHECK(code_of([&] { aios::server::read_key_file(keys.string()); }, &field) == ErrorCode::kInvalidArgument);
    CHECK(field == keys.string() + ":1");
  }
  std::filesystem::remove(keys);
}

TEST_CASE("tenants: making room for a pass evicts only the caller's own, and its table forgets them", "[server]") {
  const at::Tensor latents = torch::randn({1, 4, kD});
  const auto probe = Loopback::get().local->forward_keep(latents);
  Loopback::get().local->release(probe.handle);
  const std::size_t pass = probe.bytes;
  aios::local::StoreOptions store;
  store.max_bytes = 3 * pass + pass / 2;  // room for three passes
  std::shared_ptr<LocalBackbone> local = LocalBackbone::load(TinyCheckpoint::llama("server_store").write(), {}, store);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.api_keys = {{"key-a", "alice"}, {"key-b", "bob"}, {"key-c", "carol"}};
  // Two and a half passes: bob's third pass fits only if his table forgot the ones the store evicted.
  options.quotas["bob"].max_store_bytes = 2 * pass + pass / 2;
  aios::server::Host host(local, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  auto connect = [&](const char* key) {
    aios::wire::ConnectOptions o;
    o.api_key = key;
    return aios::server::RemoteBackbone::connect(address, o);
  };
  auto alice = connect("key-a"), bob = connect("key-b"), carol = connect("key-c");
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({1, 4, kD});
  const at::Tensor want = local->vjp(latents, {}, cot).latents;

  const auto a1 = alice->forward_keep(latents), a2 = alice->forward_keep(latents);
  const auto b1 = bob->forward_keep(latents);  // the store is full
  const auto b2 = bob->forward_keep(latents);  // in place of bob's own b1
  // In place of b2, and within bob's quota only because his table forgot b1 and b2 as the store
  // evicted them (a Vjp that finds a pass gone would make it forget too: none ran before this).
  const auto b3 = bob->forward_keep(latents);
  CHECK(code_of([&] { bob->vjp(b1.handle, cot); }) == ErrorCode::kNotFound);
  CHECK(code_of([&] { bob->vjp(b2.handle, cot); }) == ErrorCode::kNotFound);
  CHECK(local->kept_passes() == 3);
  // Each caller sees its own tenant's passes.
  CHECK(alice->kept_passes() == 2);
  CHECK(alice->kept_bytes() == 2 * pass);
  CHECK(bob->kept_passes() == 1);
  CHECK(bob->kept_bytes() == pass);
  CHECK(carol->kept_passes() == 0);
  CHECK(carol->kept_bytes() == 0);
  // A tenant with no pass to give up is refused: the store holds the others' passes.
  std::string field;
  CHECK(code_of([&] { carol->forward_keep(latents); }, &field) == ErrorCode::kResourceExhausted);
  CHECK(field == "activation_store");
  // Alice's passes went through all of it untouched.
  CHECK(at::allclose(alice->vjp(a1.handle, cot).latents, want, 1e-6, 1e-6));
  CHECK(at::allclose(alice->vjp(a2.handle, cot).latents, want, 1e-6, 1e-6));
  const auto a3 = alice->forward_keep(latents);  // in place of a1, her least recently used
  CHECK(code_of([&] { alice->vjp(a1.handle, cot); }) == ErrorCode::kNotFound);
  CHECK(at::allclose(bob->vjp(b3.handle, cot).latents, want, 1e-6, 1e-6));
  CHECK(at::allclose(alice->vjp(a2.handle, cot).latents, want, 1e-6, 1e-6));

  // Room a tenant releases is anyone's.
  alice->release(a2.handle);
  const auto c1 = carol->forward_keep(latents);
  CHECK(at::allclose(carol->vjp(c1.handle, cot).latents, want, 1e-6, 1e-6));
  for (auto [backbone, handle] : {std::pair{alice.get(), a3.handle}, std::pair{bob.get(), b3.handle},
                                  std::pair{carol.get(), c1.handle}}) {
    backbone->release(handle);
    CHECK(backbone->kept_passes() == 0);
  }
  CHECK(local->kept_passes() == 0);
}

TEST_CASE("a tenant's table of kept passes forgets those unused past their time-to-live", "[server]") {
  auto& l = Loopback::get();
  const at::Tensor latents = torch::randn({1, 4, kD});
  const auto probe = l.local->forward_keep(latents);
  l.local->release(probe.handle);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.handle_ttl = std::chrono::milliseconds(300);
  options.quota.max_store_bytes = probe.bytes + probe.bytes / 2;  // one pass
  aios::server::Host host(l.local, options);
  auto remote = aios::server::RemoteBackbone::connect("127.0.0.1:" + std::to_string(host.port()));
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({1, 4, kD});
  const std::size_t before = l.local->kept_passes();
  const auto kept = remote->forward_keep(latents);
  remote->vjp(kept.handle, cot);  // claimed: only its time-to-live takes it
  CHECK(remote->kept_passes() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  // The table forgot the first pass, and the store let it go.
  CHECK(remote->kept_passes() == 0);
  CHECK(l.local->kept_passes() == before);
  // So the next fits the quota.
  const auto next = remote->forward_keep(latents);
  CHECK(l.local->kept_passes() == before + 1);
  CHECK(code_of([&] { remote->vjp(kept.handle, cot); }) == ErrorCode::kNotFound);
  remote->release(next.handle);
  CHECK(l.local->kept_passes() == before);
}

TEST_CASE("quotas: a tenant's registered decoders are bounded, across restarts", "[server]") {
  auto& l = Loopback::get();
  const std::filesystem::path root =
      std::filesystem::temp_directory_path() / ("aios_test_decoder_quota_" + std::to_string(::getpid()));
  std::filesystem::remove_all(root);
  aios::adapters::save_decoder(aios::adapters::LinearDecoder(kD, 2), (root / "made_here").string());
  v1::RegisterDecoderRequest request;
  for (const auto& entry : std::filesystem::directory_iterator(root / "made_here")) {
    auto* file = request.add_files();
    file->set_name(entry.path().filename().string());
    std::ifstream in(entry.path(), std::ios::binary);
    file->set_data(std::string(std::istreambuf_iterator<char>(in), {}));
  }
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.state_dir = (root / "state").string();
  options.api_keys = {{"key-a", "alice"}, {"key-b", "bob"}};
  options.quotas["alice"].max_decoders = 1;
  auto call = [](const aios::server::Host& host, const char* key, const std::function<grpc::Status(
                                                                      v1::Generation::Stub&, grpc::ClientContext&)>& rpc) {
    auto stub = v1::Generation::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(host.port()), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + key);
    const grpc::Status status = rpc(*stub, context);
    const auto& trailing = context.GetServerTrailingMetadata();
    auto it = trailing.find(aios::wire::kFieldMetadata);
    return std::pair{status.error_code(), it == trailing.end() ? std::string() : std::string(it->second.data(), it->second.size())};
  };
  auto register_as = [&](const aios::server::Host& host, const char* key, const char* name) {
    return call(host, key, [&](v1::Generation::Stub& stub, grpc::ClientContext& context) {
      v1::RegisterDecoderRequest named = request;
      named.set_name(name);
      v1::Empty done;
      return stub.RegisterDecoder(&context, named, &done);
    });
  };
  using Status = std::pair<grpc::StatusCode, std::string>;
  const Status ok{grpc::StatusCode::OK, ""}, full{grpc::StatusCode::RESOURCE_EXHAUSTED, "name"};
  {
    aios::server::Host host(l.local, options);
    CHECK(register_as(host, "key-a", "one") == ok);
    CHECK(register_as(host, "key-a", "two") == full);
    CHECK(register_as(host, "key-a", "one") == ok);  // replacing is not one more
    CHECK(register_as(host, "key-b", "two") == ok);  // bob's quota is his own
    CHECK(call(host, "key-a", [](v1::Generation::Stub& stub, grpc::ClientContext& context) {
            v1::DecoderName name;
            name.set_name("one");
            v1::Empty done;
            return stub.DeleteDecoder(&context, name, &done);
          }) == ok);
    CHECK(register_as(host, "key-a", "two") == ok);
  }
  // A restarted host counts the decoders its folder kept.
  aios::server::Host host(l.local, options);
  CHECK(register_as(host, "key-a", "three") == full);
  v1::DecoderList listed;
  CHECK(call(host, "key-a", [&](v1::Generation::Stub& stub, grpc::ClientContext& context) {
          return stub.ListDecoders(&context, v1::ListDecodersRequest(), &listed);
        }) == ok);
  REQUIRE(listed.names_size() == 1);
  CHECK(listed.names(0) == "two");
  std::filesystem::remove_all(root);
}

TEST_CASE("quotas: a tenant's calls in flight are bounded, other tenants' are not", "[server]") {
  auto gated = std::make_shared<GatedBackbone>(Loopback::get().local);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.api_keys = {{"key-a", "alice"}, {"key-b", "bob"}};
  options.quotas["alice"].max_concurrent = 1;
  aios::server::Host host(gated, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  aios::wire::ConnectOptions a;
  a.api_key = "key-a";
  auto alice = aios::server::RemoteBackbone::connect(address, a);
  auto stub = v1::Latent::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  auto info = [&](const char* key, std::string* field = nullptr) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + key);
    v1::ModelInfo out;
    const grpc::StatusCode code = stub->Info(&context, v1::InfoRequest(), &out).error_code();
    if (field != nullptr) {
      auto it = context.GetServerTrailingMetadata().find(aios::wire::kFieldMetadata);
      *field = it == context.GetServerTrailingMetadata().end() ? "" : std::string(it->second.data(), it->second.size());
    }
    return code;
  };

  gated->close();
  auto held = std::async(std::launch::async, [&] { return alice->forward(torch::randn({1, 4, kD})).hidden; });
  gated->wait_for_forwards(1);  // alice's one call in flight, held
  std::string field;
  CHECK(info("key-a", &field) == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(field == "tenant");
  CHECK(info("key-b") == grpc::StatusCode::OK);
  gated->open();
  CHECK(held.get().sizes() == at::IntArrayRef{1, 4, kD});
  CHECK(info("key-a") == grpc::StatusCode::OK);  // ended calls no longer count
}

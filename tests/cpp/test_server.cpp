// The hosted backbone on loopback: RemoteBackbone gives what the LocalBackbone it wraps gives, and
// malformed requests get their status codes while the host keeps serving.
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
#include "aios/server/wire.h"
#include "aios/v1/aios.grpc.pb.h"
#include "batcher.h"
#include "catch_torch.h"
#include "error_code.h"
#include "tiny_checkpoint.h"

using aios::Error;
using aios::ErrorCode;
using aios_test::code_of;
using aios::local::LocalBackbone;
using aios_test::kD;
using aios_test::kVocab;
using aios_test::TinyCheckpoint;
namespace v1 = aios::v1;

namespace {

struct Loopback {
  std::shared_ptr<LocalBackbone> local;
  std::unique_ptr<aios::server::Host> host;
  std::shared_ptr<aios::server::RemoteBackbone> remote;
  std::string address;

  static Loopback& get() {
    static Loopback* l = [] {
      auto* l = new Loopback;
      l->local = LocalBackbone::load(TinyCheckpoint::llama("server").write());
      aios::server::HostOptions options;
      options.listen = "127.0.0.1:0";
      options.max_batch = 16;
      options.quota.max_tokens = 512;
      l->host = std::make_unique<aios::server::Host>(l->local, options);
      l->address = "127.0.0.1:" + std::to_string(l->host->port());
      l->remote = aios::server::RemoteBackbone::connect(l->address);
      return l;
    }();
    return *l;
  }
};

v1::Tensor raw(v1::DType dtype, std::vector<int64_t> shape, std::size_t bytes) {
  v1::Tensor t;
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  t.set_data(std::string(bytes, '\0'));
  return t;
}

}  // namespace

TEST_CASE("a remote backbone gives what the local one gives", "[server]") {
  auto& l = Loopback::get();
  auto& local = *l.local;
  auto& remote = *l.remote;
  CHECK(remote.config().vocab_size == kVocab);
  CHECK(remote.config().hidden_size == kD);
  CHECK(remote.config() == local.config());  // every field of the description, as the host has it
  CHECK(remote.limits().max_batch > 0);
  CHECK(remote.dtype() == at::kFloat);

  torch::manual_seed(0);
  const at::Tensor ids = torch::randint(kVocab, {2, 6}, torch::kLong);
  CHECK(at::equal(remote.embed(ids), local.embed(ids)));
  const at::Tensor latents = local.embed(ids) + 0.01 * torch::randn({2, 6, kD});
  aios::gradient::ForwardOptions options;
  options.layers = {0, 2};
  options.mask = torch::tensor({{true, true, true, true, true, true}, {false, false, true, true, true, true}});
  const auto want = local.forward(latents, options);
  const auto got = remote.forward(latents, options);
  CHECK(at::equal(got.hidden, want.hidden));
  REQUIRE(got.layers.size() == 2);
  CHECK(at::equal(got.layers[1], want.layers[1]));
  CHECK(at::equal(remote.classify(got.hidden), local.classify(want.hidden)));

  // Handle form, stateless vjp and the fused losses.
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({2, 6, kD});
  cot.logits = torch::randn({2, 6, kVocab});
  const auto kept = remote.forward_keep(latents, options);
  CHECK(at::equal(kept.output.hidden, want.hidden));
  const at::Tensor grad = remote.vjp(kept.handle, cot).latents;
  CHECK(at::allclose(grad, local.vjp(latents, options, cot).latents, 1e-6, 1e-6));
  CHECK(at::allclose(remote.vjp(latents, options, cot).latents, grad, 1e-6, 1e-6));
  remote.release(kept.handle);
  CHECK(code_of([&] { remote.vjp(kept.handle, cot); }) == ErrorCode::kNotFound);

  aios::gradient::LossOptions ce;
  ce.loss = aios::gradient::CrossEntropy{torch::randint(kVocab, {2, 6}, torch::kLong), torch::rand({2, 6})};
  const auto fused = remote.forward_backward(latents, options, ce);
  const auto fused_local = local.forward_backward(latents, options, ce);
  CHECK(fused.loss.item<double>() == Approx(fused_local.loss.item<double>()).epsilon(1e-6));
  CHECK(at::allclose(fused.grad.latents, fused_local.grad.latents, 1e-6, 1e-6));

  aios::gradient::LossOptions distill;
  aios::gradient::Distillation d;
  d.teacher_latents = local.embed(torch::randint(kVocab, {2, 8}, torch::kLong));
  d.teacher_index = torch::tensor({{-1, 2, 3, 4, 5, 6}, {-1, -1, 2, 3, 4, 7}});
  d.temperature = 2.0;
  distill.loss = d;
  const auto gist = remote.forward_backward(latents, {}, distill);
  const auto gist_local = local.forward_backward(latents, {}, distill);
  CHECK(gist.loss.item<double>() == Approx(gist_local.loss.item<double>()).epsilon(1e-6));
  CHECK(at::allclose(gist.grad.latents, gist_local.grad.latents, 1e-6, 1e-6));
}

TEST_CASE("a host's description of its model crosses the wire whole, and is checked as untrusted", "[server]") {
  auto& l = Loopback::get();
  aios::ModelInfo described = l.local->config();
  described.sliding_windows = {std::nullopt, 6};
  described.bos_id = 0;
  described.eos_ids = {1, 2};
  aios::v1::ModelInfo wire;
  aios::server::to_wire(described, {4, 1024}, &wire);
  CHECK(aios::server::model_info(wire) == described);
  CHECK(aios::server::host_limits(wire).max_batch == 4);
  CHECK(aios::server::host_limits(wire).max_request_bytes == 1024);
  described.rope.reset();  // learned positions
  described.pad_id = 3;
  wire.Clear();
  aios::server::to_wire(described, {}, &wire);
  CHECK(aios::server::model_info(wire) == described);

  const auto refused = [&](const std::function<void(aios::v1::ModelInfo&)>& change, const std::string& field) {
    aios::v1::ModelInfo bad = wire;
    change(bad);
    try {
      aios::server::model_info(bad);
      FAIL("accepted " << bad.ShortDebugString());
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kDataLoss);
      CHECK(e.field() == field);
    }
  };
  refused([](auto& m) { m.set_dtype(aios::v1::INT64); }, "info.dtype");
  refused([](auto& m) { m.set_hidden_size(0); }, "info.hidden_size");
  refused([](auto& m) { m.set_vocab_size(int64_t{1} << 40); }, "info.vocab_size");  // a client sizes rows by it
  refused([](auto& m) { m.set_num_layers(-2); }, "info.num_layers");
  refused([](auto& m) { m.add_sliding_windows(4); }, "info.sliding_windows");
}

TEST_CASE("errors cross the wire with their code and field", "[server]") {
  auto& l = Loopback::get();
  std::string field;
  // The local backbone's own checks, reported through the host.
  CHECK(code_of([&] { l.remote->embed(torch::full({1, 2}, kVocab, torch::kLong)); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "ids");
  aios::gradient::ForwardOptions bad_layers;
  bad_layers.layers = {7};
  CHECK(code_of([&] { l.remote->forward(torch::zeros({1, 2, kD}), bad_layers); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(code_of([&] { l.remote->forward(torch::full({1, 2, kD}, NAN)); }) == ErrorCode::kInvalidArgument);
  // The host's limits.
  CHECK(code_of([&] { l.remote->forward(torch::zeros({17, 2, kD})); }, &field) == ErrorCode::kResourceExhausted);
  CHECK(field == "latents");
  CHECK(code_of([&] { l.remote->new_session(); }) == ErrorCode::kUnimplemented);
  // Requests whose reply or working memory would be out of proportion.
  aios::gradient::ForwardOptions many_layers;
  many_layers.layers = std::vector<int64_t>(200, 0);
  CHECK(code_of([&] { l.remote->forward(torch::zeros({1, 2, kD}), many_layers); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "options.layers");
  aios::gradient::LossOptions huge_chunks;
  huge_chunks.chunk_tokens = 1 << 20;
  huge_chunks.loss = aios::gradient::CrossEntropy{torch::zeros({1, 2}, torch::kLong), {}};
  CHECK(code_of([&] { l.remote->forward_backward(torch::zeros({1, 2, kD}), {}, huge_chunks); }, &field) ==
        ErrorCode::kResourceExhausted);
  CHECK(field == "chunk_tokens");
  huge_chunks.chunk_tokens = 0;  // as the in-process backbone says
  CHECK(code_of([&] { l.remote->forward_backward(torch::zeros({1, 2, kD}), {}, huge_chunks); }) ==
        code_of([&] { l.local->forward_backward(torch::zeros({1, 2, kD}), {}, huge_chunks); }));
  // A uint8 mask travels (as int64) and means what it means locally.
  aios::gradient::ForwardOptions byte_mask;
  byte_mask.mask = torch::tensor({{0, 1, 1}}, torch::kUInt8);
  CHECK(at::equal(l.remote->forward(torch::ones({1, 3, kD}), byte_mask).hidden,
                  l.local->forward(torch::ones({1, 3, kD}), byte_mask).hidden));
  // An address nobody serves.
  aios::server::ConnectOptions quick;
  quick.timeout = std::chrono::milliseconds(300);
  CHECK(code_of([&] { aios::server::RemoteBackbone::connect("127.0.0.1:1", quick); }) == ErrorCode::kUnavailable);
}

// A transport over another: what each call carried, and replies spoiled on request.
class Recording final : public aios::server::Transport {
 public:
  explicit Recording(std::shared_ptr<Transport> inner) : inner_(std::move(inner)) {}
  std::string call(const aios::server::Call& call, std::string request) override {
    calls.push_back(call);
    std::string reply = inner_->call(call, std::move(request));
    return spoil ? std::string("\xff\xff\xff") : reply;
  }
  std::unique_ptr<Stream> stream(const aios::server::Call& call, std::string request) override {
    calls.push_back(call);
    return inner_->stream(call, std::move(request));
  }
  std::vector<aios::server::Call> calls;
  bool spoil = false;

 private:
  std::shared_ptr<Transport> inner_;
};

TEST_CASE("a remote backbone makes every call through its transport, and checks what comes back", "[server]") {
  auto& l = Loopback::get();
  auto recording = std::make_shared<Recording>(aios::server::grpc_transport(l.address, {}));
  auto remote = aios::server::RemoteBackbone::connect(recording);
  CHECK(remote->config() == l.local->config());
  REQUIRE(recording->calls.size() == 1);
  CHECK(recording->calls[0].method == "/aios.v1.Latent/Info");

  // A call about a kept pass names the replica that keeps it, for a load balancer to route on.
  const auto kept = remote->forward_keep(torch::ones({1, 3, kD}));
  aios::gradient::Cotangents cotangents;
  cotangents.hidden = torch::ones({1, 3, kD});
  remote->vjp(kept.handle, cotangents);
  const aios::server::Call& vjp = recording->calls.back();
  CHECK(vjp.method == "/aios.v1.Gradient/Vjp");
  CHECK(vjp.metadata == std::vector<std::pair<std::string, std::string>>{{"aios-replica", std::to_string(kept.handle >> 48)}});
  remote->release(kept.handle);

  // Bytes that are no reply are the host's fault: data loss, not the caller's invalid argument.
  recording->spoil = true;
  std::string field;
  CHECK(code_of([&] { remote->forward(torch::ones({1, 3, kD})); }, &field) == ErrorCode::kDataLoss);
  CHECK(field == "reply");
  CHECK(code_of([&] { aios::server::RemoteBackbone::connect(recording); }, &field) == ErrorCode::kDataLoss);
}

TEST_CASE("malformed requests get their status and the host keeps serving", "[server]") {
  auto& l = Loopback::get();
  auto channel = grpc::CreateChannel(l.address, grpc::InsecureChannelCredentials());
  auto stub = v1::Latent::NewStub(channel);
  auto forward = [&](const v1::Tensor& latents, std::string* field = nullptr) {
    grpc::ClientContext context;
    v1::ForwardRequest request;
    *request.mutable_latents() = latents;
    v1::ForwardResponse response;
    const grpc::Status status = stub->Forward(&context, request, &response);
    if (field != nullptr) {
      const auto& trailing = context.GetServerTrailingMetadata();
      auto it = trailing.find(aios::server::kFieldMetadata);
      *field = it == trailing.end() ? "" : std::string(it->second.data(), it->second.size());
    }
    return status.error_code();
  };
  std::string field;
  // Shape and byte length disagree.
  CHECK(forward(raw(v1::FLOAT32, {1, 2, kD}, 4 * 2 * kD - 1), &field) == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(field == "latents.data");
  // No dtype, negative and giant dimensions (checked before any allocation), too high a rank.
  CHECK(forward(raw(v1::DTYPE_UNSPECIFIED, {1, 2, kD}, 0), &field) == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(field == "latents.dtype");
  CHECK(forward(raw(v1::FLOAT32, {1, -2, kD}, 0)) == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(forward(raw(v1::FLOAT32, {1 << 20, 1 << 20, kD}, 16)) == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(forward(raw(v1::FLOAT32, {1, 1, 1, 1, 1}, 4)) == grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Latents of an integer dtype, or of the wrong width.
  CHECK(forward(raw(v1::INT64, {1, 2, kD}, 8 * 2 * kD), &field) == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(field == "latents");
  CHECK(forward(raw(v1::FLOAT32, {1, 2, kD + 1}, 4 * 2 * (kD + 1))) == grpc::StatusCode::INVALID_ARGUMENT);
  // A released handle, and one this host never gave out.
  const auto kept = l.remote->forward_keep(torch::zeros({1, 2, kD}));
  l.remote->release(kept.handle);
  for (const uint64_t handle : {kept.handle, uint64_t{123456789}}) {
    auto gradient = v1::Gradient::NewStub(channel);
    grpc::ClientContext context;
    v1::VjpRequest request;
    request.set_handle(handle);
    *request.mutable_cotangents()->mutable_hidden() = raw(v1::FLOAT32, {1, 2, kD}, 4 * 2 * kD);
    v1::Gradients response;
    CHECK(gradient->Vjp(&context, request, &response).error_code() == grpc::StatusCode::NOT_FOUND);
  }
  // Bytes that are no message of the method (an unknown wire type, a field cut short, a string
  // of invalid UTF-8): the caller's error, INVALID_ARGUMENT naming the request, not gRPC's
  // INTERNAL; for a streamed reply too. (The soak, tests/python/test_soak.py, found them.)
  grpc::GenericStub generic(channel);
  const std::string invalid_utf8 = std::string("\x0a\x02", 2) + std::string("\xff\xfe", 2);  // texts: one bad string
  for (const auto& [method, bytes] :
       {std::pair{"/aios.v1.Latent/Forward", std::string("\xff\xff\xff", 3)},
        std::pair{"/aios.v1.Gradient/ForwardBackward", std::string("\x0a\x05\x08", 3)},
        std::pair{"/aios.v1.Tokenizer/Encode", invalid_utf8}}) {
    grpc::ClientContext context;
    const grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status status) { done.set_value(status); });
    const grpc::Status status = done.get_future().get();
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(status.error_message() == fmt::format("the request's bytes are not a message of {}", method));
    const auto& trailing = context.GetServerTrailingMetadata();
    auto it = trailing.find(aios::server::kFieldMetadata);
    CHECK((it != trailing.end() && it->second == "request"));
  }
  {
    auto generation = v1::Generation::NewStub(channel);
    grpc::ClientContext context;
    v1::GenerateRequest request;
    request.add_routes()->set_decoder("\xff\xfe");  // serialized as it is; the host cannot parse it
    auto stream = generation->Generate(&context, request);
    v1::GenerateStep step;
    while (stream->Read(&step)) {
    }
    CHECK(stream->Finish().error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Decoder files that do not parse are the caller's invalid argument (not DATA_LOSS, the
  // registry's code for saved files gone bad).
  {
    auto generation = v1::Generation::NewStub(channel);
    grpc::ClientContext context;
    v1::RegisterDecoderRequest request;
    request.set_name("broken");
    auto* file = request.add_files();
    file->set_name("decoder.json");
    file->set_data("{not json");
    v1::Empty done;
    const grpc::Status status = generation->RegisterDecoder(&context, request, &done);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    auto it = context.GetServerTrailingMetadata().find(aios::server::kFieldMetadata);
    CHECK((it != context.GetServerTrailingMetadata().end() && it->second == "files"));
  }
  // Well-formed requests are still answered.
  CHECK(forward(raw(v1::FLOAT32, {1, 2, kD}, 4 * 2 * kD)) == grpc::StatusCode::OK);
  CHECK(at::equal(l.remote->embed(torch::tensor({{1, 2}})), l.local->embed(torch::tensor({{1, 2}}))));
}

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
  aios::server::ConnectOptions wrong;
  wrong.api_key = "key-c";
  CHECK(code_of([&] { aios::server::RemoteBackbone::connect(address, wrong); }) == ErrorCode::kPermissionDenied);

  aios::server::ConnectOptions a, b;
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
  aios::server::ConnectOptions a, b;
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
    aios::server::ConnectOptions o;
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
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  // Fits the quota only because the table forgot the first pass (and the store let it go).
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
    auto it = trailing.find(aios::server::kFieldMetadata);
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

TEST_CASE("extensions over the wire: rows and their gradients as in-process", "[server]") {
  auto& l = Loopback::get();
  auto& local = *l.local;
  auto& remote = *l.remote;
  torch::manual_seed(3);
  aios::ali::ExtendOptions init;
  init.init = aios::ali::ExtendOptions::Init::kTensors;
  init.embedding_rows = torch::randn({2, kD});
  init.classifier_rows = torch::randn({2, kD});
  auto ext_local = local.extend({"<sox>", "<eox>"}, init);
  auto ext_remote = remote.extend({"<sox>", "<eox>"}, init);
  CHECK(ext_remote->first_id() == kVocab);
  CHECK(at::equal(ext_remote->embedding_rows(), ext_local->embedding_rows()));
  // An extension belongs to the backbone that made it.
  CHECK(code_of([&] { local.embed(torch::tensor({{1}}), ext_remote.get()); }) == ErrorCode::kInvalidArgument);

  constexpr int64_t sox = kVocab, eox = kVocab + 1;
  const at::Tensor ids = torch::tensor({{int64_t{1}, sox, int64_t{3}, eox}, {eox, int64_t{2}, sox, int64_t{4}}});
  for (int round = 0; round < 2; ++round) {
    aios::gradient::ForwardOptions lo, ro;
    lo.extension = ext_local;
    ro.extension = ext_remote;
    lo.ids = ro.ids = ids;
    aios::gradient::LossOptions ce;
    ce.loss = aios::gradient::CrossEntropy{
        torch::tensor({{sox, int64_t{3}, eox, int64_t{0}}, {int64_t{2}, sox, int64_t{4}, eox}}), {}};
    const auto want = local.forward_backward(local.embed(ids, ext_local.get()), lo, ce);
    const auto got = remote.forward_backward(remote.embed(ids, ext_remote.get()), ro, ce);
    CHECK(got.loss.item<double>() == Approx(want.loss.item<double>()).epsilon(1e-6));
    CHECK(at::allclose(got.grad.latents, want.grad.latents, 1e-6, 1e-6));
    REQUIRE(got.grad.embedding_rows.defined());
    CHECK(at::allclose(got.grad.embedding_rows, want.grad.embedding_rows, 1e-6, 1e-6));
    CHECK(at::allclose(got.grad.classifier_rows, want.grad.classifier_rows, 1e-6, 1e-6));
    // A training step on both: the remote rows reach the host with the next call.
    torch::NoGradGuard no_grad;
    ext_local->embedding_rows().sub_(want.grad.embedding_rows);
    ext_local->classifier_rows().sub_(want.grad.classifier_rows);
    ext_remote->embedding_rows().sub_(got.grad.embedding_rows);
    ext_remote->classifier_rows().sub_(got.grad.classifier_rows);
  }
  const at::Tensor hidden = local.forward(local.embed(ids, ext_local.get())).hidden;
  CHECK(at::allclose(remote.classify(hidden, ext_remote.get()), local.classify(hidden, ext_local.get()), 1e-5, 1e-5));
}

TEST_CASE("generation streams from the host and stops when the caller leaves", "[server]") {
  auto& l = Loopback::get();
  const at::Tensor latents = l.local->embed(torch::tensor({{1, 2, 3}, {4, 5, 6}}));
  aios::ali::GenerateOptions options;
  options.max_new_tokens = 6;
  const auto want = l.local->generate(latents, options);
  const auto got = l.remote->generate(latents, options);
  CHECK(at::equal(got.ids, want.ids));
  CHECK(at::allclose(got.hidden, want.hidden, 1e-5, 1e-5));
  // A generation dropped after one step is cancelled on the host, which goes on serving.
  options.max_new_tokens = 60;
  {
    auto generation = l.remote->start_generation(latents, options);
    CHECK(generation->next().has_value());
  }
  CHECK(at::equal(l.remote->embed(torch::tensor({{1, 2}})), l.local->embed(torch::tensor({{1, 2}}))));
  options.max_new_tokens = 0;
  CHECK(code_of([&] { l.remote->generate(latents, options); }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("a host with a state folder keeps saved extensions and decoders across restarts", "[server]") {
  auto& l = Loopback::get();
  const std::filesystem::path root = std::filesystem::temp_directory_path() / ("aios_test_state_" + std::to_string(::getpid()));
  std::filesystem::remove_all(root);
  aios::adapters::save_decoder(aios::adapters::LinearDecoder(kD, 2), (root / "made_here").string());
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.state_dir = (root / "state").string();
  const at::Tensor rows = torch::randn({1, kD});
  v1::Empty done;
  {
    aios::server::Host host(l.local, options);
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(host.port()), grpc::InsecureChannelCredentials());
    auto tokenizer = v1::Tokenizer::NewStub(channel);
    auto generation = v1::Generation::NewStub(channel);
    v1::CreateExtensionRequest create;
    create.add_tokens("<s>");
    v1::ExtensionInfo info;
    grpc::ClientContext c1, c2, c3, c4, c5;
    REQUIRE(tokenizer->CreateExtension(&c1, create, &info).ok());
    v1::WriteRowsRequest write;
    write.set_id(info.id());
    for (v1::Tensor* t : {write.mutable_rows()->mutable_embedding_rows(), write.mutable_rows()->mutable_classifier_rows()}) {
      t->set_dtype(v1::FLOAT32);
      t->add_shape(1);
      t->add_shape(kD);
      t->set_data(rows.data_ptr(), rows.nbytes());
    }
    REQUIRE(tokenizer->WriteRows(&c2, write, &done).ok());
    v1::SaveExtensionRequest save;
    save.set_id(info.id());
    save.set_name("../mine");
    CHECK(tokenizer->SaveExtension(&c3, save, &done).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    save.set_name("mine");
    REQUIRE(tokenizer->SaveExtension(&c4, save, &done).ok());
    v1::RegisterDecoderRequest decoder;
    decoder.set_name("pair");
    for (const auto& entry : std::filesystem::directory_iterator(root / "made_here")) {
      auto* file = decoder.add_files();
      file->set_name(entry.path().filename().string());
      std::ifstream in(entry.path(), std::ios::binary);
      file->set_data(std::string(std::istreambuf_iterator<char>(in), {}));
    }
    REQUIRE(generation->RegisterDecoder(&c5, decoder, &done).ok());
  }
  aios::server::Host host(l.local, options);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(host.port()), grpc::InsecureChannelCredentials());
  auto tokenizer = v1::Tokenizer::NewStub(channel);
  auto generation = v1::Generation::NewStub(channel);
  grpc::ClientContext c1, c2, c3, c4, c5, c6;
  v1::ExtensionList list;
  REQUIRE(tokenizer->ListExtensions(&c1, v1::ListExtensionsRequest(), &list).ok());
  CHECK(list.live_size() == 0);
  REQUIRE(list.saved_size() == 1);
  CHECK(list.saved(0) == "mine");
  v1::LoadExtensionRequest load;
  load.set_name("mine");
  v1::ExtensionInfo info;
  REQUIRE(tokenizer->LoadExtension(&c2, load, &info).ok());
  CHECK(info.tokens(0) == "<s>");
  const at::Tensor loaded = torch::from_blob(const_cast<char*>(info.rows().embedding_rows().data().data()), {1, kD});
  CHECK(at::equal(loaded, rows));
  v1::DecoderList decoders;
  REQUIRE(generation->ListDecoders(&c3, v1::ListDecodersRequest(), &decoders).ok());
  REQUIRE(decoders.names_size() == 1);
  CHECK(decoders.names(0) == "pair");
  v1::DeleteExtensionRequest remove;
  remove.set_name("mine");
  REQUIRE(tokenizer->DeleteExtension(&c4, remove, &done).ok());
  CHECK(tokenizer->DeleteExtension(&c5, remove, &done).error_code() == grpc::StatusCode::NOT_FOUND);
  v1::ExtensionList after;
  REQUIRE(tokenizer->ListExtensions(&c6, v1::ListExtensionsRequest(), &after).ok());
  CHECK(after.saved_size() == 0);
  CHECK(after.live_size() == 1);  // the loaded one lives on until deleted by id
  std::filesystem::remove_all(root);
}

TEST_CASE("a kept pass that no call ever claims is released", "[server]") {
  auto& l = Loopback::get();
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.unclaimed_ttl = std::chrono::milliseconds(200);
  aios::server::Host host(l.local, options);
  auto remote = aios::server::RemoteBackbone::connect("127.0.0.1:" + std::to_string(host.port()));
  const at::Tensor latents = torch::randn({1, 4, kD});
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({1, 4, kD});
  const std::size_t before = l.local->kept_passes();
  const auto claimed = remote->forward_keep(latents);
  const auto unclaimed = remote->forward_keep(latents);
  remote->vjp(claimed.handle, cot);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const auto next = remote->forward_keep(latents);  // releases what was never claimed
  CHECK(l.local->kept_passes() == before + 2);
  CHECK(code_of([&] { remote->vjp(unclaimed.handle, cot); }) == ErrorCode::kNotFound);
  remote->vjp(claimed.handle, cot);
  remote->release(claimed.handle);
  remote->release(next.handle);
  CHECK(l.local->kept_passes() == before);
}

TEST_CASE("payloads larger than the host's message limit travel in chunks", "[server]") {
  auto& l = Loopback::get();
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.max_message_bytes = 64 << 10;
  aios::server::Host host(l.local, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  const at::Tensor latents = torch::randn({24, 32, kD});  // 96 KiB of float32
  std::string field;

  // In one message the request is over the limit ...
  auto whole = aios::server::RemoteBackbone::connect(address);
  CHECK(code_of([&] { whole->forward(latents); }) == ErrorCode::kResourceExhausted);
  // ... in chunks of 16 KiB it goes through, and so does the reply (chunked by the host).
  aios::server::ConnectOptions chunked;
  chunked.chunk_bytes = 16 << 10;
  auto remote = aios::server::RemoteBackbone::connect(address, chunked);
  const auto want = l.local->forward(latents);
  CHECK(at::equal(remote->forward(latents).hidden, want.hidden));
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({24, 32, kD});
  const auto kept = remote->forward_keep(latents);
  CHECK(at::allclose(remote->vjp(kept.handle, cot).latents, l.local->vjp(latents, {}, cot).latents, 1e-6, 1e-6));
  remote->release(kept.handle);
  CHECK(code_of([&] { remote->vjp(kept.handle, cot); }, &field) == ErrorCode::kNotFound);
  CHECK(field == "handle");
  // The unary call's errors, with their field.
  CHECK(code_of([&] { remote->forward(torch::full({24, 32, kD}, NAN)); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "latents");
  aios::server::ConnectOptions zero;
  zero.chunk_bytes = 0;
  CHECK(code_of([&] { aios::server::RemoteBackbone::connect(address, zero); }) == ErrorCode::kInvalidArgument);

  // Chunks of a method the Chunked service does not carry, or of no valid message.
  auto stub = v1::Chunked::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  for (const auto& [method, code] : {std::pair{"/aios.v1.Generation/Generate", grpc::StatusCode::UNIMPLEMENTED},
                                     std::pair{"/aios.v1.Latent/Forward", grpc::StatusCode::INVALID_ARGUMENT}}) {
    grpc::ClientContext c;
    auto stream = stub->Call(&c);
    v1::Chunk chunk;
    chunk.set_method(method);
    chunk.set_data(std::string("\xff\xff\xff", 3));
    stream->Write(chunk);
    stream->WritesDone();
    while (stream->Read(&chunk)) {
    }
    CHECK(stream->Finish().error_code() == code);
  }
}

TEST_CASE("the standard gRPC health service says the host is serving", "[server]") {
  auto& l = Loopback::get();
  grpc::GenericStub stub(grpc::CreateChannel(l.address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  const grpc::Slice empty{std::string()};
  grpc::ByteBuffer request(&empty, 1), response;  // an empty HealthCheckRequest: the whole server
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status status) { done.set_value(status); });
  REQUIRE(done.get_future().get().ok());
  std::vector<grpc::Slice> slices;
  REQUIRE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  CHECK(bytes == std::string("\x08\x01"));  // HealthCheckResponse{status: SERVING}
}

TEST_CASE("a caller that leaves during forward_keep leaves no kept pass behind", "[server]") {
  auto& l = Loopback::get();
  const std::size_t before = l.local->kept_passes();
  {
    // A host of its own: its destruction waits for the passes still being computed.
    aios::server::HostOptions options;
    options.listen = "127.0.0.1:0";
    options.unclaimed_ttl = std::chrono::milliseconds(50);
    aios::server::Host host(l.local, options);
    auto stub = v1::Gradient::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(host.port()), grpc::InsecureChannelCredentials()));
    const at::Tensor latents = torch::randn({16, 32, kD});
    v1::ForwardRequest request;
    v1::Tensor* t = request.mutable_latents();
    t->set_dtype(v1::FLOAT32);
    for (int64_t d : latents.sizes()) t->add_shape(d);
    t->set_data(latents.data_ptr(), latents.nbytes());
    for (int i = 0; i < 5; ++i) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::microseconds(200));
      v1::ForwardResponse response;
      if (stub->ForwardKeep(&context, request, &response).ok()) {  // in time: ours to release
        grpc::ClientContext release;
        v1::ReleaseRequest handle;
        handle.set_handle(response.handle());
        v1::Empty empty;
        CHECK(stub->Release(&release, handle, &empty).ok());
      }
    }
    // A cut call is stopped between blocks, or its finished pass released when the host sees the
    // cut; one finished just before the host saw it stays unclaimed, until the next ForwardKeep
    // after HostOptions::unclaimed_ttl releases it.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    grpc::ClientContext in_time;
    v1::ForwardResponse response;
    REQUIRE(stub->ForwardKeep(&in_time, request, &response).ok());
    grpc::ClientContext release;
    v1::ReleaseRequest handle;
    handle.set_handle(response.handle());
    v1::Empty empty;
    CHECK(stub->Release(&release, handle, &empty).ok());
  }
  CHECK(l.local->kept_passes() == before);
}

TEST_CASE("replicas: handles name the replica that keeps them, replies name who answered", "[server]") {
  auto& l = Loopback::get();
  auto host = [&](int64_t replica) {
    aios::server::HostOptions options;
    options.listen = "127.0.0.1:0";
    options.replica = replica;
    return std::make_unique<aios::server::Host>(l.local, options);
  };
  auto connect = [](const aios::server::Host& h) {
    return aios::server::RemoteBackbone::connect("127.0.0.1:" + std::to_string(h.port()));
  };
  auto zero = host(0), one = host(1);
  auto r0 = connect(*zero), r1 = connect(*one);
  const at::Tensor latents = torch::randn({1, 3, kD});
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({1, 3, kD});
  const auto kept0 = r0->forward_keep(latents);
  const auto kept1 = r1->forward_keep(latents);
  CHECK(kept0.handle >> 48 == 0);
  CHECK(kept1.handle >> 48 == 1);

  // A handle sent to another replica is unknown there, and still good where it is kept.
  std::string field;
  CHECK(code_of([&] { r0->vjp(kept1.handle, cot); }, &field) == ErrorCode::kNotFound);
  CHECK(field == "handle");
  CHECK(code_of([&] { r1->release(kept0.handle); }) == ErrorCode::kNotFound);
  const at::Tensor want = l.local->vjp(latents, {}, cot).latents;
  CHECK(at::allclose(r1->vjp(kept1.handle, cot).latents, want, 1e-6, 1e-6));
  CHECK(at::allclose(r0->vjp(kept0.handle, cot).latents, want, 1e-6, 1e-6));

  // A replica restarted under the same number does not take the handles of its previous life.
  {
    auto again = host(0);
    CHECK(code_of([&] { connect(*again)->vjp(kept0.handle, cot); }) == ErrorCode::kNotFound);
  }
  r0->release(kept0.handle);
  r1->release(kept1.handle);

  // Every reply, an error too, carries "aios-replica: N" in its initial metadata.
  auto replica_of_reply = [](const aios::server::Host& h, bool fail) {
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(h.port()), grpc::InsecureChannelCredentials());
    grpc::ClientContext context;
    grpc::Status status;
    if (fail) {
      v1::VjpRequest request;
      request.set_handle(uint64_t{7} << 48);
      v1::Gradients response;
      status = v1::Gradient::NewStub(channel)->Vjp(&context, request, &response);
      CHECK(status.error_code() == grpc::StatusCode::NOT_FOUND);
    } else {
      v1::ModelInfo info;
      status = v1::Latent::NewStub(channel)->Info(&context, v1::InfoRequest(), &info);
      CHECK(status.ok());
    }
    const auto& metadata = context.GetServerInitialMetadata();
    const auto it = metadata.find("aios-replica");
    return it == metadata.end() ? std::string("none") : std::string(it->second.data(), it->second.size());
  };
  CHECK(replica_of_reply(*zero, false) == "0");
  CHECK(replica_of_reply(*one, false) == "1");
  CHECK(replica_of_reply(*one, true) == "1");

  CHECK(code_of([&] { host(65536); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "replica");
}

namespace {

// A LocalBackbone whose forwards are counted, and held while the gate is closed.
class GatedBackbone final : public aios::gradient::Backbone {
 public:
  explicit GatedBackbone(std::shared_ptr<LocalBackbone> inner) : inner_(std::move(inner)) {}

  void close() {
    std::lock_guard lock(mutex_);
    open_ = false;
  }
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    changed_.notify_all();
  }
  int forwards() {
    std::lock_guard lock(mutex_);
    return forwards_;
  }
  void wait_for_forwards(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return forwards_ >= n; });
  }

  aios::ali::ForwardOutput forward(const at::Tensor& latents, const aios::ali::ForwardOptions& options) override {
    {
      std::unique_lock lock(mutex_);
      ++forwards_;
      changed_.notify_all();
      changed_.wait(lock, [&] { return open_; });
    }
    return inner_->forward(latents, options);
  }
  const aios::ModelInfo& config() const override { return inner_->config(); }
  c10::Device device() const override { return inner_->device(); }
  c10::ScalarType dtype() const override { return inner_->dtype(); }
  at::Tensor embed(const at::Tensor& ids, const aios::ali::Extension* e) override { return inner_->embed(ids, e); }
  at::Tensor classify(const at::Tensor& hidden, const aios::ali::Extension* e) override {
    return inner_->classify(hidden, e);
  }
  std::shared_ptr<aios::ali::Extension> extend(const std::vector<std::string>& tokens,
                                               const aios::ali::ExtendOptions& options) override {
    return inner_->extend(tokens, options);
  }
  std::shared_ptr<const aios::tokenizer::Tokenizer> tokenizer() override { return inner_->tokenizer(); }
  std::optional<std::string> chat_template() override { return inner_->chat_template(); }
  std::unique_ptr<aios::ali::Generation> start_generation(const at::Tensor& latents,
                                                          const aios::ali::GenerateOptions& options) override {
    return inner_->start_generation(latents, options);
  }
  std::shared_ptr<aios::ali::Session> new_session() override { return inner_->new_session(); }
  // The pass's cancellation check (asked between blocks, forward and backward) waits while the
  // gate is closed, and counts the times it said stop.
  aios::gradient::KeptForward forward_keep(const at::Tensor& latents, const aios::gradient::ForwardOptions& options) override {
    aios::gradient::ForwardOptions held = options;
    held.cancelled = [this, asked = options.cancelled] {
      std::unique_lock lock(mutex_);
      ++checks_;
      changed_.notify_all();
      changed_.wait(lock, [&] { return open_; });
      lock.unlock();
      const bool stop = asked && asked();
      if (stop) {
        std::lock_guard again(mutex_);
        ++stops_;
      }
      return stop;
    };
    return inner_->forward_keep(latents, held);
  }
  void wait_for_checks(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return checks_ >= n; });
  }
  int checks() {
    std::lock_guard lock(mutex_);
    return checks_;
  }
  int stops() {
    std::lock_guard lock(mutex_);
    return stops_;
  }
  aios::gradient::Gradients vjp(aios::gradient::Handle handle, const aios::gradient::Cotangents& c) override {
    return inner_->vjp(handle, c);
  }
  void release(aios::gradient::Handle handle) override { inner_->release(handle); }
  aios::gradient::Gradients vjp(const at::Tensor& latents, const aios::gradient::ForwardOptions& options,
                                const aios::gradient::Cotangents& c) override {
    return inner_->vjp(latents, options, c);
  }
  aios::gradient::FusedResult forward_backward(const at::Tensor& latents, const aios::gradient::ForwardOptions& options,
                                               const aios::gradient::LossOptions& loss) override {
    return inner_->forward_backward(latents, options, loss);
  }

 private:
  std::shared_ptr<LocalBackbone> inner_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool open_ = true;
  int forwards_ = 0;
  int checks_ = 0;
  int stops_ = 0;
};

}  // namespace

TEST_CASE("a call whose caller left while it waited for a compute thread is never computed", "[server]") {
  auto gated = std::make_shared<GatedBackbone>(Loopback::get().local);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.compute_threads = 1;
  aios::server::Host host(gated, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  const at::Tensor latents = torch::randn({1, 4, kD});

  gated->close();
  auto first = std::async(std::launch::async, [&] {
    return aios::server::RemoteBackbone::connect(address)->forward(latents).hidden;
  });
  gated->wait_for_forwards(1);  // computing on the only compute thread, held there
  aios::server::ConnectOptions hasty;
  hasty.timeout = std::chrono::milliseconds(200);
  auto waiting = aios::server::RemoteBackbone::connect(address, hasty);
  CHECK(code_of([&] { waiting->forward(latents); }) == ErrorCode::kUnavailable);  // its deadline passed in the queue
  // The host marks the call cancelled on its own timer, a little after the caller gave up.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  gated->open();
  CHECK(first.get().sizes() == at::IntArrayRef{1, 4, kD});
  CHECK(gated->forwards() == 1);  // the hasty call never reached the backbone
  aios::server::RemoteBackbone::connect(address)->forward(latents);
  CHECK(gated->forwards() == 2);
}

TEST_CASE("forwards that wait behind another are computed as one batch, each caller getting its rows", "[server]") {
  GatedBackbone gated(Loopback::get().local);
  aios::server::ForwardBatcher batcher(gated, 16);
  torch::manual_seed(3);
  const at::Tensor a = torch::randn({1, 4, kD}), b = torch::randn({2, 4, kD}), c = torch::randn({1, 4, kD});
  const at::Tensor other_shape = torch::randn({1, 5, kD});
  const at::Tensor not_finite = torch::full({1, 4, kD}, std::numeric_limits<float>::quiet_NaN());

  gated.close();
  auto first = std::async(std::launch::async, [&] { return batcher.forward(a); });
  gated.wait_for_forwards(1);  // computing alone, held
  // Another shape does not wait for it: it reaches the backbone while the first is held there.
  auto other = std::async(std::launch::async, [&] { return batcher.forward(other_shape); });
  gated.wait_for_forwards(2);
  std::vector<std::future<at::Tensor>> queued;
  for (const at::Tensor* x : {&b, &c}) {
    queued.push_back(std::async(std::launch::async, [&batcher, x] { return batcher.forward(*x); }));
  }
  auto bad = std::async(std::launch::async, [&] { return batcher.forward(not_finite); });
  while (batcher.waiting() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  gated.open();

  auto& local = *Loopback::get().local;
  CHECK(torch::equal(first.get(), local.forward(a).hidden));  // alone: exactly the local result
  CHECK(torch::equal(other.get(), local.forward(other_shape).hidden));
  CHECK(torch::allclose(queued[0].get(), local.forward(b).hidden, 1e-5, 1e-5));
  CHECK(torch::allclose(queued[1].get(), local.forward(c).hidden, 1e-5, 1e-5));
  // The NaN joined b and c's batch: that batch failed, so each of the three ran alone, and only
  // the caller with the bad latents got the error.
  CHECK(code_of([&] { bad.get(); }) == ErrorCode::kInvalidArgument);
  // a; other_shape; the batch [b, c, NaN]; b, c and NaN alone.
  CHECK(gated.forwards() == 6);

  // Without a forward in front, each computes alone.
  gated.wait_for_forwards(6);
  CHECK(torch::equal(batcher.forward(b), local.forward(b).hidden));
  CHECK(gated.forwards() == 7);
  CHECK(aios::server::ForwardBatcher::batchable({}));
  aios::gradient::ForwardOptions with_layers;
  with_layers.layers = {1};
  CHECK(!aios::server::ForwardBatcher::batchable(with_layers));
}

TEST_CASE("a caller that leaves stops its forward or backward between blocks", "[server]") {
  auto gated = std::make_shared<GatedBackbone>(Loopback::get().local);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  aios::server::Host host(gated, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  const at::Tensor latents = torch::randn({1, 4, kD});
  aios::server::ConnectOptions hasty;
  hasty.timeout = std::chrono::milliseconds(1000);
  auto remote = aios::server::RemoteBackbone::connect(address);
  auto leaving = aios::server::RemoteBackbone::connect(address, hasty);
  auto wait_for_the_host_to_see_it = [] { std::this_thread::sleep_for(std::chrono::milliseconds(500)); };

  // Forward: held at its first block while its caller's deadline passes, then told to stop.
  gated->close();
  auto forward = std::async(std::launch::async, [&] { return code_of([&] { leaving->forward_keep(latents); }); });
  gated->wait_for_checks(1);
  CHECK(forward.get() == ErrorCode::kUnavailable);
  wait_for_the_host_to_see_it();
  gated->open();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(gated->stops() == 1);
  const int forward_checks = gated->checks();
  CHECK(forward_checks < Loopback::get().local->config().num_layers);  // stopped before its last block

  // Backward: a pass kept by a caller that stays; another Vjp on it leaves during its backward.
  auto kept = remote->forward_keep(latents);
  const int checks_kept = gated->checks();
  gated->close();
  auto vjp = std::async(std::launch::async, [&] {
    aios::server::ConnectOptions o = hasty;
    auto same_tenant = aios::server::RemoteBackbone::connect(address, o);
    aios::gradient::Cotangents c;
    c.hidden = torch::ones({1, 4, kD});
    return code_of([&] { same_tenant->vjp(kept.handle, c); });
  });
  gated->wait_for_checks(checks_kept + 1);
  CHECK(vjp.get() == ErrorCode::kUnavailable);
  wait_for_the_host_to_see_it();
  gated->open();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(gated->stops() == 2);
  CHECK(gated->checks() == checks_kept + 1);  // stopped at the first block boundary of its backward
  // The pass is intact for its own caller.
  aios::gradient::Cotangents c;
  c.hidden = torch::ones({1, 4, kD});
  CHECK(torch::allclose(remote->vjp(kept.handle, c).latents,
                        Loopback::get().local->vjp(latents, {}, c).latents, 1e-5, 1e-6));
  remote->release(kept.handle);
}

TEST_CASE("quotas: a tenant's calls in flight are bounded, other tenants' are not", "[server]") {
  auto gated = std::make_shared<GatedBackbone>(Loopback::get().local);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.api_keys = {{"key-a", "alice"}, {"key-b", "bob"}};
  options.quotas["alice"].max_concurrent = 1;
  aios::server::Host host(gated, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  aios::server::ConnectOptions a;
  a.api_key = "key-a";
  auto alice = aios::server::RemoteBackbone::connect(address, a);
  auto stub = v1::Latent::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  auto info = [&](const char* key, std::string* field = nullptr) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + key);
    v1::ModelInfo out;
    const grpc::StatusCode code = stub->Info(&context, v1::InfoRequest(), &out).error_code();
    if (field != nullptr) {
      auto it = context.GetServerTrailingMetadata().find(aios::server::kFieldMetadata);
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

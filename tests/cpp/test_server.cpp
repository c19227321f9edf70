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
using aios_test::Loopback;
using aios_test::raw;
namespace v1 = aios::v1;

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
  aios::wire::to_wire(described, {4, 1024}, &wire);
  CHECK(aios::wire::model_info(wire) == described);
  CHECK(aios::wire::host_limits(wire).max_batch == 4);
  CHECK(aios::wire::host_limits(wire).max_request_bytes == 1024);
  described.rope.reset();  // learned positions
  described.pad_id = 3;
  wire.Clear();
  aios::wire::to_wire(described, {}, &wire);
  CHECK(aios::wire::model_info(wire) == described);

  const auto refused = [&](const std::function<void(aios::v1::ModelInfo&)>& change, const std::string& field) {
    aios::v1::ModelInfo bad = wire;
    change(bad);
    try {
      aios::wire::model_info(bad);
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

TEST_CASE("a host refuses a backbone in a dtype its description cannot carry", "[server]") {
  aios::local::LoadOptions load;
  load.dtype = at::kDouble;
  std::shared_ptr<LocalBackbone> wide = LocalBackbone::load(TinyCheckpoint::llama("server_float64").write(), load);
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  std::string field;
  CHECK(code_of([&] { aios::server::Host host(wide, options); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "dtype");
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
  aios::wire::ConnectOptions quick;
  quick.timeout = std::chrono::milliseconds(300);
  CHECK(code_of([&] { aios::server::RemoteBackbone::connect("127.0.0.1:1", quick); }) == ErrorCode::kUnavailable);
}

// A transport over another: what each call carried, and replies spoiled on request.
class Recording final : public aios::wire::Transport {
 public:
  explicit Recording(std::shared_ptr<Transport> inner) : inner_(std::move(inner)) {}
  std::string call(const aios::wire::Call& call, std::string request) override {
    calls.push_back(call);
    std::string reply = inner_->call(call, std::move(request));
    return spoil ? std::string("\xff\xff\xff") : reply;
  }
  std::unique_ptr<Stream> stream(const aios::wire::Call& call, std::string request) override {
    calls.push_back(call);
    return inner_->stream(call, std::move(request));
  }
  std::vector<aios::wire::Call> calls;
  bool spoil = false;

 private:
  std::shared_ptr<Transport> inner_;
};

TEST_CASE("a remote backbone makes every call through its transport, and checks what comes back", "[server]") {
  auto& l = Loopback::get();
  auto recording = std::make_shared<Recording>(aios::wire::grpc_transport(l.address, {}));
  auto remote = aios::server::RemoteBackbone::connect(recording);
  CHECK(remote->config() == l.local->config());
  REQUIRE(recording->calls.size() == 1);
  CHECK(recording->calls[0].method == "/aios.v1.Latent/Info");

  // A call about a kept pass names the replica that keeps it, for a load balancer to route on.
  const auto kept = remote->forward_keep(torch::ones({1, 3, kD}));
  aios::gradient::Cotangents cotangents;
  cotangents.hidden = torch::ones({1, 3, kD});
  remote->vjp(kept.handle, cotangents);
  const aios::wire::Call& vjp = recording->calls.back();
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
      auto it = trailing.find(aios::wire::kFieldMetadata);
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
    auto it = trailing.find(aios::wire::kFieldMetadata);
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
    auto it = context.GetServerTrailingMetadata().find(aios::wire::kFieldMetadata);
    CHECK((it != context.GetServerTrailingMetadata().end() && it->second == "files"));
  }
  // Well-formed requests are still answered.
  CHECK(forward(raw(v1::FLOAT32, {1, 2, kD}, 4 * 2 * kD)) == grpc::StatusCode::OK);
  CHECK(at::equal(l.remote->embed(torch::tensor({{1, 2}})), l.local->embed(torch::tensor({{1, 2}}))));
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

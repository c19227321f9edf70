// Calls on a host on loopback: the table of calls that the contract's descriptors fill, payloads
// carried in chunks, callers that leave before or while their call computes, and forwards waiting
// behind another computed as one batch.
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include "aios/error.h"
#include "aios/server/host.h"
#include "aios/server/remote_backbone.h"
#include "aios/v1/aios.grpc.pb.h"
#include "batcher.h"
#include "calls.h"
#include "catch_torch.h"
#include "error_code.h"
#include "hosted.h"

using aios::ErrorCode;
using aios_test::code_of;
using aios_test::kD;
using aios_test::GatedBackbone;
using aios_test::Loopback;
namespace v1 = aios::v1;

TEST_CASE("the host's table of calls takes only what the contract declares, and all of it", "[server]") {
  struct Handlers {
    grpc::Status info(grpc::ServerContext*, const v1::InfoRequest*, v1::ModelInfo*) { return grpc::Status::OK; }
    grpc::Status embed_as_info(grpc::ServerContext*, const v1::InfoRequest*, v1::Tensor*) { return grpc::Status::OK; }
    grpc::Status generate(grpc::ServerContext*, const v1::GenerateRequest*,
                          const std::function<bool(const v1::GenerateStep&)>&) {
      return grpc::Status::OK;
    }
  } handlers;
  aios::server::Calls calls;
  CHECK(code_of([&] { calls.add("Latent.Nothing", &handlers, &Handlers::info); }) == ErrorCode::kInternal);
  CHECK(code_of([&] { calls.add("Latent.Embed", &handlers, &Handlers::embed_as_info); }) == ErrorCode::kInternal);
  CHECK(code_of([&] { calls.add("Latent.Info", &handlers, &Handlers::generate); }) == ErrorCode::kInternal);
  CHECK(code_of([&] { calls.add("Chunked.Call", &handlers, &Handlers::info); }) == ErrorCode::kInternal);
  calls.add("Latent.Info", &handlers, &Handlers::info);
  calls.add("Generation.Generate", &handlers, &Handlers::generate);
  CHECK(code_of([&] { calls.add("Latent.Info", &handlers, &Handlers::info); }) == ErrorCode::kInternal);
  CHECK(calls.unary("/aios.v1.Latent/Info") != nullptr);
  CHECK(calls.unary("/aios.v1.Generation/Generate") == nullptr);  // streams are not unary calls
  std::string field;
  CHECK(code_of([&] { calls.service(); }, &field) == ErrorCode::kInternal);  // the contract's other calls
  CHECK(field == "calls");
}

// Each unary method of every service of the contract, with an empty request, directly and through
// Chunked.Call: the host answers both the same way, never UNIMPLEMENTED.
TEST_CASE("every unary call of the contract is answered directly and in chunks alike", "[server]") {
  auto& l = Loopback::get();
  auto channel = grpc::CreateChannel(l.address, grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  auto chunked = v1::Chunked::NewStub(channel);
  const google::protobuf::FileDescriptor* contract = v1::Tensor::descriptor()->file();
  int unary = 0;
  for (int s = 0; s < contract->service_count(); ++s) {
    const google::protobuf::ServiceDescriptor* service = contract->service(s);
    for (int m = 0; m < service->method_count(); ++m) {
      const google::protobuf::MethodDescriptor* method = service->method(m);
      if (method->client_streaming() || method->server_streaming()) continue;
      const std::string path = "/" + service->full_name() + "/" + method->name();
      INFO(path);
      ++unary;
      grpc::ClientContext direct_context;
      const grpc::Slice empty{std::string()};
      grpc::ByteBuffer request(&empty, 1), response;
      std::promise<grpc::Status> done;
      generic.UnaryCall(&direct_context, path, grpc::StubOptions(), &request, &response,
                        [&](grpc::Status status) { done.set_value(status); });
      const grpc::Status direct = done.get_future().get();

      grpc::ClientContext chunked_context;
      auto stream = chunked->Call(&chunked_context);
      v1::Chunk chunk;
      chunk.set_method(path);
      stream->Write(chunk);
      stream->WritesDone();
      while (stream->Read(&chunk)) {
      }
      const grpc::Status in_chunks = stream->Finish();
      CHECK(direct.error_code() != grpc::StatusCode::UNIMPLEMENTED);
      CHECK(in_chunks.error_code() == direct.error_code());
      CHECK(in_chunks.error_message() == direct.error_message());
    }
  }
  CHECK(unary >= 20);
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
  aios::wire::ConnectOptions chunked;
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
  aios::wire::ConnectOptions zero;
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
  aios::wire::ConnectOptions hasty;
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
  aios::wire::ConnectOptions hasty;
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
    aios::wire::ConnectOptions o = hasty;
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

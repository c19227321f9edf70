// `aios serve` as a process of its own, watched: what the host writes to its logs.
#include <filesystem>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "aios/v1/aios.grpc.pb.h"
#include "catch_torch.h"
#include "child_process.h"
#include "tiny_checkpoint.h"

using aios_test::ChildProcess;
using aios_test::kD;
using aios_test::ServeProcess;
using aios_test::TinyCheckpoint;
namespace fs = std::filesystem;
namespace v1 = aios::v1;

namespace {

fs::path fresh_folder(const std::string& name) {
  const fs::path folder = fs::temp_directory_path() / fmt::format("aios_test_{}_{}", name, ::getpid());
  fs::remove_all(folder);
  fs::create_directories(folder);
  return folder;
}

v1::Tensor tensor(v1::DType dtype, std::vector<int64_t> shape, std::string data) {
  v1::Tensor t;
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  t.set_data(std::move(data));
  return t;
}

v1::Tensor floats(std::vector<int64_t> shape, float value) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const std::vector<float> values(static_cast<std::size_t>(n), value);
  return tensor(v1::FLOAT32, shape, std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
}

// A raw channel to a host, each call with its own metadata and a generous deadline.
struct Wire {
  explicit Wire(const std::string& address)
      : channel(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        latent(v1::Latent::NewStub(channel)),
        tokenizer(v1::Tokenizer::NewStub(channel)),
        generation(v1::Generation::NewStub(channel)),
        chunked(v1::Chunked::NewStub(channel)) {}

  // A context carrying `metadata` (name, value pairs).
  static std::unique_ptr<grpc::ClientContext> context(const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    for (const auto& [name, value] : metadata) c->AddMetadata(name, value);
    return c;
  }

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Latent::Stub> latent;
  std::unique_ptr<v1::Tokenizer::Stub> tokenizer;
  std::unique_ptr<v1::Generation::Stub> generation;
  std::unique_ptr<v1::Chunked::Stub> chunked;
};

}  // namespace

TEST_CASE("the host's logs hold no API key and no tensor content, whatever callers send", "[server][process]") {
  const fs::path root = fresh_folder("logs");
  const std::string model = TinyCheckpoint::llama("logs").write();
  const std::string key_a = "k3y-alice-Q7xP2mZ9", key_b = "k3y-bob-Vb81LrT4", wrong = "k3y-wrong-Hh5n0WcE";
  // A second key on a line, and a key with '=' in it, where quota fields belong: the host refuses
  // to start, and its message names neither.
  for (const std::string& line : {fmt::format("alice {} {}\n", key_a, key_b), fmt::format("alice {} {}=5\n", key_a, key_b)}) {
    std::ofstream(root / "bad_keys") << line;
    ChildProcess refused({AIOS_CLI, "serve", model, "--keys", (root / "bad_keys").string()}, root / "refused");
    const int status = refused.wait();
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 1));
    CHECK(refused.err().find("bad_keys:1") != std::string::npos);
    CHECK(refused.err().find(key_b) == std::string::npos);
    CHECK(refused.out().find(key_b) == std::string::npos);
  }

  std::ofstream(root / "keys") << fmt::format("alice {} max_concurrent=4\nbob {}\n", key_a, key_b);
  // A pattern to look for: as bytes, as text, as floats (0x7fffffff is a NaN).
  const std::string pattern = "PATTERN-5e1f\xde\xad\xbe\xef\xff\xff\xff\x7f";
  std::string payload;
  while (payload.size() < 4 * 2 * kD) payload += pattern;
  payload.resize(4 * 2 * kD);
  std::string log_text;
  {
    // gRPC's own logging at its most talkative short of tracing (which is for debugging only: it
    // prints every header).
    ServeProcess host(model, {"--keys", (root / "keys").string()}, root / "host", {"GRPC_VERBOSITY=info"});
    {
      Wire wire(host.address());
      const std::vector<std::pair<std::string, std::string>> alice = {{"authorization", "Bearer " + key_a}};
      v1::ModelInfo info;
      // Good calls.
      CHECK(wire.latent->Info(Wire::context(alice).get(), v1::InfoRequest(), &info).ok());
      v1::ForwardRequest good;
      *good.mutable_latents() = floats({1, 2, kD}, 0.5f);
      v1::ForwardResponse forwarded;
      CHECK(wire.latent->Forward(Wire::context(alice).get(), good, &forwarded).ok());
      // Keys that are wrong or in the wrong place.
      for (const auto& metadata : std::vector<std::vector<std::pair<std::string, std::string>>>{
               {},
               {{"authorization", "Bearer " + wrong}},
               {{"authorization", "Bearer " + key_a.substr(0, key_a.size() - 1)}},
               {{"authorization", key_a}},
               {{"authorization", "bearer " + key_b}},
               {{"x-api-key", key_b}},
               {{"authorization", "Bearer " + key_a + " " + key_b}}}) {
        CHECK(wire.latent->Info(Wire::context(metadata).get(), v1::InfoRequest(), &info).error_code() ==
              grpc::StatusCode::UNAUTHENTICATED);
      }
      // A key where names go: an extension id, a decoder, a saved extension, a text, a chunked method.
      v1::EmbedRequest embed;
      *embed.mutable_ids() = tensor(v1::INT64, {1, 1}, std::string(8, '\0'));
      embed.mutable_extension()->set_id(key_b);
      v1::Tensor embedded;
      CHECK(wire.latent->Embed(Wire::context(alice).get(), embed, &embedded).error_code() == grpc::StatusCode::NOT_FOUND);
      v1::RegisterDecoderRequest decoder;
      decoder.set_name(key_b);
      auto* manifest = decoder.add_files();
      manifest->set_name("decoder.json");
      manifest->set_data("{\"format\": \"" + key_b + pattern + "\"");
      auto* weights = decoder.add_files();
      weights->set_name(key_a);
      weights->set_data(payload);
      v1::Empty done;
      CHECK(!wire.generation->RegisterDecoder(Wire::context(alice).get(), decoder, &done).ok());
      v1::LoadExtensionRequest load;
      load.set_name(key_b);
      v1::ExtensionInfo loaded;
      CHECK(!wire.tokenizer->LoadExtension(Wire::context(alice).get(), load, &loaded).ok());
      v1::EncodeRequest encode;
      encode.add_texts(key_b + " PATTERN-5e1f");
      v1::EncodeResponse encoded;
      CHECK(!wire.tokenizer->Encode(Wire::context(alice).get(), encode, &encoded).ok());
      {
        auto context = Wire::context(alice);
        auto stream = wire.chunked->Call(context.get());
        v1::Chunk chunk;
        chunk.set_method(key_b);
        chunk.set_data(pattern);
        stream->Write(chunk);
        stream->WritesDone();
        while (stream->Read(&chunk)) {
        }
        CHECK(stream->Finish().error_code() == grpc::StatusCode::UNIMPLEMENTED);
      }
      // Malformed tensors carrying the pattern: lengths, dtypes, ranks, non-finite values.
      for (const v1::Tensor& latents :
           {tensor(v1::FLOAT32, {1, 2, kD}, payload + "x"), tensor(v1::DTYPE_UNSPECIFIED, {1, 2, kD}, payload),
            tensor(v1::INT64, {1, 1, kD}, payload), tensor(v1::FLOAT32, {1, 1, 1, 2, kD}, payload),
            tensor(v1::FLOAT32, {1, 2, kD}, payload), tensor(v1::BFLOAT16, {1, 4, kD}, payload)}) {
        v1::ForwardRequest bad;
        *bad.mutable_latents() = latents;
        CHECK(!wire.latent->Forward(Wire::context(alice).get(), bad, &forwarded).ok());
      }
      {
        // A chunked Forward whose bytes are the pattern: no valid request.
        auto context = Wire::context(alice);
        auto stream = wire.chunked->Call(context.get());
        v1::Chunk chunk;
        chunk.set_method("/aios.v1.Latent/Forward");
        chunk.set_data(payload);
        stream->Write(chunk);
        stream->WritesDone();
        while (stream->Read(&chunk)) {
        }
        CHECK(!stream->Finish().ok());
      }
      // The host still serves.
      CHECK(wire.latent->Info(Wire::context({{"authorization", "Bearer " + key_b}}).get(), v1::InfoRequest(), &info).ok());
    }  // the connection closed first: a host stops at once then, rather than after its grace period
    host.process().signal(SIGTERM);
    const int status = host.process().wait();
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    log_text = host.process().out() + host.process().err();
  }
  CHECK(log_text.find("serving") != std::string::npos);  // the logs were read
  for (const std::string& secret : {key_a, key_b, wrong, key_a.substr(0, key_a.size() - 1), std::string("PATTERN-5e1f"),
                                    std::string("\xde\xad\xbe\xef"), std::string("deadbeef"), std::string("DEADBEEF")}) {
    INFO(secret);
    CHECK(log_text.find(secret) == std::string::npos);
  }
  fs::remove_all(root);
}

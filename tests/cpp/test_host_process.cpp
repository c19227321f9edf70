// `aios serve` and the savers as processes of their own, watched and killed: what the host writes
// to its logs, and what a SIGKILL at any point of a save leaves on disk (the previous version or
// the new one, exactly, and a restarted host serves it).
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include "aios/adapters/storage.h"
#include "aios/local/local_backbone.h"
#include "aios/server/remote_backbone.h"
#include "aios/v1/aios.grpc.pb.h"
#include "catch_torch.h"
#include "child_process.h"
#include "tiny_checkpoint.h"

using aios::local::LocalBackbone;
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

// The files of a folder, by name.
std::map<std::string, std::string> files_of(const fs::path& folder) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(folder)) out[entry.path().filename().string()] = aios_test::read_text(entry.path());
  return out;
}

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

namespace {

// The progress file of aios_crash_writer: the last version begun and ended of each save.
struct Progress {
  int64_t begun_extension = 0, ended_extension = 0, begun_decoder = 0, ended_decoder = 0;
  static Progress read(const fs::path& file) {
    Progress p;
    std::istringstream lines(aios_test::read_text(file));
    char what = 0;
    int64_t version = 0;
    while (lines >> what >> version) {
      (what == 'e' ? p.begun_extension : what == 'E' ? p.ended_extension : what == 'd' ? p.begun_decoder : p.ended_decoder) =
          version;
    }
    return p;
  }
};

// Whether every value of `t` is `value`.
bool all_equal(const at::Tensor& t, double value) { return at::equal(t, at::full_like(t, value)); }

}  // namespace

TEST_CASE("a writer killed at any point of a save leaves the previous version or the new one, exactly", "[process][crash]") {
  const fs::path root = fresh_folder("crash_writer");
  const std::string model = TinyCheckpoint::llama("crash_writer").write();
  auto backbone = LocalBackbone::load(model);
  std::mt19937 random(20240611);
  std::uniform_int_distribution<int> delay_ms(0, 60);
  for (int attempt = 0; attempt < 12; ++attempt) {
    const int64_t first = 1000 * (attempt + 1);  // versions no earlier attempt wrote
    const fs::path progress = root / fmt::format("progress{}", attempt);
    ChildProcess writer({AIOS_CRASH_WRITER, model, (root / "saved").string(), progress.string(), std::to_string(first)},
                        root / fmt::format("writer{}", attempt));
    // Once both were saved by this writer, the kill falls anywhere in the saves that follow.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (Progress::read(progress).ended_decoder < first) {
      REQUIRE(writer.running());
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(random)));
    writer.signal(SIGKILL);
    writer.wait();
    const Progress p = Progress::read(progress);
    INFO(fmt::format("attempt {}: extension begun {} ended {}, decoder begun {} ended {}", attempt, p.begun_extension,
                     p.ended_extension, p.begun_decoder, p.ended_decoder));

    const auto extension = aios::ali::Extension::load(*backbone, (root / "saved" / "extension").string());
    const double rows = extension->embedding_rows()[0][0].item<double>();
    CHECK((rows == static_cast<double>(p.ended_extension) || rows == static_cast<double>(p.begun_extension)));
    CHECK(all_equal(extension->embedding_rows(), rows));
    CHECK(all_equal(extension->classifier_rows(), -rows));

    const auto decoder = aios::adapters::load_decoder((root / "saved" / "decoder").string());
    const double weights = decoder.module->parameters()[0].flatten()[0].item<double>();
    CHECK((weights == static_cast<double>(p.ended_decoder) || weights == static_cast<double>(p.begun_decoder)));
    for (const auto& parameter : decoder.module->parameters()) CHECK(all_equal(parameter, weights));
  }
  fs::remove_all(root);
}

TEST_CASE("a host killed at any point of saving an extension or registering a decoder keeps the previous version "
          "or the new one, exactly, and serves it after a restart", "[process][crash]") {
  const fs::path root = fresh_folder("crash_host");
  const std::string model = TinyCheckpoint::llama("crash_host").write();
  const fs::path state = root / "state";
  const fs::path decoders = state / "tenants" / "_" / "decoders";
  constexpr int64_t K = 1024, kOutputs = 2048;  // a few hundred kB a version, so that kills land inside saves

  // Version v of the decoder as a client sends it: the files of its folder, every weight v.
  std::map<int64_t, std::map<std::string, std::string>> versions;
  auto decoder_files = [&](int64_t v) -> const std::map<std::string, std::string>& {
    auto& files = versions[v];
    if (files.empty()) {
      aios::adapters::LinearDecoder decoder(kD, kOutputs);
      torch::NoGradGuard no_grad;
      for (auto& p : decoder->parameters()) p.fill_(static_cast<double>(v));
      const fs::path folder = root / "decoders" / std::to_string(v);
      aios::adapters::save_decoder(decoder, folder.string());
      files = files_of(folder);
    }
    return files;
  };
  auto register_decoder = [&](Wire& wire, int64_t v) {
    v1::RegisterDecoderRequest request;
    request.set_name("pair");
    for (const auto& [name, data] : decoder_files(v)) {
      auto* file = request.add_files();
      file->set_name(name);
      file->set_data(data);
    }
    v1::Empty done;
    return wire.generation->RegisterDecoder(Wire::context().get(), request, &done);
  };
  auto save_extension = [&](Wire& wire, const std::string& id, int64_t v, int64_t* started) {
    v1::WriteRowsRequest write;
    write.set_id(id);
    *write.mutable_rows()->mutable_embedding_rows() = floats({K, kD}, static_cast<float>(v));
    *write.mutable_rows()->mutable_classifier_rows() = floats({K, kD}, -static_cast<float>(v));
    v1::Empty done;
    grpc::Status status = wire.tokenizer->WriteRows(Wire::context().get(), write, &done);
    if (!status.ok()) return status;
    *started = v;
    v1::SaveExtensionRequest save;
    save.set_id(id);
    save.set_name("kept");
    return wire.tokenizer->SaveExtension(Wire::context().get(), save, &done);
  };

  std::mt19937 random(20240612);
  std::uniform_int_distribution<int> delay_ms(0, 100);
  int64_t extension_acked = 1, decoder_acked = 1;
  std::set<int64_t> extension_expected = {1};  // what the next host must load: the previous save or the new one
  constexpr int kKills = 12;
  for (int attempt = 0; attempt <= kKills; ++attempt) {
    ServeProcess host(model, {"--state", state.string()}, root / fmt::format("host{}", attempt));
    Wire wire(host.address());
    std::string id;
    if (attempt == 0) {
      v1::CreateExtensionRequest create;
      for (int64_t k = 0; k < K; ++k) create.add_tokens(fmt::format("<t{}>", k));
      v1::ExtensionInfo info;
      REQUIRE(wire.tokenizer->CreateExtension(Wire::context().get(), create, &info).ok());
      id = info.id();
      int64_t started = 0;
      REQUIRE(save_extension(wire, id, 1, &started).ok());
      REQUIRE(register_decoder(wire, 1).ok());
    } else {
      // The restarted host serves what its folder holds: the extension loads through the wire ...
      INFO(fmt::format("attempt {}", attempt));
      v1::LoadExtensionRequest load;
      load.set_name("kept");
      v1::ExtensionInfo info;
      REQUIRE(wire.tokenizer->LoadExtension(Wire::context().get(), load, &info).ok());
      id = info.id();
      const auto* rows = reinterpret_cast<const float*>(info.rows().embedding_rows().data().data());
      CHECK(info.rows().embedding_rows().data() == floats({K, kD}, rows[0]).data());
      CHECK(info.rows().classifier_rows().data() == floats({K, kD}, -rows[0]).data());
      CHECK(extension_expected.contains(static_cast<int64_t>(rows[0])));
      extension_acked = static_cast<int64_t>(rows[0]);
      // ... and a generation routed to the decoder loads it (from its files, checked above).
      v1::DecoderList listed;
      REQUIRE(wire.generation->ListDecoders(Wire::context().get(), v1::ListDecodersRequest(), &listed).ok());
      REQUIRE(listed.names_size() == 1);
      CHECK(listed.names(0) == "pair");
      v1::GenerateRequest generate;
      *generate.mutable_latents() = floats({1, 2, kD}, 0.1f);
      generate.set_max_new_tokens(2);
      auto* route = generate.add_routes();
      route->set_start_id(1);
      route->set_end_id(2);
      route->set_decoder("pair");
      auto context = Wire::context();
      auto stream = wire.generation->Generate(context.get(), generate);
      v1::GenerateStep step;
      int steps = 0;
      while (stream->Read(&step)) ++steps;
      CHECK(stream->Finish().ok());
      CHECK(steps >= 1);
      // What killed registrations left was removed at start.
      for (const auto& entry : fs::directory_iterator(decoders)) CHECK(entry.path().filename().string()[0] != '.');
    }
    if (attempt == kKills) break;

    // Saves and registrations back to back, each waiting for the previous one's reply, until the
    // host is killed at a random moment.
    int64_t extension_started = extension_acked, decoder_started = decoder_acked;
    grpc::Status extension_end, decoder_end;
    std::thread saving([&] {
      for (int64_t v = extension_acked + 1;; ++v) {
        extension_end = save_extension(wire, id, v, &extension_started);
        if (!extension_end.ok()) return;
        extension_acked = v;
      }
    });
    std::thread registering([&] {
      for (int64_t v = decoder_acked + 1;; ++v) {
        decoder_files(v);  // made before the call starts
        decoder_started = v;
        decoder_end = register_decoder(wire, v);
        if (!decoder_end.ok()) return;
        decoder_acked = v;
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(random)));
    host.process().signal(SIGKILL);
    host.process().wait();
    saving.join();
    registering.join();
    INFO(fmt::format("attempt {}: extension acknowledged {}, begun {}; decoder acknowledged {}, begun {}", attempt,
                     extension_acked, extension_started, decoder_acked, decoder_started));
    CHECK(extension_end.error_code() == grpc::StatusCode::UNAVAILABLE);  // ended by the kill, not by an error
    CHECK(decoder_end.error_code() == grpc::StatusCode::UNAVAILABLE);
    // The decoder's folder holds exactly the files of one version: the previous or the new one.
    const auto on_disk = files_of(decoders / "pair");
    const bool previous = on_disk == decoder_files(decoder_acked), next = on_disk == decoder_files(decoder_started);
    CHECK((previous || next));
    decoder_acked = next ? decoder_started : decoder_acked;
    // The extension is checked through the restarted host, above.
    extension_expected = {extension_acked, extension_started};
  }
  fs::remove_all(root);
}

TEST_CASE("aios serve on a Unix socket says where it listens, and serves there", "[server][process]") {
  const fs::path root = fresh_folder("unix_socket");
  const std::string model = TinyCheckpoint::llama("unix_socket").write();
  const std::string address = "unix:" + (root / "host.sock").string();
  ChildProcess serve({AIOS_CLI, "serve", model, "--listen", address, "--until-stdin-closes"}, root / "serve");
  const auto said = serve.wait_for_output(std::regex("serving .* on (\\S+)\n"));
  REQUIRE(said);
  CHECK(*said == address);
  CHECK(aios::server::RemoteBackbone::connect(address)->config() == LocalBackbone::load(model)->config());
}


// Every request of the wire contract (wire/proto/aios/v1/aios.proto), unary, streamed and
// chunked, through a Host's validation into a tiny backbone (two Llama blocks of width 32 under the
// default model's tokenizer, so that the Tokenizer service has a vocabulary). The first input byte
// picks the method; the rest is the serialized request (for Chunked.Call, one more byte picks the
// method carried in chunks). Requests are mutated as protobuf messages (proto_mutator.cpp), one in
// four as bytes. A finding: a crash or sanitizer report in the host, or a status other than the
// coded ones (UNKNOWN or INTERNAL mean an exception the host did not expect).
//
// AIOS_FUZZ_WRITE_SEEDS=DIR fuzz_wire writes one well-formed request per method to DIR and exits.
#include <ATen/Parallel.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>

#include "aios/local/local_backbone.h"
#include "aios/server/host.h"
#include "aios/v1/aios.grpc.pb.h"
#include "fuzz.h"
#include "proto_mutator.h"
#include "tiny_checkpoint.h"

namespace fs = std::filesystem;
namespace pb = google::protobuf;
namespace v1 = aios::v1;

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t max_size);

namespace {

constexpr std::int64_t kVocab = 49152;  // the default model's tokenizer
constexpr std::int64_t kD = aios_test::kD;

struct Method {
  std::string path;  // "/aios.v1.Latent/Forward"
  const pb::MethodDescriptor* descriptor;
};

const std::vector<Method>& methods() {
  static const std::vector<Method> all = [] {
    std::vector<Method> out;
    const pb::FileDescriptor* file = v1::InfoRequest::descriptor()->file();
    for (int s = 0; s < file->service_count(); ++s) {
      const pb::ServiceDescriptor* service = file->service(s);
      for (int m = 0; m < service->method_count(); ++m) {
        const pb::MethodDescriptor* method = service->method(m);
        out.push_back({"/" + service->full_name() + "/" + method->name(), method});
      }
    }
    return out;
  }();
  return all;
}

std::unique_ptr<pb::Message> new_request(const pb::MethodDescriptor* method) {
  return std::unique_ptr<pb::Message>(
      pb::MessageFactory::generated_factory()->GetPrototype(method->input_type())->New());
}

struct World {
  std::shared_ptr<aios::local::LocalBackbone> backbone;
  std::unique_ptr<aios::server::Host> host;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> stub;
  std::unique_ptr<v1::Generation::Stub> generation;
  std::unique_ptr<v1::Chunked::Stub> chunked;
  fs::path state;
  // A Unix socket: more executions per second than over loopback TCP.
  std::string address = "unix:" + (fs::temp_directory_path() / fmt::format("aios-fuzz-wire-{}.sock", getpid())).string();
  std::uint64_t calls = 0;

  World() {
    auto checkpoint = aios_test::TinyCheckpoint::llama("fuzz_wire");
    checkpoint.config["vocab_size"] = kVocab;
    checkpoint.weights["model.embed_tokens.weight"] = at::randn({kVocab, kD});
    checkpoint.weights["lm_head.weight"] = at::randn({kVocab, kD}) * 0.2;
    const std::string folder = checkpoint.write();
    fs::copy_file(AIOS_FUZZ_DEFAULT_MODEL "/tokenizer.json", fs::path(folder) / "tokenizer.json",
                  fs::copy_options::overwrite_existing);
    backbone = aios::local::LocalBackbone::load(folder);
    state = fs::path(folder) / "state";
    start();
  }

  // A fresh host every so many calls: the tenant's quotas (extensions, decoders) fill up and would
  // otherwise refuse everything after a while.
  void start() {
    host.reset();
    std::error_code error;
    fs::remove_all(state, error);
    aios::server::HostOptions options;
    options.listen = address;
    options.max_batch = 8;
    options.max_message_bytes = 16 << 20;
    options.limits.max_bytes = 8 << 20;
    options.quota.max_tokens = 512;
    options.compute_threads = 1;
    options.unclaimed_ttl = std::chrono::seconds(2);
    options.handle_ttl = std::chrono::seconds(5);
    options.state_dir = state.string();
    options.release_memory_after = std::chrono::milliseconds(0);
    host = std::make_unique<aios::server::Host>(backbone, options);
    grpc::ChannelArguments arguments;
    arguments.SetMaxReceiveMessageSize(64 << 20);
    channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), arguments);
    stub = std::make_unique<grpc::GenericStub>(channel);
    generation = v1::Generation::NewStub(channel);
    chunked = v1::Chunked::NewStub(channel);
  }
};

World& world() {
  static World w;
  return w;
}

void check(const grpc::Status& status, const std::string& method) {
  const auto code = status.error_code();
  if (code == grpc::StatusCode::UNKNOWN || code == grpc::StatusCode::INTERNAL) {
    fprintf(stderr, "%s answered %d: %s\n", method.c_str(), static_cast<int>(code), status.error_message().c_str());
    __builtin_trap();
  }
}

void deadline(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
}

void unary(World& w, const std::string& method, const std::string& request) {
  grpc::ClientContext context;
  deadline(context);
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  std::promise<grpc::Status> done;
  w.stub->UnaryCall(&context, method, grpc::StubOptions(), &in, &out,
                    [&](grpc::Status status) { done.set_value(std::move(status)); });
  check(done.get_future().get(), method);
}

void generate(World& w, const std::string& request) {
  v1::GenerateRequest r;
  if (!r.ParseFromString(request)) return;  // a stub only sends messages; unary() fuzzes raw bytes
  grpc::ClientContext context;
  deadline(context);
  auto reader = w.generation->Generate(&context, r);
  v1::GenerateStep step;
  for (int i = 0; reader->Read(&step); ++i) {
    if (i == 64) context.TryCancel();  // a caller that leaves mid-stream
  }
  const grpc::Status status = reader->Finish();
  if (status.error_code() != grpc::StatusCode::CANCELLED) check(status, "Generate");
}

void chunked(World& w, std::uint8_t selector, const std::string& request) {
  const auto& all = methods();
  const std::string method = (selector & 0x80) != 0 ? "/aios.v1.Nope/Nothing" : all[selector % all.size()].path;
  grpc::ClientContext context;
  deadline(context);
  auto stream = w.chunked->Call(&context);
  const std::size_t piece = 64 + selector % 7 * 997;
  for (std::size_t at = 0; at == 0 || at < request.size(); at += piece) {
    v1::Chunk chunk;
    if (at == 0 || (selector & 0x40) != 0) chunk.set_method(method);
    chunk.set_data(request.substr(at, piece));
    if (!stream->Write(chunk)) break;
  }
  stream->WritesDone();
  v1::Chunk reply;
  while (stream->Read(&reply)) {
  }
  check(stream->Finish(), "Chunked " + method);
}

v1::Tensor tensor(v1::DType dtype, std::vector<std::int64_t> shape, float value = 0.25f) {
  v1::Tensor t;
  t.set_dtype(dtype);
  std::int64_t n = 1;
  for (auto d : shape) {
    t.add_shape(d);
    n *= d;
  }
  std::string data;
  for (std::int64_t i = 0; i < n; ++i) {
    if (dtype == v1::FLOAT32) {
      const float f = value * static_cast<float>((i % 7) - 3);
      data.append(reinterpret_cast<const char*>(&f), 4);
    } else if (dtype == v1::INT64) {
      const std::int64_t id = (i * 37) % 1000;
      data.append(reinterpret_cast<const char*>(&id), 8);
    } else if (dtype == v1::BOOL) {
      data.push_back(1);
    }
  }
  t.set_data(data);
  return t;
}

// One well-formed request per method.
void write_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  const auto& all = methods();
  auto emit = [&](const std::string& name, std::uint8_t selector, const pb::Message& m, int extra = -1) {
    std::string bytes(1, static_cast<char>(selector));
    if (extra >= 0) bytes.push_back(static_cast<char>(extra));
    bytes += m.SerializeAsString();
    std::ofstream(dir / ("seed-" + name), std::ios::binary) << bytes;
  };
  const v1::Tensor latents = tensor(v1::FLOAT32, {1, 3, kD});
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::string name = all[i].descriptor->name();
    auto m = new_request(all[i].descriptor);
    if (auto* r = dynamic_cast<v1::EmbedRequest*>(m.get())) *r->mutable_ids() = tensor(v1::INT64, {1, 3});
    if (auto* r = dynamic_cast<v1::ForwardRequest*>(m.get())) {
      *r->mutable_latents() = latents;
      r->mutable_options()->add_layers(1);
      *r->mutable_options()->mutable_mask() = tensor(v1::BOOL, {1, 3});
    }
    if (auto* r = dynamic_cast<v1::ClassifyRequest*>(m.get())) *r->mutable_hidden() = tensor(v1::FLOAT32, {1, 2, kD});
    if (auto* r = dynamic_cast<v1::VjpRequest*>(m.get())) {
      r->set_handle(1);
      *r->mutable_cotangents()->mutable_hidden() = latents;
    }
    if (auto* r = dynamic_cast<v1::VjpStatelessRequest*>(m.get())) {
      *r->mutable_latents() = latents;
      *r->mutable_cotangents()->mutable_hidden() = latents;
      r->mutable_options()->add_layers(2);
    }
    if (auto* r = dynamic_cast<v1::ForwardBackwardRequest*>(m.get())) {
      *r->mutable_latents() = latents;
      *r->mutable_cross_entropy()->mutable_targets() = tensor(v1::INT64, {1, 3});
      r->set_chunk_tokens(2);
    }
    if (auto* r = dynamic_cast<v1::EncodeRequest*>(m.get())) {
      r->add_texts("Hello, world! <|im_start|>");
      r->add_texts("\xF0\x9F\x98\x80 caf\xC3\xA9");
      r->set_add_special_tokens(true);
    }
    if (auto* r = dynamic_cast<v1::DecodeRequest*>(m.get())) {
      auto* ids = r->add_ids();
      for (int id : {1, 2, 100, 4000}) ids->add_ids(id);
    }
    if (auto* r = dynamic_cast<v1::CreateExtensionRequest*>(m.get())) {
      r->add_tokens("<sox>");
      r->add_tokens("<eox>");
    }
    if (auto* r = dynamic_cast<v1::ExtensionId*>(m.get())) r->set_id("0-1-1");
    if (auto* r = dynamic_cast<v1::WriteRowsRequest*>(m.get())) {
      r->set_id("0-1-1");
      *r->mutable_rows()->mutable_embedding_rows() = tensor(v1::FLOAT32, {2, kD});
      *r->mutable_rows()->mutable_classifier_rows() = tensor(v1::FLOAT32, {2, kD});
    }
    if (auto* r = dynamic_cast<v1::SaveExtensionRequest*>(m.get())) {
      r->set_id("0-1-1");
      r->set_name("mine");
    }
    if (auto* r = dynamic_cast<v1::LoadExtensionRequest*>(m.get())) r->set_name("mine");
    if (auto* r = dynamic_cast<v1::DeleteExtensionRequest*>(m.get())) r->set_name("mine");
    if (auto* r = dynamic_cast<v1::GenerateRequest*>(m.get())) {
      *r->mutable_latents() = tensor(v1::FLOAT32, {2, 2, kD});
      r->set_max_new_tokens(3);
      r->mutable_sampling()->set_temperature(0.7);
      r->mutable_sampling()->set_top_k(5);
      r->mutable_sampling()->set_seed(1);
      auto* route = r->add_routes();
      route->set_start_id(1);
      route->set_end_id(2);
      route->set_decoder("lin");
      r->set_return_hidden(true);
    }
    if (auto* r = dynamic_cast<v1::RegisterDecoderRequest*>(m.get())) {
      r->set_name("lin");
      for (const auto& entry : fs::directory_iterator(fs::path(AIOS_FUZZ_DATA_DIR) / "decoders" / "cpp_linear")) {
        auto* file = r->add_files();
        file->set_name(entry.path().filename().string());
        std::ifstream in(entry.path(), std::ios::binary);
        file->set_data(std::string(std::istreambuf_iterator<char>(in), {}));
      }
    }
    if (auto* r = dynamic_cast<v1::DecoderName*>(m.get())) r->set_name("lin");
    if (auto* r = dynamic_cast<v1::ReleaseRequest*>(m.get())) r->set_handle(1);
    if (name == "Call") continue;  // below
    emit(name + "-" + std::to_string(i), static_cast<std::uint8_t>(i), *m);
  }
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i].path == "/aios.v1.Latent/Forward") {
      v1::ForwardRequest r;
      *r.mutable_latents() = latents;
      std::size_t call = 0;
      while (all[call].descriptor->name() != "Call") ++call;
      emit("Chunked-Forward", static_cast<std::uint8_t>(call), r, static_cast<int>(i) | (3 << 0));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  aios::fuzz::write_seeds_if_asked(write_seeds);
  world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  World& w = world();
  if (++w.calls % 2000 == 0) w.start();
  const auto& all = methods();
  const Method& method = all[data[0] % all.size()];
  const std::string name = method.descriptor->name();
  if (name == "Call") {
    if (size < 2) return 0;
    chunked(w, data[1], aios::fuzz::bytes_of(data + 2, size - 2));
  } else if (name == "Generate") {
    generate(w, aios::fuzz::bytes_of(data + 1, size - 1));
  } else {
    unary(w, method.path, aios::fuzz::bytes_of(data + 1, size - 1));
  }
  return 0;
}

extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size, std::size_t max_size,
                                               unsigned int seed) {
  std::minstd_rand rng(seed);
  const auto& all = methods();
  if (size >= 1 && rng() % 4 != 0) {
    const Method& method = all[data[0] % all.size()];
    const bool call = method.descriptor->name() == "Call";
    const std::size_t head = call ? 2 : 1;
    if (size >= head) {
      const pb::MethodDescriptor* carried = call ? all[data[1] % all.size()].descriptor : method.descriptor;
      auto request = new_request(carried);
      if (request->ParseFromArray(data + head, static_cast<int>(size - head))) {
        aios::fuzz::mutate_message(*request, rng);
        const std::string bytes = request->SerializeAsString();
        if (head + bytes.size() <= max_size) {
          if (rng() % 16 == 0) data[0] = static_cast<std::uint8_t>(rng());  // the same bytes to another method
          std::memcpy(data + head, bytes.data(), bytes.size());
          return head + bytes.size();
        }
      }
    }
  }
  return LLVMFuzzerMutate(data, size, max_size);
}

// A malicious host: RemoteBackbone (the in-process interface over the wire) and the thin client
// (aios::client::Client) over a transport whose every answer comes from the input: the same
// parsing and checks of a host's bytes as over gRPC, without a socket. The first byte picks the
// client; then frames [u8 status][u16 length][bytes] answer the calls in the order they are made
// (status % 17 == 0: the bytes are the reply; otherwise the call fails with that gRPC code, the
// bytes as message and their first 16 as the field). Each client connects, reads the model and
// the tokenizer definition, and makes every kind of call. A finding: a crash, sanitizer report or
// an exception other than aios::Error in the client.
//
// AIOS_FUZZ_WRITE_SEEDS=DIR fuzz_client writes inputs whose replies are well-formed to DIR and exits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "aios/client/client.h"
#include "aios/tokenizer_api/tokenizer.h"
#include "aios/server/remote_backbone.h"
#include "aios/wire/wire.h"
#include "fuzz.h"

namespace fs = std::filesystem;
namespace v1 = aios::v1;

namespace {

// The answers of the current input, handed out in call order.
class Script final : public aios::wire::Transport {
 public:
  explicit Script(std::string bytes) : bytes_(std::move(bytes)) {}

  std::string call(const aios::wire::Call&, std::string) override { return next(); }

  // A stream of at most 8 replies, as a generation's steps.
  std::unique_ptr<Stream> stream(const aios::wire::Call&, std::string) override {
    struct Steps final : Stream {
      Script* script;
      int left = 8;
      explicit Steps(Script* s) : script(s) {}
      std::optional<std::string> next() override {
        if (left-- == 0) return std::nullopt;
        return script->next();
      }
    };
    return std::make_unique<Steps>(this);
  }

 private:
  std::string next() {
    if (bytes_.size() - at_ < 3) throw aios::wire::to_error(14, "", "the script is over");  // UNAVAILABLE
    const auto code = static_cast<std::uint8_t>(bytes_[at_]);
    const std::size_t length = static_cast<std::uint8_t>(bytes_[at_ + 1]) |
                               (std::size_t{static_cast<std::uint8_t>(bytes_[at_ + 2])} << 8);
    std::string body = bytes_.substr(at_ + 3, std::min(length, bytes_.size() - at_ - 3));
    at_ = std::min(bytes_.size(), at_ + 3 + length);
    if (code % 17 == 0) return body;
    throw aios::wire::to_error(code % 17, body.substr(0, 16), body);
  }

  std::string bytes_;
  std::size_t at_ = 0;
};

// What a caller does with a backbone it connected to: every kind of call, each refusal expected.
void use_remote(std::shared_ptr<Script> script) {
  std::shared_ptr<aios::server::RemoteBackbone> b;
  if (aios::fuzz::refused([&] { b = aios::server::RemoteBackbone::connect(std::move(script)); })) return;
  const auto& c = b->config();
  const int64_t D = c.hidden_size > 0 && c.hidden_size <= 256 ? c.hidden_size : 4;
  const at::Tensor latents = at::randn({1, 2, D});
  aios::fuzz::refused([&] { b->embed(at::zeros({1, 2}, at::kLong)); });
  aios::fuzz::refused([&] { b->forward(latents); });
  aios::fuzz::refused([&] { b->classify(at::randn({2, D})); });
  aios::fuzz::refused([&] {
    auto kept = b->forward_keep(latents);
    aios::gradient::Cotangents cotangents;
    cotangents.hidden = at::ones({1, 2, D});
    b->vjp(kept.handle, cotangents);
    b->release(kept.handle);
  });
  aios::fuzz::refused([&] {
    aios::gradient::LossOptions loss{aios::gradient::CrossEntropy{at::zeros({1, 2}, at::kLong), {}}};
    b->forward_backward(latents, {}, loss);
  });
  aios::fuzz::refused([&] {
    if (auto t = b->tokenizer()) t->decode(t->encode("Hello <|im_end|>"));
  });
  aios::fuzz::refused([&] { b->extend({"<sox>", "<eox>"}); });
  aios::fuzz::refused([&] {
    aios::ali::GenerateOptions generate;
    generate.max_new_tokens = 4;
    b->generate(latents, generate);
  });
  aios::fuzz::refused([&] {
    auto session = b->new_session();  // what the host says of it: ids, sizes, positions
    session->batch_size();
    session->length();
    session->next_positions();
    session->bytes();
    aios::ali::GenerateOptions generate;
    generate.max_new_tokens = 2;
    generate.session = session;
    b->generate(latents, generate);
  });
}

void use_thin(std::shared_ptr<Script> script) {
  std::optional<aios::client::Client> client;
  if (aios::fuzz::refused([&] { client.emplace(aios::client::Client::connect(std::move(script))); })) return;
  const auto& c = client->config();
  const int64_t D = c.hidden_size > 0 && c.hidden_size <= 256 ? c.hidden_size : 4;
  aios::client::FloatTensor<3> latents(1, 2, D);
  latents.setConstant(0.5f);
  aios::client::IdTensor<2> ids(1, 2);
  ids.setZero();
  aios::fuzz::refused([&] { client->embed(ids); });
  aios::fuzz::refused([&] { client->forward(latents); });
  aios::fuzz::refused([&] {
    aios::client::FloatTensor<2> hidden(2, D);
    hidden.setConstant(1.0f);
    client->classify(hidden);
  });
  aios::fuzz::refused([&] {
    auto kept = client->forward_keep(latents);
    aios::client::Cotangents cotangents;
    cotangents.hidden = latents;
    client->vjp(kept.handle, cotangents);
    client->release(kept.handle);
  });
  aios::fuzz::refused([&] {
    aios::client::LossOptions loss{aios::client::CrossEntropy{ids, std::nullopt}};
    client->forward_backward(latents, {}, loss);
  });
}

std::string frame(const google::protobuf::Message& reply, std::uint8_t code = 0) {
  const std::string body = reply.SerializeAsString();
  std::string out(1, static_cast<char>(code));
  out.push_back(static_cast<char>(body.size() & 0xff));
  out.push_back(static_cast<char>((body.size() >> 8) & 0xff));
  return out + body;
}

v1::Tensor floats(std::vector<std::int64_t> shape) {
  v1::Tensor t;
  t.set_dtype(v1::FLOAT32);
  std::int64_t n = 1;
  for (auto d : shape) {
    t.add_shape(d);
    n *= d;
  }
  t.set_data(std::string(static_cast<std::size_t>(n) * 4, '\0'));
  return t;
}

void write_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  v1::ModelInfo info;
  info.set_architecture("LlamaForCausalLM");
  info.set_vocab_size(16);
  info.set_hidden_size(4);
  info.set_num_layers(1);
  info.set_num_heads(1);
  info.set_num_kv_heads(1);
  info.set_head_dim(4);
  info.set_intermediate_size(8);
  info.set_max_positions(32);
  info.set_dtype(v1::FLOAT32);
  info.set_device("cpu");
  info.set_max_batch(8);
  info.set_max_request_bytes(1 << 20);
  v1::TokenizerDefinition definition;
  definition.set_json(R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}})");
  v1::ForwardResponse forward;
  *forward.mutable_hidden() = floats({1, 2, 4});
  forward.set_handle(7);
  v1::Gradients gradients;
  *gradients.mutable_latents() = floats({1, 2, 4});
  v1::FusedResult fused;
  *fused.mutable_loss() = floats({});
  *fused.mutable_losses() = floats({1});
  *fused.mutable_grad()->mutable_latents() = floats({1, 2, 4});
  const std::string common = frame(info) + frame(floats({1, 2, 4})) + frame(forward) + frame(floats({2, 16})) +
                             frame(forward) + frame(gradients) + frame(v1::Empty()) + frame(fused);
  // RemoteBackbone reads the tokenizer definition when connecting.
  std::ofstream(dir / "seed-remote", std::ios::binary) << std::string(1, '\0') + frame(info) + frame(definition) + common;
  std::ofstream(dir / "seed-thin", std::ios::binary) << std::string(1, '\1') + common;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  aios::fuzz::write_seeds_if_asked(write_seeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  auto script = std::make_shared<Script>(aios::fuzz::bytes_of(data + 1, size - 1));
  if (data[0] % 2 == 0) use_remote(std::move(script));
  else use_thin(std::move(script));
  return 0;
}

// The thin client (aios::client, no LibTorch in its build) against an in-process host: the same
// numbers as the LocalBackbone the host wraps, replies in bfloat16 converted to float32, the host's
// errors as the same aios::Error; and its dtype conversions bit for bit against torch's.
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <torch/torch.h>

#include "aios/client/client.h"
#include "aios/error.h"
#include "aios/local/local_backbone.h"
#include "aios/server/host.h"
#include "catch_torch.h"
#include "error_code.h"
#include "tiny_checkpoint.h"

using aios::ErrorCode;
using aios::client::Client;
using aios::client::FloatTensor;
using aios::client::IdTensor;
using aios::local::LocalBackbone;
using aios_test::code_of;
using aios_test::kD;
using aios_test::kVocab;
using aios_test::TinyCheckpoint;

namespace {

struct Hosted {
  std::shared_ptr<LocalBackbone> local;
  std::unique_ptr<aios::server::Host> host;
  std::string address;

  Hosted(c10::ScalarType dtype, const std::map<std::string, std::string>& keys = {}) {
    aios::local::LoadOptions load;
    load.dtype = dtype;
    local = LocalBackbone::load(TinyCheckpoint::llama("client").write(), load);
    aios::server::HostOptions options;
    options.listen = "127.0.0.1:0";
    options.api_keys = keys;
    host = std::make_unique<aios::server::Host>(local, options);
    address = "127.0.0.1:" + std::to_string(host->port());
  }

  static Hosted& float32() {
    static Hosted* h = new Hosted(at::kFloat);
    return *h;
  }
};

// Eigen <-> torch, for comparisons (row-major on both sides).
template <typename Scalar, int N>
at::Tensor to_torch(const Eigen::Tensor<Scalar, N, Eigen::RowMajor>& t, at::ScalarType dtype) {
  std::vector<int64_t> shape(t.dimensions().begin(), t.dimensions().end());
  return at::from_blob(const_cast<Scalar*>(t.data()), shape, dtype).clone();
}
at::Tensor to_torch(const FloatTensor<3>& t) { return to_torch(t, at::kFloat); }
at::Tensor to_torch(const FloatTensor<2>& t) { return to_torch(t, at::kFloat); }

template <int N>
FloatTensor<N> floats(const at::Tensor& t) {
  REQUIRE(t.dim() == N);
  const at::Tensor c = t.to(at::kFloat).contiguous();
  Eigen::array<Eigen::Index, N> dims;
  for (int i = 0; i < N; ++i) dims[i] = c.size(i);
  FloatTensor<N> out(dims);
  std::memcpy(out.data(), c.data_ptr<float>(), sizeof(float) * static_cast<std::size_t>(c.numel()));
  return out;
}

IdTensor<2> ids_of(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  IdTensor<2> out(c.size(0), c.size(1));
  std::memcpy(out.data(), c.data_ptr<int64_t>(), sizeof(int64_t) * static_cast<std::size_t>(c.numel()));
  return out;
}

bool same_bits_or_nan(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("16-bit floats widen to float32 exactly as torch widens them", "[client]") {
  std::vector<uint16_t> all(1 << 16);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  for (const auto& [dtype, convert] : {std::pair{at::kHalf, &aios::client::half_to_float},
                                      std::pair{at::kBFloat16, &aios::client::bfloat16_to_float}}) {
    const at::Tensor want = at::from_blob(all.data(), {static_cast<int64_t>(all.size())}, dtype).to(at::kFloat);
    const float* w = want.data_ptr<float>();
    int64_t mismatches = 0;
    for (std::size_t i = 0; i < all.size(); ++i) mismatches += same_bits_or_nan(convert(all[i]), w[i]) ? 0 : 1;
    CHECK(mismatches == 0);
  }
  CHECK(aios::client::half_to_float(0x3c00) == 1.0f);
  CHECK(aios::client::half_to_float(0x0001) == std::ldexp(1.0f, -24));  // the smallest subnormal
  CHECK(aios::client::half_to_float(0xfc00) == -std::numeric_limits<float>::infinity());
  CHECK(aios::client::bfloat16_to_float(0x3f80) == 1.0f);
}

TEST_CASE("float32 narrows to 16 bits rounding to nearest even, as torch rounds", "[client]") {
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65519.99f, 65520.0f, 1e6f, -1e30f,
                               std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(3.0f, -26),
                               std::ldexp(1.0f, -14), std::ldexp(1023.5f, -24), std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  // Halfway cases of both formats (ties go to the even neighbour) and random bits of every exponent.
  for (uint32_t mantissa : {0x1000u, 0x3000u, 0x8000u, 0x18000u}) values.push_back(std::bit_cast<float>(0x3f800000u | mantissa));
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) values.push_back(std::bit_cast<float>(bits(rng)));
  const at::Tensor input = at::from_blob(values.data(), {static_cast<int64_t>(values.size())}, at::kFloat);
  for (const auto& [dtype, convert, widen] :
       {std::tuple{at::kHalf, &aios::client::float_to_half, &aios::client::half_to_float},
        std::tuple{at::kBFloat16, &aios::client::float_to_bfloat16, &aios::client::bfloat16_to_float}}) {
    const at::Tensor want = input.to(dtype).contiguous();
    const auto* w = static_cast<const uint16_t*>(want.data_ptr());
    int64_t mismatches = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
      const uint16_t got = convert(values[i]);
      // NaN payloads may differ; any NaN is a NaN.
      mismatches += (got == w[i] || (std::isnan(widen(got)) && std::isnan(widen(w[i])))) ? 0 : 1;
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("the thin client gives what the local backbone gives", "[client]") {
  auto& h = Hosted::float32();
  auto& local = *h.local;
  const Client client = Client::connect(h.address);
  const auto& config = client.config();
  CHECK(config.architecture == "LlamaForCausalLM");
  CHECK(config.vocab_size == kVocab);
  CHECK(config.hidden_size == kD);
  CHECK(config.num_layers == local.config().num_layers);
  CHECK(config.dtype == "float32");
  CHECK(config.device == "cpu");
  CHECK(config == local.config());  // the description both clients and the host share
  CHECK(client.limits().max_batch > 0);

  torch::manual_seed(0);
  const at::Tensor ids = torch::randint(kVocab, {2, 6}, torch::kLong);
  CHECK(at::equal(to_torch(client.embed(ids_of(ids))), local.embed(ids)));
  const at::Tensor latents = local.embed(ids) + 0.01 * torch::randn({2, 6, kD});
  const FloatTensor<3> x = floats<3>(latents);

  aios::gradient::ForwardOptions options;
  options.layers = {0, 2};
  options.mask = torch::tensor({{true, true, true, true, true, true}, {false, false, true, true, true, true}});
  aios::client::ForwardOptions o;
  o.layers = {0, 2};
  aios::client::BoolTensor<2> padding(2, 6);
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 6; ++t) padding(b, t) = options.mask->index({b, t}).item<bool>();
  }
  o.mask = std::move(padding);
  const auto want = local.forward(latents, options);
  const auto got = client.forward(x, o);
  CHECK(at::equal(to_torch(got.hidden), want.hidden));
  REQUIRE(got.layers.size() == 2);
  CHECK(at::equal(to_torch(got.layers[1]), want.layers[1]));
  CHECK(at::equal(to_torch(client.classify(got.hidden)), local.classify(want.hidden)));
  const FloatTensor<2> rows = got.hidden.chip<0>(1);  // [T,D]
  CHECK(at::equal(to_torch(client.classify(rows)), local.classify(want.hidden[1])));

  // Routing asked of a dense model: one empty [B,T,0] choice per block, as the local backbone gives.
  aios::client::ForwardOptions routed;
  routed.routing = true;
  const auto choices = client.forward(x, routed).routing;
  REQUIRE(static_cast<int64_t>(choices.size()) == aios_test::kLayers);
  CHECK((choices[1].dimension(0) == 2 && choices[1].dimension(1) == 6 && choices[1].dimension(2) == 0));
  CHECK(client.forward(x).routing.empty());

  // Positions and a full mask travel too.
  aios::gradient::ForwardOptions full;
  full.positions = torch::tensor({{3, 4, 5, 6, 7, 8}, {0, 1, 2, 3, 4, 5}});
  full.mask = torch::ones({2, 6, 6}, torch::kBool).tril();
  aios::client::ForwardOptions f;
  f.positions = ids_of(*full.positions);
  aios::client::BoolTensor<3> causal(2, 6, 6);
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 6; ++t) {
      for (int s = 0; s < 6; ++s) causal(b, t, s) = s <= t;
    }
  }
  f.mask = std::move(causal);  // the mask of either rank
  CHECK(at::equal(to_torch(client.forward(x, f).hidden), local.forward(latents, full).hidden));

  // Handle form, stateless vjp and the fused losses.
  aios::gradient::Cotangents cot;
  cot.hidden = torch::randn({2, 6, kD});
  cot.layers = {at::Tensor(), torch::randn({2, 6, kD})};
  cot.logits = torch::randn({2, 6, kVocab});
  aios::client::Cotangents c;
  c.hidden = floats<3>(cot.hidden);
  c.layers = {std::nullopt, floats<3>(cot.layers[1])};
  c.logits = floats<3>(cot.logits);
  const at::Tensor want_grad = local.vjp(latents, options, cot).latents;
  const std::size_t passes = client.kept_passes(), bytes = client.kept_bytes();
  const auto kept = client.forward_keep(x, o);
  CHECK(client.kept_passes() == passes + 1);
  CHECK(client.kept_bytes() > bytes);
  CHECK(at::equal(to_torch(kept.output.hidden), want.hidden));
  CHECK(at::allclose(to_torch(client.vjp(kept.handle, c)), want_grad, 1e-6, 1e-6));
  CHECK(at::allclose(to_torch(client.vjp(x, o, c)), want_grad, 1e-6, 1e-6));
  client.release(kept.handle);
  CHECK(client.kept_passes() == passes);
  CHECK(client.kept_bytes() == bytes);
  std::string field;
  CHECK(code_of([&] { client.vjp(kept.handle, c); }, &field) == ErrorCode::kNotFound);
  CHECK(code_of([&] { client.release(kept.handle); }) == ErrorCode::kNotFound);

  at::Tensor targets = torch::randint(kVocab, {2, 6}, torch::kLong);
  const at::Tensor weights = torch::rand({2, 6});
  targets.index_put_({0, 0}, aios::kIgnoredTarget);  // ignored, as transformers' labels mark a token
  aios::gradient::LossOptions ce;
  ce.loss = aios::gradient::CrossEntropy{targets, weights};
  const auto fused_local = local.forward_backward(latents, options, ce);
  const auto fused = client.forward_backward(x, o, {aios::client::CrossEntropy{ids_of(targets), floats<2>(weights)}});
  CHECK(fused.loss == Approx(fused_local.loss.item<double>()).epsilon(1e-6));
  REQUIRE(fused.losses.size() == 2);
  CHECK(at::allclose(to_torch(fused.losses, at::kFloat), fused_local.losses, 1e-5, 1e-6));
  CHECK(at::allclose(to_torch(fused.grad), fused_local.grad.latents, 1e-6, 1e-6));

  // Distillation: a teacher computed by the host, and teacher logits given.
  aios::gradient::Distillation d;
  d.teacher_latents = local.embed(torch::randint(kVocab, {2, 8}, torch::kLong));
  d.teacher_index = torch::tensor({{-1, 2, 3, 4, 5, 6}, {-1, -1, 2, 3, 4, 7}});
  d.temperature = 2.0;
  aios::gradient::LossOptions distill;
  distill.loss = d;
  const auto gist_local = local.forward_backward(latents, {}, distill);
  aios::client::Distillation cd;
  cd.teacher_latents = floats<3>(d.teacher_latents);
  cd.teacher_index = ids_of(d.teacher_index);
  cd.temperature = 2.0;
  const auto gist = client.forward_backward(x, {}, {cd});
  CHECK(gist.loss == Approx(gist_local.loss.item<double>()).epsilon(1e-6));
  CHECK(at::allclose(to_torch(gist.grad), gist_local.grad.latents, 1e-6, 1e-6));

  aios::gradient::Distillation dl;
  dl.teacher_logits = torch::randn({2, 6, kVocab});
  distill.loss = dl;
  aios::client::Distillation cl;
  cl.teacher_logits = floats<3>(dl.teacher_logits);
  const auto given = client.forward_backward(x, {}, {cl});
  CHECK(given.loss == Approx(local.forward_backward(latents, {}, distill).loss.item<double>()).epsilon(1e-6));
}

TEST_CASE("a bfloat16 host's replies arrive as float32 of the same values", "[client]") {
  Hosted h(at::kBFloat16);
  const Client client = Client::connect(h.address);
  CHECK(client.config().dtype == "bfloat16");
  torch::manual_seed(1);
  const at::Tensor ids = torch::randint(kVocab, {2, 5}, torch::kLong);
  const at::Tensor latents = h.local->embed(ids);  // bfloat16
  CHECK(at::equal(to_torch(client.embed(ids_of(ids))), latents.to(at::kFloat)));
  // float32 latents that bfloat16 holds exactly: the host computes what the local backbone does.
  const auto want = h.local->forward(latents);
  const auto got = client.forward(floats<3>(latents));
  CHECK(at::equal(to_torch(got.hidden), want.hidden.to(at::kFloat)));
  CHECK(at::equal(to_torch(client.classify(got.hidden)), h.local->classify(want.hidden).to(at::kFloat)));
  const auto fused = client.forward_backward(floats<3>(latents), {},
                                             {aios::client::CrossEntropy{ids_of(ids), std::nullopt}});
  aios::gradient::LossOptions ce;
  ce.loss = aios::gradient::CrossEntropy{ids, at::Tensor()};
  const auto fused_local = h.local->forward_backward(latents, {}, ce);
  CHECK(fused.loss == Approx(fused_local.loss.item<double>()).epsilon(1e-6));
  CHECK(at::equal(to_torch(fused.grad), fused_local.grad.latents.to(at::kFloat)));
}

TEST_CASE("the host's errors reach the thin client as the same aios::Error", "[client]") {
  auto& h = Hosted::float32();
  const Client client = Client::connect(h.address);

  // The same code, field and message as the local backbone's.
  FloatTensor<3> wrong(1, 3, kD + 1);
  wrong.setZero();
  aios::Error local_error(ErrorCode::kInternal, "", "");
  try {
    h.local->forward(torch::zeros({1, 3, kD + 1}));
  } catch (const aios::Error& e) {
    local_error = e;
  }
  try {
    client.forward(wrong);
    FAIL("expected an aios::Error");
  } catch (const aios::Error& e) {
    CHECK(e.code() == local_error.code());
    CHECK(e.field() == local_error.field());
    CHECK(e.message() == local_error.message());
  }
  IdTensor<2> out_of_range(1, 2);
  out_of_range.setValues({{0, kVocab}});
  std::string field;
  CHECK(code_of([&] { client.embed(out_of_range); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "ids");

  // A mask of a rank the API does not take is the host's kInvalidArgument, as in-process.
  aios::client::ForwardOptions flat;
  aios::client::BoolTensor<2> too_long(1, 4);
  too_long.setConstant(true);
  flat.mask = std::move(too_long);
  FloatTensor<3> zeros(1, 3, kD);
  zeros.setZero();  // Eigen leaves new tensors uninitialised: garbage could be non-finite, refused first
  CHECK(code_of([&] { client.forward(zeros, flat); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "mask");

  // Keys: none or a wrong one is permission denied; nobody listening is unavailable.
  Hosted keyed(at::kFloat, {{"secret-key", "tenant"}});
  CHECK(code_of([&] { Client::connect(keyed.address); }) == ErrorCode::kPermissionDenied);
  aios::client::ConnectOptions wrong_key, right_key;
  wrong_key.api_key = "wrong";
  wrong_key.timeout = std::chrono::seconds(10);
  right_key.api_key = "secret-key";
  CHECK(code_of([&] { Client::connect(keyed.address, wrong_key); }) == ErrorCode::kPermissionDenied);
  CHECK(Client::connect(keyed.address, right_key).config().hidden_size == kD);
  const int port = keyed.host->port();
  keyed.host.reset();
  aios::client::ConnectOptions quick;
  quick.timeout = std::chrono::milliseconds(500);
  CHECK(code_of([&] { Client::connect("127.0.0.1:" + std::to_string(port), quick); }) == ErrorCode::kUnavailable);
}

TEST_CASE("the thin client sends payloads larger than the host's message limit in chunks", "[client]") {
  auto& h = Hosted::float32();
  aios::server::HostOptions options;
  options.listen = "127.0.0.1:0";
  options.max_message_bytes = 64 << 10;
  aios::server::Host host(h.local, options);
  const std::string address = "127.0.0.1:" + std::to_string(host.port());
  torch::manual_seed(1);
  const at::Tensor latents = torch::randn({24, 32, kD});  // 96 KiB of float32
  const FloatTensor<3> x = floats<3>(latents);

  // In one message the request is over the limit ...
  CHECK(code_of([&] { Client::connect(address).forward(x); }) == ErrorCode::kResourceExhausted);
  // ... in chunks of 16 KiB it goes through, and so does the reply (chunked by the host).
  aios::client::ConnectOptions chunked;
  chunked.chunk_bytes = 16 << 10;
  const Client client = Client::connect(address, chunked);
  CHECK(at::equal(to_torch(client.forward(x).hidden), h.local->forward(latents).hidden));
  aios::client::Cotangents cot;
  cot.hidden = floats<3>(torch::randn({24, 32, kD}));
  const auto kept = client.forward_keep(x);
  aios::gradient::Cotangents local_cot;
  local_cot.hidden = to_torch(*cot.hidden);
  CHECK(at::allclose(to_torch(client.vjp(kept.handle, cot)), h.local->vjp(latents, {}, local_cot).latents, 1e-6,
                     1e-6));
  client.release(kept.handle);
  std::string field;
  CHECK(code_of([&] { client.vjp(kept.handle, cot); }, &field) == ErrorCode::kNotFound);
  CHECK(field == "handle");
  aios::client::ConnectOptions zero;
  zero.chunk_bytes = 0;
  CHECK(code_of([&] { Client::connect(address, zero); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "chunk_bytes");
}

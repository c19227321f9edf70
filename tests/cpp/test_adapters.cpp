// Adapters from C++: encoders against plain torch references, the sequence builder on the shared
// hand-checked layouts (tests/data/sequence_layouts.json, also run by the Python tests), training
// a projection through the frozen backbone, and encoder storage.
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "aios/adapters/audio.h"
#include "aios/adapters/encoders.h"
#include "aios/adapters/sequence.h"
#include "aios/adapters/storage.h"
#include "aios/error.h"
#include "aios/io/safetensors.h"
#include "aios/local/local_backbone.h"
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
using namespace aios::adapters;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<LocalBackbone> tiny_backbone() {
  static std::shared_ptr<LocalBackbone> backbone = LocalBackbone::load(TinyCheckpoint::llama("adapters").write());
  return backbone;
}

fs::path temp_folder(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("aios_test_adapters_" + std::to_string(::getpid())) / name;
  fs::remove_all(p);
  return p;
}

const char* kind_name(Segment::Kind k) {
  return k == Segment::Kind::kText ? "text" : k == Segment::Kind::kLatents ? "latents" : "gist";
}

}  // namespace

TEST_CASE("projections match plain torch in forward and gradient") {
  torch::manual_seed(0);
  LinearProjection linear(6, kD);
  MlpProjection mlp(6, kD, 20);
  const at::Tensor x = torch::randn({3, 5, 6}).requires_grad_(true);

  const at::Tensor y = linear->forward(x);
  const at::Tensor x_ref = x.detach().clone().requires_grad_(true);
  const at::Tensor w = linear->linear->weight.detach().clone().requires_grad_(true);
  const at::Tensor y_ref = x_ref.matmul(w.t()) + linear->linear->bias.detach();
  CHECK(y.sizes() == at::IntArrayRef{3, 5, kD});
  CHECK(at::allclose(y, y_ref, 1e-5, 1e-6));
  const at::Tensor g = torch::randn_like(y);
  y.backward(g);
  y_ref.backward(g);
  CHECK(at::allclose(x.grad(), x_ref.grad(), 1e-5, 1e-6));
  CHECK(at::allclose(linear->linear->weight.grad(), w.grad(), 1e-5, 1e-6));

  const at::Tensor z = mlp->forward(x.detach());
  const at::Tensor h = at::linear(x.detach(), mlp->fc1->weight, mlp->fc1->bias);
  const at::Tensor gelu = 0.5 * h * (1 + at::erf(h / std::sqrt(2.0)));  // LLaVA's exact GELU
  CHECK(mlp->options.hidden_features == 20);
  CHECK(at::allclose(z, at::linear(gelu, mlp->fc2->weight, mlp->fc2->bias), 1e-5, 1e-6));
  CHECK(MlpProjection(6, kD)->options.hidden_features == kD);  // hidden defaults to the output width
}

TEST_CASE("gist latents broadcast over the batch and start small or as given") {
  torch::manual_seed(0);
  GistLatents gist(3, kD);
  CHECK(gist->latents.abs().max().item<double>() < 0.2);
  const at::Tensor out = gist->forward(4);
  CHECK(out.sizes() == at::IntArrayRef{4, 3, kD});
  out.sum().backward();
  CHECK(at::allclose(gist->latents.grad(), torch::full({3, kD}, 4.0)));

  GistLatentsOptions options(2, kD);
  options.init = torch::randn({2, kD}, torch::kDouble);
  GistLatents given(options);
  CHECK(at::equal(given->latents, options.init->to(at::kFloat)));
}

TEST_CASE("encoders reject zero sizes and widths that do not fit the backbone") {
  std::string field;
  CHECK(code_of([] { GistLatents(0, kD); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "count");
  CHECK(code_of([] { LinearProjection(0, kD); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "in_features");
  CHECK(code_of([] { MlpProjection(4, kD, -1); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "hidden_features");
  GistLatentsOptions bad_init(2, kD);
  bad_init.init = torch::zeros({3, kD});
  CHECK(code_of([&] { GistLatents{bad_init}; }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "init");

  auto backbone = tiny_backbone();
  LinearProjection(4, kD)->check_fits(*backbone);
  CHECK(code_of([&] { LinearProjection(4, kD + 1)->check_fits(*backbone); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "out_features");
  CHECK(code_of([&] { GistLatents(2, 7)->check_fits(*backbone); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "dim");
  CHECK(code_of([&] { LinearProjection(4, kD)->forward(torch::zeros({2, 5})); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "x");
}

TEST_CASE("the builder lays out the shared hand-checked cases") {
  auto backbone = tiny_backbone();
  std::ifstream in(std::string(AIOS_TEST_DATA_DIR) + "/sequence_layouts.json");
  REQUIRE(in.good());
  const nlohmann::json cases = nlohmann::json::parse(in).at("cases");
  for (const auto& c : cases) {
    INFO(c.at("name").get<std::string>());
    torch::manual_seed(1);
    BuildOptions options;
    options.padding = c.at("padding") == "left" ? Padding::kLeft : Padding::kRight;
    options.full_mask = c.value("full_mask", false);
    if (c.at("gist_count").get<int64_t>() > 0) options.gist = GistLatents(c.at("gist_count").get<int64_t>(), kD);
    std::vector<Row> rows;
    for (const auto& r : c.at("rows")) {
      Row row;
      for (const auto& s : r) {
        if (s.contains("text")) row.push_back(Segment::text(torch::tensor(s.at("text").get<std::vector<int64_t>>())));
        if (s.contains("latents")) row.push_back(Segment::latent(torch::randn({s.at("latents").get<int64_t>(), kD})));
        if (s.contains("gist")) row.push_back(Segment::gist());
      }
      rows.push_back(std::move(row));
    }
    const Batch batch = build_batch(*backbone, rows, options);
    const int64_t B = static_cast<int64_t>(rows.size()), T = batch.latents.size(1);
    CHECK(batch.latents.sizes() == at::IntArrayRef{B, T, kD});
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        CHECK(batch.positions[b][t].item<int64_t>() == c.at("positions")[b][t].get<int64_t>());
        CHECK(batch.ids[b][t].item<int64_t>() == c.at("ids")[b][t].get<int64_t>());
        if (batch.mask.dim() == 2) {
          CHECK(batch.mask[b][t].item<bool>() == (c.at("mask")[b][t].get<int>() != 0));
        } else {
          const std::string query = c.at("mask")[b][t].get<std::string>();
          for (int64_t s = 0; s < T; ++s) CHECK(batch.mask[b][t][s].item<bool>() == (query[s] == '1'));
        }
      }
      REQUIRE(batch.segments[b].size() == c.at("segments")[b].size());
      for (std::size_t j = 0; j < batch.segments[b].size(); ++j) {
        const SegmentRange& got = batch.segments[b][j];
        const auto& want = c.at("segments")[b][j];
        CHECK(kind_name(got.kind) == want[0].get<std::string>());
        CHECK(got.begin == want[1].get<int64_t>());
        CHECK(got.end == want[2].get<int64_t>());
        // The content of each segment: the text's embeddings, the caller's latents, the gist vectors.
        const at::Tensor part = batch.latents[b].narrow(0, got.begin, got.end - got.begin);
        const Segment& s = rows[b][j];
        if (s.kind == Segment::Kind::kText) CHECK(at::equal(part, backbone->embed(s.ids.unsqueeze(0))[0]));
        if (s.kind == Segment::Kind::kLatents) CHECK(at::equal(part, s.latents));
        if (s.kind == Segment::Kind::kGist) CHECK(at::equal(part, options.gist->latents));
      }
    }
    // Padding holds zeros: the segments cover every non-zero latent.
    at::Tensor covered = torch::zeros({B, T}, torch::kBool);
    for (int64_t b = 0; b < B; ++b) {
      for (const SegmentRange& r : batch.segments[b]) covered[b].narrow(0, r.begin, r.end - r.begin).fill_(true);
    }
    CHECK(batch.latents.abs().sum(-1).masked_select(covered.logical_not()).sum().item<double>() == 0);
  }
}

TEST_CASE("gradients flow from the batch to caller latents and gist vectors") {
  auto backbone = tiny_backbone();
  GistLatents gist(2, kD);
  const at::Tensor a = torch::randn({3, kD}, torch::kDouble).requires_grad_(true);  // cast to the backbone's dtype
  const at::Tensor c = torch::randn({1, kD}).requires_grad_(true);
  BuildOptions options;
  options.gist = gist;
  options.padding = Padding::kLeft;
  const Batch batch = build_batch(
      *backbone, {{Segment::latent(a), Segment::gist(), Segment::text(torch::tensor({4, 5}))}, {Segment::latent(c), Segment::gist()}},
      options);
  CHECK(batch.latents.dtype() == at::kFloat);
  const at::Tensor weights = torch::randn(batch.latents.sizes());
  (batch.latents * weights).sum().backward();
  CHECK(a.grad().dtype() == at::kDouble);
  CHECK(at::allclose(a.grad().to(at::kFloat), weights[0].narrow(0, 0, 3)));
  CHECK(batch.segments[1][0].begin == 4);  // row 1 (3 positions of 7) is padded on the left
  CHECK(at::allclose(c.grad(), weights[1].narrow(0, 4, 1)));
  CHECK(at::allclose(gist->latents.grad(), weights[0].narrow(0, 3, 2) + weights[1].narrow(0, 5, 2)));
}

TEST_CASE("padding does not change the hidden states of real tokens") {
  auto backbone = tiny_backbone();
  torch::manual_seed(2);
  const at::Tensor image = torch::randn({2, kD});
  GistLatents gist(2, kD);
  const Row long_row = {Segment::text(torch::tensor({1, 2, 3})), Segment::latent(image), Segment::text(torch::tensor({4, 5}))};
  const Row short_row = {Segment::latent(image.narrow(0, 0, 1)), Segment::text(torch::tensor({6}))};
  for (bool with_gist : {false, true}) {
    for (Padding padding : {Padding::kRight, Padding::kLeft}) {
      BuildOptions options;
      options.padding = padding;
      options.gist = gist;
      Row s = short_row;
      if (with_gist) s.insert(s.begin() + 1, Segment::gist());
      const Batch alone = build_batch(*backbone, {s}, options);
      const Batch both = build_batch(*backbone, {long_row, s}, options);
      const at::Tensor h_alone = backbone->forward(alone.latents.detach(), alone.forward_options()).hidden[0];
      const at::Tensor h_both = backbone->forward(both.latents.detach(), both.forward_options()).hidden[1];
      const int64_t begin = both.segments[1].front().begin, n = h_alone.size(0);
      CHECK(at::allclose(h_both.narrow(0, begin, n), h_alone, 1e-4, 1e-5));
      CHECK(at::isfinite(h_both).all().item<bool>());
    }
  }
}

TEST_CASE("the builder names the malformed segment") {
  auto backbone = tiny_backbone();
  std::string field;
  auto build = [&](std::vector<Row> rows, BuildOptions options = {}) { build_batch(*backbone, rows, options); };
  CHECK(code_of([&] { build({{Segment::latent(torch::zeros({2, kD + 1}))}}); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "rows[0][0].latents");
  CHECK(code_of([&] { build({{Segment::text(torch::tensor({1}))}, {Segment::text(torch::tensor({kVocab}))}}); }, &field) ==
        ErrorCode::kInvalidArgument);
  CHECK(field == "rows[1][0].ids");
  CHECK(code_of([&] { build({{Segment::gist()}}); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "gist");
  BuildOptions with_gist;
  with_gist.gist = GistLatents(2, kD);
  CHECK(code_of([&] { build({{Segment::gist(), Segment::gist()}}, with_gist); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "rows[0][1]");
  BuildOptions narrow_gist;
  narrow_gist.gist = GistLatents(2, kD - 1);
  CHECK(code_of([&] { build({{Segment::gist()}}, narrow_gist); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "gist.dim");
  CHECK(code_of([&] { build({}); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(code_of([&] { build({{Segment::text(torch::zeros({0}, torch::kLong))}}); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "rows[0]");
}

TEST_CASE("a projection trains through the frozen backbone with extension ids") {
  auto backbone = tiny_backbone();
  torch::manual_seed(3);
  auto ext = backbone->extend({"<img>"});
  MlpProjection projection(10, kD, 16);
  projection->check_fits(*backbone);
  torch::optim::Adam optimizer(projection->parameters(), torch::optim::AdamOptions(1e-2));
  // Each "image" feature vector must make the backbone predict its own label token next.
  const at::Tensor features = torch::randn({4, 2, 10});
  const at::Tensor labels = torch::randint(0, kVocab, {4});
  BuildOptions options;
  options.extension = ext;
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    std::vector<Row> rows;
    for (int64_t b = 0; b < 4; ++b) {
      rows.push_back({Segment::text(torch::tensor({int64_t{1}, kVocab})), Segment::latent(projection->forward(features[b]))});
    }
    const Batch batch = build_batch(*backbone, rows, options);
    CHECK(batch.ids[0][1].item<int64_t>() == kVocab);
    at::Tensor targets = torch::full({4, 4}, -100, torch::kLong), weights = torch::zeros({4, 4});
    targets.select(1, 3).copy_(labels);
    weights.select(1, 3).fill_(1);
    aios::gradient::LossOptions loss;
    loss.loss = aios::gradient::CrossEntropy{targets, weights};
    const auto r = backbone->forward_backward(batch.latents.detach(), batch.forward_options(), loss);
    REQUIRE(r.grad.embedding_rows.defined());  // ids reached the Gradient API
    optimizer.zero_grad();
    batch.latents.backward(r.grad.latents);
    optimizer.step();
    if (step == 0) first = r.loss.item<double>();
    last = r.loss.item<double>();
  }
  CHECK(last < 0.5 * first);
}

TEST_CASE("encoders save and load bit-exactly, and corrupt files are data loss") {
  torch::manual_seed(4);
  const fs::path folder = temp_folder("mlp");
  MlpProjection mlp(5, kD, 12);
  save_encoder(mlp, folder.string());
  save_encoder(mlp, folder.string());  // a second save replaces the first and leaves one weights file
  int weight_files = 0;
  for (const auto& e : fs::directory_iterator(folder)) weight_files += e.path().extension() == ".safetensors";
  CHECK(weight_files == 1);
  CHECK(read_encoder_manifest(folder.string()).kind == "mlp_projection");
  auto loaded = std::dynamic_pointer_cast<MlpProjectionImpl>(load_encoder(folder.string()));
  REQUIRE(loaded);
  CHECK(loaded->options.hidden_features == 12);
  for (const auto& p : mlp->named_parameters()) CHECK(at::equal(p.value(), loaded->named_parameters()[p.key()]));

  GistLatents gist(3, kD);
  LinearProjectionOptions no_bias(4, kD);
  no_bias.bias = false;
  LinearProjection linear(no_bias);
  const fs::path gist_folder = temp_folder("gist"), linear_folder = temp_folder("linear");
  save_encoder(gist, gist_folder.string());
  save_encoder(linear, linear_folder.string());
  auto g = std::dynamic_pointer_cast<GistLatentsImpl>(load_encoder(gist_folder.string()));
  REQUIRE(g);
  CHECK(at::equal(g->latents, gist->latents));
  auto l = std::dynamic_pointer_cast<LinearProjectionImpl>(load_encoder(linear_folder.string()));
  REQUIRE(l);
  CHECK(!l->options.bias);
  CHECK(at::equal(l->linear->weight, linear->linear->weight));

  // One flipped bit in the weights: the CRC catches it.
  const std::string weights = (folder / nlohmann::json::parse(std::ifstream(folder / "encoder.json")).at("weights").get<std::string>()).string();
  {
    std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    char byte = 0;
    f.read(&byte, 1);
    f.seekp(-3, std::ios::end);
    byte ^= 0x10;
    f.write(&byte, 1);
  }
  CHECK(code_of([&] { load_encoder(folder.string()); }) == ErrorCode::kDataLoss);
  // A truncated manifest, an unknown kind, a missing folder.
  std::ofstream(folder / "encoder.json") << "{\"format\": \"aios.enc";
  CHECK(code_of([&] { load_encoder(folder.string()); }) == ErrorCode::kDataLoss);
  std::ofstream(folder / "encoder.json")
      << R"({"format": "aios.encoder", "version": 1, "kind": "nobody", "sizes": {}, "weights": "w.safetensors", "crc32": 0})";
  std::string field;
  CHECK(code_of([&] { load_encoder(folder.string()); }, &field) == ErrorCode::kNotFound);
  CHECK(field == "kind");
  CHECK(code_of([&] { load_encoder(temp_folder("absent").string()); }) == ErrorCode::kNotFound);

  // Sizes and checksums that are not integers in range, and sizes that ask for more values than the
  // weights file holds, are refused before a module is built (a count of 10^8 latents would
  // allocate gigabytes).
  const nlohmann::json saved = nlohmann::json::parse(std::ifstream(gist_folder / "encoder.json"));
  for (const auto& [key, value, named] : std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"count", 1e8, "sizes.count"}, {"count", 100000000, "sizes.count"}, {"count", -1, "sizes.count"},
           {"dim", 3.5, "sizes.dim"}}) {
    nlohmann::json m = saved;
    m["sizes"][key] = value;
    std::ofstream(gist_folder / "encoder.json") << m.dump();
    CHECK(code_of([&] { load_encoder(gist_folder.string()); }, &field) == ErrorCode::kDataLoss);
    CHECK(field.ends_with(named));
  }
  nlohmann::json m = saved;
  m["crc32"] = 3.7e37;
  std::ofstream(gist_folder / "encoder.json") << m.dump();
  CHECK(code_of([&] { load_encoder(gist_folder.string()); }, &field) == ErrorCode::kDataLoss);
  CHECK(field.ends_with("crc32"));
  std::ofstream(gist_folder / "encoder.json") << saved.dump();
  CHECK(load_encoder(gist_folder.string()));
}

TEST_CASE("the registry loads encoder kinds that callers register") {
  struct ScaleImpl : torch::nn::Module {
    explicit ScaleImpl(int64_t n) { scale = register_parameter("scale", torch::ones({n})); }
    at::Tensor scale;
  };
  register_encoder("test_scale", [](const AdapterSizes& s) { return std::make_shared<ScaleImpl>(s.at("n")); });
  CHECK(code_of([] { register_encoder("test_scale", [](const AdapterSizes&) { return nullptr; }); }) ==
        ErrorCode::kAlreadyExists);
  CHECK(code_of([] { register_encoder("linear_projection", [](const AdapterSizes&) { return nullptr; }); }) ==
        ErrorCode::kAlreadyExists);
  ScaleImpl scale(4);
  {
    torch::NoGradGuard no_grad;
    scale.scale.mul_(torch::arange(4));
  }
  const fs::path folder = temp_folder("scale");
  save_encoder(scale, {"test_scale", {{"n", 4}}}, folder.string());
  auto loaded = std::dynamic_pointer_cast<ScaleImpl>(load_encoder(folder.string()));
  REQUIRE(loaded);
  CHECK(at::equal(loaded->scale, scale.scale));
}

TEST_CASE("an adapter folder is written from tensors by name and read back as them") {
  // What the Python package's modules use: the same folder as save_encoder writes, without a torch::nn module.
  const std::map<std::string, at::Tensor> tensors = {{"fc.weight", torch::randn({3, 2})},
                                                     {"fc.bias", torch::randn({3}).to(torch::kBFloat16)}};
  const fs::path folder = temp_folder("tensors");
  save_decoder_tensors(tensors, {"some_kind", {{"n", 3}}}, folder.string());
  const StoredAdapter stored = read_decoder(folder.string());
  CHECK(stored.manifest.kind == "some_kind");
  CHECK(stored.manifest.sizes == AdapterSizes{{"n", 3}});
  REQUIRE(stored.tensors.size() == 2);
  for (const auto& [name, tensor] : tensors) {
    CHECK(stored.tensors.at(name).scalar_type() == tensor.scalar_type());
    CHECK(at::equal(stored.tensors.at(name), tensor));
  }
  CHECK(code_of([&] { read_encoder(folder.string()); }) == ErrorCode::kNotFound);  // a decoder folder only
  // A size the weights cannot fill is refused before anyone builds from it.
  save_encoder_tensors(tensors, {"some_kind", {{"n", 10}}}, folder.string());
  std::string field;
  CHECK(code_of([&] { read_encoder(folder.string()); }, &field) == ErrorCode::kDataLoss);
  CHECK(field.ends_with("sizes.n"));
  // A Linear projection saved from its tensors loads as one.
  LinearProjection linear(2, 3);
  std::map<std::string, at::Tensor> named;
  for (const auto& p : linear->named_parameters()) named[p.key()] = p.value();
  save_encoder_tensors(named, manifest_of(*linear), folder.string());
  auto loaded = std::dynamic_pointer_cast<LinearProjectionImpl>(load_encoder(folder.string()));
  REQUIRE(loaded);
  CHECK(at::equal(loaded->named_parameters()["linear.weight"], linear->named_parameters()["linear.weight"]));
}

namespace {

// The values of the shared encoder fixtures: parameter p = arange(numel) * 0.01 - 0.3, in its shape.
void fill_fixture_values(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters()) {
    p.value().copy_((torch::arange(p.value().numel(), torch::kFloat) * 0.01 - 0.3).view(p.value().sizes()));
  }
}

// The shared audio fixture: small sizes, fixture values (tests/python/test_adapters.py has the same).
AudioEncoder fixture_audio_encoder() {
  AudioEncoderOptions o(4);
  o.features = {800, 16, 8, 5};  // sample_rate, n_fft, hop_length, n_mels
  o.channels = 3;
  o.layers = 2;
  AudioEncoder e(o);
  fill_fixture_values(*e);
  return e;
}

at::Tensor reference_tensor(const aios::io::SafetensorsFile& file, const std::string& name) {
  const aios::io::TensorView* t = file.find(name);
  REQUIRE(t != nullptr);
  REQUIRE(t->dtype == aios::io::DType::kF32);
  return torch::from_blob(const_cast<std::byte*>(t->data), t->shape, torch::kFloat).clone();
}

}  // namespace

// Run by hand (aios_tests "[.generate]") to rewrite tests/data/encoders/cpp_mlp and
// tests/data/decoders/cpp_linear.
TEST_CASE("write the C++ adapter fixtures", "[.generate]") {
  MlpProjection mlp(3, 4, 5);
  fill_fixture_values(*mlp);
  save_encoder(mlp, std::string(AIOS_TEST_DATA_DIR) + "/encoders/cpp_mlp");
  LinearDecoder decoder(4, 3, 2);
  fill_fixture_values(*decoder);
  save_decoder(decoder, std::string(AIOS_TEST_DATA_DIR) + "/decoders/cpp_linear");
  AudioEncoder audio = fixture_audio_encoder();
  save_encoder(audio, std::string(AIOS_TEST_DATA_DIR) + "/encoders/cpp_audio");
}

TEST_CASE("encoder folders written by Python and by C++ load in C++") {
  for (const char* name : {"python_mlp", "cpp_mlp"}) {
    INFO(name);
    auto loaded = std::dynamic_pointer_cast<MlpProjectionImpl>(load_encoder(std::string(AIOS_TEST_DATA_DIR) + "/encoders/" + name));
    REQUIRE(loaded);
    MlpProjection want(3, 4, 5);
    fill_fixture_values(*want);
    for (const auto& p : want->named_parameters()) CHECK(at::equal(p.value(), loaded->named_parameters()[p.key()]));
  }
}

// tests/data/encoders/audio_reference.safetensors: a waveform and what the Python package computes
// from it (log_mel, and the fixture encoder's latents), written by tests/python/test_adapters.py.
TEST_CASE("audio encoder folders written by Python and by C++ load in C++ and encode as Python does") {
  const auto reference = aios::io::SafetensorsFile::open(std::string(AIOS_TEST_DATA_DIR) + "/encoders/audio_reference.safetensors");
  const at::Tensor waveform = reference_tensor(reference, "waveform");
  AudioEncoder want = fixture_audio_encoder();
  CHECK(at::allclose(log_mel(waveform, want->options.features), reference_tensor(reference, "features"), 1e-5, 1e-6));
  for (const char* name : {"python_audio", "cpp_audio"}) {
    INFO(name);
    auto loaded = std::dynamic_pointer_cast<AudioEncoderImpl>(load_encoder(std::string(AIOS_TEST_DATA_DIR) + "/encoders/" + name));
    REQUIRE(loaded);
    CHECK(manifest_of(*loaded).sizes == manifest_of(*want).sizes);
    for (const auto& p : want->named_parameters()) CHECK(at::equal(p.value(), loaded->named_parameters()[p.key()]));
    torch::NoGradGuard no_grad;
    CHECK(at::allclose(loaded->encode(waveform), reference_tensor(reference, "latents"), 1e-5, 1e-6));
  }
}

TEST_CASE("log-mel features put a tone in its mel band and name bad input") {
  LogMelOptions o;  // 16 kHz, 25 ms windows, 10 ms hops, 64 bands
  const at::Tensor t = torch::arange(16000, torch::kDouble) / 16000.0;
  const at::Tensor filters = mel_filters(o);
  REQUIRE(filters.sizes() == at::IntArrayRef{64, 201});
  for (double hz : {300.0, 1000.0, 3000.0}) {
    INFO(hz);
    const at::Tensor tone = at::sin(t * (2 * M_PI * hz)).to(torch::kFloat);
    const at::Tensor f = log_mel(tone, o);
    REQUIRE(f.sizes() == at::IntArrayRef{frame_count(16000, o), 64});
    CHECK(frame_count(16000, o) == 101);
    // The loudest band in the middle frame is one whose filter covers the tone's nearest bin.
    const int64_t bin = static_cast<int64_t>(std::lround(hz * o.n_fft / o.sample_rate));
    CHECK(filters[f[50].argmax().item<int64_t>()][bin].item<float>() > 0);
  }
  // A batch is its rows alone, and the features lie in Whisper's range: at most (max + 4) / 4, at
  // least 2 below it.
  const at::Tensor batch = torch::randn({2, 4000}) * 0.1;
  const at::Tensor both = log_mel(batch, o);
  CHECK(at::allclose(both[1], log_mel(batch[1], o), 1e-5, 1e-6));
  CHECK((both[0].max() - both[0].min()).item<float>() <= 2.0f + 1e-5f);
  CHECK(code_of([&] { log_mel(torch::zeros({200}), o); }) == ErrorCode::kInvalidArgument);  // N <= n_fft / 2
  CHECK(code_of([&] { log_mel(torch::zeros({1000}, torch::kInt), o); }) == ErrorCode::kInvalidArgument);
  CHECK(code_of([&] { log_mel(torch::zeros({1, 1, 1000}), o); }) == ErrorCode::kInvalidArgument);
  LogMelOptions bad;
  bad.n_mels = 0;
  CHECK(code_of([&] { log_mel(torch::zeros({1000}), bad); }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("an audio encoder maps frames to a latent per 2^layers frames and trains through the backbone") {
  torch::manual_seed(1);
  AudioEncoderOptions o(kD);
  o.features.n_mels = 16;
  o.channels = 8;
  o.layers = 2;
  AudioEncoder encoder(o);
  encoder->check_fits(*tiny_backbone());
  for (int64_t frames : {1, 4, 5, 9}) {
    CHECK(encoder->forward(torch::randn({frames, 16})).sizes() == at::IntArrayRef{encoder->latent_count(frames), kD});
  }
  CHECK(encoder->latent_count(9) == 3);
  const at::Tensor features = torch::randn({2, 12, 16});
  const at::Tensor latents = encoder->forward(features);  // [2, 3, D]
  CHECK(at::allclose(latents[1], encoder->forward(features[1]), 1e-5, 1e-6));
  auto backbone = tiny_backbone();
  const at::Tensor grad = torch::randn_like(latents);
  auto kept = backbone->forward_keep(latents.detach());
  aios::gradient::Cotangents cotangents;
  cotangents.hidden = grad;
  latents.backward(backbone->vjp(kept.handle, cotangents).latents);
  backbone->release(kept.handle);
  for (const auto& p : encoder->named_parameters()) {
    INFO(p.key());
    CHECK(p.value().grad().defined());
    CHECK(p.value().grad().abs().sum().item<float>() > 0);
  }
  CHECK(code_of([&] { encoder->forward(torch::randn({3, 15})); }) == ErrorCode::kInvalidArgument);
  CHECK(code_of([&] { encoder->forward(torch::randn({0, 16})); }) == ErrorCode::kInvalidArgument);
  // He initialisation: activations keep their scale through the strided layers (torch's default
  // initialisation leaves about a thirtieth of it after three layers here).
  AudioEncoderOptions deep(kD);
  deep.channels = 64;
  AudioEncoder fresh(deep);
  torch::NoGradGuard no_grad;
  at::Tensor x = at::gelu(fresh->conv_in->forward(torch::randn({4, 64, 40})));
  for (const auto& layer : *fresh->convs) x = at::gelu(layer->as<torch::nn::Conv1d>()->forward(x));
  CHECK(x.std().item<float>() > 0.2f);
  AudioEncoderOptions wide(kD + 1);
  CHECK(code_of([&] { AudioEncoder(wide)->check_fits(*backbone); }) == ErrorCode::kInvalidArgument);
  AudioEncoderOptions negative(kD);
  negative.layers = -1;
  CHECK(code_of([&] { AudioEncoder{negative}; }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("decoder folders written by Python and by C++ load in C++") {
  for (const char* name : {"python_linear", "cpp_linear"}) {
    INFO(name);
    const LoadedDecoder loaded = load_decoder(std::string(AIOS_TEST_DATA_DIR) + "/decoders/" + name);
    auto module = std::dynamic_pointer_cast<LinearDecoderImpl>(loaded.module);
    REQUIRE(module);
    CHECK(module->options.span == 2);
    LinearDecoder want(4, 3, 2);
    fill_fixture_values(*want);
    for (const auto& p : want->named_parameters()) CHECK(at::equal(p.value(), module->named_parameters()[p.key()]));
  }
}

TEST_CASE("a linear decoder matches plain torch and takes its span in routed generation") {
  torch::manual_seed(3);
  LinearDecoder decoder(kD, 4, /*span=*/2);
  const at::Tensor h = torch::randn({3, kD}, torch::requires_grad());
  const at::Tensor out = decoder->forward(h);
  const at::Tensor want = torch::matmul(h, decoder->head->weight.t()) + decoder->head->bias;
  CHECK(at::allclose(out, want, 1e-6, 1e-6));
  out.sum().backward();
  CHECK(at::allclose(h.grad(), decoder->head->weight.sum(0).expand({3, kD}), 1e-6, 1e-6));
  CHECK(at::allclose(decoder->feedback(out.detach()), torch::matmul(out.detach(), decoder->back->weight.t()) + decoder->back->bias,
                     1e-6, 1e-6));

  std::string field;
  CHECK(code_of([] { LinearDecoder(kD, 4, 0); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "span");
  CHECK(code_of([] { LinearDecoder(kD + 1, 4)->check_fits(*tiny_backbone()); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "dim");

  // Saved and loaded through the registry, it serves a route: the classifier's first pick opens
  // the span, the decoder takes two positions (a latent fed, then done: the end token fed).
  const fs::path folder = temp_folder("linear_decoder");
  save_decoder(decoder, folder.string());
  CHECK(read_decoder_manifest(folder.string()).kind == "linear_decoder");
  const LoadedDecoder loaded = load_decoder(folder.string());
  auto module = std::dynamic_pointer_cast<LinearDecoderImpl>(loaded.module);
  REQUIRE(module);
  REQUIRE(loaded.decoder.get() == static_cast<aios::ali::Decoder*>(module.get()));
  for (const auto& p : decoder->named_parameters()) CHECK(at::equal(p.value(), module->named_parameters()[p.key()]));

  auto backbone = tiny_backbone();
  const at::Tensor latents = backbone->embed(torch::tensor({{3, 14, 15, 9}}));
  aios::ali::GenerateOptions options;
  options.max_new_tokens = 4;
  const int64_t start = backbone->generate(latents, options).ids[0][0].item<int64_t>();
  const int64_t end = (start + 1) % kVocab;
  options.routes = {{start, end, loaded.decoder}};
  std::vector<at::Tensor> outputs;
  const auto r = backbone->generate(latents, options, [&](const aios::ali::GenerationStep& s) {
    outputs.push_back(s.outputs.empty() ? at::Tensor() : s.outputs[0]);
    return true;
  });
  CHECK(r.ids[0][0].item<int64_t>() == start);
  CHECK(r.ids[0][1].item<int64_t>() == aios::ali::GenerationStep::kLatent);
  CHECK(r.ids[0][2].item<int64_t>() == end);
  CHECK(r.ids[0][3].item<int64_t>() != aios::ali::GenerationStep::kLatent);  // back to the classifier
  for (int k : {1, 2}) {
    REQUIRE(outputs[k].defined());
    CHECK(at::allclose(outputs[k], decoder->forward(r.hidden[0][k]).detach(), 1e-5, 1e-5));
  }
  CHECK(!outputs[0].defined());

  // A decoder kind whose factory builds something that is not a decoder.
  register_decoder("test_not_a_decoder", [](const AdapterSizes&) { return std::make_shared<LinearProjectionImpl>(2, kD); });
  CHECK(code_of([] { register_decoder("linear_decoder", [](const AdapterSizes&) { return nullptr; }); }) ==
        ErrorCode::kAlreadyExists);
  const fs::path impostor = temp_folder("impostor");
  save_decoder(*LinearProjection(2, kD), {"test_not_a_decoder", {}}, impostor.string());
  CHECK(code_of([&] { load_decoder(impostor.string()); }, &field) == ErrorCode::kDataLoss);
  CHECK(field == "kind");
  CHECK(code_of([&] { load_encoder(folder.string()); }) == ErrorCode::kNotFound);  // a decoder folder has no encoder.json
}

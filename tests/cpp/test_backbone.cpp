// LocalBackbone on tiny random checkpoints written here: invariants of the forward pass, argument
// errors, and loading failures that must leave nothing half-loaded.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "aios/local/local_backbone.h"
#include "catch_torch.h"
#include "tiny_checkpoint.h"
#include "aios/error.h"
#include "aios/io/safetensors.h"

namespace fs = std::filesystem;
using aios::Error;
using aios::ErrorCode;
using aios::ali::ForwardOptions;
using aios::local::LocalBackbone;
using nlohmann::json;

namespace {

using namespace aios_test;

template <typename F>
void expect_error(F&& call, ErrorCode code, const std::string& field, const std::string& text = "") {
  try {
    call();
    FAIL("no error for " << field);
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
    CHECK(e.field() == field);
    CHECK(std::string(e.what()).find(text) != std::string::npos);
  }
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("forward-pass invariants on both families") {
  for (const TinyCheckpoint& checkpoint : {TinyCheckpoint::llama("llama"), TinyCheckpoint::gpt2("gpt2")}) {
    const auto backbone = LocalBackbone::load(checkpoint.write());
    const int64_t total = [&] {
      int64_t n = 0;
      for (const auto& [name, w] : checkpoint.weights) n += w.numel();
      return n;
    }();
    CHECK(backbone->parameter_count() == total);
    const at::Tensor ids = at::randint(kVocab, {3, 10}, at::kLong);
    const at::Tensor latents = backbone->embed(ids);
    REQUIRE((latents.sizes() == at::IntArrayRef{3, 10, kD}));
    CHECK_FALSE(latents.requires_grad());

    ForwardOptions with_layers;
    with_layers.layers = {0, kLayers};
    const auto out = backbone->forward(latents, with_layers);
    CHECK(out.hidden.sizes() == latents.sizes());
    REQUIRE(out.layers.size() == 2);
    if (checkpoint.config["architectures"][0] == "LlamaForCausalLM") {
      CHECK(at::equal(out.layers[0], latents));  // the residual stream entering block 0
    }
    CHECK((backbone->classify(out.hidden).sizes() == at::IntArrayRef{3, 10, kVocab}));

    SECTION("causal: later tokens do not change earlier states") {
      at::Tensor changed = latents.clone();
      changed.index_put_({at::indexing::Slice(), at::indexing::Slice(6)}, 0.5);
      const at::Tensor h = backbone->forward(changed).hidden;
      CHECK(max_diff(h.slice(1, 0, 6), out.hidden.slice(1, 0, 6)) < 1e-6);
      CHECK(max_diff(h.slice(1, 6), out.hidden.slice(1, 6)) > 1e-3);
    }
    SECTION("batched equals one by one") {
      for (int64_t b = 0; b < 3; ++b) {
        CHECK(max_diff(backbone->forward(latents.slice(0, b, b + 1)).hidden, out.hidden.slice(0, b, b + 1)) < 1e-5);
      }
    }
    SECTION("right padding does not change the real tokens") {
      ForwardOptions padded;
      at::Tensor mask = at::ones({3, 10}, at::kBool);
      mask.index_put_({1, at::indexing::Slice(4)}, false);
      padded.mask = mask;
      const at::Tensor h = backbone->forward(latents, padded).hidden;
      CHECK(max_diff(h[1].slice(0, 0, 4), backbone->forward(latents.slice(0, 1, 2).slice(1, 0, 4)).hidden[0]) < 1e-5);
      CHECK(at::isfinite(h).all().item<bool>());
    }
    SECTION("a full causal mask and shared positions equal the defaults") {
      ForwardOptions explicit_options;
      explicit_options.mask = at::ones({10, 10}, at::kBool).tril().expand({3, 10, 10});
      explicit_options.positions = at::arange(10, at::kLong);
      CHECK(max_diff(backbone->forward(latents, explicit_options).hidden, out.hidden) < 1e-6);
    }
    SECTION("positions matter") {
      ForwardOptions shifted;
      shifted.positions = at::arange(10, at::kLong) * 2;  // not a uniform shift, to which rotary is blind
      CHECK(max_diff(backbone->forward(latents, shifted).hidden, out.hidden) > 1e-4);
    }
    SECTION("bad arguments are errors and change nothing") {
      expect_error([&] { backbone->forward(latents[0]); }, ErrorCode::kInvalidArgument, "latents", "rank 3");
      expect_error([&] { backbone->forward(latents.to(at::kDouble)); }, ErrorCode::kInvalidArgument, "latents",
                   "float64");
      expect_error([&] { backbone->forward(at::zeros({1, 33, kD})); }, ErrorCode::kInvalidArgument, "latents", "33");
      expect_error([&] { backbone->embed(at::full({1, 2}, kVocab, at::kLong)); }, ErrorCode::kInvalidArgument, "ids",
                   "[0, 50)");
      ForwardOptions bad;
      bad.positions = at::full({3, 10}, 32, at::kLong);
      expect_error([&] { backbone->forward(latents, bad); }, ErrorCode::kInvalidArgument, "positions", "32");
      bad = {};
      bad.mask = at::ones({3, 9}, at::kBool);
      expect_error([&] { backbone->forward(latents, bad); }, ErrorCode::kInvalidArgument, "mask", "[3,9]");
      bad = {};
      bad.layers = {kLayers + 1};
      expect_error([&] { backbone->forward(latents, bad); }, ErrorCode::kInvalidArgument, "layers", "3");
      at::Tensor nan = latents.clone();
      nan.index_put_({0, 0, 0}, std::numeric_limits<float>::quiet_NaN());
      expect_error([&] { backbone->forward(nan); }, ErrorCode::kInvalidArgument, "latents", "NaN");
      bad = {};
      bad.allow_non_finite = true;
      CHECK_NOTHROW(backbone->forward(nan, bad));
      CHECK(at::equal(backbone->forward(latents).hidden, out.hidden));
    }
  }
}

TEST_CASE("a checkpoint that disagrees with itself loads nothing") {
  SECTION("missing tensor") {
    TinyCheckpoint t = TinyCheckpoint::llama("missing_tensor");
    t.weights.erase("model.layers.1.mlp.up_proj.weight");
    const std::string path = t.write();
    expect_error([&] { LocalBackbone::load(path); }, ErrorCode::kDataLoss, "model.layers.1.mlp.up_proj.weight",
                 "missing");
  }
  SECTION("wrong shape") {
    TinyCheckpoint t = TinyCheckpoint::gpt2("wrong_shape");
    t.weights["transformer.h.0.mlp.c_fc.weight"] = at::zeros({4 * kD, kD});
    const std::string path = t.write();
    expect_error([&] { LocalBackbone::load(path); }, ErrorCode::kDataLoss, "transformer.h.0.mlp.c_fc.weight",
                 "expected shape [32, 128], got [128, 32]");
  }
  SECTION("integer weights") {
    TinyCheckpoint t = TinyCheckpoint::llama("int_weights");
    const std::string path = t.write();
    std::vector<int32_t> values(kD, 1);
    auto views = std::vector<aios::io::TensorView>{};
    std::map<std::string, at::Tensor> keep = t.weights;
    for (const auto& [name, tensor] : keep) {
      if (name == "model.norm.weight") {
        views.push_back({name, aios::io::DType::kI32, {kD}, reinterpret_cast<const std::byte*>(values.data()), kD * 4});
      } else {
        views.push_back({name, aios::io::DType::kF32, tensor.sizes().vec(),
                         static_cast<const std::byte*>(tensor.data_ptr()), static_cast<std::size_t>(tensor.nbytes())});
      }
    }
    aios::io::write_safetensors((t.folder / "model.safetensors").string(), views);
    expect_error([&] { LocalBackbone::load(path); }, ErrorCode::kDataLoss, "model.norm.weight", "I32");
  }
  SECTION("no folder, no config") {
    expect_error([&] { LocalBackbone::load("/nonexistent/aios/model"); }, ErrorCode::kNotFound,
                 "/nonexistent/aios/model");
    TinyCheckpoint t = TinyCheckpoint::llama("no_config");
    const std::string path = t.write();
    fs::remove(t.folder / "config.json");
    expect_error([&] { LocalBackbone::load(path); }, ErrorCode::kNotFound, (t.folder / "config.json").string());
  }
  SECTION("unsupported dtype option") {
    const std::string path = TinyCheckpoint::llama("dtype_option").write();
    aios::local::LoadOptions options;
    options.dtype = at::kInt;
    expect_error([&] { LocalBackbone::load(path, options); }, ErrorCode::kInvalidArgument, "dtype", "int32");
  }
}

// A tiny random checkpoint written from C++ (config.json + model.safetensors), for tests that
// need a real LocalBackbone without transformers.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "aios/io/safetensors.h"

namespace aios_test {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int64_t kVocab = 50, kD = 32, kI = 48, kLayers = 2, kHeads = 4, kKvHeads = 2, kHeadDim = 8;

// Writes config.json and model.safetensors of a random Llama-style or GPT-2 model.
struct TinyCheckpoint {
  fs::path folder;
  json config;
  std::map<std::string, at::Tensor> weights;

  static TinyCheckpoint llama(const std::string& name) {
    TinyCheckpoint t;
    t.folder = fs::temp_directory_path() / ("aios_test_backbone_" + std::to_string(::getpid())) / name;
    t.config = {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", kVocab}, {"hidden_size", kD},
                {"intermediate_size", kI}, {"num_hidden_layers", kLayers}, {"num_attention_heads", kHeads},
                {"num_key_value_heads", kKvHeads}, {"max_position_embeddings", 32}, {"rms_norm_eps", 1e-5},
                {"tie_word_embeddings", false}};
    at::manual_seed(7);
    auto add = [&](const std::string& n, at::IntArrayRef shape, double scale = 0.2, double offset = 0) {
      t.weights[n] = at::randn(shape) * scale + offset;
    };
    add("model.embed_tokens.weight", {kVocab, kD}, 1.0);
    add("lm_head.weight", {kVocab, kD});
    add("model.norm.weight", {kD}, 0.1, 1.0);
    for (int64_t i = 0; i < kLayers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      add(p + "input_layernorm.weight", {kD}, 0.1, 1.0);
      add(p + "post_attention_layernorm.weight", {kD}, 0.1, 1.0);
      add(p + "self_attn.q_proj.weight", {kHeads * kHeadDim, kD});
      add(p + "self_attn.k_proj.weight", {kKvHeads * kHeadDim, kD});
      add(p + "self_attn.v_proj.weight", {kKvHeads * kHeadDim, kD});
      add(p + "self_attn.o_proj.weight", {kD, kHeads * kHeadDim});
      add(p + "mlp.gate_proj.weight", {kI, kD});
      add(p + "mlp.up_proj.weight", {kI, kD});
      add(p + "mlp.down_proj.weight", {kD, kI});
    }
    return t;
  }

  static TinyCheckpoint gpt2(const std::string& name) {
    TinyCheckpoint t;
    t.folder = fs::temp_directory_path() / ("aios_test_backbone_" + std::to_string(::getpid())) / name;
    t.config = {{"architectures", {"GPT2LMHeadModel"}}, {"vocab_size", kVocab}, {"n_embd", kD},
                {"n_layer", kLayers}, {"n_head", kHeads}, {"n_positions", 32}};
    at::manual_seed(8);
    auto add = [&](const std::string& n, at::IntArrayRef shape, double scale = 0.2, double offset = 0) {
      t.weights[n] = at::randn(shape) * scale + offset;
    };
    add("transformer.wte.weight", {kVocab, kD}, 1.0);
    add("transformer.wpe.weight", {32, kD}, 0.5);
    add("transformer.ln_f.weight", {kD}, 0.1, 1.0);
    add("transformer.ln_f.bias", {kD}, 0.1);
    for (int64_t i = 0; i < kLayers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      for (const char* ln : {"ln_1", "ln_2"}) {
        add(p + ln + ".weight", {kD}, 0.1, 1.0);
        add(p + ln + ".bias", {kD}, 0.1);
      }
      add(p + "attn.c_attn.weight", {kD, 3 * kD});
      add(p + "attn.c_attn.bias", {3 * kD}, 0.1);
      add(p + "attn.c_proj.weight", {kD, kD});
      add(p + "attn.c_proj.bias", {kD}, 0.1);
      add(p + "mlp.c_fc.weight", {kD, 4 * kD});
      add(p + "mlp.c_fc.bias", {4 * kD}, 0.1);
      add(p + "mlp.c_proj.weight", {4 * kD, kD});
      add(p + "mlp.c_proj.bias", {kD}, 0.1);
    }
    return t;
  }

  std::string write() const {
    fs::create_directories(folder);
    std::ofstream(folder / "config.json") << config.dump();
    std::vector<aios::io::TensorView> views;
    for (const auto& [name, tensor] : weights) {
      views.push_back({name, aios::io::DType::kF32, tensor.sizes().vec(),
                       static_cast<const std::byte*>(tensor.data_ptr()), static_cast<std::size_t>(tensor.nbytes())});
    }
    aios::io::write_safetensors((folder / "model.safetensors").string(), views);
    return folder.string();
  }
};

}  // namespace aios_test

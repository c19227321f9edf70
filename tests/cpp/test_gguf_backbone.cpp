// A tiny Llama checkpoint written both as a safetensors folder and as an F32 GGUF file the way
// llama.cpp's converter writes it (its names, its q/k row permutation): both load the same model.
#include <fstream>
#include <map>
#include <string>

#include "aios/backbone/model.h"
#include "aios/error.h"
#include "catch_torch.h"
#include "gguf_bytes.h"
#include "tiny_checkpoint.h"

using aios_test::Bytes;
using aios_test::TinyCheckpoint;

namespace {

// llama.cpp's converter: each head's rows [2, hd/2] become [hd/2, 2].
at::Tensor permute(const at::Tensor& w, int64_t heads) {
  return w.reshape({heads, 2, w.size(0) / heads / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

std::string gguf_name(const std::string& hf) {
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm.weight", "attn_norm.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},   {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},   {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},    {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "lm_head.weight") return "output.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  const std::size_t dot = hf.find('.', 13);  // after "model.layers."
  return "blk." + hf.substr(13, dot - 13) + "." + kLayer.at(hf.substr(dot + 1));
}

std::string write_gguf(const TinyCheckpoint& t, const std::string& path) {
  using namespace aios_test;
  Bytes b;
  b.s += "GGUF";
  b.u(3, 4).u(t.weights.size(), 8).u(10, 8);  // 10 key-values
  b.str("general.architecture").u(8, 4).str("llama");
  auto u32 = [&](const char* key, std::uint64_t v) { b.str(key).u(4, 4).u(v, 4); };
  u32("llama.context_length", 32);
  u32("llama.embedding_length", kD);
  u32("llama.block_count", kLayers);
  u32("llama.feed_forward_length", kI);
  u32("llama.attention.head_count", kHeads);
  u32("llama.attention.head_count_kv", kKvHeads);
  u32("llama.rope.dimension_count", kHeadDim);
  b.str("llama.rope.freq_base").u(6, 4).f32(10000.f);
  b.str("llama.attention.layer_norm_rms_epsilon").u(6, 4).f32(1e-5f);
  std::string data;
  for (const auto& [name, weight] : t.weights) {
    at::Tensor w = weight.to(at::kFloat).contiguous();
    if (name.find("q_proj") != std::string::npos) w = permute(w, kHeads);
    if (name.find("k_proj") != std::string::npos) w = permute(w, kKvHeads);
    b.str(gguf_name(name)).u(static_cast<std::uint64_t>(w.dim()), 4);
    for (int64_t d = w.dim() - 1; d >= 0; --d) b.u(static_cast<std::uint64_t>(w.size(d)), 8);  // ne: innermost first
    b.u(0, 4).u(data.size(), 8);                                                               // F32 at this offset
    data.append(static_cast<const char*>(w.data_ptr()), static_cast<std::size_t>(w.nbytes()));
    data.append((32 - data.size() % 32) % 32, '\0');
  }
  b.pad(32);
  std::ofstream(path, std::ios::binary) << b.s << data;
  return path;
}

}  // namespace

TEST_CASE("gguf: a llama GGUF file loads the same model as its safetensors folder") {
  const TinyCheckpoint t = TinyCheckpoint::llama("gguf_llama");
  const std::string folder = t.write();
  const std::string file = write_gguf(t, folder + ".gguf");
  const auto from_folder = aios::backbone::load_model(folder);
  const auto from_gguf = aios::backbone::load_model(file);
  CHECK(from_gguf->config().architecture == "LlamaForCausalLM");
  CHECK(from_gguf->config().vocab_size == aios_test::kVocab);
  CHECK(from_gguf->config().max_positions == 32);
  CHECK_FALSE(from_gguf->config().tie_word_embeddings);
  REQUIRE(from_gguf->weights().size() == from_folder->weights().size());
  for (std::size_t i = 0; i < from_gguf->weights().size(); ++i) {
    CHECK(at::equal(from_gguf->weights()[i], from_folder->weights()[i]));
  }
  // A path that is neither a folder nor a .gguf file names what was expected.
  try {
    aios::backbone::load_model(folder + "/config.json");
    FAIL("loaded a config file as a model");
  } catch (const aios::Error& e) {
    CHECK(e.code() == aios::ErrorCode::kInvalidArgument);
    CHECK(std::string(e.what()).find(".gguf") != std::string::npos);
  }
}

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "aios/backbone/config.h"
#include "aios/error.h"

using aios::Error;
using aios::ErrorCode;
using aios::backbone::Activation;
using aios::backbone::Family;
using aios::backbone::parse_hf_config;
using aios::backbone::QkNorm;
using aios::backbone::RopeConfig;
using nlohmann::json;

namespace {

json llama() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"vocab_size", 100},
          {"hidden_size", 64},
          {"intermediate_size", 96},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"max_position_embeddings", 128},
          {"rms_norm_eps", 1e-5}};
}

void expect_invalid(const json& config, const std::string& field, const std::string& text) {
  try {
    parse_hf_config(config.dump());
    FAIL("accepted: " << config.dump());
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK(e.field() == field);
    CHECK(std::string(e.what()).find(text) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("a Llama config with defaults") {
  const auto c = parse_hf_config(llama().dump());
  CHECK(c.family == Family::kLlama);
  CHECK(c.head_dim == 16);
  CHECK(c.num_kv_heads == 2);
  CHECK(c.activation == Activation::kSilu);
  CHECK(c.rope.type == RopeConfig::Type::kDefault);
  CHECK(c.rope.theta == 10000.0);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK_FALSE(c.qkv_bias);
  CHECK(c.sliding_windows.empty());
  CHECK(c.attention_scale == Approx(0.25));
}

TEST_CASE("rope settings in both config generations") {
  json v4 = llama();
  v4["rope_theta"] = 500000.0;
  v4["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}};
  auto c = parse_hf_config(v4.dump());
  CHECK(c.rope.type == RopeConfig::Type::kLlama3);
  CHECK(c.rope.theta == 500000.0);
  CHECK(c.rope.original_max_positions == 8192);

  json v5 = llama();
  v5["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 1000.0}, {"factor", 2.0}};
  c = parse_hf_config(v5.dump());
  CHECK(c.rope.type == RopeConfig::Type::kLinear);
  CHECK(c.rope.theta == 1000.0);
  CHECK(c.rope.factor == 2.0);
}

TEST_CASE("family specifics: Qwen2 biases and windows, Mistral windows, Llama biases") {
  json qwen = llama();
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen["sliding_window"] = 32;
  qwen["use_sliding_window"] = true;
  qwen["max_window_layers"] = 1;
  auto c = parse_hf_config(qwen.dump());
  CHECK(c.qkv_bias);
  CHECK_FALSE(c.out_bias);
  REQUIRE(c.sliding_windows.size() == 2);
  CHECK_FALSE(c.sliding_windows[0].has_value());
  CHECK(c.sliding_windows[1] == 32);

  qwen["layer_types"] = {"sliding_attention", "full_attention"};
  c = parse_hf_config(qwen.dump());
  CHECK(c.sliding_windows[0] == 32);
  CHECK_FALSE(c.sliding_windows[1].has_value());

  json mistral = llama();
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["sliding_window"] = 16;
  c = parse_hf_config(mistral.dump());
  CHECK(c.sliding_windows == std::vector<std::optional<int64_t>>{16, 16});
  mistral["sliding_window"] = nullptr;
  CHECK(parse_hf_config(mistral.dump()).sliding_windows.empty());

  json biased = llama();
  biased["attention_bias"] = true;
  biased["mlp_bias"] = true;
  c = parse_hf_config(biased.dump());
  CHECK((c.qkv_bias && c.out_bias && c.mlp_bias));
}

TEST_CASE("rotary scaling types resolve their defaults as transformers does") {
  json c = llama();  // head_dim 16, max_position_embeddings 128
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64}};
  RopeConfig r = parse_hf_config(c.dump()).rope;
  CHECK(r.type == RopeConfig::Type::kYarn);
  CHECK(r.rotary_dim == 16);
  CHECK(r.attention_factor == Approx(0.1 * std::log(4.0) + 1.0));
  CHECK((r.beta_fast == 32.0 && r.beta_slow == 1.0 && r.truncate));
  CHECK(parse_hf_config(c.dump()).max_positions == 256);  // 64 * 4: what YaRN is for
  c["rope_scaling"]["mscale"] = 1.0;
  c["rope_scaling"]["mscale_all_dim"] = 1.0;
  CHECK(parse_hf_config(c.dump()).rope.attention_factor == 1.0);

  c = llama();
  c["original_max_position_embeddings"] = 32;  // Phi-3 keeps it beside the parameters
  c["rope_scaling"] = {{"type", "su"}, {"short_factor", std::vector<double>(8, 1.5)}, {"long_factor", std::vector<double>(8, 3.0)}};
  r = parse_hf_config(c.dump()).rope;
  CHECK(r.type == RopeConfig::Type::kLongrope);
  CHECK(r.original_max_positions == 32);
  CHECK(r.factor == 4.0);  // 128 / 32
  CHECK(r.attention_factor == Approx(std::sqrt(1 + std::log(4.0) / std::log(32.0))));
  CHECK((r.short_factors.size() == 8 && r.long_factors[7] == 3.0));

  c = llama();
  c["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  const auto dynamic = parse_hf_config(c.dump());
  CHECK(dynamic.rope.type == RopeConfig::Type::kDynamic);
  CHECK(dynamic.rope.original_max_positions == 128);
  CHECK(dynamic.max_positions == 256);
}

TEST_CASE("SmolLM3's layers without rotary and OLMo 2's norms") {
  json c = llama();
  c["architectures"] = {"SmolLM3ForCausalLM"};
  c["num_hidden_layers"] = 8;
  CHECK(parse_hf_config(c.dump()).rope_layers == std::vector<bool>{true, true, true, false, true, true, true, false});
  c["no_rope_layers"] = {1, 0, 1, 1, 1, 1, 1, 1};
  CHECK(parse_hf_config(c.dump()).rope_layers[1] == false);
  c["no_rope_layers"] = {1, 0};
  expect_invalid(c, "config.no_rope_layers", "8 entries");
  c["no_rope_layers"] = {1, 2, 1, 1, 1, 1, 1, 1};
  expect_invalid(c, "config.no_rope_layers[1]", "2");

  c = llama();
  c["architectures"] = {"Olmo2ForCausalLM"};
  const auto olmo = parse_hf_config(c.dump());
  CHECK((olmo.qk_norm == QkNorm::kWhole && olmo.norm_outputs && olmo.rope_layers.empty()));
}

TEST_CASE("mixtures of experts: Mixtral, Qwen2-MoE and Qwen3-MoE") {
  json c = llama();  // 2 layers
  c["architectures"] = {"MixtralForCausalLM"};
  c["num_local_experts"] = 8;
  c["num_experts_per_tok"] = 2;
  auto moe = parse_hf_config(c.dump()).moe;
  CHECK((moe.num_experts == 8 && moe.top_k == 2 && moe.expert_size == 96 && moe.normalize_top_k && moe.layout == aios::backbone::MoeConfig::Layout::kMixtral));
  CHECK(moe.layers == std::vector<bool>{true, true});
  c["num_experts_per_tok"] = 9;
  expect_invalid(c, "config.num_experts_per_tok", "9");

  c = llama();
  c["architectures"] = {"Qwen3MoeForCausalLM"};
  c["num_experts"] = 4;
  c["num_experts_per_tok"] = 2;
  c["moe_intermediate_size"] = 32;
  c["decoder_sparse_step"] = 2;
  moe = parse_hf_config(c.dump()).moe;
  CHECK((moe.expert_size == 32 && !moe.normalize_top_k && moe.shared_expert_size == 0));
  CHECK(moe.layers == std::vector<bool>{false, true});
  c["decoder_sparse_step"] = 1;
  c["mlp_only_layers"] = {0};
  CHECK(parse_hf_config(c.dump()).moe.layers == std::vector<bool>{false, true});
  c["mlp_only_layers"] = {2};
  expect_invalid(c, "config.mlp_only_layers[0]", "2");

  c["architectures"] = {"Qwen2MoeForCausalLM"};
  c.erase("mlp_only_layers");
  expect_invalid(c, "config.shared_expert_intermediate_size", "missing");
  c["shared_expert_intermediate_size"] = 48;
  c["sliding_window"] = 0;  // as Qwen2-MoE writes it when no layer slides
  c["layer_types"] = {"full_attention", "full_attention"};
  const auto qwen2 = parse_hf_config(c.dump());
  CHECK((qwen2.moe.shared_expert_size == 48 && qwen2.qkv_bias && qwen2.sliding_windows.empty()));
}

TEST_CASE("Gemma configs that predate layer_types, and transformers' defaults") {
  json g = llama();  // 2 layers, head_dim 16
  g["architectures"] = {"Gemma2ForCausalLM"};
  g["num_hidden_layers"] = 4;
  auto c = parse_hf_config(g.dump());
  using W = std::vector<std::optional<int64_t>>;
  CHECK(c.sliding_windows == W{4096, std::nullopt, 4096, std::nullopt});  // every other layer, window 4096
  CHECK((c.attn_logit_softcap == 50.0 && c.final_logit_softcap == 30.0));
  CHECK(c.attention_scale == Approx(1.0 / 16.0));  // query_pre_attn_scalar 256
  g["attn_logit_softcapping"] = nullptr;  // null: no cap
  CHECK(parse_hf_config(g.dump()).attn_logit_softcap == 0.0);
  g["query_pre_attn_scalar"] = 0;
  expect_invalid(g, "config.query_pre_attn_scalar", "> 0");

  json g3 = llama();
  g3["architectures"] = {"Gemma3ForCausalLM"};
  g3["num_hidden_layers"] = 7;
  g3["sliding_window"] = 512;
  c = parse_hf_config(g3.dump());
  CHECK(c.sliding_windows == W{512, 512, 512, 512, 512, std::nullopt, 512});  // pattern 6
  CHECK((c.rope.theta == 1e6 && c.local_rope && c.local_rope->theta == 1e4 && c.final_logit_softcap == 0.0));
  g3["sliding_window_pattern"] = 2;
  CHECK(parse_hf_config(g3.dump()).sliding_windows[1] == std::nullopt);
}

TEST_CASE("Qwen-MoE windows and Phi-3's pretraining length, as their configs define them") {
  json q = llama();
  q["architectures"] = {"Qwen3MoeForCausalLM"};
  q["num_experts"] = 4;
  q["num_experts_per_tok"] = 2;
  q["moe_intermediate_size"] = 32;
  q["sliding_window"] = 8;
  CHECK(parse_hf_config(q.dump()).sliding_windows.empty());  // not asked for
  q["use_sliding_window"] = true;
  CHECK(parse_hf_config(q.dump()).sliding_windows.size() == 2);
  q["architectures"] = {"Qwen2MoeForCausalLM"};
  q["shared_expert_intermediate_size"] = 48;
  q["max_window_layers"] = 1;
  using W = std::vector<std::optional<int64_t>>;
  CHECK(parse_hf_config(q.dump()).sliding_windows == W{8, std::nullopt});  // every other layer below 1

  json phi = llama();
  phi["architectures"] = {"Phi3ForCausalLM"};
  phi["max_position_embeddings"] = 16384;
  phi["rope_scaling"] = {{"type", "longrope"}, {"short_factor", std::vector<double>(8, 1.0)}, {"long_factor", std::vector<double>(8, 2.0)},
                         {"original_max_position_embeddings", 1024}};
  CHECK(parse_hf_config(phi.dump()).rope.original_max_positions == 4096);  // Phi3Config's field wins, default 4096

  json y = llama();
  y["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_slow", -1.0}};
  expect_invalid(y, "config.rope_scaling.beta_fast", "positive");
  y = llama();
  y["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", std::vector<double>(8, 1.0)}, {"long_factor", std::vector<double>(8, 2.0)},
                       {"original_max_position_embeddings", 1}};
  expect_invalid(y, "config.rope_scaling.attention_factor", "finite");
}

TEST_CASE("a GPT-2 config with defaults") {
  const json gpt2 = {{"model_type", "gpt2"}, {"vocab_size", 100}, {"n_embd", 64},
                     {"n_layer", 2},         {"n_head", 4},        {"n_positions", 32}};
  const auto c = parse_hf_config(gpt2.dump());
  CHECK(c.architecture == "GPT2LMHeadModel");
  CHECK(c.family == Family::kGpt2);
  CHECK(c.intermediate_size == 256);
  CHECK(c.activation == Activation::kGeluTanh);
  CHECK(c.tie_word_embeddings);
  CHECK(c.max_positions == 32);
}

TEST_CASE("unknown architectures and unsupported values name their field") {
  json c = llama();
  c["architectures"] = {"FalconForCausalLM"};
  expect_invalid(c, "config.architectures", "FalconForCausalLM");
  c = llama();
  c.erase("architectures");
  c["model_type"] = "bert";
  expect_invalid(c, "config.model_type", "bert");
  c = llama();
  c["rope_scaling"] = {{"rope_type", "ntk-by-parts"}, {"factor", 4.0}};
  expect_invalid(c, "config.rope_scaling.rope_type", "ntk-by-parts");
  c = llama();
  c["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", {1.0, 2.0}}, {"long_factor", {1.0, 2.0}}};
  expect_invalid(c, "config.rope_scaling.short_factor", "8 numbers");
  c = llama();
  c["partial_rotary_factor"] = 0.5;
  expect_invalid(c, "config.partial_rotary_factor", "whole heads");
  c = llama();
  c["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_invalid(c, "config.rope_parameters.low_freq_factor", "missing");
  c = llama();
  c["num_key_value_heads"] = 3;
  expect_invalid(c, "config.num_key_value_heads", "divisor");
  c = llama();
  c["head_dim"] = 15;
  expect_invalid(c, "config.head_dim", "even");
  c = llama();
  c["hidden_size"] = 66;
  expect_invalid(c, "config.hidden_size", "multiple");
  c = llama();
  c["num_hidden_layers"] = -1;
  expect_invalid(c, "config.num_hidden_layers", "-1");
  c = llama();
  c["vocab_size"] = 1.5;
  expect_invalid(c, "config.vocab_size", "integer");
  c = llama();
  c["hidden_act"] = "relu";
  expect_invalid(c, "config.hidden_act", "relu");
  c = llama();
  c["vocab_size"] = int64_t{1} << 40;
  expect_invalid(c, "config.vocab_size", "[1, ");
  c = llama();
  c["layer_types"] = {"full_attention"};
  c["sliding_window"] = 4;
  expect_invalid(c, "config.layer_types", "2 entries");
  json g = {{"model_type", "gpt2"}, {"vocab_size", 100}, {"n_embd", 64}, {"n_layer", 2},
            {"n_head", 4},          {"n_positions", 32}, {"add_cross_attention", true}};
  expect_invalid(g, "config.add_cross_attention", "true");
  CHECK_THROWS_AS(parse_hf_config("not json"), Error);
}

TEST_CASE("special token ids: one or a list, null or negative as none") {
  json c = llama();
  auto parsed = parse_hf_config(c.dump());
  CHECK_FALSE(parsed.bos_id);
  CHECK(parsed.eos_ids.empty());
  CHECK_FALSE(parsed.pad_id);
  c["bos_token_id"] = 1;
  c["eos_token_id"] = {2, 7};
  c["pad_token_id"] = nullptr;
  parsed = parse_hf_config(c.dump());
  CHECK(parsed.bos_id == 1);
  CHECK(parsed.eos_ids == std::vector<int64_t>{2, 7});
  CHECK_FALSE(parsed.pad_id);
  c["eos_token_id"] = 3;
  c["pad_token_id"] = -1;  // what some configs write for "none"
  parsed = parse_hf_config(c.dump());
  CHECK(parsed.eos_ids == std::vector<int64_t>{3});
  CHECK_FALSE(parsed.pad_id);
  c["bos_token_id"] = "<s>";
  expect_invalid(c, "config.bos_token_id", "<s>");
  c["bos_token_id"] = 1;
  c["eos_token_id"] = {2, 2.5};
  expect_invalid(c, "config.eos_token_id[1]", "2.5");
  c["eos_token_id"] = json::array();
  for (int i = 0; i < 1025; ++i) c["eos_token_id"].push_back(i);
  expect_invalid(c, "config.eos_token_id", "1024");
}

TEST_CASE("the public description says what the config says") {
  json c = llama();
  c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  c["sliding_window"] = 8;
  c["eos_token_id"] = 2;
  const aios::ModelInfo info = aios::backbone::describe(parse_hf_config(c.dump()));
  CHECK(info.architecture == "LlamaForCausalLM");
  CHECK(info.family == "llama");
  CHECK(info.norm == "rms_norm");
  CHECK(info.norm_eps == 1e-5);
  CHECK(info.activation == "silu");
  REQUIRE(info.rope);
  CHECK(info.rope->type == "linear");
  CHECK(info.rope->factor == 2.0);
  CHECK(info.sliding_windows == std::vector<std::optional<int64_t>>{8, 8});
  CHECK(info.attention_scale == Approx(0.25));
  CHECK(info.eos_ids == std::vector<int64_t>{2});
  CHECK(info.dtype.empty());  // the backbone that runs the model fills dtype and device

  const json gpt2 = {{"model_type", "gpt2"}, {"vocab_size", 100}, {"n_embd", 64},
                     {"n_layer", 2},         {"n_head", 4},        {"n_positions", 32}};
  const aios::ModelInfo g = aios::backbone::describe(parse_hf_config(gpt2.dump()));
  CHECK(g.family == "gpt2");
  CHECK(g.norm == "layer_norm");
  CHECK(g.activation == "gelu_tanh");
  CHECK_FALSE(g.rope);
  CHECK(g.qkv_bias);
  CHECK(g != info);
  CHECK(g == aios::backbone::describe(parse_hf_config(gpt2.dump())));
}

TEST_CASE("Qwen3-Next family configs: the layer pattern, the DeltaNet's shape, experts, the text tower") {
  json next = llama();
  next["architectures"] = {"Qwen3NextForCausalLM"};
  next["num_hidden_layers"] = 8;
  next["head_dim"] = 16;
  next["linear_num_key_heads"] = 2;
  next["linear_num_value_heads"] = 4;
  next["linear_key_head_dim"] = 8;
  next["linear_value_head_dim"] = 12;
  next["num_experts"] = 4;
  next["num_experts_per_tok"] = 2;
  next["moe_intermediate_size"] = 32;
  next["shared_expert_intermediate_size"] = 48;
  next["mlp_only_layers"] = {1};
  auto c = parse_hf_config(next.dump());
  CHECK(c.family == Family::kQwen3Next);
  CHECK(aios::backbone::has_recurrent_layers(c));
  // Without layer_types, every full_attention_interval-th layer (default 4) attends.
  CHECK(c.delta_net.layers == std::vector<bool>{true, true, true, false, true, true, true, false});
  CHECK(c.delta_net.grouped);
  CHECK(c.delta_net.conv_kernel == 4);
  CHECK(c.rope.rotary_dim == 4);  // a quarter of each head by default
  CHECK(c.qk_norm == QkNorm::kPerHead);
  CHECK(c.moe.shared_expert_size == 48);
  CHECK(c.moe.normalize_top_k);  // norm_topk_prob defaults to true here
  CHECK(c.moe.layers == std::vector<bool>{true, false, true, true, true, true, true, true});

  next["full_attention_interval"] = 2;
  CHECK(parse_hf_config(next.dump()).delta_net.layers == std::vector<bool>{true, false, true, false, true, false, true, false});
  next["layer_types"] = json::array({"full_attention", "linear_attention", "full_attention", "linear_attention",
                                     "full_attention", "linear_attention", "full_attention", "sliding_attention"});
  expect_invalid(next, "config.layer_types", "linear_attention or full_attention");
  next.erase("layer_types");
  next["linear_num_value_heads"] = 3;
  expect_invalid(next, "config.linear_num_value_heads", "multiple of linear_num_key_heads 2");

  // A vision-language checkpoint: its text tower, renamed from model. to model.language_model.
  json vl = {{"architectures", {"Qwen3_5ForConditionalGeneration"}}, {"text_config", llama()}};
  vl["text_config"]["head_dim"] = 16;
  c = parse_hf_config(vl.dump());
  CHECK(c.family == Family::kQwen3Next);
  CHECK_FALSE(c.delta_net.grouped);
  CHECK(c.moe.num_experts == 0);
  CHECK(c.weight_prefix == "model.language_model.");
  CHECK(c.weight_prefix_replaces == "model.");
  vl.erase("text_config");
  expect_invalid(vl, "config.text_config", "language model's config");
}

"""Shared fixtures: tiny random checkpoints of every supported architecture, written by transformers.

Each checkpoint is built once per test session with a fixed seed, saved with save_pretrained (some
sharded), and returned with the transformers model that parity tests compare against.
"""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers

REPO = Path(__file__).resolve().parents[2]
VOCAB = 101
MAX_POSITIONS = 64


@dataclass
class Checkpoint:
    name: str
    path: Path
    reference: transformers.PreTrainedModel  # float32, eager attention


def _llama(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                rms_norm_eps=1e-5, tie_word_embeddings=False)
    base.update(kw)
    return transformers.LlamaConfig(**base)


def _hybrid(**kw):
    """The shape shared by the Qwen3-Next family's tiny checkpoints."""
    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, max_position_embeddings=MAX_POSITIONS, linear_num_key_heads=2, linear_num_value_heads=4,
                linear_key_head_dim=8, linear_value_head_dim=12,
                layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
                pad_token_id=None, bos_token_id=None, eos_token_id=None)
    base.update(kw)
    return base


# Checkpoints whose recurrent layers refuse full [B,T,T] masks (ModelConfig: has_recurrent_layers).
RECURRENT = {"qwen3_next", "qwen3_5", "qwen3_5_moe"}


def _configs():
    return {
        # grouped-query attention, untied head
        "llama_gqa": (transformers.LlamaForCausalLM, _llama(), {}),
        # Llama 3 rope scaling, attention and MLP biases, tied head, written as several shards
        "llama3_bias_tied_sharded": (transformers.LlamaForCausalLM, _llama(
            num_key_value_heads=1, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
            {"max_shard_size": "40KB"}),
        # linear rope scaling, multi-head attention, explicit head_dim different from hidden/heads
        "llama_linear_rope": (transformers.LlamaForCausalLM, _llama(
            num_key_value_heads=4, head_dim=8, rope_scaling={"rope_type": "linear", "factor": 2.0}), {}),
        # YaRN: a ramp between interpolated and kept frequencies, cos and sin scaled (attention factor
        # 1 + 0.1 ln 4); 16 trained positions stretched to 64
        "llama_yarn": (transformers.LlamaForCausalLM, _llama(
            rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}), {}),
        # LongRoPE (Phi-3): per-frequency divisors, the long set for passes reaching past 8 positions
        "llama_longrope": (transformers.LlamaForCausalLM, _llama(
            rope_scaling={"rope_type": "longrope", "original_max_position_embeddings": 8,
                          "short_factor": [1.0 + 0.15 * i for i in range(8)],
                          "long_factor": [1.0 + 0.9 * i for i in range(8)]}), {}),
        # qkv bias, GQA, tied head
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=True), {}),
        # per-head q/k norm, head_dim apart from hidden/heads, sliding windows (shorter than the test
        # sequences) on the layers from max_window_layers on, tied head
        "qwen3_window": (transformers.Qwen3ForCausalLM, transformers.Qwen3Config(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=MAX_POSITIONS,
            use_sliding_window=True, sliding_window=5, max_window_layers=1, tie_word_embeddings=True), {}),
        # sliding window shorter than the test sequences, so the window matters
        "mistral_window": (transformers.MistralForCausalLM, transformers.MistralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            sliding_window=5, head_dim=16), {}),
        # no rotary on every second layer (NoPE), a window of 5 on those, attention biases, tied head
        "smollm3_nope": (transformers.SmolLM3ForCausalLM, transformers.SmolLM3Config(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            no_rope_layer_interval=2, use_sliding_window=True, sliding_window=5, attention_bias=True,
            pad_token_id=None, bos_token_id=None, eos_token_id=None), {}),
        # q/k norm over the whole projection, norms on the attention and MLP outputs, untied head
        "olmo2": (transformers.Olmo2ForCausalLM, transformers.Olmo2Config(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            attention_bias=True, tie_word_embeddings=False, pad_token_id=None, bos_token_id=None,
            eos_token_id=None), {}),
        # packed qkv_proj and gate_up_proj, half of each head rotated, LongRoPE past 8 positions, a
        # window of 5 on every layer
        "phi3": (transformers.Phi3ForCausalLM, transformers.Phi3Config(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            original_max_position_embeddings=8, partial_rotary_factor=0.5, sliding_window=5,
            rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.6, 2.0],
                          "long_factor": [1.0, 2.5, 4.0, 7.0]},
            tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None), {}),
        # top 2 of 4 experts renormalised on layers 0 and 2 (decoder_sparse_step 1, layer 1 in
        # mlp_only_layers, so dense), per-head q/k norm
        "qwen3_moe": (transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
            tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None), {}),
        # top 2 of 4 on every layer (w1/w3/w2 names), a window of 5, sharded
        "mixtral_window": (transformers.MixtralForCausalLM, transformers.MixtralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            num_local_experts=4, num_experts_per_tok=2, sliding_window=5, tie_word_embeddings=False,
            pad_token_id=None, bos_token_id=None, eos_token_id=None), {"max_shard_size": "100KB"}),
        # top 3 of 4 without renormalising, a sigmoid-gated shared expert, experts on every second
        # layer (decoder_sparse_step 2), qkv biases
        "qwen2_moe": (transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            shared_expert_intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS, num_experts=4,
            num_experts_per_tok=3, decoder_sparse_step=2, tie_word_embeddings=False,
            pad_token_id=None, bos_token_id=None, eos_token_id=None), {}),
        # attention sinks (large enough to take a real share), biases everywhere, windows of 5 on layers
        # 0 and 2, YaRN from 16 positions without truncation, top 2 of 4 biased experts with the
        # SwiGLU's clamp at 0.1 (it bites at these weights), untied head
        "gpt_oss": (transformers.GptOssForCausalLM, transformers.GptOssConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=MAX_POSITIONS,
            sliding_window=5, num_local_experts=4, num_experts_per_tok=2, swiglu_limit=0.1,
            rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False, "rope_theta": 150000.0},
            tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None), {}),
        # (1+w) norms around attention and MLP, sqrt(D)-scaled embeddings, per-head q/k norm, windows of 5
        # on the first two layers with their own rotary base, linear scaling on the global one, final
        # logits capped at 0.3 (random weights give small logits: this cap bites), query_pre_attn_scalar
        # apart from head_dim, tied head
        "gemma3": (transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=MAX_POSITIONS,
            sliding_window=5, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            query_pre_attn_scalar=24, final_logit_softcapping=0.3,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            pad_token_id=None, bos_token_id=None, eos_token_id=None), {}),
        # attention scores capped at 0.05 and logits at 0.5 (both bite at these weights), alternating
        # windows of 5, untied head
        "gemma2": (transformers.Gemma2ForCausalLM, transformers.Gemma2Config(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=MAX_POSITIONS,
            sliding_window=5, query_pre_attn_scalar=32, attn_logit_softcapping=0.05, final_logit_softcapping=0.5,
            tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None), {}),
        # Gated DeltaNet on layers 0, 2 and 3 (grouped in_proj_qkvz and in_proj_ba; 4 value heads per
        # 2 key heads), gated attention with a quarter of each head rotated on layer 1, top 2 of 4
        # experts beside a gated shared expert except on layer 1 (mlp_only_layers), untied head
        "qwen3_next": (transformers.Qwen3NextForCausalLM, transformers.Qwen3NextConfig(
            intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
            num_experts_per_tok=2, mlp_only_layers=[1], **_hybrid()), {}),
        # Qwen3.5's separate in_proj_qkv, z, b, a, a dense MLP, tied head
        "qwen3_5": (transformers.Qwen3_5ForCausalLM, transformers.Qwen3_5TextConfig(
            intermediate_size=96, tie_word_embeddings=True, **_hybrid()), {}),
        # experts on every layer, renormalised, beside the shared expert
        "qwen3_5_moe": (transformers.Qwen3_5MoeForCausalLM, transformers.Qwen3_5MoeTextConfig(
            moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2,
            **_hybrid()), {}),
        "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=MAX_POSITIONS), {}),
        # untied head, inverse-layer scaling, exact GELU, sharded
        "gpt2_untied_sharded": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=MAX_POSITIONS,
            tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True,
            activation_function="gelu"), {"max_shard_size": "60KB"}),
    }


ARCHITECTURES = list(_configs())


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    built = {}
    for i, (name, (cls, config, save_kw)) in enumerate(_configs().items()):
        torch.manual_seed(1000 + i)
        model = cls(config).eval()
        # Random init leaves norms at 1 and biases at 0; perturb them so they are exercised. Routers
        # get weights large enough that each token's choice of experts is clear, not a near-tie.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 1 or pname.endswith("_bias"):
                    p.add_(torch.randn_like(p) * 0.1)
                if pname.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight", "mlp.router.weight", "sinks")):
                    p.normal_(0, 1)
        path = root / name
        model.save_pretrained(path, **save_kw)
        reference = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        built[name] = Checkpoint(name, path, reference)
    return built


@pytest.fixture(params=ARCHITECTURES)
def checkpoint(request, checkpoints):
    return checkpoints[request.param]


@pytest.fixture(scope="session")
def default_model():
    """The default model (SmolLM2-135M-Instruct) exported by the set-up; exported here if missing."""
    path = os.environ.get("AIOS_DEFAULT_MODEL") or str(REPO / ".cache/models/smollm2-135m-instruct")
    if not os.path.exists(os.path.join(path, "config.json")):
        subprocess.run([sys.executable, str(REPO / "scripts/default_model.py"), "export", path], check=True)
    return Path(path)


@pytest.fixture(scope="session")
def default_model_gguf():
    """The default model's .gguf file (Q4_1), as the set-up installs it."""
    out = subprocess.run([sys.executable, str(REPO / "scripts/default_model.py"), "gguf"], capture_output=True,
                         text=True, check=True)
    return Path(out.stdout.strip())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test (item.report[when]), so that a fixture's teardown can
    tell whether the test failed and attach what it knows (a host's log, say) to the failure."""
    outcome = yield
    report = outcome.get_result()
    if not hasattr(item, "report"):
        item.report = {}
    item.report[report.when] = report


def attach_on_failure(request, title, text):
    """Adds `text` to the report of the test `request` runs for, if that test failed: pytest then
    prints it with the failure."""
    report = getattr(request.node, "report", {}).get("call")
    if report is not None and report.failed and text:
        report.sections.append((title, text))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still runs in make test)")

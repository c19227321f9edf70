"""GGUF files through aios: the dequantisers against the gguf package, backbones against transformers
and against the same weights as a Hugging Face folder, the tokenizer against transformers' GGUF one."""
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import safetensors.torch
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer

import aios
from tokenizers import pre_tokenizers

from test_tokenizer import CORPUS, sentencepiece_like, trained

REPO = Path(__file__).resolve().parents[2]

# Quantised by the gguf package itself; the K types it cannot quantise get random blocks with valid
# fp16 scales (the byte offsets of the scales in each block).
QUANTISED = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.MXFP4]
RANDOM_BLOCKS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.IQ4_NL: (0,),
                 Q.IQ4_XS: (0,), Q.IQ2_XXS: (0,), Q.IQ2_XS: (0,), Q.IQ2_S: (0,), Q.IQ3_XXS: (0,), Q.IQ3_S: (0,),
                 Q.IQ1_S: (0,), Q.IQ1_M: (), Q.TQ1_0: (52,), Q.TQ2_0: (64,), Q.NVFP4: ()}


def blocks_of(qtype, rows, cols, rng):
    """A [rows, cols] tensor of `qtype` as the bytes a GGUF file stores."""
    if qtype == Q.F32:
        return rng.standard_normal((rows, cols), dtype=np.float32)
    if qtype in QUANTISED:
        return gguf.quants.quantize(rng.standard_normal((rows, cols), dtype=np.float32), qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for offset in RANDOM_BLOCKS[qtype]:
        raw[:, offset:offset + 2] = rng.uniform(-0.1, 0.1, (raw.shape[0], 1)).astype(np.float16).view(np.uint8)
    if qtype == Q.IQ1_M:  # its fp16 scale is spread over the top nibbles of the last four u16
        d = rng.uniform(-0.1, 0.1, raw.shape[0]).astype(np.float16).view(np.uint16)
        for i in range(4):
            raw[:, 49 + 2 * i] = (raw[:, 49 + 2 * i] & 0x0F) | (((d >> (4 * i)) & 0x0F) << 4).astype(np.uint8)
    return raw.reshape(rows, -1)


def write_gguf(path, arch, config, tensors, raw_types=None, extra=None):
    """A GGUF file of `arch` with the Hugging Face `config` values llama.cpp's converter writes."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if "head_dim" in config:
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    for key, value in (extra or {}).items():
        writer.add_key_value(key, *value)
    for name, array in tensors.items():
        writer.add_tensor(name, array, raw_dtype=(raw_types or {}).get(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def permute(w, heads):
    """llama.cpp's converter: interleave the two rotary halves of each head's rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
              "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
              "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up",
              "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
              "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}


def hf_to_gguf_tensors(model, arch):
    """The state dict of a transformers model under GGUF names, as llama.cpp's converter writes it."""
    c = model.config
    out = {}
    for name, value in model.state_dict().items():
        w = value.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = w
        elif name == "model.norm.weight":
            out["output_norm.weight"] = w
        elif name == "lm_head.weight":
            if not c.tie_word_embeddings:
                out["output.weight"] = w
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            if arch == "llama" and module == "self_attn.q_proj":
                w = permute(w, c.num_attention_heads)
            if arch == "llama" and module == "self_attn.k_proj":
                w = permute(w, c.num_key_value_heads)
            if module == "mlp.shared_expert_gate":
                w = w[0]  # [1, D] stored as [D]
            out[f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"] = w
    return out


def saved_without_experts(config, saved):
    """A stand-in for a model whose state dict is the saved tensors outside the experts and routers,
    for hf_to_gguf_tensors."""
    class Saved:
        pass
    Saved.config = config
    Saved.state_dict = staticmethod(lambda: {k: v for k, v in saved.items()
                                             if ".experts." not in k and not k.endswith(".gate.weight")})
    return Saved


def run(backbone, ids):
    out = backbone.forward(backbone.embed(ids))
    return out.hidden, backbone.classify(out.hidden)


@pytest.mark.parametrize("qtype", [Q.F32] + QUANTISED + list(RANDOM_BLOCKS), ids=lambda q: q.name)
def test_dequantisers_match_the_gguf_package(tmp_path, qtype):
    # A one-block model whose token embedding has the type: embed() returns its rows as loaded.
    rng = np.random.default_rng(int(qtype))
    D, V, I = 256, 8, 32
    config = dict(max_position_embeddings=64, hidden_size=D, num_hidden_layers=1, intermediate_size=I,
                  num_attention_heads=2, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)
    tensors = {"token_embd.weight": blocks_of(qtype, V, D, rng), "output_norm.weight": np.ones(D, np.float32),
               "blk.0.attn_norm.weight": np.ones(D, np.float32), "blk.0.ffn_norm.weight": np.ones(D, np.float32)}
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        tensors[f"blk.0.{name}.weight"] = rng.standard_normal((D, D), dtype=np.float32)
    tensors["blk.0.ffn_gate.weight"] = rng.standard_normal((I, D), dtype=np.float32)
    tensors["blk.0.ffn_up.weight"] = rng.standard_normal((I, D), dtype=np.float32)
    tensors["blk.0.ffn_down.weight"] = rng.standard_normal((D, I), dtype=np.float32)
    path = write_gguf(tmp_path / "tiny.gguf", "llama", config, tensors,
                      raw_types={"token_embd.weight": qtype} if qtype != Q.F32 else None)
    backbone = aios.Backbone.load(path)
    assert backbone.config.vocab_size == V and backbone.config.tie_word_embeddings
    got = backbone.embed(torch.arange(V)[None])[0]
    want = torch.from_numpy(gguf.quants.dequantize(tensors["token_embd.weight"], qtype).reshape(V, D).copy())
    assert torch.isfinite(want).all()
    assert torch.equal(got, want)


def test_unsupported_tensor_types_are_named(tmp_path):
    rng = np.random.default_rng(0)
    config = dict(max_position_embeddings=64, hidden_size=256, num_hidden_layers=1, intermediate_size=32,
                  num_attention_heads=2, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)
    raw = rng.integers(0, 256, (8 * 8, gguf.GGML_QUANT_SIZES[Q.Q8_1][1]), dtype=np.uint8)
    path = write_gguf(tmp_path / "q8_1.gguf", "llama", config, {"token_embd.weight": raw.reshape(8, -1)},
                      raw_types={"token_embd.weight": Q.Q8_1})
    with pytest.raises(aios.InvalidArgumentError, match="token_embd.weight.*Q8_1"):
        aios.Backbone.load(path)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(aios.NotFoundError):
        aios.Backbone.load(tmp_path / "missing.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8 + b"\x00" * 8)  # 2^64-1 tensors
    with pytest.raises(aios.DataLossError, match="tensor_count"):
        aios.Backbone.load(tmp_path / "bad.gguf")
    with pytest.raises(aios.DataLossError, match="tensor_count"):
        aios.Tokenizer.load(tmp_path / "bad.gguf")


FIXTURES = REPO / "tests/data/gguf"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corrupt_fixture_files_are_clear_errors(name):
    """The committed fixtures (tests/data/gguf/make_fixtures.py): one valid file, the others broken
    in one way each, every one an error with its code and the offending field, never a crash."""
    path = FIXTURES / name
    if EXPECTED[name] is None:
        backbone = aios.Backbone.load(path)
        hidden, logits = run(backbone, torch.tensor([[1, 2, 3]]))
        assert hidden.shape == (1, 3, 16) and logits.shape == (1, 3, 8) and torch.isfinite(logits).all()
        return
    error = getattr(aios, EXPECTED[name]["error"])
    with pytest.raises(error, match=EXPECTED[name]["match"]):
        aios.Backbone.load(path)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_gguf_equals_the_hf_folder(tmp_path, arch):
    """Random transformers models written as F32 GGUF files the way llama.cpp's converter writes
    them (llama: permuted q/k rows; qwen2: qkv biases, tied head; qwen3: q/k norms, head size apart
    from hidden/heads) load equal to their HF folders."""
    torch.manual_seed(7)
    common = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=5000.0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, tie_word_embeddings=False))
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=True))
    else:
        common["head_dim"] = 24
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, tie_word_embeddings=True))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "hf")
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, common, hf_to_gguf_tensors(model, arch))
    ours, reference = aios.Backbone.load(path), aios.Backbone.load(tmp_path / "hf")
    assert ours.config.tie_word_embeddings == (arch != "llama")
    assert ours.config.head_dim == reference.config.head_dim
    ids = torch.randint(0, 101, (2, 12))
    for got, want in zip(run(ours, ids), run(reference, ids)):
        assert torch.equal(got, want)


def llama3_rope_freqs(theta, head_dim, factor, low, high, original):
    """The per-frequency divisors llama.cpp's converter stores as rope_freqs for Llama 3.1 scaling."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_llama31_gguf_with_rope_freqs_equals_its_source_folder(tmp_path):
    """Llama 3.1+ files carry their rescaled frequencies as the rope_freqs tensor (and no scaling type).
    transformers' GGUF loader drops that tensor, so the file is compared with the folder it was
    converted from, which transformers reads with its llama3 scaling."""
    torch.manual_seed(8)
    common = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500000.0)
    scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **common, tie_word_embeddings=False, rope_scaling={"rope_type": "llama3", **scaling})).eval()
    model.save_pretrained(tmp_path / "hf")
    tensors = hf_to_gguf_tensors(model, "llama")
    tensors["rope_freqs.weight"] = llama3_rope_freqs(500000.0, 16, *scaling.values())
    path = write_gguf(tmp_path / "llama31.gguf", "llama", common, tensors)
    ours = aios.Backbone.load(path)
    assert ours.config.rope.type == "default"  # the divisors stand in for the scaling type
    ids = torch.randint(0, 101, (2, 40))
    hidden, logits = run(ours, ids)
    assert (hidden - run(aios.Backbone.load(tmp_path / "hf"), ids)[0]).abs().max() <= 1e-5
    with torch.no_grad():
        assert (logits - model(ids).logits).abs().max() <= 1e-4
    # Without the divisors the file is a different model: they are what is tested here.
    del tensors["rope_freqs.weight"]
    plain = aios.Backbone.load(write_gguf(tmp_path / "plain.gguf", "llama", common, tensors))
    assert (run(plain, ids)[1] - logits).abs().max() > 1e-3
    # Divisors of the wrong count or value are named.
    tensors["rope_freqs.weight"] = np.ones(5, dtype=np.float32)
    with pytest.raises(aios.DataLossError, match="rope_freqs.weight"):
        aios.Backbone.load(write_gguf(tmp_path / "short.gguf", "llama", common, tensors))
    tensors["rope_freqs.weight"] = -np.ones(8, dtype=np.float32)
    with pytest.raises(aios.DataLossError, match="rope_freqs.weight.*positive"):
        aios.Backbone.load(write_gguf(tmp_path / "negative.gguf", "llama", common, tensors))


def test_phi3_gguf_equals_its_source_folder(checkpoints, tmp_path):
    """A Phi-3 file as llama.cpp's converter writes it: packed qkv and gate_up tensors, the rotated
    channels as rope.dimension_count, the window, and LongRoPE's factors as two tensors. transformers'
    GGUF loader reads none of the last three, so the file is compared with its source folder."""
    checkpoint = checkpoints["phi3"]
    model, c = checkpoint.reference, checkpoint.reference.config
    rope = c.rope_parameters
    common = dict(max_position_embeddings=c.max_position_embeddings, hidden_size=c.hidden_size,
                  num_hidden_layers=c.num_hidden_layers, intermediate_size=c.intermediate_size,
                  num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                  rope_theta=rope["rope_theta"], rms_norm_eps=c.rms_norm_eps)
    tensors = hf_to_gguf_tensors(model, "phi3")
    tensors["rope_factors_long.weight"] = np.array(rope["long_factor"], dtype=np.float32)
    tensors["rope_factors_short.weight"] = np.array(rope["short_factor"], dtype=np.float32)
    U32, F32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    extra = {"phi3.rope.dimension_count": (8, U32), "phi3.attention.sliding_window": (5, U32),
             "phi3.rope.scaling.original_context_length": (8, U32),
             "phi3.rope.scaling.attn_factor": (float((1 + np.log(8) / np.log(8)) ** 0.5), F32)}
    ours = aios.Backbone.load(write_gguf(tmp_path / "phi3.gguf", "phi3", common, tensors, extra=extra))
    folder = aios.Backbone.load(checkpoint.path)
    assert (ours.config.rope.rotary_dim, ours.config.sliding_windows) == (8, [5, 5, 5])
    ids = torch.randint(0, 101, (2, 12))  # past the 8 trained positions: the long factors
    for got, want in zip(run(ours, ids), run(folder, ids)):
        assert (got - want).abs().max() <= 1e-5
    del tensors["rope_factors_short.weight"]
    with pytest.raises(aios.DataLossError, match="rope_factors"):
        aios.Backbone.load(write_gguf(tmp_path / "half.gguf", "phi3", common, tensors, extra=extra))


def stacked_experts(config, saved, tensors):
    """Adds each block's experts, stacked into the [E,...] tensors GGUF files store (ffn_*_exps), and
    its router (ffn_gate_inp), from the checkpoint as saved, as llama.cpp's converter does."""
    out = dict(tensors)
    mixtral = config.model_type == "mixtral"
    block, names = ("block_sparse_moe", ("w1", "w3", "w2")) if mixtral else ("mlp", ("gate_proj", "up_proj", "down_proj"))
    experts = config.num_local_experts if mixtral else config.num_experts
    for i in range(config.num_hidden_layers):
        out[f"blk.{i}.ffn_gate_inp.weight"] = saved[f"model.layers.{i}.{block}.gate.weight"].numpy()
        for name, gguf_name in zip(names, ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")):
            out[f"blk.{i}.{gguf_name}.weight"] = np.stack(
                [saved[f"model.layers.{i}.{block}.experts.{e}.{name}.weight"].numpy() for e in range(experts)])
    return out


@pytest.mark.parametrize("arch", ["qwen3moe", "mixtral", "qwen2moe"])
def test_mixture_of_experts_gguf_equals_the_hf_folder(tmp_path, arch):
    """Qwen3-MoE (qwen3moe), Mixtral (llama with experts: permuted q/k rows) and Qwen2-MoE (qwen2moe:
    the shared expert as ffn_*_shexp, its gate squeezed to [D] as llama.cpp stores it) with their
    experts stacked as GGUF files store them load equal to their folders; routing comes back the
    same. (transformers' GGUF loader reads no expert widths for qwen2moe, so folders are the anchor.)"""
    torch.manual_seed(9)
    common = dict(vocab_size=101, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0)
    if arch == "mixtral":
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(
            **common, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False))
        extra = {"llama.expert_count": (4, gguf.GGUFValueType.UINT32), "llama.expert_used_count": (2, gguf.GGUFValueType.UINT32)}
    elif arch == "qwen2moe":
        model = transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
            **common, moe_intermediate_size=32, shared_expert_intermediate_size=40, num_experts=4,
            num_experts_per_tok=2, tie_word_embeddings=False))
        extra = {f"{arch}.{k}": (v, gguf.GGUFValueType.UINT32)
                 for k, v in (("expert_count", 4), ("expert_used_count", 2), ("expert_feed_forward_length", 32),
                              ("expert_shared_feed_forward_length", 40))}
    else:
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            **common, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
            tie_word_embeddings=False))
        extra = {f"{arch}.{k}": (v, gguf.GGUFValueType.UINT32)
                 for k, v in (("expert_count", 4), ("expert_used_count", 2), ("expert_feed_forward_length", 32))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("mlp.gate.weight"):
                p.normal_(0, 1)
    model.save_pretrained(tmp_path / "hf")
    gguf_arch = "llama" if arch == "mixtral" else arch
    saved = safetensors.torch.load_file(tmp_path / "hf" / "model.safetensors")
    tensors = stacked_experts(model.config, saved, hf_to_gguf_tensors(saved_without_experts(model.config, saved), gguf_arch))
    path = write_gguf(tmp_path / f"{arch}.gguf", gguf_arch, common, tensors, extra=extra)
    ours, folder = aios.Backbone.load(path), aios.Backbone.load(tmp_path / "hf")
    assert ours.config.architecture == folder.config.architecture
    ids = torch.randint(0, 101, (2, 12))
    for got, want in zip(run(ours, ids), run(folder, ids)):
        assert torch.equal(got, want)
    routed = [ours.forward(ours.embed(ids), routing=True).routing, folder.forward(folder.embed(ids), routing=True).routing]
    assert all(torch.equal(a, b) for a, b in zip(*routed))


def gguf_of_checkpoint(checkpoint, arch, expert_type=None):
    """A llama.cpp-style GGUF file's keys and tensors for a conftest Gemma or gpt-oss checkpoint: Gemma's
    norms stored as 1 + w, post_attention_layernorm as post_attention_norm, gpt-oss's interleaved
    gate/up experts split into ffn_gate_exps and ffn_up_exps (optionally of `expert_type`)."""
    c = checkpoint.reference.config
    saved = safetensors.torch.load_file(checkpoint.path / "model.safetensors")
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)
    common = dict(max_position_embeddings=c.max_position_embeddings, hidden_size=c.hidden_size,
                  num_hidden_layers=c.num_hidden_layers, intermediate_size=c.intermediate_size,
                  num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                  rope_theta=rope["rope_theta"], rms_norm_eps=c.rms_norm_eps, head_dim=c.head_dim)
    U32, F32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    extra = {f"{arch}.attention.sliding_window": (c.sliding_window, U32),
             f"{arch}.attention.sliding_window_pattern": ([t == "sliding_attention" for t in c.layer_types],
                                                          gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL)}
    if rope["rope_type"] != "default":
        extra[f"{arch}.rope.scaling.type"] = (rope["rope_type"], gguf.GGUFValueType.STRING)
        extra[f"{arch}.rope.scaling.factor"] = (rope["factor"], F32)
    if "original_max_position_embeddings" in rope:
        extra[f"{arch}.rope.scaling.original_context_length"] = (rope["original_max_position_embeddings"], U32)
    if arch == "gpt-oss":
        extra.update({f"{arch}.expert_count": (c.num_local_experts, U32),
                      f"{arch}.expert_used_count": (c.num_experts_per_tok, U32),
                      f"{arch}.expert_feed_forward_length": (c.intermediate_size, U32),
                      f"{arch}.swiglu_clamp_exp": ([c.swiglu_limit] * c.num_hidden_layers, gguf.GGUFValueType.ARRAY,
                                                   F32)})
    names = dict(GGUF_NAMES, post_attention_layernorm="post_attention_norm", pre_feedforward_layernorm="ffn_norm",
                 post_feedforward_layernorm="post_ffw_norm")
    tensors, types = {}, {}
    for name, value in saved.items():
        w = value.float().numpy()
        if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                   "lm_head.weight": "output.weight"}[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            if rest == "self_attn.sinks":
                out = f"blk.{layer}.attn_sinks.weight"
            elif rest.startswith("mlp.router."):
                out = f"blk.{layer}.ffn_gate_inp.{rest.rsplit('.', 1)[1]}"
            elif rest == "mlp.experts.gate_up_proj":  # [E, D, 2I], gate and up interleaved
                for half, gguf_name in ((0, "ffn_gate_exps"), (1, "ffn_up_exps")):
                    tensors[f"blk.{layer}.{gguf_name}.weight"] = np.ascontiguousarray(w[..., half::2].swapaxes(1, 2))
                continue
            elif rest == "mlp.experts.gate_up_proj_bias":
                tensors[f"blk.{layer}.ffn_gate_exps.bias"] = np.ascontiguousarray(w[..., 0::2])
                tensors[f"blk.{layer}.ffn_up_exps.bias"] = np.ascontiguousarray(w[..., 1::2])
                continue
            elif rest == "mlp.experts.down_proj":  # [E, I, D]
                tensors[f"blk.{layer}.ffn_down_exps.weight"] = np.ascontiguousarray(w.swapaxes(1, 2))
                continue
            elif rest == "mlp.experts.down_proj_bias":
                out = f"blk.{layer}.ffn_down_exps.bias"
            else:
                module, kind = rest.rsplit(".", 1)
                out = f"blk.{layer}.{names[module]}.{kind}"
        if arch.startswith("gemma") and out.endswith("norm.weight"):
            w = w + 1
        tensors[out] = w
    if expert_type is not None:
        for name in [n for n in tensors if n.endswith("_exps.weight")]:
            tensors[name] = gguf.quants.quantize(tensors[name], expert_type)
            types[name] = expert_type
    return common, extra, tensors, types


@pytest.mark.parametrize("name, arch", [("gemma2", "gemma2"), ("gemma3", "gemma3"), ("gpt_oss", "gpt-oss")])
def test_gemma_and_gpt_oss_gguf_equal_their_source_folders(checkpoints, tmp_path, name, arch):
    """Files as llama.cpp's converter writes them. transformers' GGUF loader reads neither the Gemma
    attention scale nor the layer pattern nor gpt-oss's experts as llama.cpp stores them, so each
    file is compared with the folder it was converted from."""
    checkpoint = checkpoints[name]
    c = checkpoint.reference.config
    common, extra, tensors, types = gguf_of_checkpoint(checkpoint, arch)
    F32 = gguf.GGUFValueType.FLOAT32
    if arch.startswith("gemma"):
        extra[f"{arch}.attention.scale"] = (c.query_pre_attn_scalar ** -0.5, F32)
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(c, key, None):
                extra[f"{arch}.{key}"] = (getattr(c, key), F32)
    path = write_gguf(tmp_path / f"{name}.gguf", arch, common, tensors, extra=extra)
    ours, folder = aios.Backbone.load(path), aios.Backbone.load(checkpoint.path)
    assert ours.config.architecture == folder.config.architecture
    assert ours.config.sliding_windows == folder.config.sliding_windows
    ids = torch.randint(0, 101, (2, 12))
    for got, want in zip(run(ours, ids), run(folder, ids)):
        assert (got - want).abs().max() <= 1e-5
    if arch.startswith("gemma"):
        # Without attention.scale, llama.cpp's rule: 1/sqrt(head_dim) below the 27B models.
        del extra[f"{arch}.attention.scale"]
        plain = aios.Backbone.load(write_gguf(tmp_path / "plain.gguf", arch, common, tensors, extra=extra))
        assert plain.config.attention_scale == pytest.approx(c.head_dim ** -0.5)
    else:
        # The experts as MXFP4, as released gpt-oss files store them, expanded at load: equal to the
        # same file with the experts dequantised by the gguf package.
        _, _, quantised, types = gguf_of_checkpoint(checkpoint, arch, expert_type=gguf.GGMLQuantizationType.MXFP4)
        mxfp4 = aios.Backbone.load(write_gguf(tmp_path / "mxfp4.gguf", arch, common, quantised, types, extra),
                                   weights="expanded")
        expanded = {n: gguf.quants.dequantize(t, types[n]) if n in types else t for n, t in quantised.items()}
        expanded = aios.Backbone.load(write_gguf(tmp_path / "expanded.gguf", arch, common, expanded, extra=extra))
        for got, want in zip(run(mxfp4, ids), run(expanded, ids)):
            assert torch.equal(got, want)


@pytest.fixture(scope="module")
def default_gguf():
    """The default model's .gguf file, located by the script that also names the package to install."""
    result = subprocess.run([sys.executable, str(REPO / "scripts/default_model.py"), "gguf"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.fail(result.stderr.strip())
    return Path(result.stdout.strip())


@pytest.mark.slow
def test_default_gguf_matches_transformers_and_the_hf_folder(default_gguf, default_model):
    backbone = aios.Backbone.load(default_gguf)
    assert backbone.config.architecture == "LlamaForCausalLM"
    reference = AutoModelForCausalLM.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name,
                                                     dtype=torch.float32, attn_implementation="eager").eval()
    torch.manual_seed(0)
    ids = torch.randint(0, backbone.config.vocab_size, (2, 16))
    with torch.no_grad():
        ref = reference(ids, output_hidden_states=True)
    hidden, logits = run(backbone, ids)
    assert (hidden - ref.hidden_states[-1]).abs().max().item() <= 1e-4
    assert (logits - ref.logits).abs().max().item() <= 1e-4
    # The exported folder holds transformers' dequantisation of the same file: the same numbers when
    # expanded; kept stored (the default), the same up to summation order.
    assert backbone.config.weights == "stored"
    folder_hidden, folder_logits = run(aios.Backbone.load(default_model), ids)
    expanded_hidden, expanded_logits = run(aios.Backbone.load(default_gguf, weights="expanded"), ids)
    assert torch.equal(expanded_hidden, folder_hidden) and torch.equal(expanded_logits, folder_logits)
    for got, want in ((hidden, folder_hidden), (logits, folder_logits)):
        assert ((got - want).norm() / want.norm()).item() <= 1e-5


@pytest.mark.slow
def test_default_gguf_tokenizer_matches_transformers(default_gguf):
    ours = aios.Tokenizer.load(default_gguf)
    reference = AutoTokenizer.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)
    assert ours.vocab_size == len(reference)
    for text in CORPUS:
        ids = reference.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == reference.decode(ids), text
    assert ours.chat_template == reference.chat_template and "<|im_start|>" in ours.chat_template


def test_gguf_tokenizer_options_match_transformers(tmp_path):
    """A small byte-level BPE written as GGUF metadata: the llama-bpe split pattern, BOS added, a
    user-defined token, control tokens, a token spelled outside the byte alphabet."""
    spec = json.loads(trained(tmp_path, "bpe", pre_tokenizers.ByteLevel()).read_text())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    tokens += ["<think>", "é x"]  # user-defined; a plain token in the file's own spelling
    types = [3 if t.startswith("<|") else 1 for t in tokens[:-2]] + [4, 1]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    config = dict(max_position_embeddings=64, hidden_size=64, num_hidden_layers=1, intermediate_size=32,
                  num_attention_heads=2, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)
    S, I32, B, A = gguf.GGUFValueType.STRING, gguf.GGUFValueType.INT32, gguf.GGUFValueType.BOOL, gguf.GGUFValueType.ARRAY
    extra = {"tokenizer.ggml.model": ("gpt2", S), "tokenizer.ggml.pre": ("llama-bpe", S),
             "tokenizer.ggml.tokens": (tokens, A, S), "tokenizer.ggml.token_type": (types, A, I32),
             "tokenizer.ggml.merges": (merges, A, S), "tokenizer.ggml.bos_token_id": (1, gguf.GGUFValueType.UINT32),
             "tokenizer.ggml.eos_token_id": (2, gguf.GGUFValueType.UINT32), "tokenizer.ggml.add_bos_token": (True, B),
             "tokenizer.chat_template": ("{{ messages }}", S)}
    path = write_gguf(tmp_path / "tok.gguf", "llama", config,
                      {"token_embd.weight": np.zeros((len(tokens), 64), np.float32)}, extra=extra)
    ours = aios.Tokenizer.load(path)
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tok.gguf")
    assert ours.chat_template == "{{ messages }}"
    for text in CORPUS + ["<think>a thought</think> é x", "x = 12345678 + 3"]:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False), text


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3"])
@pytest.mark.parametrize("with_merges", [True, False], ids=["merges", "scores"])
def test_sentencepiece_gguf_tokenizer_matches_transformers(tmp_path, with_merges, arch):
    """A Llama-2-style vocabulary (characters, byte fallback) as `llama` tokenizer metadata: with its
    merges, or with scores only, from which both sides recover the merges. Phi-3 files prepend the
    space in a normalizer; Gemma files split on spaces, store runs of spaces as real spaces (user
    tokens) and rank recovered merges by file order, not by their scores (shuffled here)."""
    spec = json.loads(sentencepiece_like(tmp_path, "sp", pre_tokenizer=pre_tokenizers.Metaspace()).read_text())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    scores = [-float(i) for i in range(len(tokens))]
    if arch == "gemma3":
        tokens += ["  ", "   ", "\u2581\u2581\u2581\u2581"]
        scores = list(np.random.default_rng(0).permutation(len(tokens)).astype(float))
    # llama.cpp's types: 2 unknown, 3 control, 4 user-defined, 6 byte, 1 the rest
    types = [2 if t == "<unk>" else 3 if t in ("<s>", "</s>") else 4 if t.startswith("<|") or not t.strip() else
             6 if t.startswith("<0x") else 1 for t in tokens]
    V = gguf.GGUFValueType
    extra = {"tokenizer.ggml.model": ("llama", V.STRING), "tokenizer.ggml.tokens": (tokens, V.ARRAY, V.STRING),
             "tokenizer.ggml.scores": (scores, V.ARRAY, V.FLOAT32),
             "tokenizer.ggml.token_type": (types, V.ARRAY, V.INT32), "tokenizer.ggml.bos_token_id": (1, V.UINT32),
             "tokenizer.ggml.eos_token_id": (2, V.UINT32), "tokenizer.ggml.unknown_token_id": (0, V.UINT32)}
    if with_merges:
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        extra["tokenizer.ggml.merges"] = (merges, V.ARRAY, V.STRING)
    config = dict(max_position_embeddings=64, hidden_size=64, num_hidden_layers=1, intermediate_size=32,
                  num_attention_heads=2, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)
    write_gguf(tmp_path / "sp.gguf", arch, config, {"token_embd.weight": np.zeros((len(tokens), 64), np.float32)},
               extra=extra)
    ours = aios.Tokenizer.load(tmp_path / "sp.gguf")
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    for text in CORPUS:
        ids = reference.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == reference.decode(ids), text


def test_gguf_tokenizer_errors_name_the_key(tmp_path):
    config = dict(max_position_embeddings=64, hidden_size=64, num_hidden_layers=1, intermediate_size=32,
                  num_attention_heads=2, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)
    S, A, U32 = gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32
    base = {"tokenizer.ggml.tokens": (["a", "b"], A, S)}
    cases = [({"tokenizer.ggml.model": ("t5", S)}, aios.InvalidArgumentError, "tokenizer.ggml.model"),
             ({"tokenizer.ggml.model": ("llama", S)}, aios.DataLossError, "tokenizer.ggml.scores"),
             ({"tokenizer.ggml.model": ("gpt2", S), "tokenizer.ggml.bos_token_id": (7, U32)}, aios.DataLossError,
              "bos_token_id"),
             ({"tokenizer.ggml.model": ("gpt2", S), "tokenizer.ggml.token_type": ([1], A, U32)}, aios.DataLossError,
              "token_type"),
             ({}, aios.DataLossError, "tokenizer.ggml.model"),
             # GGUF strings are UTF-8; a SentencePiece token or a merge is taken as written, so
             # other bytes are refused (found by fuzz_gguf: they escaped as a JSON library error).
             ({"tokenizer.ggml.model": ("llama", S), "tokenizer.ggml.tokens": (["a", b"\xbd"], A, S),
               "tokenizer.ggml.scores": ([0.0, 0.0], A, gguf.GGUFValueType.FLOAT32)}, aios.DataLossError,
              "token 1 is not UTF-8"),
             ({"tokenizer.ggml.model": ("gpt2", S), "tokenizer.ggml.merges": (["a b", b"a \xc0\xa1"], A, S)},
              aios.DataLossError, "merge 1 is not UTF-8"),
             # The same for a byte-level token: an end-of-sequence token that is not UTF-8 went into
             # the post-processor as written (found by fuzz_gguf, as a JSON library error again).
             ({"tokenizer.ggml.model": ("gpt2", S), "tokenizer.ggml.tokens": (["a", b"<un\xd0>"], A, S),
               "tokenizer.ggml.eos_token_id": (1, U32), "tokenizer.ggml.add_eos_token": (True, gguf.GGUFValueType.BOOL)},
              aios.DataLossError, "token 1 is not UTF-8")]
    for i, (extra, error, key) in enumerate(cases):
        path = write_gguf(tmp_path / f"t{i}.gguf", "llama", config, {}, extra={**base, **extra})
        with pytest.raises(error, match=key):
            aios.Tokenizer.load(path)


def test_a_gguf_backbone_brings_its_tokenizer_chat_template_and_extensions(default_gguf, default_model):
    backbone = aios.Backbone.load(default_gguf)
    assert backbone.tokenizer is not None and "<|im_start|>" in backbone.chat_template
    folder = aios.Backbone.load(default_model)
    # The file's metadata (special tokens from tokenizer.ggml.*) describes the model its export does,
    # held the same way once expanded.
    assert aios.Backbone.load(default_gguf, weights="expanded").config == folder.config
    assert backbone.config.eos_ids == [2] and backbone.config.weights == "stored"
    assert backbone.generate_text("What is the capital of France?", chat=True, max_new_tokens=12) == \
        folder.generate_text("What is the capital of France?", chat=True, max_new_tokens=12)
    ext = backbone.extend(["<sox>"])
    assert ext.tokenizer.encode("a<sox>", add_special_tokens=False)[-1] == backbone.config.vocab_size
    with pytest.raises(aios.AlreadyExistsError):
        backbone.extend(["<|im_end|>"])


def test_the_cli_runs_on_the_gguf_file(default_gguf, default_model):
    cli = Path(sys.executable).parent / "aios"
    info = subprocess.run([str(cli), "info", str(default_gguf)], capture_output=True, text=True, check=True).stdout
    assert "LlamaForCausalLM" in info and "134,515,008" in info
    prompt = ["What is the capital of France?", "--chat", "--max-new-tokens", "12"]
    replies = [subprocess.run([str(cli), "generate", str(model)] + prompt, capture_output=True, text=True,
                              check=True).stdout for model in (default_gguf, default_model)]
    assert "Paris" in replies[0] and replies[0] == replies[1]

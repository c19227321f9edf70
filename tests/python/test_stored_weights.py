"""Weights kept as a GGUF file stores them (weights="stored") or quantised at load (weights="int8",
"int4"): every call equals the same model with those values expanded to the compute dtype, up to
summation order; the default model's memory stays near its file's size (stored) or the quantised
size (int8, int4); corrupt and unsupported tensors are coded errors naming the tensor."""
import copy
import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

import aios
from test_gguf import QUANTISED, RANDOM_BLOCKS, blocks_of, write_gguf

REL = 1e-5
D, I, V, LAYERS, HEADS, KV_HEADS = 256, 512, 96, 2, 4, 2
CONFIG = dict(max_position_embeddings=128, hidden_size=D, num_hidden_layers=LAYERS, intermediate_size=I,
              num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rope_theta=10000.0, rms_norm_eps=1e-5)
# The types the issue names first, then every other type aios decodes.
TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.F16, Q.BF16, Q.Q2_K, Q.Q3_K, Q.IQ4_NL,
         Q.IQ4_XS, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ1_S, Q.IQ1_M, Q.TQ1_0, Q.TQ2_0, Q.MXFP4,
         Q.NVFP4]


def rel(got, want):
    return ((got - want).norm() / want.norm()).item()


def as_exact(got, want, truth):
    """got (stored) equals want (expanded) within REL. Gradients of these small random models carry
    float32 rounding of about 1e-5 whichever order their products sum in (the expanded model itself
    moves that much with the loss's chunk size), so where got and want differ more, got must lie
    within 2 REL of the float64 result, or no farther from it than twice want does."""
    got, want, truth = got.double(), want.double(), truth.double()
    return rel(got, want) <= REL or rel(got, truth) <= 2 * max(REL, rel(want, truth))


def matrix(qtype, rows, cols, rng):
    """[rows, cols] of `qtype` with values of a trained model's size (at most about 0.2): the gguf
    package's quantisation where it has one, else random blocks whose scales are made small."""
    if qtype in (Q.F16, Q.BF16):
        return 0.05 * rng.standard_normal((rows, cols), dtype=np.float32)
    if qtype in QUANTISED:
        return gguf.quants.quantize(0.05 * rng.standard_normal((rows, cols), dtype=np.float32), qtype)
    raw = blocks_of(qtype, rows, cols, rng)
    blocks = raw.reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])
    if qtype == Q.NVFP4:  # four E4M3 scales of 2^-7 .. 2^-6: values up to 12 * 2^-7
        blocks[:, :4] = 0x08 | rng.integers(0, 8, (blocks.shape[0], 4), dtype=np.uint8)
    elif qtype == Q.IQ1_M:  # its fp16 scale lies in the top nibbles of the last four u16
        d = rng.uniform(-0.004, 0.004, blocks.shape[0]).astype(np.float16).view(np.uint16)
        for i in range(4):
            blocks[:, 49 + 2 * i] = (blocks[:, 49 + 2 * i] & 0x0F) | (((d >> (4 * i)) & 0x0F) << 4).astype(np.uint8)
    else:
        factor = 0.2 / float(np.abs(gguf.quants.dequantize(raw, qtype)).max())
        for offset in RANDOM_BLOCKS[qtype]:
            scale = blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float32) * min(factor, 1.0)
            blocks[:, offset:offset + 2] = scale.astype(np.float16).view(np.uint8)
    return raw


def tiny_gguf(path, qtype, seed=0):
    """A two-block Llama GGUF model whose every matrix (embedding and output head too) is of `qtype`."""
    rng = np.random.default_rng(seed)
    hd = D // HEADS
    shapes = {"token_embd.weight": (V, D), "output.weight": (V, D)}
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_q.weight": (HEADS * hd, D), f"blk.{i}.attn_k.weight": (KV_HEADS * hd, D),
                       f"blk.{i}.attn_v.weight": (KV_HEADS * hd, D), f"blk.{i}.attn_output.weight": (D, HEADS * hd),
                       f"blk.{i}.ffn_gate.weight": (I, D), f"blk.{i}.ffn_up.weight": (I, D),
                       f"blk.{i}.ffn_down.weight": (D, I)})
    tensors, raw_types = {}, {}
    for name, (rows, cols) in shapes.items():
        tensors[name] = matrix(qtype, rows, cols, rng)
        if qtype not in (Q.F16, Q.BF16):
            assert 0 < np.abs(gguf.quants.dequantize(tensors[name], qtype)).max() <= 0.5, name
        if qtype not in (Q.F16, Q.BF16):
            raw_types[name] = qtype
        elif qtype == Q.F16:
            tensors[name] = tensors[name].astype(np.float16)
        else:
            tensors[name] = gguf.quants.quantize(tensors[name], Q.BF16)
            raw_types[name] = Q.BF16
    tensors["output_norm.weight"] = np.ones(D, np.float32)
    for i in range(LAYERS):
        tensors[f"blk.{i}.attn_norm.weight"] = 1 + 0.1 * rng.standard_normal(D, dtype=np.float32)
        tensors[f"blk.{i}.ffn_norm.weight"] = 1 + 0.1 * rng.standard_normal(D, dtype=np.float32)
    return write_gguf(path, "llama", CONFIG, tensors, raw_types=raw_types)


@pytest.fixture(scope="module", params=TYPES, ids=lambda q: q.name)
def pair(request, tmp_path_factory):
    path = tiny_gguf(tmp_path_factory.mktemp("stored") / "tiny.gguf", request.param)
    return (aios.Backbone.load(path, weights="stored"), aios.Backbone.load(path, weights="expanded"),
            aios.Backbone.load(path, dtype="float64", weights="expanded"))


def check_every_call(stored, expanded, exact):
    """Every call of `stored` equals `expanded` (the same values, expanded), with float64 `exact` as the
    judge of gradients (as_exact)."""
    V, D, L = stored.config.vocab_size, stored.config.hidden_size, stored.config.num_layers
    f64 = lambda t: t.double() if torch.is_tensor(t) and t.is_floating_point() else t
    torch.manual_seed(0)
    # 2x5 rows run the fused kernel, 3x30 the tiled products, 2x40 the chunked ones.
    for B, T in ((2, 5), (3, 30), (2, 40)):
        ids = torch.randint(0, V, (B, T))
        assert torch.equal(stored.embed(ids), expanded.embed(ids))  # decoded bit for bit
        latents = expanded.embed(ids)
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[-1, :2] = False  # left padding
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        got = stored.forward(latents, mask=mask, positions=positions, layers=[1, L])
        want = expanded.forward(latents, mask=mask, positions=positions, layers=[1, L])
        assert rel(got.hidden[mask], want.hidden[mask]) <= REL
        for g, w in zip(got.layers, want.layers):
            assert rel(g[mask], w[mask]) <= REL
        assert rel(stored.classify(got.hidden)[mask], expanded.classify(want.hidden)[mask]) <= REL

        g_logits, g_hidden = torch.randn(B, T, V) * mask[..., None], torch.randn(B, T, D) * mask[..., None]
        for kwargs in ({"grad_logits": g_logits}, {"grad_hidden": g_hidden, "grad_logits": g_logits}):
            want_grad = expanded.vjp(latents, mask=mask, positions=positions, **kwargs)
            truth = exact.vjp(f64(latents), mask=mask, positions=positions, **{k: f64(v) for k, v in kwargs.items()})
            assert as_exact(stored.vjp(latents, mask=mask, positions=positions, **kwargs), want_grad, truth)
            kept = stored.forward(latents, mask=mask, positions=positions, keep=True)
            assert as_exact(stored.vjp(kept.handle, **kwargs), want_grad, truth)
            stored.release(kept.handle)

        targets = torch.randint(0, V, (B, T)).where(mask, -100)
        teacher = torch.randn(B, T, V)
        for kwargs in ({"targets": targets, "chunk_tokens": 7}, {"teacher_logits": teacher, "temperature": 2.0}):
            got_loss = stored.forward_backward(latents, mask=mask, **kwargs)
            want_loss = expanded.forward_backward(latents, mask=mask, **kwargs)
            truth = exact.forward_backward(f64(latents), mask=mask, **{k: f64(v) for k, v in kwargs.items()})
            assert as_exact(got_loss.loss, want_loss.loss, truth.loss), (B, T, kwargs.keys())
            assert as_exact(got_loss.grad_latents, want_loss.grad_latents, truth.grad_latents), (
                B, T, kwargs.keys(), rel(got_loss.grad_latents.double(), truth.grad_latents),
                rel(want_loss.grad_latents.double(), truth.grad_latents))

    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(1))
    got = stored.generate(stored.embed(ids), max_new_tokens=12)
    want = expanded.generate(expanded.embed(ids), max_new_tokens=12)
    assert torch.equal(got.ids, want.ids)


def test_every_call_equals_the_expanded_model(pair):
    check_every_call(*pair)


def fake_quantise(w, weights, group):
    """The values aios keeps of a float matrix [rows, cols] loaded with weights="int8" or "int4"
    (docs/latent_api.md, "Weight storage"), computed here independently."""
    w = w.float()
    if weights == "int8":  # symmetric, one scale per row
        s = w.abs().amax(1, keepdim=True) / 127
        return torch.where(s > 0, torch.round(w / s), 0).clamp(-127, 127) * s
    out = torch.empty_like(w)
    for start in range(0, w.shape[1], group):  # asymmetric, a scale and minimum per group of a row
        g = w[:, start:start + group]
        lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
        s = (hi - lo) / 15
        out[:, start:start + group] = torch.where(s > 0, torch.round((g - lo) / s), 0).clamp(0, 15) * s + lo
    return out


def fake_quantised_checkpoint(checkpoint, weights, group, path):
    """checkpoint's model with every projection and table aios quantises replaced by its quantised
    values, saved as float32: what the quantised load must equal."""
    from transformers.pytorch_utils import Conv1D
    model = copy.deepcopy(checkpoint.reference)
    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # [E, out, in] each
                for e in range(p.shape[0]):
                    p[e] = fake_quantise(p[e], weights, group)
        for name, module in model.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding, Conv1D)) or name.endswith("wpe"):
                continue  # GPT-2's position table stays expanded
            if name.rsplit(".", 1)[-1] in ("gate", "router", "shared_expert_gate"):
                continue  # routers stay expanded
            if id(module.weight) in seen:
                continue  # a tied head is the embedding
            seen.add(id(module.weight))
            if isinstance(module, Conv1D):  # [in,out]: quantised along the rows of its transpose
                module.weight.copy_(fake_quantise(module.weight.t(), weights, group).t())
            else:
                module.weight.copy_(fake_quantise(module.weight, weights, group))
    model.save_pretrained(path)
    return path


# int4 groups of 32 divide the 64-wide rows of these models; 48 leaves a last group of 16; 37 starts
# every other group on a byte's high nibble.
@pytest.mark.parametrize("weights,group", [("int8", 128), ("int4", 32), ("int4", 48), ("int4", 37)])
@pytest.mark.parametrize("name", ["llama_gqa", "phi3", "gemma3", "gpt2_untied_sharded", "qwen3_moe", "qwen2_moe"])
def test_quantised_at_load_equals_the_same_quantisation_in_python(checkpoints, name, weights, group, tmp_path):
    checkpoint = checkpoints[name]
    reference = fake_quantised_checkpoint(checkpoint, weights, group, tmp_path / "reference")
    quantised = aios.Backbone.load(checkpoint.path, weights=weights, group_size=group)
    assert quantised.config.weights == weights
    kinds = {k.kind: k for k in quantised.config.storage}
    assert weights in kinds and "float32" in kinds  # norms, biases (and GPT-2's position table) stay
    full = aios.Backbone.load(checkpoint.path, weights="expanded").config.weight_bytes
    assert quantised.config.weight_bytes < (0.5 if weights == "int8" else 0.45) * full
    check_every_call(quantised, aios.Backbone.load(reference, weights="expanded"),
                     aios.Backbone.load(reference, dtype="float64", weights="expanded"))


def test_gguf_quantised_at_load_keeps_its_quantised_tensors(tmp_path):
    path = tiny_gguf(tmp_path / "f16.gguf", Q.F16)
    kinds = [k.kind for k in aios.Backbone.load(path, weights="int8").config.storage]
    assert "int8" in kinds and "F16" not in kinds
    path = tiny_gguf(tmp_path / "q4_k.gguf", Q.Q4_K)
    kinds = [k.kind for k in aios.Backbone.load(path, weights="int4").config.storage]
    assert "Q4_K" in kinds and "int4" not in kinds


@pytest.mark.parametrize("expert_type", [Q.MXFP4, Q.Q8_0, Q.Q4_0], ids=lambda q: q.name)
def test_stored_experts_equal_the_expanded_model(checkpoints, tmp_path, expert_type):
    # gpt-oss as llama.cpp files store it, its experts (with biases) quantised: each expert's
    # matrices stay stored, and every call equals the same file expanded.
    from test_gguf import gguf_of_checkpoint
    common, extra, tensors, types = gguf_of_checkpoint(checkpoints["gpt_oss"], "gpt-oss", expert_type=expert_type)
    path = write_gguf(tmp_path / "experts.gguf", "gpt-oss", common, tensors, types, extra)
    stored = aios.Backbone.load(path)  # the default on the CPU
    assert expert_type.name in {k.kind for k in stored.config.storage}
    check_every_call(stored, aios.Backbone.load(path, weights="expanded"),
                     aios.Backbone.load(path, dtype="float64", weights="expanded"))


def test_extensions_over_stored_tables(default_model_gguf):
    # The default model's tied Q8_0 table serves as embedding and output head.
    stored = aios.Backbone.load(default_model_gguf, weights="stored")
    expanded = aios.Backbone.load(default_model_gguf, weights="expanded")
    V = expanded.config.vocab_size
    ids = torch.tensor([[1, 2, V, V + 1, 3]])
    for init in ("mean", 5):
        a, b = stored.extend(["<a>", "<b>"], init=init), expanded.extend(["<a>", "<b>"], init=init)
        assert rel(a.embedding_rows, b.embedding_rows) <= REL and rel(a.classifier_rows, b.classifier_rows) <= REL
        hidden = expanded.forward(expanded.embed(ids, extension=b)).hidden
        assert rel(stored.embed(ids, extension=a), expanded.embed(ids, extension=b)) <= REL
        assert rel(stored.classify(hidden, extension=a), expanded.classify(hidden, extension=b)) <= REL


def test_bfloat16_compute_over_stored_weights(tmp_path):
    path = tiny_gguf(tmp_path / "q4_1.gguf", Q.Q4_1)
    stored = aios.Backbone.load(path, dtype="bfloat16", weights="stored")
    expanded = aios.Backbone.load(path, dtype="bfloat16", weights="expanded")
    ids = torch.randint(0, V, (2, 70), generator=torch.Generator().manual_seed(2))
    latents = expanded.embed(ids)
    assert latents.dtype == torch.bfloat16 and torch.equal(stored.embed(ids), latents)
    got, want = stored.forward(latents).hidden.float(), expanded.forward(latents).hidden.float()
    assert rel(got, want) <= 2e-2  # bfloat16 products summed in another order


def test_options_are_checked(tmp_path):
    path = tiny_gguf(tmp_path / "q8_0.gguf", Q.Q8_0)
    with pytest.raises(aios.InvalidArgumentError, match="weights"):
        aios.Backbone.load(path, weights="int3")
    for weights in ("stored", "int8", "int4"):
        with pytest.raises((aios.InvalidArgumentError, aios.UnavailableError), match="weights|device"):
            aios.Backbone.load(path, device="cuda", weights=weights)
    with pytest.raises(aios.InvalidArgumentError, match="group_size"):
        aios.Backbone.load(path, weights="int4", group_size=0)


def test_corrupt_and_unsupported_tensors_are_named(tmp_path):
    rng = np.random.default_rng(3)
    path = tiny_gguf(tmp_path / "q8_0.gguf", Q.Q8_0)
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    offset = int(tensor.data_offset) + 34 * 5  # the sixth block's fp16 scale
    data = bytearray(path.read_bytes())
    data[offset:offset + 2] = np.array([np.inf], np.float16).view(np.uint8).tobytes()
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(bytes(data))
    for weights in ("stored", "expanded"):
        with pytest.raises(aios.DataLossError, match="blk.1.ffn_up.weight.*non-finite"):
            aios.Backbone.load(corrupt, weights=weights)
    # Q8_1 is a ggml type aios does not decode.
    tensors = {"token_embd.weight": rng.integers(0, 256, (8 * 8, gguf.GGML_QUANT_SIZES[Q.Q8_1][1]),
                                                 dtype=np.uint8).reshape(8, -1)}
    q8_1 = write_gguf(tmp_path / "q8_1.gguf", "llama", dict(CONFIG, num_hidden_layers=1), tensors,
                      raw_types={"token_embd.weight": Q.Q8_1})
    with pytest.raises(aios.InvalidArgumentError, match="token_embd.weight.*Q8_1"):
        aios.Backbone.load(q8_1, weights="stored")


RSS_SCRIPT = """
import json, sys, aios
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = rss()
backbone = aios.Backbone.load(sys.argv[1], weights=sys.argv[2], group_size=128)
print(json.dumps({"grown": rss() - before, "parameters": backbone.parameter_count}))
"""


def grown(path, weights):
    """The process's resident memory grown by loading `path`, measured in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), weights], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_the_default_model_stays_near_its_file_size(default_model_gguf):
    stored, expanded = grown(default_model_gguf, "stored"), grown(default_model_gguf, "expanded")
    float32_bytes = 4 * stored["parameters"]
    file_bytes = default_model_gguf.stat().st_size
    assert stored["grown"] < 0.3 * float32_bytes, stored
    assert stored["grown"] < 1.3 * file_bytes, stored
    assert expanded["grown"] > 0.9 * float32_bytes, expanded  # the measurement sees the difference


def test_the_default_model_quantised_at_load_takes_its_quantised_size(default_model):
    # The Hugging Face checkpoint (float32 safetensors): int8 keeps about a byte per value, int4 (groups
    # of 128) about 0.56; norms stay float32.
    int8, int4 = grown(default_model, "int8"), grown(default_model, "int4")
    float32_bytes = 4 * int8["parameters"]
    assert int8["grown"] < 0.35 * float32_bytes, int8
    assert int4["grown"] < 0.22 * float32_bytes, int4


def test_non_finite_weights_are_named_when_quantising(checkpoints, tmp_path):
    model = copy.deepcopy(checkpoints["llama_gqa"].reference)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(tmp_path)
    for weights in ("int8", "int4"):
        with pytest.raises(aios.DataLossError, match="model.layers.1.mlp.up_proj.weight.*non-finite"):
            aios.Backbone.load(tmp_path, weights=weights)

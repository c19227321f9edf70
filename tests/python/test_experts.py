"""Mixtures of experts beyond parity (conftest's qwen3_moe, mixtral_window, qwen2_moe and gpt_oss run every
parity, gradient and generation test): the router's choices, returned on request."""
import pytest
import torch

import aios

from conftest import VOCAB

MOE = ["qwen3_moe", "mixtral_window", "qwen2_moe", "gpt_oss"]


def reference_choices(model, ids):
    """transformers' top-k experts per position for each block with experts, in block order."""
    with torch.no_grad():
        logits = model(ids, output_router_logits=True).router_logits
    k = model.config.num_experts_per_tok
    return [l.view(*ids.shape, -1).float().softmax(-1).topk(k, -1).indices for l in logits]


@pytest.mark.parametrize("name", MOE)
def test_routing_is_transformers_choice_of_experts(checkpoints, name):
    checkpoint = checkpoints[name]
    backbone = aios.Backbone.load(checkpoint.path)
    ids = torch.randint(0, VOCAB, (2, 12))
    out = backbone.forward(backbone.embed(ids), routing=True)
    assert len(out.routing) == backbone.config.num_layers
    routed = [r for r in out.routing if r.shape[-1] > 0]
    want = reference_choices(checkpoint.reference, ids)
    assert len(routed) == len(want) >= 1
    k = checkpoint.reference.config.num_experts_per_tok
    for got, expected in zip(routed, want):
        assert got.dtype == torch.int64 and got.shape == (2, 12, k)
        assert torch.equal(got, expected)
    # Every block with experts sends tokens unevenly: not a test of a uniform router.
    counts = torch.bincount(routed[0].flatten(), minlength=4)
    assert counts.max() > counts.min()
    # Not asked for, nothing comes back; asked of a dense model, empty choices per block.
    assert backbone.forward(backbone.embed(ids)).routing == []
    dense = aios.Backbone.load(checkpoints["llama_gqa"].path)
    assert [r.shape for r in dense.forward(dense.embed(ids), routing=True).routing] == [(2, 12, 0)] * 3


def test_kept_passes_return_routing_and_backward_records_nothing(checkpoints):
    backbone = aios.Backbone.load(checkpoints["qwen3_moe"].path)
    latents = backbone.embed(torch.randint(0, VOCAB, (1, 8)))
    want = backbone.forward(latents, routing=True).routing
    for recompute in (False, True):
        kept = backbone.forward(latents, keep=True, recompute=recompute, routing=True)
        assert all(torch.equal(a, b) for a, b in zip(kept.routing, want))
        backbone.vjp(kept.handle, grad_hidden=torch.ones_like(kept.hidden))  # recomputes blocks
        assert all(torch.equal(a, b) for a, b in zip(kept.routing, want))
        backbone.release(kept.handle)


def test_gpt_oss_sinks_and_clamp_bite_at_the_tested_scale(checkpoints):
    """The tiny gpt-oss's attention sinks and its SwiGLU's clamp change the result, so parity tests them."""
    checkpoint = checkpoints["gpt_oss"]
    reference = checkpoint.reference
    backbone = aios.Backbone.load(checkpoint.path)
    ids = torch.randint(0, VOCAB, (1, 12))
    got = backbone.classify(backbone.forward(backbone.embed(ids)).hidden)
    attention = [layer.self_attn for layer in reference.model.layers]
    experts = [layer.mlp.experts for layer in reference.model.layers]
    with torch.no_grad():
        sinks = [a.sinks.clone() for a in attention]
        try:
            for a in attention:
                a.sinks.fill_(-1e4)  # no sink takes any share
            assert (reference(ids).logits - got).abs().max() > 1e-3
        finally:
            for a, s in zip(attention, sinks):
                a.sinks.copy_(s)
        try:
            for e in experts:
                e.limit = 1e4
            assert (reference(ids).logits - got).abs().max() > 1e-3
        finally:
            for e in experts:
                e.limit = reference.config.swiglu_limit
        assert (reference(ids).logits - got).abs().max() <= 1e-4


def test_gpt_oss_mxfp4_folder_loads_as_transformers_dequantises_it(checkpoints, tmp_path):
    """Released gpt-oss folders store the experts as MXFP4 <name>_blocks and <name>_scales; they load
    dequantised, as transformers does on a CPU."""
    import json
    import transformers
    from safetensors.torch import load_file, save_file
    source = checkpoints["gpt_oss"].path
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, value in load_file(source / "model.safetensors").items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, columns, rows = value.shape  # [E, in, out]; stored [E, out, in/32, 16] and [E, out, in/32]
            tensors[name + "_blocks"] = torch.randint(0, 256, (experts, rows, columns // 32, 16), dtype=torch.uint8,
                                                      generator=generator)
            tensors[name + "_scales"] = torch.randint(120, 125, (experts, rows, columns // 32), dtype=torch.uint8,
                                                      generator=generator)
        else:
            tensors[name] = value
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    reference = transformers.GptOssForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    backbone = aios.Backbone.load(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        want = reference(ids).logits
    got = backbone.classify(backbone.forward(backbone.embed(ids)).hidden)
    assert (got - want).abs().max() <= 1e-4
    # Other pre-quantised formats are refused by name.
    config["quantization_config"] = {"quant_method": "gptq"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(aios.InvalidArgumentError, match="quantization_config.quant_method.*gptq"):
        aios.Backbone.load(tmp_path)

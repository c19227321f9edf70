"""Mixtures of experts beyond parity (conftest's qwen3_moe, mixtral_window and qwen2_moe run every
parity, gradient and generation test): the router's choices, returned on request."""
import pytest
import torch

import aios

from conftest import VOCAB

MOE = ["qwen3_moe", "mixtral_window", "qwen2_moe"]


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

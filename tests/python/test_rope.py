"""Rotary scaling types: each changes the result where it should, and dynamic NTK (whose frequencies
depend on the longest position of a pass) against transformers. YaRN and LongRoPE run the whole
suite as checkpoints of conftest; Llama 3 and linear scaling too."""
import json
import shutil

import pytest
import torch
import transformers

import aios

from conftest import VOCAB, _llama
from test_gradient import frozen, rel_err

TOL = 1e-4


def without_scaling(path, tmp_path):
    """A copy of the checkpoint whose config keeps the base frequencies only."""
    copy = tmp_path / "plain"
    shutil.copytree(path, copy)
    config = json.loads((copy / "config.json").read_text())
    theta = config.get("rope_parameters", {}).get("rope_theta", 10000.0)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def hidden(backbone, ids, **kw):
    return backbone.forward(backbone.embed(ids), **kw).hidden


@pytest.mark.parametrize("name", ["llama_yarn", "llama_longrope", "llama3_bias_tied_sharded", "llama_linear_rope"])
def test_each_scaling_changes_the_result_at_the_tested_positions(checkpoints, tmp_path, name):
    scaled = aios.Backbone.load(checkpoints[name].path)
    plain = aios.Backbone.load(without_scaling(checkpoints[name].path, tmp_path))
    ids = torch.randint(0, VOCAB, (1, 16))
    assert (hidden(scaled, ids) - hidden(plain, ids)).abs().max() > 1e-3


def test_longrope_picks_its_long_factors_for_passes_past_the_trained_length(checkpoints):
    backbone = aios.Backbone.load(checkpoints["llama_longrope"].path)
    assert backbone.config.rope.type == "longrope"
    assert backbone.config.rope.attention_factor == pytest.approx(2 ** 0.5)  # sqrt(1 + ln 8 / ln 8)
    ids = torch.randint(0, VOCAB, (1, 12))
    short, long = hidden(backbone, ids[:, :8]), hidden(backbone, ids)[:, :8]
    assert (short - long).abs().max() > 1e-3
    # The choice is the pass's, by its largest position. Rotary angles are relative, so shifting six
    # tokens changes nothing while the pass stays within 8 positions, and everything once it does not.
    six, base = ids[:, :6], hidden(backbone, ids[:, :6])
    assert (hidden(backbone, six, positions=torch.arange(6) + 2) - base).abs().max() <= TOL
    assert (hidden(backbone, six, positions=torch.arange(6) + 3) - base).abs().max() > 1e-3


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    """NTK scaling by 2 past 16 trained positions."""
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("dynamic")
    model = transformers.LlamaForCausalLM(_llama(max_position_embeddings=16,
                                                 rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    model.save_pretrained(path)
    return path


def reference(path):
    """A fresh transformers model: its dynamic frequencies remember the longest pass it has seen."""
    return frozen(transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval())


@pytest.mark.parametrize("length", [12, 28])
def test_dynamic_ntk_matches_transformers(dynamic, length):
    backbone = aios.Backbone.load(dynamic)
    assert backbone.config.max_positions == 32  # 16 trained positions, factor 2
    ids = torch.randint(0, VOCAB, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 5:] = 0
    with torch.no_grad():
        want = reference(dynamic)(ids, attention_mask=mask, output_hidden_states=True)
    out = backbone.forward(backbone.embed(ids), mask=mask.bool(), layers=[1])
    real = mask.bool()
    assert (out.layers[0][real] - want.hidden_states[1][real]).abs().max() <= TOL
    assert (backbone.classify(out.hidden)[real] - want.logits[real]).abs().max() <= TOL
    positions = torch.arange(length) + (32 - length)  # explicit, up to the last allowed position
    with torch.no_grad():
        want = reference(dynamic)(ids, position_ids=positions[None].expand(2, -1)).logits
    assert (backbone.classify(hidden(backbone, ids, positions=positions)) - want).abs().max() <= TOL
    # The gradient with respect to the latents, through the scaled tables.
    latents = backbone.embed(ids)
    cotangent = torch.randn(2, length, VOCAB)
    x = latents.clone().requires_grad_(True)
    expected = torch.autograd.grad(reference(dynamic)(inputs_embeds=x).logits, x, cotangent)[0]
    assert rel_err(backbone.vjp(latents, grad_logits=cotangent), expected) <= TOL


def test_dynamic_ntk_generation_equals_transformers_generate(dynamic):
    """Crossing the 16 trained positions mid-generation: each step's frequencies come from its own
    position, and the cached keys keep theirs, as in transformers."""
    backbone = aios.Backbone.load(dynamic)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    got = backbone.generate(backbone.embed(ids), max_new_tokens=20)
    hf = reference(dynamic).generate(ids, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(ids),
                                     eos_token_id=None, pad_token_id=0)
    assert got.ids[0].tolist() == hf[0, ids.shape[1]:].tolist()
    with pytest.raises(aios.InvalidArgumentError, match="position"):
        backbone.forward(backbone.embed(ids), positions=torch.arange(6) + 27)

"""Parity with transformers (float32, eager attention): every layer's hidden state and the logits."""
import pytest
import torch

import aios

from conftest import MAX_POSITIONS, RECURRENT, VOCAB

TOL = 1e-4


def reference_states(model, ids, **kw):
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, **kw)
    return out.hidden_states, out.logits


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_every_layer_and_logits_match(checkpoint):
    backbone = aios.Backbone.load(checkpoint.path)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 16))
    ref_states, ref_logits = reference_states(checkpoint.reference, ids)
    n = backbone.config.num_layers
    out = backbone.forward(backbone.embed(ids), layers=list(range(n)))
    for layer in range(n):
        assert max_diff(out.layers[layer], ref_states[layer]) <= TOL, f"layer {layer}"
    assert max_diff(out.hidden, ref_states[n]) <= TOL
    assert max_diff(backbone.classify(out.hidden), ref_logits) <= TOL


def test_config_matches_reference(checkpoint):
    backbone = aios.Backbone.load(checkpoint.path)
    ref = checkpoint.reference.config
    c = backbone.config
    assert c.architecture == ref.architectures[0]
    assert c.vocab_size == ref.vocab_size
    assert c.hidden_size == ref.hidden_size
    assert c.num_layers == ref.num_hidden_layers
    assert c.num_heads == ref.num_attention_heads
    assert c.family == {"gpt2": "gpt2", "gemma2": "gemma", "gemma3_text": "gemma", "qwen3_next": "qwen3_next",
                        "qwen3_5_text": "qwen3_next", "qwen3_5_moe_text": "qwen3_next"}.get(ref.model_type, "llama")
    assert c.norm_eps == (ref.layer_norm_epsilon if ref.model_type == "gpt2" else ref.rms_norm_eps)
    assert (c.rope is None) == (ref.model_type == "gpt2")
    assert c.tie_word_embeddings == ref.tie_word_embeddings
    assert (c.dtype, c.device) == ("float32", "cpu")
    # Special tokens as the checkpoint names them.
    eos = ref.eos_token_id if isinstance(ref.eos_token_id, list) else [ref.eos_token_id]
    assert (c.bos_id, c.eos_ids, c.pad_id) == (ref.bos_token_id, [i for i in eos if i is not None], ref.pad_token_id)
    assert backbone.parameter_count == checkpoint.reference.num_parameters()


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_at_real_tokens(checkpoint, side):
    backbone = aios.Backbone.load(checkpoint.path)
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 12))
    lengths = [12, 7, 3]
    mask = torch.zeros(3, 12, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, 12 - n:] = 1
    # Explicit positions that count real tokens, as a caller with left padding passes them.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ref_states, ref_logits = reference_states(checkpoint.reference, ids, attention_mask=mask,
                                              position_ids=positions)
    out = backbone.forward(backbone.embed(ids), positions=positions, mask=mask.bool(), layers=[1])
    real = mask.bool()
    assert max_diff(out.hidden[real], ref_states[-1][real]) <= TOL
    assert max_diff(out.layers[0][real], ref_states[1][real]) <= TOL
    assert max_diff(backbone.classify(out.hidden)[real], ref_logits[real]) <= TOL
    assert torch.isfinite(out.hidden).all(), "padding rows must stay finite"


def test_explicit_positions_match(checkpoint):
    backbone = aios.Backbone.load(checkpoint.path)
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (2, 10))
    positions = torch.stack([torch.arange(10) + 7, torch.arange(10) * 3 + 1])  # gaps and offsets
    ref_states, ref_logits = reference_states(checkpoint.reference, ids, position_ids=positions)
    out = backbone.forward(backbone.embed(ids), positions=positions)
    assert max_diff(out.hidden, ref_states[-1]) <= TOL
    # Positions shared by the batch may be given as [T].
    shared = backbone.forward(backbone.embed(ids), positions=positions[0])
    ref_shared, _ = reference_states(checkpoint.reference, ids, position_ids=positions[0:1].expand(2, -1))
    assert max_diff(shared.hidden, ref_shared[-1]) <= TOL


def refuses_full_masks(backbone, T):
    """A model with recurrent layers refuses any [B,T,T] mask, naming the field."""
    with pytest.raises(aios.InvalidArgumentError, match="mask.*recurrent"):
        backbone.forward(backbone.embed(torch.zeros(1, T, dtype=torch.long)), mask=torch.ones(1, T, T, dtype=torch.bool))


def test_block_diagonal_mask_equals_separate_sequences(checkpoint):
    """Two sequences packed in one row with a [B,T,T] mask give what each gives alone."""
    backbone = aios.Backbone.load(checkpoint.path)
    if checkpoint.name in RECURRENT:
        return refuses_full_masks(backbone, 14)
    torch.manual_seed(3)
    # A full mask is used as given, so a model's sliding window is part of what the caller writes;
    # one mask serves every layer, so where only some layers have a window the sequences stay within it.
    windows = set(backbone.config.sliding_windows)
    window = next(iter(windows)) if len(windows) == 1 and None not in windows else 15
    # Both within 8 positions, so that LongRoPE picks its short factors for the packed row as for each
    # sequence alone (it picks per pass, by the largest position).
    n_a, n_b = (6, 8) if len(windows) < 2 else (min(windows - {None}),) * 2
    a, b = torch.randint(0, VOCAB, (1, n_a)), torch.randint(0, VOCAB, (1, n_b))
    packed = torch.cat([a, b], dim=1)
    mask = torch.zeros(1, n_a + n_b, n_a + n_b, dtype=torch.bool)
    for begin, n in ((0, n_a), (n_a, n_b)):
        i = torch.arange(n)
        mask[0, begin:begin + n, begin:begin + n] = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
    positions = torch.cat([torch.arange(n_a), torch.arange(n_b)]).unsqueeze(0)
    out = backbone.forward(backbone.embed(packed), positions=positions, mask=mask).hidden
    ref_a, _ = reference_states(checkpoint.reference, a)
    ref_b, _ = reference_states(checkpoint.reference, b)
    assert max_diff(out[:, :n_a], ref_a[-1]) <= TOL
    assert max_diff(out[:, n_a:], ref_b[-1]) <= TOL


def test_full_mask_is_used_as_given(checkpoint):
    """A full mask replaces causal order: a bidirectional mask lets early tokens see later ones."""
    backbone = aios.Backbone.load(checkpoint.path)
    if checkpoint.name in RECURRENT:
        return refuses_full_masks(backbone, 8)
    torch.manual_seed(4)
    ids = torch.randint(0, VOCAB, (1, 8))
    latents = backbone.embed(ids)
    causal = torch.ones(1, 8, 8).tril().bool()
    default = backbone.forward(latents).hidden
    if not any(backbone.config.sliding_windows):  # a window trims the causal default
        assert max_diff(backbone.forward(latents, mask=causal).hidden, default) <= 1e-6
    full = backbone.forward(latents, mask=torch.ones(1, 8, 8, dtype=torch.bool), layers=[1])
    causal_out = backbone.forward(latents, mask=causal, layers=[1])
    # After one block the last token has seen everything either way; the first one has not.
    assert max_diff(full.layers[0][:, -1], causal_out.layers[0][:, -1]) <= 1e-5
    assert max_diff(full.layers[0][:, 0], causal_out.layers[0][:, 0]) > 1e-3


def test_integer_key_padding_mask_is_accepted(checkpoint):
    backbone = aios.Backbone.load(checkpoint.path)
    ids = torch.randint(0, VOCAB, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    latents = backbone.embed(ids)
    assert torch.equal(backbone.forward(latents, mask=mask).hidden,
                       backbone.forward(latents, mask=mask.bool()).hidden)


def test_batched_equals_one_by_one(checkpoint):
    backbone = aios.Backbone.load(checkpoint.path)
    ids = torch.randint(0, VOCAB, (3, 9))
    batched = backbone.forward(backbone.embed(ids)).hidden
    for b in range(3):
        single = backbone.forward(backbone.embed(ids[b:b + 1])).hidden
        assert max_diff(batched[b:b + 1], single) <= 1e-5


def test_longest_sequence_matches(checkpoint):
    backbone = aios.Backbone.load(checkpoint.path)
    ids = torch.randint(0, VOCAB, (1, MAX_POSITIONS))
    ref_states, ref_logits = reference_states(checkpoint.reference, ids)
    logits = backbone.classify(backbone.forward(backbone.embed(ids)).hidden)
    assert max_diff(logits, ref_logits) <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_tracks_float32(checkpoints, dtype):
    checkpoint = checkpoints["llama_gqa"]
    full = aios.Backbone.load(checkpoint.path)
    half = aios.Backbone.load(checkpoint.path, dtype=dtype)
    assert half.dtype == str(dtype).removeprefix("torch.")
    ids = torch.randint(0, VOCAB, (2, 12))
    ref = full.classify(full.forward(full.embed(ids)).hidden)
    got = half.classify(half.forward(half.embed(ids)).hidden)
    assert got.dtype == dtype
    # Relative to the logits' spread: reduced precision changes digits, not the prediction.
    assert (got.float() - ref).abs().max().item() <= 0.05 * ref.abs().max().item()
    with torch.no_grad():
        hf = type(checkpoint.reference).from_pretrained(checkpoint.path, dtype=dtype,
                                                        attn_implementation="eager").eval()
        hf_logits = hf(ids).logits
    assert (got.float() - hf_logits.float()).abs().max().item() <= 0.05 * ref.abs().max().item()


def test_outputs_never_require_grad(checkpoint):
    backbone = aios.Backbone.load(checkpoint.path)
    latents = backbone.embed(torch.randint(0, VOCAB, (1, 4)))
    assert not latents.requires_grad
    out = backbone.forward(latents.clone().requires_grad_(True))
    assert not out.hidden.requires_grad
    assert not backbone.classify(out.hidden).requires_grad


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_gemma_soft_caps_bite_at_the_tested_scale(checkpoints, name):
    """The caps of the tiny Gemmas change the logits (and Gemma 2's the attention), so parity tests them."""
    backbone = aios.Backbone.load(checkpoints[name].path)
    reference = checkpoints[name].reference
    cap = reference.config.final_logit_softcapping
    ids = torch.randint(0, VOCAB, (1, 12))
    hidden = backbone.forward(backbone.embed(ids)).hidden
    logits = backbone.classify(hidden)
    uncapped = hidden @ reference.lm_head.weight.detach().T
    assert logits.abs().max() < cap and (logits - uncapped).abs().max() > 0.05
    if cap := reference.config.attn_logit_softcapping:
        attention = [layer.self_attn for layer in reference.model.layers]
        with torch.no_grad():
            for a in attention:
                a.attn_logit_softcapping = None
            try:
                assert max_diff(reference(ids).logits, logits) > 1e-3
            finally:
                for a in attention:
                    a.attn_logit_softcapping = cap


@pytest.mark.parametrize("name, pattern", [("gemma2", None), ("gemma3", 3)])
def test_gemma_configs_without_layer_types_match_transformers(checkpoints, tmp_path, name, pattern):
    """Published Gemma configs predate layer_types: Gemma 2 slides on every other layer, Gemma 3 on all
    but every sliding_window_pattern-th. A folder without the field loads as transformers reads it."""
    import json, shutil
    folder = tmp_path / name
    shutil.copytree(checkpoints[name].path, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["layer_types"]
    if pattern:
        config["sliding_window_pattern"] = pattern
    (folder / "config.json").write_text(json.dumps(config))
    reference = type(checkpoints[name].reference).from_pretrained(folder, attn_implementation="eager").eval()
    backbone = aios.Backbone.load(folder)
    assert backbone.config.sliding_windows == [5 if t == "sliding_attention" else None
                                               for t in reference.config.layer_types]
    ids = torch.randint(0, VOCAB, (2, 16))
    _, ref_logits = reference_states(reference, ids)
    assert max_diff(backbone.classify(backbone.forward(backbone.embed(ids)).hidden), ref_logits) <= TOL


def test_gemma3_vision_language_checkpoint_loads_its_text_tower(checkpoints, tmp_path):
    """Gemma3ForConditionalGeneration: the language model under language_model.*, described by
    text_config, is the backbone; the vision tower and projector are not read."""
    import transformers
    text = checkpoints["gemma3"].reference
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text.config, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=VOCAB - 1, boi_token_index=VOCAB - 3,
                                       eoi_token_index=VOCAB - 2)
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    model.model.language_model.load_state_dict(text.model.state_dict())
    model.save_pretrained(tmp_path)
    reference = transformers.Gemma3ForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    backbone = aios.Backbone.load(tmp_path)
    assert backbone.config.architecture == "Gemma3ForConditionalGeneration"
    assert backbone.config.family == "gemma" and backbone.config.tie_word_embeddings
    ids = torch.randint(0, VOCAB - 3, (2, 12))
    with torch.no_grad():
        want = reference(input_ids=ids).logits
    hidden = backbone.forward(backbone.embed(ids)).hidden
    assert max_diff(backbone.classify(hidden), want) <= TOL  # no final-logit cap: that class applies none
    assert max_diff(hidden, text.model(ids).last_hidden_state) <= TOL

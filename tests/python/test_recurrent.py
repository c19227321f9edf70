"""The Qwen3-Next family's recurrent (Gated DeltaNet) layers beyond the shared suites (conftest's
qwen3_next, qwen3_5 and qwen3_5_moe run every parity, gradient and generation test there): prompts
of several chunks, the chunked form against the recurrent one, padding anywhere read as absent,
sessions continuing from their state and what they hold, the vision-language checkpoints' text
tower, and a hosted backbone equal to the local one."""
import pytest
import torch
import transformers

import aios

from conftest import RECURRENT, VOCAB, _hybrid

TOL = 1e-4


def perturbed(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith("_bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """Qwen3.5 with room for prompts of several 64-position chunks."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("recurrent") / "qwen3_5_long"
    config = transformers.Qwen3_5TextConfig(intermediate_size=96, **_hybrid(max_position_embeddings=512))
    perturbed(transformers.Qwen3_5ForCausalLM(config).eval()).save_pretrained(path)
    reference = transformers.Qwen3_5ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return aios.Backbone.load(path), reference.eval()


@pytest.mark.parametrize("T", [64, 65, 200])
def test_prompts_of_several_chunks_match_transformers(long_model, T):
    backbone, reference = long_model
    ids = torch.randint(0, VOCAB, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as transformers zeroes it
    with torch.no_grad():
        want = reference(ids, attention_mask=mask, output_hidden_states=True)
    out = backbone.forward(backbone.embed(ids), mask=mask.bool(), layers=[1, 3])
    real = mask.bool()
    assert (out.layers[0] - want.hidden_states[1])[real].abs().max() <= TOL
    assert (out.layers[1] - want.hidden_states[3])[real].abs().max() <= TOL
    assert (backbone.classify(out.hidden) - want.logits)[real].abs().max() <= TOL


def test_gradients_through_several_chunks_match_transformers(long_model):
    backbone, reference = long_model
    for p in reference.parameters():
        p.requires_grad_(False)
    latents = backbone.embed(torch.randint(0, VOCAB, (1, 150)))
    cotangent = torch.randn(1, 150, VOCAB)
    x = latents.clone().requires_grad_(True)
    want = torch.autograd.grad(reference(inputs_embeds=x).logits, x, cotangent)[0]
    for recompute in (False, True):
        kept = backbone.forward(latents, keep=True, recompute=recompute)
        got = backbone.vjp(kept.handle, grad_logits=cotangent)
        backbone.release(kept.handle)
        assert ((got - want).norm() / want.norm()).item() <= TOL


def test_decoding_recurrently_equals_prompts_read_in_chunks(long_model):
    """The prompt runs chunked into the state, each new token one recurrent step; every step's hidden
    state equals a full chunked forward over the sequence so far."""
    backbone, reference = long_model
    ids = torch.randint(0, VOCAB, (1, 130))
    got = backbone.generate(backbone.embed(ids), max_new_tokens=12)
    whole = torch.cat([ids, got.ids[:, :-1]], 1)
    hidden = backbone.forward(backbone.embed(whole)).hidden[:, ids.shape[1] - 1:]
    torch.testing.assert_close(got.hidden, hidden, rtol=TOL, atol=TOL)
    hf = reference.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids),
                            eos_token_id=None, pad_token_id=0)
    assert got.ids[0].tolist() == hf[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_padding_anywhere_is_read_as_absent(checkpoints, name):
    """A row computes as it would alone without its padding, whether the padding leads, trails or
    interrupts it (attention layers skip padded keys; recurrent layers read the valid slots in order)."""
    backbone = aios.Backbone.load(checkpoints[name].path)
    ids = torch.randint(0, VOCAB, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 3:6] = False          # in the middle
    mask[1, :2] = mask[1, 9:] = False  # at both ends
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    out = backbone.forward(backbone.embed(ids), mask=mask, positions=positions, layers=[2]).hidden
    for b in range(3):
        alone = backbone.forward(backbone.embed(ids[b:b + 1, mask[b]])).hidden
        assert (out[b, mask[b]] - alone[0]).abs().max() <= 1e-5, b
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_sessions_continue_from_their_state(checkpoints, name):
    backbone = aios.Backbone.load(checkpoints[name].path)
    first, second = torch.randint(0, VOCAB, (2, 7)), torch.randint(0, VOCAB, (2, 5))
    # The continuation padded differently in each row: the state skips padding wherever it lies.
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    session = backbone.new_session()
    a = backbone.generate(backbone.embed(first), max_new_tokens=4, session=session)
    b = backbone.generate(backbone.embed(second), mask=mask, max_new_tokens=4, session=session)
    for row in range(2):
        whole = torch.cat([first[row], a.ids[row], second[row][mask[row]]])[None]
        want = backbone.generate(backbone.embed(whole), max_new_tokens=4)
        assert b.ids[row].tolist() == want.ids[0].tolist(), row
        torch.testing.assert_close(b.hidden[row], want.hidden[0], rtol=TOL, atol=TOL)


def test_a_session_holds_fixed_state_beside_growing_keys_and_values(checkpoints):
    """Per recurrent layer its convolution's last inputs and the delta rule's matrices, whatever the
    length; per attention layer keys and values for every slot."""
    backbone = aios.Backbone.load(checkpoints["qwen3_5"].path)
    c = checkpoints["qwen3_5"].reference.config
    B = 2
    channels = 2 * c.linear_num_key_heads * c.linear_key_head_dim + c.linear_num_value_heads * c.linear_value_head_dim
    state = B * (channels * (c.linear_conv_kernel_dim - 1) + c.linear_num_value_heads * c.linear_key_head_dim
                 * c.linear_value_head_dim) * 4
    recurrent = sum(t == "linear_attention" for t in c.layer_types)
    slot = 2 * B * c.num_key_value_heads * c.head_dim * 4 * (c.num_hidden_layers - recurrent)  # keys and values
    session = backbone.new_session()
    for steps in (3, 30):
        backbone.generate(backbone.embed(torch.randint(0, VOCAB, (B, 6))), max_new_tokens=steps, session=session)
        kv = session.bytes - recurrent * state
        assert kv > 0 and kv % slot == 0 and kv // slot >= session.length, (session.bytes, session.length)


def test_vision_language_checkpoint_loads_its_text_tower(tmp_path):
    torch.manual_seed(8)
    text = dict(_hybrid(), intermediate_size=96)
    vision = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=4,
                  temporal_patch_size=1, spatial_merge_size=1)
    model = transformers.Qwen3_5ForConditionalGeneration(transformers.Qwen3_5Config(text_config=text,
                                                                                     vision_config=vision))
    perturbed(model.eval()).save_pretrained(tmp_path)
    reference = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32,
                                                                             attn_implementation="eager").eval()
    backbone = aios.Backbone.load(tmp_path)
    assert backbone.config.architecture == "Qwen3_5ForConditionalGeneration"
    assert backbone.config.family == "qwen3_next" and backbone.config.num_layers == 4
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        want = reference(input_ids=ids).logits
    assert (backbone.classify(backbone.forward(backbone.embed(ids)).hidden) - want).abs().max() <= TOL


def hosted_like_local(remote, local, same):
    """A padded forward, a stateless vjp and two generations continuing one session on each, compared
    by `same`; the sessions' tokens and bytes equal."""
    ids = torch.randint(0, VOCAB, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:6] = False
    latents = local.embed(ids)
    same(remote.forward(latents, mask=mask).hidden, local.forward(latents, mask=mask).hidden)
    cotangent = torch.randn(2, 9, local.config.hidden_size)
    same(remote.vjp(latents, mask=mask, grad_hidden=cotangent), local.vjp(latents, mask=mask, grad_hidden=cotangent))
    sessions = remote.new_session(), local.new_session()
    for prompt in (ids, ids[:, :4]):
        got, want = (b.generate(b.embed(prompt), max_new_tokens=5, session=s) for b, s in zip((remote, local), sessions))
        assert got.ids.tolist() == want.ids.tolist()
    assert sessions[0].bytes == sessions[1].bytes > 0


def test_hosted_equals_local(checkpoints):
    path = checkpoints["qwen3_next"].path
    local = aios.Backbone.load(path)
    with aios.serve(path) as host:
        remote = aios.connect(host, timeout=60)

        def same(got, want):
            assert torch.equal(got, want)

        hosted_like_local(remote, local, same)
        with pytest.raises(aios.InvalidArgumentError, match="mask"):
            remote.forward(local.embed(torch.zeros(1, 4, dtype=torch.long)), mask=torch.ones(1, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_5"])
def test_bfloat16_tracks_float32_and_transformers(checkpoints, name):
    checkpoint = checkpoints[name]
    full = aios.Backbone.load(checkpoint.path)
    half = aios.Backbone.load(checkpoint.path, dtype=torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :6] = False
    ref = full.classify(full.forward(full.embed(ids), mask=mask).hidden)
    got = half.classify(half.forward(half.embed(ids), mask=mask).hidden)
    assert got.dtype == torch.bfloat16
    spread = ref.abs().max().item()
    assert (got.float() - ref)[mask].abs().max().item() <= 0.05 * spread
    with torch.no_grad():
        hf = type(checkpoint.reference).from_pretrained(checkpoint.path, dtype=torch.bfloat16,
                                                        attn_implementation="eager").eval()
        want = hf(ids, attention_mask=mask.long()).logits
    assert (got.float() - want.float())[mask].abs().max().item() <= 0.05 * spread
    # Generation in bfloat16 runs (state in float32, convolution inputs in bfloat16).
    assert half.generate(half.embed(ids[:1]), max_new_tokens=4).ids.shape == (1, 4)

"""Generation with a KV cache: equal to generation without it, batched equal to one by one,
sessions that continue, sampling that a seed reproduces, and the errors of bad arguments."""
import pytest
import torch

import aios

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def greedy_without_cache(backbone, latents, steps, extension=None):
    """The reference: a full forward over the whole sequence for every new token."""
    out, hidden = [], []
    for _ in range(steps):
        h = backbone.forward(latents).hidden[:, -1]
        token = backbone.classify(h, extension=extension).argmax(-1)
        out.append(token.item())
        hidden.append(h)
        latents = torch.cat([latents, backbone.embed(token[:, None], extension=extension)], 1)
    return out, torch.stack(hidden, 1)


@pytest.fixture(scope="module")
def smollm(default_model):
    return aios.Backbone.load(default_model)


@pytest.mark.parametrize("name", ["llama_gqa", "llama_yarn", "mistral_window", "gpt2", "qwen2", "qwen3_window",
                                  "smollm3_nope", "olmo2", "qwen3_moe", "mixtral_window", "qwen2_moe",
                                  "gemma3", "gemma2", "gpt_oss", "qwen3_next", "qwen3_5", "qwen3_5_moe"])
def test_cache_equals_no_cache_on_every_family(checkpoints, name):
    backbone = aios.Backbone.load(checkpoints[name].path)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    latents = backbone.embed(ids)
    want, want_hidden = greedy_without_cache(backbone, latents, 20)  # past mistral's window of 5
    got = backbone.generate(latents, max_new_tokens=20)
    assert got.ids[0].tolist() == want
    torch.testing.assert_close(got.hidden, want_hidden, rtol=1e-4, atol=1e-4)
    # The same on the real model, and against transformers' own generate.


@pytest.mark.parametrize("name", ["llama_gqa", "llama_yarn", "llama_longrope", "mistral_window", "qwen3_window",
                                  "smollm3_nope", "olmo2", "phi3", "qwen3_moe", "mixtral_window", "qwen2_moe",
                                  "gemma3", "gemma2", "gpt_oss", "qwen3_next", "qwen3_5", "qwen3_5_moe"])
def test_greedy_tokens_equal_transformers_generate(checkpoints, name):
    """Past the windows of 5: the cache of a windowed layer keeps what the window lets it see. Past
    LongRoPE's 8 trained positions: the later steps take the long factors, the cached keys keep theirs."""
    checkpoint = checkpoints[name]
    backbone = aios.Backbone.load(checkpoint.path)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    got = backbone.generate(backbone.embed(ids), max_new_tokens=16)
    hf = checkpoint.reference.generate(ids, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids),
                                       eos_token_id=None, pad_token_id=0)
    assert got.ids[0].tolist() == hf[0, ids.shape[1]:].tolist()


def test_default_model_cache_and_transformers(smollm, default_model):
    import transformers

    tok = smollm.tokenizer
    ids = torch.tensor([tok.encode(PROMPTS[0], add_special_tokens=False)])
    got = smollm.generate(smollm.embed(ids), max_new_tokens=16)
    want, _ = greedy_without_cache(smollm, smollm.embed(ids), 16)
    assert got.ids[0].tolist() == want
    assert tok.decode(want).startswith(" Paris")
    ref = transformers.AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    hf = ref.generate(ids, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids))
    assert hf[0, ids.shape[1]:].tolist() == want


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_prompts_equal_one_by_one(smollm, side):
    tok = smollm.tokenizer
    rows = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    T = max(map(len, rows))
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[i, span] = torch.tensor(r)
        mask[i, span] = True
    batched = smollm.generate(smollm.embed(ids), mask=mask, max_new_tokens=12)
    for i, r in enumerate(rows):
        alone = smollm.generate(smollm.embed(torch.tensor([r])), max_new_tokens=12)
        assert batched.ids[i].tolist() == alone.ids[0].tolist(), (i, side)
        torch.testing.assert_close(batched.hidden[i], alone.hidden[0], rtol=1e-3, atol=1e-3)


def test_stop_tokens_lengths_and_streaming(smollm):
    tok = smollm.tokenizer
    ids = torch.tensor([tok.encode(p, add_special_tokens=False)[:5] for p in PROMPTS])
    free = smollm.generate(smollm.embed(ids), max_new_tokens=10)
    row0 = free.ids[0].tolist()
    k = next(k for k in range(2, 10) if row0[k] not in row0[:k])  # row 0 stops at its (k+1)th token
    stop = row0[k]
    stopped = smollm.generate(smollm.embed(ids), max_new_tokens=10, stop_ids=[stop])
    assert stopped.lengths[0].item() == k + 1 and stopped.ids[0, k].item() == stop
    assert (stopped.ids[0, k + 1:] == -1).all()
    for i in (1, 2):
        row = free.ids[i].tolist()
        n = row.index(stop) + 1 if stop in row else 10
        assert stopped.lengths[i].item() == n and stopped.ids[i, :n].tolist() == row[:n]
    steps = list(smollm.stream(smollm.embed(ids), max_new_tokens=10, stop_ids=[stop]))
    assert torch.equal(torch.stack([s.ids for s in steps], 1), stopped.ids)
    assert [s.index for s in steps] == list(range(len(steps)))
    assert steps[-1].finished.all() and not steps[0].finished.any()


def test_a_session_continues_the_same_context(smollm):
    tok = smollm.tokenizer
    first = torch.tensor([tok.encode("Name three colours:", add_special_tokens=False)])
    second = torch.tensor([tok.encode(" Now three animals:", add_special_tokens=False)])
    session = smollm.new_session()
    a = smollm.generate(smollm.embed(first), max_new_tokens=6, session=session)
    assert session.length == first.shape[1] + 6 and session.next_positions.tolist() == [first.shape[1] + 6]
    b = smollm.generate(smollm.embed(second), max_new_tokens=6, session=session)
    whole = torch.cat([first, a.ids, second], 1)
    want = smollm.generate(smollm.embed(whole), max_new_tokens=6)
    assert b.ids.tolist() == want.ids.tolist()
    assert session.bytes > 0


def test_sampling_is_reproducible_and_filtered(smollm):
    ids = torch.tensor([smollm.tokenizer.encode(PROMPTS[2], add_special_tokens=False)])
    latents = smollm.embed(ids)
    one = smollm.generate(latents, max_new_tokens=12, temperature=1.0, seed=7)
    two = smollm.generate(latents, max_new_tokens=12, temperature=1.0, seed=7)
    assert torch.equal(one.ids, two.ids)
    others = {tuple(smollm.generate(latents, max_new_tokens=12, temperature=1.5, seed=s).ids[0].tolist())
              for s in range(4)}
    assert len(others) > 1
    greedy = smollm.generate(latents, max_new_tokens=12)
    assert torch.equal(smollm.generate(latents, max_new_tokens=12, temperature=1.0, top_k=1, seed=3).ids, greedy.ids)
    assert torch.equal(smollm.generate(latents, max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=3).ids,
                       greedy.ids)


def test_latent_prompts_and_extension_tokens(smollm):
    """A prompt of caller latents plus token latents, and an extension token the model learns to emit."""
    tok = smollm.tokenizer
    ids = torch.tensor([tok.encode("Describe the picture:", add_special_tokens=False)])
    picture = torch.randn(1, 4, smollm.config.hidden_size) * 0.05  # e.g. a projected image
    latents = torch.cat([picture, smollm.embed(ids)], 1)
    got = smollm.generate(latents, max_new_tokens=5)
    want, _ = greedy_without_cache(smollm, latents, 5)
    assert got.ids[0].tolist() == want
    V = smollm.config.vocab_size
    hidden = smollm.forward(latents).hidden[0, -1]
    ext = smollm.extend(["<sox>"], init=(smollm.embed(torch.tensor([[0]]))[0], 10 * hidden[None]))
    out = smollm.generate(latents, max_new_tokens=3, extension=ext)
    assert out.ids[0, 0].item() == V  # <sox>: its classifier row points along the hidden state


def test_bad_arguments(smollm, checkpoints):
    latents = smollm.embed(torch.tensor([[1, 2, 3]]))
    bad = [(dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1.0), "temperature"),
           (dict(top_p=0.0), "top_p"), (dict(top_k=-1), "top_k"), (dict(stop_ids=[10**6]), "stop_ids"),
           (dict(mask=torch.ones(1, 3, 3, dtype=torch.bool)), "mask"),
           (dict(mask=torch.zeros(1, 3, dtype=torch.bool)), "mask"),
           (dict(session=aios.Backbone.load(checkpoints["llama_gqa"].path).new_session()), "session")]
    for kwargs, field in bad:
        with pytest.raises(aios.InvalidArgumentError) as e:
            smollm.generate(latents, **kwargs)
        assert e.value.field == field, kwargs
    session = smollm.new_session()
    smollm.generate(latents, max_new_tokens=1, session=session)
    with pytest.raises(aios.InvalidArgumentError) as e:
        smollm.generate(torch.cat([latents, latents]), session=session)
    assert e.value.field == "session"


def test_text_in_and_out_and_the_cli(smollm, default_model):
    import subprocess
    import sys
    from pathlib import Path

    template = smollm.chat_template
    assert "<|im_start|>" in template
    rendered = aios.apply_chat_template(template, [{"role": "user", "content": "Hi"}])
    assert rendered == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    reply = smollm.generate_text("What is the capital of France?", chat=True, max_new_tokens=24)
    assert "Paris" in reply
    pieces = list(smollm.stream_text("The capital of France is", max_new_tokens=8))
    assert len(pieces) > 1 and "".join(pieces) == smollm.generate_text("The capital of France is", max_new_tokens=8)
    # The command line streams the same greedy reply (its C++ chat formatting agrees with Jinja's).
    cli = Path(sys.executable).parent / "aios"
    out = subprocess.run([str(cli), "generate", str(default_model), "What is the capital of France?", "--chat",
                          "--max-new-tokens", "24"], capture_output=True, text=True, check=True).stdout
    assert out == reply + "\n"
    bad = subprocess.run([str(cli), "generate", str(default_model), "x", "--top-p", "2"], capture_output=True, text=True)
    assert bad.returncode == 1 and "top_p" in bad.stderr

"""Vocabulary extensions: new tokens with their own embedding and classifier rows over a frozen base.

The reference is a transformers model enlarged explicitly (resize_token_embeddings, then the new
rows copied in): outputs and the gradients of the new rows must match it.
"""
import copy
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import aios

K = 3  # new tokens in most tests
TOKENS = ["<sox>", "<eox>", "<pad-x>"]


def enlarged(reference, embedding_rows, classifier_rows):
    """A copy of `reference` with K more vocabulary rows holding the given ones."""
    model = copy.deepcopy(reference).requires_grad_(True)  # other tests may have frozen the shared reference
    V = model.config.vocab_size
    model.resize_token_embeddings(V + len(embedding_rows))
    with torch.no_grad():
        model.get_input_embeddings().weight[V:] = embedding_rows
        model.get_output_embeddings().weight[V:] = classifier_rows
    return model


def random_rows(D, tied, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(K, D, generator=g) * 0.5
    cls = emb.clone() if tied else torch.randn(K, D, generator=g) * 0.5
    return emb, cls


def ids_with_new_tokens(V, B=2, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    ids[0, 2], ids[0, 5], ids[1, 1], ids[1, 7] = V, V + 1, V + 2, V
    return ids


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2", "qwen3_window", "gpt2_untied_sharded"])
def test_outputs_and_row_gradients_match_an_enlarged_transformers_model(checkpoints, name):
    ckpt = checkpoints[name]
    backbone = aios.Backbone.load(ckpt.path)
    V, D = backbone.config.vocab_size, backbone.config.hidden_size
    tied = backbone.config.tie_word_embeddings
    emb, cls = random_rows(D, tied)
    ext = backbone.extend(TOKENS, init=(emb, cls))
    assert ext.first_id == V and ext.ids == [V, V + 1, V + 2] and len(ext) == K
    ref = enlarged(ckpt.reference, emb, cls)
    ids = ids_with_new_tokens(V)
    targets = ids_with_new_tokens(V, seed=2).roll(1, dims=1)

    # Forward: embeddings and logits over V+K.
    latents = backbone.embed(ids, extension=ext)
    torch.testing.assert_close(latents, ref.get_input_embeddings()(ids), rtol=0, atol=0)
    logits = backbone.classify(backbone.forward(latents).hidden, extension=ext)
    ref_logits = ref(input_ids=ids).logits
    assert logits.shape == (2, 9, V + K)
    torch.testing.assert_close(logits, ref_logits.detach(), rtol=1e-4, atol=1e-4)

    # Cross-entropy gradients of the new rows (a tied reference sums both uses into one row).
    loss = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, V + K), targets.reshape(-1))
    loss.backward()
    ref_emb_grad = ref.get_input_embeddings().weight.grad[V:]
    ref_cls_grad = ref.get_output_embeddings().weight.grad[V:]
    for recompute in (False, True):
        fused = backbone.forward_backward(latents, targets=targets, extension=ext, ids=ids, recompute=recompute,
                                          chunk_tokens=5)
        torch.testing.assert_close(fused.loss, loss.detach(), rtol=1e-5, atol=1e-5)
        if tied:
            torch.testing.assert_close(fused.grad_embedding_rows + fused.grad_classifier_rows, ref_emb_grad,
                                       rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(fused.grad_embedding_rows, ref_emb_grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(fused.grad_classifier_rows, ref_cls_grad, rtol=1e-4, atol=1e-5)

    # VJP of arbitrary logits cotangents, kept and stateless.
    g = torch.randn(2, 9, V + K, generator=torch.Generator().manual_seed(3))
    ref.zero_grad()
    (ref(input_ids=ids).logits * g).sum().backward()
    want_emb = ref.get_input_embeddings().weight.grad[V:]
    want_cls = ref.get_output_embeddings().weight.grad[V:]
    for recompute in (False, True):
        out = backbone.forward(latents, keep=True, recompute=recompute, extension=ext, ids=ids)
        kept = backbone.vjp(out.handle, grad_logits=g)
        backbone.release(out.handle)
        stateless = backbone.vjp(latents, grad_logits=g, extension=ext, ids=ids, recompute=recompute)
        for grads in (kept, stateless):
            assert isinstance(grads, aios.Gradients)
            got = grads.embedding_rows + grads.classifier_rows if tied else grads.embedding_rows
            torch.testing.assert_close(got, want_emb, rtol=1e-4, atol=1e-4)
            if not tied:
                torch.testing.assert_close(grads.classifier_rows, want_cls, rtol=1e-4, atol=1e-4)


def test_distillation_spans_the_extension(checkpoints):
    backbone = aios.Backbone.load(checkpoints["llama_gqa"].path)
    V = backbone.config.vocab_size
    ext = backbone.extend(TOKENS)
    latents = backbone.embed(ids_with_new_tokens(V), extension=ext)
    teacher = torch.randn(2, 9, V + K)
    out = backbone.forward_backward(latents, teacher_logits=teacher, extension=ext)
    assert out.grad_classifier_rows.shape == (K, backbone.config.hidden_size)
    assert out.grad_embedding_rows is None  # no ids: their positions are unknown
    with pytest.raises(aios.InvalidArgumentError) as e:
        backbone.forward_backward(latents, teacher_logits=teacher)  # V+K logits without the extension
    assert e.value.field == "teacher_logits"


def test_initialisation_and_independent_extensions(checkpoints):
    ckpt = checkpoints["llama_gqa"]
    backbone = aios.Backbone.load(ckpt.path)
    V = backbone.config.vocab_size
    base_emb = ckpt.reference.get_input_embeddings().weight.detach()
    base_head = ckpt.reference.get_output_embeddings().weight.detach()
    mean = backbone.extend(["<a>", "<b>"])
    torch.testing.assert_close(mean.embedding_rows.detach(), base_emb.mean(0).expand(2, -1))
    torch.testing.assert_close(mean.classifier_rows.detach(), base_head.mean(0).expand(2, -1))
    copied = backbone.extend(["<a>"], init=7)  # the same string in another extension is fine
    assert torch.equal(copied.embedding_rows.detach()[0], base_emb[7])
    assert torch.equal(copied.classifier_rows.detach()[0], base_head[7])
    # Each call names its extension; ids past the base go to that one's rows.
    ids = torch.tensor([[V, 3]])
    assert torch.equal(backbone.embed(ids, extension=copied)[0, 0], base_emb[7])
    assert torch.equal(backbone.embed(ids, extension=mean)[0, 0], mean.embedding_rows.detach()[0])
    with pytest.raises(aios.InvalidArgumentError) as e:
        backbone.embed(torch.tensor([[V + 1]]), extension=copied)  # copied has one token
    assert e.value.field == "ids"
    with pytest.raises(aios.InvalidArgumentError):
        backbone.embed(ids)  # no extension named: V is out of range
    for bad, field in ((V, "init.token"), ((torch.zeros(2, 5), torch.zeros(2, 5)), "init.embedding_rows")):
        with pytest.raises(aios.InvalidArgumentError) as e:
            backbone.extend(["<a>", "<b>"], init=bad)
        assert e.value.field == field
    for tokens in ([], ["<a>", "<a>"], [""]):
        with pytest.raises(aios.InvalidArgumentError) as e:
            backbone.extend(tokens)
        assert e.value.field == "tokens"
    other = aios.Backbone.load(checkpoints["qwen2"].path)
    with pytest.raises(aios.InvalidArgumentError) as e:
        other.classify(torch.zeros(1, other.config.hidden_size), extension=mean)
    assert e.value.field == "extension"


def test_training_moves_only_the_new_rows_and_the_loss_falls(checkpoints):
    """A task only the new tokens can solve: after base token 5 comes <sox>, after <sox> comes <eox>."""
    backbone = aios.Backbone.load(checkpoints["llama_gqa"].path)
    V = backbone.config.vocab_size
    ext = backbone.extend(["<sox>", "<eox>"])
    sox, eox = ext.ids
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, V, (4, 10), generator=g)
    ids[:, 3], ids[:, 4], ids[:, 5] = 5, sox, eox
    targets = torch.full_like(ids, -100)
    weights = torch.zeros(ids.shape)
    targets[:, 3], targets[:, 4] = sox, eox  # position t predicts ids[t+1]
    weights[:, 3] = weights[:, 4] = 1.0

    probe = torch.randint(0, V, (2, 6), generator=g)
    before = backbone.forward(backbone.embed(probe)).hidden
    base_logits = backbone.classify(before)
    rows_before = [p.detach().clone() for p in ext.parameters()]

    opt = torch.optim.Adam(ext.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        latents = backbone.embed(ids, extension=ext)
        out = backbone.forward_backward(latents, targets=targets, weights=weights, extension=ext, ids=ids)
        ext.embedding_rows.grad = out.grad_embedding_rows
        ext.classifier_rows.grad = out.grad_classifier_rows
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    for p, old in zip(ext.parameters(), rows_before):
        assert not torch.equal(p.detach(), old)
    # The base answers exactly as before: its tables and blocks were not written.
    after = backbone.forward(backbone.embed(probe)).hidden
    assert torch.equal(after, before) and torch.equal(backbone.classify(after), base_logits)
    # The trained rows are what the next call uses: <sox> now follows 5.
    logits = backbone.classify(backbone.forward(backbone.embed(ids, extension=ext)).hidden, extension=ext)
    assert (logits[:, 3].argmax(-1) == sox).all() and (logits[:, 4].argmax(-1) == eox).all()


def test_save_load_round_trip_is_bit_exact(checkpoints, tmp_path):
    backbone = aios.Backbone.load(checkpoints["gpt2"].path)
    ext = backbone.extend(TOKENS, init=random_rows(backbone.config.hidden_size, tied=False))
    ext.save(tmp_path / "ext")
    files = sorted(p.name for p in (tmp_path / "ext").iterdir())
    assert files[0] == "extension.json" and len(files) == 2 and files[1].startswith("rows-")
    back = aios.Extension.load(backbone, tmp_path / "ext")
    assert back.tokens == TOKENS and back.ids == ext.ids
    assert torch.equal(back.embedding_rows, ext.embedding_rows)
    assert torch.equal(back.classifier_rows, ext.classifier_rows)
    assert back.embedding_rows.requires_grad  # ready for torch.optim
    # Saving again replaces the rows file; the folder holds one generation.
    with torch.no_grad():
        back.embedding_rows.add_(1.0)
    back.save(tmp_path / "ext")
    assert len(list((tmp_path / "ext").iterdir())) == 2
    again = aios.Extension.load(backbone, tmp_path / "ext")
    assert torch.equal(again.embedding_rows, back.embedding_rows)
    # Another dtype of the same base model: rows converted, identity accepted.
    bf16 = aios.Backbone.load(checkpoints["gpt2"].path, dtype="bfloat16")
    low = aios.Extension.load(bf16, tmp_path / "ext")
    assert low.embedding_rows.dtype == torch.bfloat16


def test_load_rejects_other_models_and_corrupt_manifests(checkpoints, tmp_path):
    import json

    backbone = aios.Backbone.load(checkpoints["llama_gqa"].path)
    backbone.extend(TOKENS).save(tmp_path / "ext")
    # Same architecture and sizes, other weights; another architecture; another hidden size.
    for other in ("llama_linear_rope", "qwen2", "gpt2"):
        with pytest.raises(aios.FailedPreconditionError, match="another base model"):
            aios.Extension.load(aios.Backbone.load(checkpoints[other].path), tmp_path / "ext")
    # A model of hidden size 16 (the valid GGUF fixture) against rows of 64: the message says both.
    small = aios.Backbone.load(Path(__file__).resolve().parents[1] / "data/gguf/valid.gguf")
    with pytest.raises(aios.FailedPreconditionError, match="hidden size 64.*hidden size 16"):
        aios.Extension.load(small, tmp_path / "ext")
    manifest = tmp_path / "ext" / "extension.json"
    good = json.loads(manifest.read_text())

    def tampered(change, error):
        m = copy.deepcopy(good)
        change(m)
        manifest.write_text(json.dumps(m))
        with pytest.raises(error):
            aios.Extension.load(backbone, tmp_path / "ext")

    tampered(lambda m: m.update(tokens=["<a>", "<a>", "<b>"]), aios.DataLossError)
    tampered(lambda m: m.update(tokens=["<a>", "<b>"]), aios.DataLossError)  # rows are [3,D]
    tampered(lambda m: m.update(rows="../../etc/passwd"), aios.DataLossError)
    tampered(lambda m: m.update(hidden_size=65), aios.DataLossError)
    tampered(lambda m: m["base"].update(hidden_size=65) or m.update(hidden_size=65), aios.FailedPreconditionError)
    tampered(lambda m: m.update(version="1"), aios.DataLossError)
    manifest.write_text("{not json")
    with pytest.raises(aios.DataLossError):
        aios.Extension.load(backbone, tmp_path / "ext")
    with pytest.raises(aios.NotFoundError):
        aios.Extension.load(backbone, tmp_path / "nowhere")


def test_extension_tokenizer_and_tokens_already_in_the_base(default_model, tmp_path):
    backbone = aios.Backbone.load(default_model)
    base = backbone.tokenizer
    V = backbone.config.vocab_size
    ext = backbone.extend(["<sox>", "<eox>"])
    tok = ext.tokenizer
    ids = tok.encode("Say <sox>hello<eox> twice", add_special_tokens=False)
    assert V in ids and V + 1 in ids
    assert ids == (base.encode("Say ", add_special_tokens=False) + [V] + base.encode("hello", add_special_tokens=False)
                   + [V + 1] + base.encode(" twice", add_special_tokens=False))
    assert tok.decode(ids) == "Say <sox>hello<eox> twice"
    assert tok.decode(ids, skip_special_tokens=True) == "Say hello twice"
    logits = backbone.classify(backbone.forward(backbone.embed(torch.tensor([ids]), extension=ext)).hidden,
                               extension=ext)
    assert logits.shape[-1] == V + 2
    for taken in (["<|im_start|>"], ["<sox>", "hello"]):
        with pytest.raises(aios.AlreadyExistsError):
            backbone.extend(taken)
    # The same check applies when an extension is loaded.
    ext.save(tmp_path / "ext")
    manifest = tmp_path / "ext" / "extension.json"
    manifest.write_text(manifest.read_text().replace('"<eox>"', '"<|im_end|>"'))
    with pytest.raises(aios.AlreadyExistsError):
        aios.Extension.load(backbone, tmp_path / "ext")


SAVER = r"""
import os, sys, torch, aios, aios.adapters
backbone = aios.Backbone.load(sys.argv[1])
ext = backbone.extend([f"<t{i}>" for i in range(512)])
decoder = aios.adapters.LinearDecoder(backbone.config.hidden_size, 1024)
progress = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
version = int(sys.argv[4])
while True:
    version += 1
    with torch.no_grad():
        ext.embedding_rows.fill_(version)
        ext.classifier_rows.fill_(-version)
        for p in decoder.parameters():
            p.fill_(version)
    os.write(progress, f"e {version}\n".encode())  # one write each: what the file says has happened
    ext.save(os.path.join(sys.argv[2], "ext"))
    os.write(progress, f"E {version}\n".encode())
    os.write(progress, f"d {version}\n".encode())
    aios.adapters.save_decoder(decoder, os.path.join(sys.argv[2], "decoder"))
    os.write(progress, f"D {version}\n".encode())
"""


def _progress(path):
    """The last version begun and ended of each save: {"e": .., "E": .., "d": .., "D": ..}."""
    last = {"e": 0, "E": 0, "d": 0, "D": 0}
    for line in path.read_text().splitlines():
        what, version = line.split()
        last[what] = int(version)
    return last


@pytest.mark.slow
def test_a_killed_save_leaves_the_previous_version_or_the_new_one(checkpoints, tmp_path):
    """A writer killed at random moments, saving an extension (ext.save) and a decoder
    (aios.adapters.save_decoder) in turn: each folder loads, and holds exactly the version whose
    save ended last or the one that had begun."""
    path = checkpoints["llama_gqa"].path
    backbone = aios.Backbone.load(path)
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    rng = random.Random(20240613)
    for attempt in range(6):
        progress = tmp_path / f"progress{attempt}"
        first = 1000 * attempt  # versions no earlier attempt wrote
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(tmp_path), str(progress), str(first)])
        deadline = time.monotonic() + 120
        while not progress.exists() or _progress(progress)["D"] <= first:  # both saved once by this writer
            assert proc.poll() is None, "the saver died"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last = _progress(progress)
        ext = aios.Extension.load(backbone, tmp_path / "ext")
        version = ext.embedding_rows[0, 0].item()
        assert version in (last["E"], last["e"]), last
        assert torch.equal(ext.embedding_rows, torch.full_like(ext.embedding_rows, version))
        assert torch.equal(ext.classifier_rows, torch.full_like(ext.classifier_rows, -version))
        decoder = aios.adapters.load_decoder(tmp_path / "decoder")
        weights = next(decoder.parameters()).flatten()[0].item()
        assert weights in (last["D"], last["d"]), last
        for p in decoder.parameters():
            assert torch.equal(p, torch.full_like(p, weights))
    # The next saves remove what killed writers left behind.
    ext.save(tmp_path / "ext")
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "ext").iterdir()) == ["extension.json", "rows"]
    aios.adapters.save_decoder(decoder, tmp_path / "decoder")
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "decoder").iterdir()) == ["decoder", "decoder.json"]

"""The Gradient API against transformers' autograd, finite differences and itself."""
import time

import pytest
import torch
import torch.nn.functional as F

import aios

from conftest import RECURRENT, VOCAB

REL = 1e-4


def rel_err(got, want):
    return ((got - want).norm() / want.norm()).item()


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def additive(mask):
    """A boolean [B,T,T] mask as the float [B,1,T,T] additive mask transformers takes as given."""
    return torch.zeros(mask.shape[0], 1, *mask.shape[1:]).masked_fill(~mask[:, None], torch.finfo(torch.float32).min)


def masks(kind, B, T):
    """(aios mask, transformers attention_mask) for the named layout."""
    if kind == "causal":
        return None, None
    if kind == "padding":
        m = torch.ones(B, T, dtype=torch.bool)
        m[1, T - 3:] = False
        return m, m.long()
    g = aios.gist_mask(T, [2, 3], [4, 5])
    return g, additive(g)


def refuses_gist_masks(backbone):
    """Recurrent layers cannot hide gist-compressed slots: every call with a [B,T,T] mask is refused."""
    latents = backbone.embed(torch.randint(0, VOCAB, (2, 10)))
    mask, _ = masks("gist", 2, 10)
    for call in (lambda: backbone.forward(latents, mask=mask, keep=True),
                 lambda: backbone.vjp(latents, mask=mask, grad_hidden=torch.ones_like(latents)),
                 lambda: backbone.forward_backward(latents, targets=torch.zeros(2, 10, dtype=torch.long), mask=mask)):
        with pytest.raises(aios.InvalidArgumentError, match="mask"):
            call()


@pytest.fixture(scope="module")
def backbones(checkpoints):
    return {name: aios.Backbone.load(c.path) for name, c in checkpoints.items()}


@pytest.mark.parametrize("mask_kind", ["causal", "padding", "gist"])
def test_vjp_matches_transformers_for_every_cotangent(checkpoint, backbones, mask_kind):
    backbone, ref = backbones[checkpoint.name], frozen(checkpoint.reference)
    if mask_kind == "gist" and checkpoint.name in RECURRENT:
        return refuses_gist_masks(backbone)
    torch.manual_seed(5)
    B, T, D = 2, 10, backbone.config.hidden_size
    latents = backbone.embed(torch.randint(0, VOCAB, (B, T)))
    mask, ref_mask = masks(mask_kind, B, T)
    g_hidden, g_layer, g_logits = torch.randn(B, T, D), torch.randn(B, T, D), torch.randn(B, T, VOCAB)
    if mask_kind == "padding":  # cotangents only at real tokens: padding positions carry no meaning
        for g in (g_hidden, g_layer, g_logits):
            g[~mask] = 0

    x = latents.clone().requires_grad_(True)
    out = ref(inputs_embeds=x, attention_mask=ref_mask, output_hidden_states=True)
    for name, cot, target in (("hidden", g_hidden, out.hidden_states[-1]), ("layer", g_layer, out.hidden_states[2]),
                              ("logits", g_logits, out.logits)):
        want = torch.autograd.grad(target, x, cot, retain_graph=True)[0]
        kept = backbone.forward(latents, mask=mask, layers=[2], keep=True)
        kwargs = {"grad_hidden": cot} if name == "hidden" else \
            {"grad_layers": [cot]} if name == "layer" else {"grad_logits": cot}
        got = backbone.vjp(kept.handle, **kwargs)
        backbone.release(kept.handle)
        assert rel_err(got, want) <= REL, name
        stateless = backbone.vjp(latents, mask=mask, layers=[2], **kwargs)
        assert rel_err(stateless, want) <= REL, name
    if isinstance(backbone, aios.LocalBackbone):  # a host's store is not visible to its callers
        assert backbone.store_size == 0 and backbone.store_bytes == 0


@pytest.mark.parametrize("mask_kind", ["causal", "padding", "gist"])
def test_fused_losses_match_transformers(checkpoint, backbones, mask_kind):
    backbone, ref = backbones[checkpoint.name], frozen(checkpoint.reference)
    if mask_kind == "gist" and checkpoint.name in RECURRENT:
        return refuses_gist_masks(backbone)
    torch.manual_seed(6)
    B, T = 2, 10
    latents = backbone.embed(torch.randint(0, VOCAB, (B, T)))
    mask, ref_mask = masks(mask_kind, B, T)
    targets = torch.randint(0, VOCAB, (B, T))
    weights = torch.rand(B, T)
    if mask_kind == "padding":
        weights[~mask] = 0
        targets[~mask] = -100  # ignored where the weight is 0
    teacher = torch.randn(B, T, VOCAB) * 3

    x = latents.clone().requires_grad_(True)
    logits = ref(inputs_embeds=x, attention_mask=ref_mask).logits
    ce = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1).clamp(min=0), reduction="none").view(B, T)
    ce_loss = (ce * weights).sum() / weights.sum()
    want_ce = torch.autograd.grad(ce_loss, x, retain_graph=True)[0]
    p = torch.softmax(teacher / 2.0, -1)
    kl = (p * (p.log() - torch.log_softmax(logits / 2.0, -1))).sum(-1)
    kl_loss = (kl * weights).sum() / weights.sum()
    want_kl = torch.autograd.grad(kl_loss, x)[0]

    got = backbone.forward_backward(latents, targets=targets, weights=weights, mask=mask, chunk_tokens=7)
    assert got.loss.item() == pytest.approx(ce_loss.item(), rel=1e-5)
    assert torch.allclose(got.losses, (ce * weights).sum(1) / weights.sum(1), rtol=1e-5)
    assert rel_err(got.grad_latents, want_ce) <= REL
    got = backbone.forward_backward(latents, teacher_logits=teacher, temperature=2.0, weights=weights, mask=mask)
    assert got.loss.item() == pytest.approx(kl_loss.item(), rel=1e-5)
    assert rel_err(got.grad_latents, want_kl) <= REL
    got = backbone.forward_backward(latents, teacher_probs=p, temperature=2.0, weights=weights, mask=mask)
    assert rel_err(got.grad_latents, want_kl) <= REL


def test_cross_entropy_ignores_targets_of_minus_100_as_torch_does(backbones):
    backbone = backbones["llama_gqa"]
    torch.manual_seed(9)
    latents = backbone.embed(torch.randint(0, VOCAB, (2, 8)))
    targets = torch.randint(0, VOCAB, (2, 8))
    targets[0, :3] = -100
    targets[1, 5:] = -100
    logits = backbone.classify(backbone.forward(latents).hidden)
    want = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))  # ignore_index=-100
    got = backbone.forward_backward(latents, targets=targets)
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-5)
    weights = torch.rand(2, 8)
    weighted = backbone.forward_backward(latents, targets=targets, weights=weights)
    kept = targets.ne(-100)
    same = backbone.forward_backward(latents, targets=targets.where(kept, 0), weights=weights * kept)
    assert weighted.loss.item() == pytest.approx(same.loss.item(), rel=1e-6)
    assert torch.equal(weighted.grad_latents, same.grad_latents)
    with pytest.raises(aios.InvalidArgumentError, match="targets"):
        backbone.forward_backward(latents, targets=torch.full((2, 8), -100))
    with pytest.raises(aios.InvalidArgumentError, match="targets"):  # other negatives are still refused
        backbone.forward_backward(latents, targets=targets.where(kept, -1))


def test_fused_agrees_with_handle_form_and_unchunked_reference(backbones):
    backbone = backbones["llama_gqa"]
    torch.manual_seed(7)
    latents = backbone.embed(torch.randint(0, VOCAB, (3, 12)))
    targets = torch.randint(0, VOCAB, (3, 12))
    # Unchunked: full logits, loss in torch, its logits gradient handed to vjp.
    kept = backbone.forward(latents, keep=True)
    logits = backbone.classify(kept.hidden).requires_grad_(True)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    grad_logits = torch.autograd.grad(loss, logits)[0]
    handle_form = backbone.vjp(kept.handle, grad_logits=grad_logits)
    backbone.release(kept.handle)
    for chunk in (1, 5, 36, 10_000):
        fused = backbone.forward_backward(latents, targets=targets, chunk_tokens=chunk)
        assert fused.loss.item() == pytest.approx(loss.item(), rel=1e-6)
        assert rel_err(fused.grad_latents, handle_form) <= 1e-5


def test_self_distillation_from_teacher_latents(backbones):
    """The gist set-up: the teacher sees prompt + continuation, the student gist slots + continuation."""
    backbone = backbones["llama_gqa"]
    torch.manual_seed(8)
    prompt, rest = torch.randint(0, VOCAB, (2, 6)), torch.randint(0, VOCAB, (2, 4))
    teacher = backbone.embed(torch.cat([prompt, rest], 1))           # [2,10,D]
    gist = torch.randn(2, 2, backbone.config.hidden_size) * 0.5      # 2 trainable slots
    student = torch.cat([gist, backbone.embed(rest)], 1)             # [2,6,D]
    index = torch.tensor([[-1, 5, 6, 7, 8, 9]] * 2)                  # student t predicts like teacher index[t]
    got = backbone.forward_backward(student, teacher_latents=teacher, teacher_index=index)
    # Reference: teacher probabilities computed separately, given as teacher_probs.
    probs = torch.softmax(backbone.classify(backbone.forward(teacher).hidden), -1)
    gathered = torch.zeros(2, 6, VOCAB)
    gathered[:, 1:] = probs[:, 5:]
    weights = (index >= 0).float()
    want = backbone.forward_backward(student, teacher_probs=gathered, weights=weights)
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-5)
    assert rel_err(got.grad_latents, want.grad_latents) <= 1e-5
    assert got.grad_latents[:, 0].abs().sum() > 0  # gist slots receive gradient through attention


def test_gradients_hidden_by_the_mask_are_exactly_zero(backbones):
    backbone = backbones["llama_gqa"]
    targets = torch.randint(0, VOCAB, (2, 9))
    # Padding keys are hidden from every query; padded positions are not scored.
    latents = backbone.embed(torch.randint(0, VOCAB, (2, 9)))
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[1, 6:] = False
    g = backbone.forward_backward(latents, targets=targets, weights=padding.float(), mask=padding).grad_latents
    assert torch.equal(g[1, 6:], torch.zeros_like(g[1, 6:]))
    assert g[1, :6].abs().min() > 0
    # Two sequences packed in one row, only the second scored: the first gets exactly nothing.
    packed = torch.zeros(1, 9, 9, dtype=torch.bool)
    packed[0, :4, :4] = torch.ones(4, 4).tril().bool()
    packed[0, 4:, 4:] = torch.ones(5, 5).tril().bool()
    weights = torch.zeros(1, 9)
    weights[0, 4:] = 1
    g = backbone.forward_backward(latents[:1], targets=targets[:1], weights=weights, mask=packed).grad_latents
    assert torch.equal(g[0, :4], torch.zeros_like(g[0, :4]))
    assert g[0, 4:].abs().sum() > 0


@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "qwen2", "qwen3_window", "qwen3_moe", "gemma2"])
def test_gradcheck_through_the_torch_bridge(checkpoints, name):
    backbone = aios.Backbone.load(checkpoints[name].path, dtype="float64")
    latents = backbone.embed(torch.randint(0, VOCAB, (1, 4))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: aios.torch.forward(backbone, x), (latents,))
    mask = torch.tensor([[True, True, True, False]])
    positions = torch.tensor([[0, 2, 3, 5]])
    assert torch.autograd.gradcheck(lambda x: aios.torch.forward(backbone, x, positions, mask), (latents,))


def test_upstream_module_trains_through_the_backbone(backbones):
    """An ordinary PyTorch projection trained with torch.optim, through the bridge and the fused call."""
    backbone = backbones["llama_gqa"]
    torch.manual_seed(9)
    features = torch.randn(4, 6, 16)
    goal = backbone.forward(backbone.embed(torch.randint(0, VOCAB, (4, 6)))).hidden
    targets = torch.randint(0, VOCAB, (4, 6))

    def train(step):
        torch.manual_seed(10)
        projection = torch.nn.Linear(16, backbone.config.hidden_size)
        optimizer = torch.optim.Adam(projection.parameters(), lr=5e-2)
        losses = []
        for _ in range(40):
            losses.append(step(projection))
            optimizer.step()
            optimizer.zero_grad()
        return losses

    def bridge_step(projection):  # loss.backward() flows through the backbone into the projection
        loss = F.mse_loss(aios.torch.forward(backbone, projection(features)), goal)
        loss.backward()
        return loss.item()

    def fused_step(projection):  # the fused call's gradient fed back into the projection's graph
        latents = projection(features)
        fused = backbone.forward_backward(latents.detach(), targets=targets)
        latents.backward(fused.grad_latents)
        return fused.loss.item()

    # Random targets through a random tiny model bound how far cross-entropy can fall.
    for step, factor in ((bridge_step, 0.5), (fused_step, 0.85)):
        losses = train(step)
        assert losses[-1] < factor * losses[0], (step.__name__, losses[0], losses[-1])
    if isinstance(backbone, aios.LocalBackbone):
        assert backbone.store_size == 0  # the bridge's kept passes went with their graphs


def test_activation_store_budget_ttl_and_release(checkpoints):
    path = checkpoints["llama_gqa"].path
    probe = aios.Backbone.load(path)
    latents = probe.embed(torch.randint(0, VOCAB, (1, 8)))
    one = probe.forward(latents, keep=True)
    size = probe.store_bytes
    assert size > 0
    probe.release(one.handle)
    assert probe.store_bytes == 0 and probe.store_size == 0
    with pytest.raises(aios.NotFoundError):
        probe.vjp(one.handle, grad_hidden=torch.ones_like(one.hidden))

    backbone = aios.Backbone.load(path, store_bytes=2 * size + size // 2)
    first, second = (backbone.forward(latents, keep=True) for _ in range(2))
    backbone.vjp(first.handle, grad_hidden=torch.ones_like(first.hidden))  # first is now the most recent
    third = backbone.forward(latents, keep=True)                          # evicts second, the least recent
    assert backbone.store_size == 2
    with pytest.raises(aios.NotFoundError):
        backbone.vjp(second.handle, grad_hidden=torch.ones_like(first.hidden))
    backbone.vjp(first.handle, grad_hidden=torch.ones_like(first.hidden))
    backbone.vjp(third.handle, grad_hidden=torch.ones_like(first.hidden))
    with pytest.raises(aios.ResourceExhaustedError) as info:
        backbone.forward(backbone.embed(torch.randint(0, VOCAB, (4, 8))), keep=True)
    assert info.value.field == "activation_store"
    with pytest.raises(aios.InvalidArgumentError) as info:
        probe.vjp(first.handle, grad_hidden=torch.ones_like(first.hidden))
    assert "another backbone" in str(info.value)

    short = aios.Backbone.load(path, store_ttl=0.05)
    kept = short.forward(latents, keep=True)
    time.sleep(0.1)
    with pytest.raises(aios.NotFoundError):
        short.vjp(kept.handle, grad_hidden=torch.ones_like(kept.hidden))
    assert short.store_size == 0


def test_bad_gradient_input_is_an_error_and_changes_nothing(backbones, checkpoints):
    backbone = backbones["llama_gqa"]
    latents = backbone.embed(torch.randint(0, VOCAB, (2, 5)))
    kept = backbone.forward(latents, keep=True, layers=[1])
    ones = torch.ones_like(kept.hidden)
    before = backbone.vjp(kept.handle, grad_hidden=ones)
    targets = torch.randint(0, VOCAB, (2, 5))
    cases = [
        ("cotangents.hidden", lambda: backbone.vjp(kept.handle, grad_hidden=ones[:, :4]), "[2,5,64]"),
        ("cotangents.hidden", lambda: backbone.vjp(kept.handle, grad_hidden=ones.double()), "float64"),
        ("cotangents.layers", lambda: backbone.vjp(kept.handle, grad_layers=[ones, ones]), "at most 1"),
        ("cotangents.logits", lambda: backbone.vjp(kept.handle, grad_logits=torch.ones(2, 5, VOCAB + 1)), "101"),
        ("targets", lambda: backbone.forward_backward(latents, targets=targets + VOCAB), f"[0, {VOCAB})"),
        ("targets", lambda: backbone.forward_backward(latents, targets=targets[:, :3]), "[2,5]"),
        ("targets", lambda: backbone.forward_backward(latents, targets=targets.float()), "integer"),
        ("weights", lambda: backbone.forward_backward(latents, targets=targets, weights=torch.ones(2, 4)), "[2,5]"),
        ("weights", lambda: backbone.forward_backward(latents, targets=targets, weights=-torch.ones(2, 5)), ">= 0"),
        ("weights", lambda: backbone.forward_backward(latents, targets=targets, weights=torch.zeros(2, 5)), "positive"),
        ("teacher_logits", lambda: backbone.forward_backward(latents, teacher_logits=torch.ones(2, 5, 7)), "[2,5,101]"),
        ("teacher_index", lambda: backbone.forward_backward(latents, teacher_latents=latents[:, :3]), "length"),
        ("temperature", lambda: backbone.forward_backward(latents, teacher_logits=torch.ones(2, 5, VOCAB),
                                                          temperature=0.0), "> 0"),
        ("chunk_tokens", lambda: backbone.forward_backward(latents, targets=targets, chunk_tokens=0), ">= 1"),
        ("targets", lambda: backbone.forward_backward(latents), "either"),
        ("handle", lambda: backbone.vjp(kept.handle + 12345, grad_hidden=ones), "unknown"),
        ("teacher_index", lambda: backbone.forward_backward(latents, teacher_logits=torch.ones(2, 5, VOCAB),
                                                            teacher_index=torch.zeros(2, 5, dtype=torch.long)),
         "teacher_latents only"),
    ]
    for field, call, text in cases:
        with pytest.raises(aios.Error) as info:
            call()
        assert info.value.field == field, str(info.value)
        assert text in str(info.value), str(info.value)
    with torch.inference_mode():
        with pytest.raises(aios.InvalidArgumentError, match="inference_mode"):
            backbone.forward(latents, keep=True)
    with pytest.raises(aios.InvalidArgumentError, match="store_ttl"):
        aios.Backbone.load(checkpoints["llama_gqa"].path, store_ttl=0)
    assert torch.equal(backbone.vjp(kept.handle, grad_hidden=ones), before)
    backbone.release(kept.handle)



def test_recompute_gives_the_same_gradients_for_less_memory(checkpoint, backbones):
    backbone = backbones[checkpoint.name]
    torch.manual_seed(11)
    B, T, D = 2, 10, backbone.config.hidden_size
    latents = backbone.embed(torch.randint(0, VOCAB, (B, T)))
    mask, _ = masks("padding", B, T)
    cot = dict(grad_hidden=torch.randn(B, T, D), grad_layers=[torch.randn(B, T, D), None, torch.randn(B, T, D)],
               grad_logits=torch.randn(B, T, VOCAB))
    layers = [0, 1, backbone.config.num_layers]
    grads, sizes = {}, {}
    for recompute in (False, True):
        kept = backbone.forward(latents, mask=mask, layers=layers, keep=True, recompute=recompute)
        sizes[recompute] = backbone.store_bytes
        grads[recompute] = backbone.vjp(kept.handle, **cot)
        backbone.release(kept.handle)
    assert rel_err(grads[True], grads[False]) <= 1e-5
    assert sizes[True] < sizes[False] / 3
    targets = torch.randint(0, VOCAB, (B, T))
    fused = [backbone.forward_backward(latents, targets=targets, mask=mask, recompute=r) for r in (False, True)]
    assert fused[0].loss.item() == pytest.approx(fused[1].loss.item(), rel=1e-6)
    assert rel_err(fused[1].grad_latents, fused[0].grad_latents) <= 1e-5
    stateless = backbone.vjp(latents, mask=mask, layers=layers, recompute=True, **cot)
    assert rel_err(stateless, grads[False]) <= 1e-5


def test_teachers_are_checked_before_any_work(backbones):
    backbone = backbones["llama_gqa"]
    latents = backbone.embed(torch.randint(0, VOCAB, (2, 5)))
    bad_probs = torch.full((2, 5, VOCAB), 0.5)
    with pytest.raises(aios.InvalidArgumentError, match="summing to 1"):
        backbone.forward_backward(latents, teacher_probs=bad_probs)
    with pytest.raises(aios.InvalidArgumentError, match="finite"):
        backbone.forward_backward(latents, teacher_logits=torch.full((2, 5, VOCAB), float("nan")))
    with pytest.raises(aios.InvalidArgumentError) as info:
        backbone.forward_backward(latents, teacher_latents=latents[:1])
    assert info.value.field == "teacher_latents"

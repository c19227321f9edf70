"""The same Latent and Gradient calls against a backbone hosted by `aios serve` on loopback and
against the same checkpoint in-process: equal results (the host computes in float32 and sends
its bytes as they are), the torch bridge included, and the host's errors as the same exceptions."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aios


@pytest.fixture(scope="module")
def pair(checkpoints):
    path = checkpoints["llama_gqa"].path
    with aios.serve(path) as host:
        yield aios.Backbone.load(path), aios.connect(host, timeout=60)


def test_both_are_backbones_with_the_same_description(pair):
    local, remote = pair
    assert isinstance(remote, aios.Backbone) and isinstance(remote, aios.RemoteBackbone)
    assert isinstance(local, aios.LocalBackbone)
    for name in ("architecture", "vocab_size", "hidden_size", "num_layers", "max_positions"):
        assert getattr(remote.config, name) == getattr(local.config, name), name
    assert remote.dtype == "float32" and remote.device == "cpu"


def test_latent_and_gradient_calls_agree(pair):
    local, remote = pair
    torch.manual_seed(0)
    V, D = local.config.vocab_size, local.config.hidden_size
    ids = torch.randint(0, V, (2, 7))
    assert torch.equal(remote.embed(ids), local.embed(ids))
    latents = local.embed(ids) + 0.01 * torch.randn(2, 7, D)
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5], dtype=torch.bool)
    want, got = local.forward(latents, mask=mask, layers=[1]), remote.forward(latents, mask=mask, layers=[1])
    assert torch.equal(got.hidden, want.hidden) and torch.equal(got.layers[0], want.layers[0])
    assert torch.equal(remote.classify(got.hidden), local.classify(want.hidden))

    g = torch.randn(2, 7, D)
    assert remote.store_size == 0 and remote.store_bytes == 0  # the caller's passes on the host
    kept = remote.forward(latents, mask=mask, keep=True)
    before = local.store_bytes
    mine = local.forward(latents, mask=mask, keep=True)
    assert remote.store_size == 1 and remote.store_bytes == local.store_bytes - before > 0  # the same estimate
    local.release(mine.handle)
    grad = remote.vjp(kept.handle, grad_hidden=g)
    assert torch.allclose(grad, local.vjp(latents, mask=mask, grad_hidden=g), atol=1e-6)
    remote.release(kept.handle)
    assert remote.store_size == 0 and remote.store_bytes == 0
    with pytest.raises(aios.NotFoundError):
        remote.vjp(kept.handle, grad_hidden=g)

    targets = torch.randint(0, V, (2, 7))
    targets[1, :2] = -100  # the padding, as transformers' labels mark it
    a = remote.forward_backward(latents, targets=targets, mask=mask)
    b = local.forward_backward(latents, targets=targets, mask=mask)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)
    assert torch.allclose(a.grad_latents, b.grad_latents, atol=1e-6)


def test_a_projection_trains_the_same_through_the_torch_bridge(pair):
    local, remote = pair
    D = local.config.hidden_size
    curves = []
    for backbone in (local, remote):
        torch.manual_seed(1)
        projection = torch.nn.Linear(8, D)
        optimizer = torch.optim.SGD(projection.parameters(), lr=0.1)
        features, target = torch.randn(2, 5, 8), torch.randn(2, 5, D)
        losses = []
        for _ in range(4):
            hidden = aios.torch.forward(backbone, projection(features))
            loss = (hidden - target).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[1] == pytest.approx(curves[0], rel=1e-5)
    assert curves[0][-1] < curves[0][0]


def test_the_hosts_errors_arrive_as_the_same_exceptions(pair):
    local, remote = pair
    V, D = local.config.vocab_size, local.config.hidden_size
    with pytest.raises(aios.InvalidArgumentError) as info:
        remote.embed(torch.tensor([[V]]))
    assert info.value.field == "ids"
    with pytest.raises(aios.InvalidArgumentError):
        remote.forward(torch.full((1, 2, D), float("nan")))
    with pytest.raises(aios.UnavailableError):
        aios.connect("127.0.0.1:1", timeout=0.3)
    with pytest.raises(aios.InvalidArgumentError, match="address"):
        aios.connect(50051)


def test_a_host_with_keys_needs_one(checkpoints, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alice secret-a\n")
    host = aios.serve(checkpoints["llama_gqa"].path, keys=keys)
    try:
        address = host.address
        with pytest.raises(aios.PermissionDeniedError):
            aios.connect(address, timeout=30)
        with pytest.raises(aios.PermissionDeniedError):
            aios.connect(address, api_key="secret-b", timeout=30)
        backbone = aios.connect(address, api_key="secret-a", timeout=30)
        assert backbone.embed(torch.tensor([[1, 2]])).shape == (1, 2, backbone.config.hidden_size)
    finally:
        log = host.stop()
    assert "secret" not in log


def test_the_hosted_training_example_trains_and_each_step_is_computed_as_in_process():
    """Each step's forward_backward on the host equals this process's on the same inputs, to float
    rounding, and the loss falls.

    Two separate runs, one hosted and one --local, used to be compared curve against curve (to 1e-4)
    and once failed on a fresh machine (5.7956 against 5.7617 at step 3, 14% apart by step 8). That
    comparison holds only while host and in-process round every operation identically, which
    nothing guarantees across processes and machines, and Adam amplifies a single rounding
    difference: a host on LibTorch's AVX2 kernels instead of its AVX-512 ones computes each step
    within 3e-6 of this process and moves the 8-step curve by 7e-4; on its scalar kernels, within
    8e-7 (loss) and 4e-4 (gradient norm), the curve moves by 2% (examples/RESULTS.md). So the host
    is compared step by step from one shared state (--compare), where a difference cannot
    compound; the bounds are about ten times those scalar-kernel differences."""
    example = Path(__file__).resolve().parents[2] / "examples" / "hosted_training.py"
    out = subprocess.run([sys.executable, str(example), "--steps", "8", "--print-losses", "--compare"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    losses = [float(x) for x in out.stdout.split("losses ")[1].split("\n")[0].split()]
    compared = out.stdout.split("compared ")[1].split()
    steps, loss_rel, grad_rel = int(compared[0]), float(compared[4].rstrip(",")), float(compared[7])
    assert steps == 8 and len(losses) == 8, out.stdout
    assert loss_rel <= 1e-5 and grad_rel <= 5e-3, out.stdout
    assert losses[-1] < 0.7 * losses[0], losses

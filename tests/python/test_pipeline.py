"""A backbone split over pipeline stages (docs/pipeline-parallel.md), held to the hosted suite.

Every test of test_remote_suite.py runs again here against `aios serve --stages N`: the host (the
front: tables and the first blocks) and N - 1 stage workers on loopback, linked by c10d's Gloo.
Those tests compare the hosted backbone with transformers and with the in-process backbone call by
call (forward with positions, masks and layers; kept passes, vjp by handle and stateless, both
fused losses; extensions and their rows; generation, sessions and routed decoders), so passing
them says the split changes nothing a caller sees.
"""
import os
import signal
import threading
import time

import pytest
import torch

import aios
from test_remote_suite import *  # noqa: F401,F403 (the suite's tests and fixtures, collected here again)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}stages")
def stages(request):
    return request.param


@pytest.fixture(scope="module")
def hosts(stages):
    running = {}
    yield running
    for host in running.values():
        host.stop()


@pytest.fixture
def hosted(monkeypatch, hosts, stages):
    load = aios.Backbone.load

    def load_hosted(path, **options):
        if options:
            return load(path, **options)
        if str(path) not in hosts:
            hosts[str(path)] = aios.serve(path, stages=stages, stage_timeout=120)
        return aios.connect(hosts[str(path)].address, timeout=120)

    monkeypatch.setattr(aios.Backbone, "load", staticmethod(load_hosted))
    return load_hosted


# ---- Failures ----------------------------------------------------------------------------------

def workers_of(pid):
    """The process ids whose parent is `pid` (a front's stage workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


@pytest.fixture
def pipelined_default(default_model):
    host = aios.serve(default_model, stages=2, stage_timeout=4)
    yield host, aios.connect(host.address, timeout=120)
    for pid in workers_of(host.pid):  # a stopped worker would not leave by itself
        os.kill(pid, signal.SIGKILL)
    host.stop()


def health(address):
    """What the host's gRPC health service says: "SERVING" or "NOT_SERVING"."""
    import grpc
    with grpc.insecure_channel(address) as channel:
        reply = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)  # empty request: the server
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(reply, reply)


def recovers(host, backbone, latents, expected):
    """After a lost stage: the health service says NOT_SERVING, then SERVING once the front has
    relaunched its worker; then calls answer as before, and what the lost stage held is gone."""
    said = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not said or said[-1] != "SERVING"):
        said.append(health(host.address))
        time.sleep(0.05)
    assert "NOT_SERVING" in said and said[-1] == "SERVING", said
    torch.testing.assert_close(backbone.forward(latents).hidden, expected, rtol=0, atol=0)


def test_a_stage_killed_mid_call_fails_it_and_the_front_relaunches_it(pipelined_default):
    host, backbone = pipelined_default
    workers = workers_of(host.pid)
    assert len(workers) == 1 and health(host.address) == "SERVING"
    latents = backbone.embed(torch.randint(0, 49152, (8, 256)))
    expected = backbone.forward(latents[:1, :4]).hidden
    kept = backbone.forward(latents[:1, :4], keep=True)
    session = backbone.new_session()
    backbone.generate(latents[:1, :4], max_new_tokens=2, session=session)
    outcome = {}

    def call():
        try:
            for _ in range(20):  # long enough for the kill to land inside one of them
                backbone.forward_backward(latents, targets=torch.randint(0, 49152, (8, 256)))
            outcome["error"] = None
        except aios.Error as e:
            outcome["error"] = e

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)
    os.kill(workers[0], signal.SIGKILL)
    caller.join(timeout=60)
    assert not caller.is_alive()
    assert isinstance(outcome["error"], aios.UnavailableError), outcome
    assert backbone.tokenizer.encode("still here")  # the front answers what needs no stage
    recovers(host, backbone, latents[:1, :4], expected)
    assert workers_of(host.pid) != workers
    with pytest.raises(aios.NotFoundError):  # never a wrong answer from a pass the stage lost
        backbone.vjp(kept.handle, grad_hidden=torch.ones_like(kept.hidden))
    with pytest.raises(aios.NotFoundError, match="session"):
        backbone.generate(latents[:1, :2], max_new_tokens=2, session=session)


def test_a_stage_that_hangs_fails_the_call_after_the_stage_timeout(pipelined_default):
    host, backbone = pipelined_default
    latents = backbone.embed(torch.randint(0, 49152, (1, 8)))
    expected = backbone.forward(latents).hidden
    os.kill(workers_of(host.pid)[0], signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(aios.UnavailableError, match="pipeline"):
        backbone.forward(latents)
    assert 3 < time.monotonic() - start < 15  # --stage-timeout 4, and no call hangs
    recovers(host, backbone, latents, expected)


def test_blocks_per_process_can_be_set_and_are_checked(checkpoints):
    path = checkpoints["llama_gqa"].path
    local = aios.Backbone.load(path, dtype="float32")
    latents = local.embed(torch.randint(0, 101, (2, 5)))
    with aios.serve(path, stages=3, stage_blocks=[0, 1, 2]) as host:  # the front holds only the tables
        hosted = aios.connect(host.address, timeout=60)
        torch.testing.assert_close(hosted.forward(latents).hidden, local.forward(latents).hidden, rtol=1e-5, atol=1e-6)
        assert hosted.config.storage == local.config.storage  # every stage's weights counted once
    for blocks in ([1, 1], [2, 0, 1], [1, 1, 1, 1]):
        with pytest.raises(aios.UnavailableError, match="blocks"):
            aios.serve(path, stages=3, stage_blocks=blocks)

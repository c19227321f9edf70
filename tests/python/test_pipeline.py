"""A backbone split over pipeline stages (docs/pipeline-parallel.md), held to the hosted suite.

Every test of test_remote_suite.py runs again here against `aios serve --stages N`: the host (the
front: tables and the first blocks) and N - 1 stage workers on loopback, linked by c10d's Gloo.
Those tests compare the hosted backbone with transformers and with the in-process backbone call by
call (forward with positions, masks and layers; kept passes, vjp by handle and stateless, both
fused losses; extensions and their rows; generation, sessions and routed decoders), so passing
them says the split changes nothing a caller sees.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import aios
from test_remote_suite import *  # noqa: F401,F403 (the suite's tests and fixtures, collected here again)
from conftest import attach_on_failure
from test_recurrent import hosted_like_local


def assert_relative(got, want, tolerance=1e-5):
    """|got - want| <= tolerance * |want| (norms): gradients summed in another order, in other
    processes, differ in their last bits, most visibly in their smallest elements."""
    assert (got - want).norm() <= tolerance * want.norm(), ((got - want).norm(), want.norm())


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


# ---- Concurrency -------------------------------------------------------------------------------

def test_concurrent_clients_with_kept_passes_interleaved(checkpoints, stages):
    """Several callers at once, each keeping passes, taking vjps and releasing them out of step with
    the others: every result is the in-process one."""
    path = checkpoints["qwen2"].path
    local = aios.Backbone.load(path, dtype="float32")
    with aios.serve(path, stages=stages, stage_timeout=60) as host:
        errors = []

        def client(seed):
            try:
                backbone = aios.connect(host.address, timeout=60)
                g = torch.Generator().manual_seed(seed)
                for _ in range(6):
                    latents = torch.randn(1 + seed % 2, 5 + seed, 64, generator=g)
                    cot = torch.randn(latents.shape, generator=g)
                    kept = [backbone.forward(latents, keep=True, recompute=bool(seed % 2), layers=[1, 2])
                            for _ in range(2)]
                    want = local.forward(latents, keep=True, layers=[1, 2])
                    expected = local.vjp(want.handle, grad_hidden=cot, grad_layers=[None, cot])
                    local.release(want.handle)
                    for k in kept:
                        torch.testing.assert_close(k.hidden, want.hidden, rtol=1e-5, atol=1e-6)
                        assert_relative(backbone.vjp(k.handle, grad_hidden=cot, grad_layers=[None, cot]), expected)
                        backbone.release(k.handle)
                    torch.testing.assert_close(backbone.forward(latents).hidden, want.hidden, rtol=1e-5, atol=1e-6)
            except Exception as e:  # noqa: BLE001 (reported below, with the thread's seed)
                errors.append((seed, e))

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors


def test_recurrent_layers_across_stages(checkpoints):
    """Qwen3-Next's Gated DeltaNet layers split across stages: each stage keeps its layers' states
    in its share of a session; results, tokens and the session's bytes as in one process."""
    path = checkpoints["qwen3_next"].path
    local = aios.Backbone.load(path)
    with aios.serve(path, stages=3, stage_blocks=[1, 1, 2], stage_timeout=60) as host:
        hosted_like_local(aios.connect(host, timeout=60), local, assert_relative)


def test_tenants_and_quotas_hold_at_the_front(checkpoints, tmp_path):
    """Keys, quotas and whose handles are whose are the front's, as on one process."""
    keys = tmp_path / "keys"
    keys.write_text("alice secret-a max_tokens=16\nbob secret-b\n")
    path = checkpoints["llama_gqa"].path
    local = aios.Backbone.load(path, dtype="float32")
    with aios.serve(path, keys=keys, stages=2, stage_timeout=60) as host:
        with pytest.raises(aios.PermissionDeniedError):
            aios.connect(host.address, timeout=30)
        alice = aios.connect(host.address, api_key="secret-a", timeout=30)
        bob = aios.connect(host.address, api_key="secret-b", timeout=30)
        latents = local.embed(torch.randint(0, 101, (1, 8)))
        kept = alice.forward(latents, keep=True)
        with pytest.raises(aios.NotFoundError):
            bob.vjp(kept.handle, grad_hidden=torch.ones_like(kept.hidden))
        assert_relative(alice.vjp(kept.handle, grad_hidden=torch.ones_like(kept.hidden)),
                        local.vjp(local.forward(latents, keep=True).handle, grad_hidden=torch.ones_like(kept.hidden)))
        long = local.embed(torch.randint(0, 101, (1, 32)))
        with pytest.raises(aios.ResourceExhaustedError):
            alice.forward(long)
        torch.testing.assert_close(bob.forward(long).hidden, local.forward(long).hidden, rtol=1e-5, atol=1e-6)


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
def pipelined_default(default_model, request):
    host = aios.serve(default_model, stages=2, stage_timeout=4)
    yield host, aios.connect(host.address, timeout=120)
    for pid in workers_of(host.pid):  # a stopped worker would not leave by itself
        os.kill(pid, signal.SIGKILL)
    # The front's and its workers' "aios: pipeline: ..." lines tell what the stages went through.
    attach_on_failure(request, "aios serve --stages 2: stderr", host.stop())


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
    # A stage's error in one request (the two above) leaves the pipeline serving.
    torch.testing.assert_close(backbone.forward(latents[:1, :4]).hidden, expected, rtol=0, atol=0)


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


# ---- Across hosts ------------------------------------------------------------------------------

NAMESPACES = ["aios-test-stage1", "aios-test-stage2"]
BRIDGE = "aios-test-br"


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def clean_namespaces():
    for ns in NAMESPACES:
        ip("netns", "del", ns)
    ip("link", "del", BRIDGE)


def make_namespaces():
    """A bridge 10.77.0.1/24 here and one namespace per stage at 10.77.0.2, .3 behind a veth pair:
    separate hosts as far as TCP can tell. Returns the failure's message, or None."""
    clean_namespaces()
    steps = [("link", "add", BRIDGE, "type", "bridge"), ("addr", "add", "10.77.0.1/24", "dev", BRIDGE),
             ("link", "set", BRIDGE, "up")]
    for i, ns in enumerate(NAMESPACES, start=1):
        steps += [("netns", "add", ns), ("link", "add", f"aios-test-v{i}", "type", "veth", "peer", "name", "eth0",
                                         "netns", ns),
                  ("link", "set", f"aios-test-v{i}", "master", BRIDGE, "up"),
                  ("-n", ns, "addr", "add", f"10.77.0.{i + 1}/24", "dev", "eth0"),
                  ("-n", ns, "link", "set", "eth0", "up"), ("-n", ns, "link", "set", "lo", "up")]
    for step in steps:
        done = ip(*step)
        if done.returncode != 0:
            clean_namespaces()
            return f"ip {' '.join(step)}: {done.stderr.strip()}"
    return None


def free_port(address):
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def test_stages_as_separate_hosts_over_tcp(checkpoints):
    """Three processes, each stage in its own network namespace: activations and cotangents cross
    veth links between hosts. Where namespaces are forbidden, the same runs on loopback, and says so."""
    path = checkpoints["llama3_bias_tied_sharded"].path
    local = aios.Backbone.load(path, dtype="float32")
    failure = make_namespaces() if shutil.which("ip") else "no ip command"
    if failure:
        warnings.warn(f"network namespaces are not available here ({failure}): stages on loopback instead")
    front_address = "127.0.0.1" if failure else "10.77.0.1"
    rendezvous = f"{front_address}:{free_port(front_address)}"
    aios_command = str(Path(sys.executable).parent / "aios")
    workers, host = [], None
    try:
        for rank, ns in enumerate(NAMESPACES, start=1):
            where = [] if failure else ["ip", "netns", "exec", ns]
            workers.append(subprocess.Popen(where + [aios_command, "stage", str(path), "--rank", str(rank), "--world", "3",
                                                     "--rendezvous", rendezvous, "--stage-timeout", "60"]))
        host = aios.serve(path, world=3, rendezvous=rendezvous, stage_blocks=[1, 1, 1])
        sent = 0 if failure else int(Path("/sys/class/net/aios-test-v2/statistics/rx_bytes").read_text())
        hosted = aios.connect(host.address, timeout=60)
        latents = local.embed(torch.randint(0, 101, (2, 16)))
        out = hosted.forward(latents, keep=True, layers=[2])
        want = local.forward(latents, keep=True, layers=[2])
        torch.testing.assert_close(out.hidden, want.hidden, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.layers[0], want.layers[0], rtol=1e-5, atol=1e-6)
        cot = torch.randn_like(latents)
        assert_relative(hosted.vjp(out.handle, grad_hidden=cot, grad_layers=[cot]),
                        local.vjp(want.handle, grad_hidden=cot, grad_layers=[cot]))
        if not failure:  # stage 2's link (its veth, seen from the bridge) carried its [2,16,64] float32 streams
            assert int(Path("/sys/class/net/aios-test-v2/statistics/rx_bytes").read_text()) - sent > 2 * 16 * 64 * 4
    finally:
        if host is not None:
            host.stop()
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        if not failure:
            clean_namespaces()

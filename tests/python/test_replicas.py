"""Two replicas of `aios serve` behind nginx (server/deploy/nginx-aios.conf, run as it is documented
with this test's ports): stateless calls spread over both replicas, calls about a kept pass reach
the replica that keeps it (its handle names it; the client sends "aios-replica: N" and nginx routes
on it), a handle sent to another replica is NOT_FOUND, and stateless calls carry on when a replica
is gone. Which replica answered each call is read from nginx's access log: every reply carries
"aios-replica: N" and the documented log format records it next to the upstream's address."""
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

import aios

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "server" / "deploy" / "nginx-aios.conf"


def _nginx():
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(found, os.X_OK):
        pytest.fail("nginx is missing: it is one of the Makefile's APT_PACKAGES (make setup installs it)")
    return found


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Balancer:
    """nginx run as this user with its own prefix, configuration, pid and logs in `folder`."""

    def __init__(self, folder, replicas):
        self.folder = folder
        self.address = f"127.0.0.1:{_free_port()}"
        self.log = folder / "aios-access.log"
        fragment = TEMPLATE.read_text()
        for example, real in [("127.0.0.1:50050", self.address), ("127.0.0.1:50051", replicas[0]),
                              ("127.0.0.1:50052", replicas[1]), ("/var/log/nginx/", f"{folder}/")]:
            assert example in fragment, example
            fragment = fragment.replace(example, real)
        (folder / "aios.conf").write_text(fragment)
        temp = "\n".join(f"    {kind}_temp_path {folder}/{kind}_temp;"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # As root, nginx would hand its workers to "nobody", who cannot write in this folder.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (folder / "nginx.conf").write_text(
            f"daemon off;\n{user}worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log notice;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n{temp}\n    include {folder}/aios.conf;\n}}\n")
        command = [_nginx(), "-p", f"{folder}/", "-c", f"{folder}/nginx.conf", "-e", f"{folder}/error.log"]
        check = subprocess.run(command + ["-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        host, port = self.address.split(":")
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.process.stderr.read() + (folder / "error.log").read_text()
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen on " + self.address
                time.sleep(0.1)

    def calls(self, since=0):
        """(method, routed, upstream, answered, status) per call logged after line `since`;
        upstream lists each replica nginx tried, comma-separated."""
        rows = []
        for line in self.log.read_text().splitlines()[since:]:
            m = re.search(r" /aios\.v1\.\w+/(\w+) routed=(\S+) upstream=(.+?) answered=(\S+) status=(\d+)", line)
            assert m, line
            rows.append(m.groups())
        return rows

    def calls_settled(self, count, since=0):
        """The calls logged after line `since` once there are `count` of them (nginx writes its log
        line just after it has sent the reply)."""
        deadline = time.monotonic() + 10
        while len(self.calls(since)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.calls(since)

    def lines(self):
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def cluster(default_model):
    folder = Path(tempfile.mkdtemp(prefix="aios_replicas_"))
    hosts = [aios.serve(default_model, replica=0), aios.serve(default_model, replica=1)]
    balancer = None
    try:
        balancer = Balancer(folder, [h.address for h in hosts])
        yield dict(hosts=hosts, balancer=balancer,
                   remote=aios.connect(balancer.address, timeout=120),
                   direct=[aios.connect(h.address, timeout=120) for h in hosts],
                   local=aios.Backbone.load(default_model))
    finally:
        if balancer is not None:
            balancer.stop()
        for h in hosts:
            h.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _latents(backbone, B, T, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, backbone.config.vocab_size, (B, T), generator=g)
    return backbone.embed(ids) + 0.01 * torch.randn(B, T, backbone.config.hidden_size, generator=g)


def test_stateless_calls_spread_over_both_replicas(cluster):
    remote, direct, balancer = cluster["remote"], cluster["direct"][0], cluster["balancer"]
    addresses = {h.address: str(i) for i, h in enumerate(cluster["hosts"])}
    V = direct.config.vocab_size
    start = balancer.lines()
    for step in range(4):
        latents = _latents(direct, 2, 6, step)
        assert torch.equal(remote.forward(latents, layers=[3]).hidden, direct.forward(latents, layers=[3]).hidden)
        g = torch.randn(latents.shape, generator=torch.Generator().manual_seed(step))
        assert torch.allclose(remote.vjp(latents, grad_hidden=g), direct.vjp(latents, grad_hidden=g), atol=1e-6)
        targets = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(step))
        a, b = remote.forward_backward(latents, targets=targets), direct.forward_backward(latents, targets=targets)
        assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)
        assert torch.allclose(a.grad_latents, b.grad_latents, atol=1e-6)
    # A request beyond nginx's default body limit (1 MB) passes too.
    big = _latents(direct, 1, 480, 9)
    assert big.numel() * 4 > 1 << 20
    assert torch.equal(remote.forward(big).hidden, direct.forward(big).hidden)

    calls = balancer.calls_settled(13, start)
    assert len(calls) == 13
    for method in ("Forward", "VjpStateless", "ForwardBackward"):
        answered = {row[3] for row in calls if row[0] == method}
        assert answered == {"0", "1"}, (method, calls)
    for method, routed, upstream, answered, status in calls:
        assert routed == "-" and status == "200"
        assert addresses[upstream] == answered  # the reply's aios-replica is the replica nginx chose


def test_kept_passes_return_to_the_replica_that_keeps_them(cluster):
    remote, local, balancer = cluster["remote"], cluster["local"], cluster["balancer"]
    latents = _latents(local, 20, 5, 100)
    g = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    rows = [(latents[i:i + 1], g[i:i + 1]) for i in range(20)]
    # In-process first (interleaved with the hosts' calls, on a busy machine, each side waits for
    # the other's idle threads), then through the balancer.
    want = [(local.forward(x).hidden, local.vjp(x, grad_hidden=gx)) for x, gx in rows]
    start = balancer.lines()
    handles = []
    for (x, gx), (hidden, grad) in zip(rows, want):
        kept = remote.forward(x, keep=True)
        assert torch.equal(kept.hidden, hidden)
        handles.append(kept.handle)
        assert torch.allclose(remote.vjp(kept.handle, grad_hidden=gx), grad, atol=1e-6)
    assert {h >> 48 for h in handles} == {0, 1}
    for h in handles:
        remote.release(h)
    with pytest.raises(aios.NotFoundError):
        remote.vjp(handles[0], grad_hidden=torch.zeros(1, 5, local.config.hidden_size))

    calls = balancer.calls_settled(61, start)
    assert len(calls) == 61
    keeps = [row for row in calls if row[0] == "ForwardKeep"]
    assert {row[3] for row in keeps} == {"0", "1"} and all(row[1] == "-" for row in keeps)
    pinned = [row for row in calls if row[0] in ("Vjp", "Release")]
    assert len(pinned) == 41
    assert all(routed == answered for _, routed, _, answered, _ in pinned), pinned

    # The autograd bridge keeps, differentiates and releases through the balancer as well.
    projection = torch.nn.Linear(8, local.config.hidden_size)
    features = torch.randn(2, 4, 8)
    for backbone in (remote, local):
        projection.zero_grad()
        aios.torch.forward(backbone, projection(features)).pow(2).mean().backward()
        if backbone is remote:
            remote_grad = projection.weight.grad.clone()
    assert torch.allclose(remote_grad, projection.weight.grad, atol=1e-6)


def test_a_handle_sent_to_another_replica_is_not_found(cluster):
    d0, d1 = cluster["direct"]
    latents = _latents(d0, 1, 4, 7)
    g = torch.ones(latents.shape)
    kept = d0.forward(latents, keep=True)
    assert kept.handle >> 48 == 0
    with pytest.raises(aios.NotFoundError) as info:
        d1.vjp(kept.handle, grad_hidden=g)
    assert info.value.field == "handle" and "replica 0" in str(info.value)
    with pytest.raises(aios.NotFoundError):
        d1.release(kept.handle)
    assert torch.allclose(d0.vjp(kept.handle, grad_hidden=g), d0.vjp(latents, grad_hidden=g), atol=1e-6)
    d0.release(kept.handle)


def test_when_a_replica_is_gone(cluster):
    """Runs last: it stops replica 1."""
    remote, direct, balancer = cluster["remote"], cluster["direct"][0], cluster["balancer"]
    latents = _latents(direct, 1, 4, 11)
    g = torch.ones(latents.shape)
    kept = {}
    for _ in range(10):
        handle = remote.forward(latents, keep=True).handle
        if kept.setdefault(handle >> 48, handle) != handle:
            remote.release(handle)
    assert sorted(kept) == [0, 1]
    cluster["hosts"][1].stop()
    start = balancer.lines()
    # Stateless calls go to the replica that is left: nginx moves on when it cannot connect.
    for _ in range(4):
        assert torch.equal(remote.forward(latents).hidden, direct.forward(latents).hidden)
    calls = balancer.calls_settled(4, start)
    assert {row[3] for row in calls} == {"0"}
    assert any("," in row[2] for row in calls), calls  # at least one went to replica 1 first
    # The gone replica's passes went with it; the other's are still there.
    with pytest.raises(aios.UnavailableError):
        remote.vjp(kept[1], grad_hidden=g)
    assert torch.allclose(remote.vjp(kept[0], grad_hidden=g), direct.vjp(latents, grad_hidden=g), atol=1e-6)
    remote.release(kept[0])

"""`aios serve`: hosts a checkpoint on loopback, says where, stops cleanly on SIGTERM or SIGINT, and
takes TLS, quotas and extensions from its caller. The services themselves are tested from C++
(tests/cpp/test_server.cpp) and through the interface's tests (test_remote_suite.py)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import aios

AIOS = Path(sys.executable).parent / "aios"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_listens_on_loopback_and_stops_on_a_signal(checkpoints, stop):
    process = subprocess.Popen([str(AIOS), "serve", str(checkpoints["llama_gqa"].path), "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"serving .* on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line + process.stderr.read()
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5):
            pass
        process.send_signal(stop)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_a_host_serves_weights_quantised_at_load(checkpoints):
    path = checkpoints["llama_gqa"].path
    local = aios.Backbone.load(path, weights="int4", group_size=32)
    with aios.serve(path, weights="int4", group_size=32) as host:
        remote = aios.connect(host.address)
        assert remote.config.weights == "int4"
        assert [(k.kind, k.bytes) for k in remote.config.storage] == [(k.kind, k.bytes) for k in local.config.storage]
        ids = torch.randint(0, remote.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
        got, want = remote.forward(remote.embed(ids)).hidden, local.forward(local.embed(ids)).hidden
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_serve_names_a_bad_address(checkpoints):
    result = subprocess.run([str(AIOS), "serve", str(checkpoints["llama_gqa"].path), "--listen", "256.0.0.1:99999"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "listen" in result.stderr


def test_tls_keys_and_quotas_from_the_key_file(checkpoints, tmp_path):
    """A host with a certificate serves TLS only; the key file's quota fields hold per tenant."""
    cert, key = tmp_path / "host.pem", tmp_path / "host.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    keys = tmp_path / "keys"
    keys.write_text("alice secret-a max_tokens=8\nbob secret-b\n")
    with aios.serve(checkpoints["llama_gqa"].path, keys=keys, tls=(cert, key)) as host:
        alice = aios.connect(host.address, api_key="secret-a", root_certificates=cert, timeout=30)
        bob = aios.connect(host, api_key="secret-b", timeout=30)  # the HostProcess: its address and certificate
        D = alice.config.hidden_size
        assert alice.forward(torch.randn(1, 8, D)).hidden.shape == (1, 8, D)
        with pytest.raises(aios.ResourceExhaustedError) as info:
            alice.forward(torch.randn(1, 9, D))
        assert info.value.field == "latents"
        assert bob.forward(torch.randn(1, 9, D)).hidden.shape == (1, 9, D)
        with pytest.raises(aios.UnavailableError):  # plaintext to a TLS host
            aios.connect(host.address, api_key="secret-a", timeout=5)


def test_an_extension_saved_here_loads_onto_a_host(checkpoints, tmp_path):
    """A hosted extension's local copy saves like any other, and loads onto another host."""
    path = checkpoints["llama_gqa"].path
    with aios.serve(path) as host:
        backbone = aios.connect(host.address, timeout=30)
        D = backbone.config.hidden_size
        ext = backbone.extend(["<a>", "<b>"], init=(torch.randn(2, D), torch.randn(2, D)))
        ext.save(tmp_path / "here")
    local = aios.Backbone.load(path)
    with aios.serve(path) as host:
        backbone = aios.connect(host.address, timeout=30)
        again = aios.Extension.load(backbone, tmp_path / "here")
        assert torch.equal(again.embedding_rows, ext.embedding_rows)
        ids = torch.tensor([[1, local.config.vocab_size + 1]])
        want = local.embed(ids, extension=aios.Extension.load(local, tmp_path / "here"))
        assert torch.equal(backbone.embed(ids, extension=again), want)


def _page_faults(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])  # minflt


def _resident_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.mark.parametrize("allocator", ["tuned", "glibc-defaults"])
def test_the_host_reuses_freed_memory_and_gives_it_back_once_idle(checkpoints, monkeypatch, allocator):
    """Without the host's allocator set-up (the control: glibc told by the environment to hand
    freed memory back at once), every call faults its pass's pages in afresh; with it, repeated
    calls fault few, and the memory goes back to the system once the host is idle."""
    for name in list(os.environ):
        if name.startswith("MALLOC_") or name == "GLIBC_TUNABLES":
            monkeypatch.delenv(name)
    if allocator == "glibc-defaults":
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    path = checkpoints["llama_gqa"].path
    local = aios.Backbone.load(path)
    D = local.config.hidden_size
    latents, cotangent = torch.randn(256, 64, D) * 0.5, torch.randn(256, 64, D)
    kept = local.forward(latents, keep=True)
    pass_bytes = local.store_bytes  # by the backbone's estimate
    local.release(kept.handle)
    assert pass_bytes > 64 << 20

    with aios.serve(path) as host:
        backbone = aios.connect(host.address, timeout=60)

        def step():
            kept = backbone.forward(latents, keep=True)
            backbone.vjp(kept.handle, grad_hidden=cotangent)
            backbone.release(kept.handle)

        baseline = _resident_bytes(host.pid)
        step()
        step()
        before = _page_faults(host.pid)
        for _ in range(3):
            step()
        faulted = (_page_faults(host.pid) - before) * os.sysconf("SC_PAGE_SIZE")
        if allocator == "glibc-defaults":
            assert faulted > 3 * pass_bytes / 2
            return
        assert faulted < pass_bytes / 2  # measured: 0 to 45 MB a step, as the heap settles
        deadline = time.monotonic() + 10  # HostOptions::release_memory_after is 2 s
        assert _resident_bytes(host.pid) > baseline + pass_bytes  # the freed pass, kept for the next call
        while _resident_bytes(host.pid) > baseline + pass_bytes / 4:
            assert time.monotonic() < deadline, f"resident {_resident_bytes(host.pid)} bytes, {baseline} at first"
            time.sleep(0.1)


def test_a_host_started_from_python_ends_with_the_process_that_started_it(checkpoints, tmp_path):
    """SIGKILL gives the starter no chance to stop its host; the host sees its pipe end and stops."""
    starter = subprocess.Popen(
        [sys.executable, "-c",
         "import os, signal, sys, aios\n"
         "host = aios.serve(sys.argv[1])\n"
         "print(host.pid, flush=True)\n"
         "os.kill(os.getpid(), signal.SIGKILL)\n",
         str(checkpoints["llama_gqa"].path)],
        stdout=subprocess.PIPE, text=True)
    host_pid = int(starter.stdout.readline())
    assert starter.wait(timeout=60) == -signal.SIGKILL

    def running():
        try:
            state = Path(f"/proc/{host_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"  # a zombie has ended; only its parent's parent may reap it

    deadline = time.monotonic() + 30
    while running():
        if time.monotonic() > deadline:
            os.kill(host_pid, signal.SIGKILL)
            pytest.fail("the host outlived the process that started it")
        time.sleep(0.1)


def test_a_host_that_logs_a_lot_keeps_serving(checkpoints, monkeypatch):
    """aios.serve reads the host's log as it comes: a pipe nobody reads fills at 64 KiB and then
    blocks the host at its next line, every call with it. gRPC's API trace writes a few lines per
    call; 2 MiB of them pass here, and stop() returns the last MiB."""
    monkeypatch.setenv("GRPC_VERBOSITY", "debug")
    monkeypatch.setenv("GRPC_TRACE", "api")
    host = aios.serve(checkpoints["llama_gqa"].path)
    monkeypatch.undo()
    try:
        backbone = aios.connect(host.address, timeout=60)
        ids = torch.tensor([[1, 2, 3]])
        want = backbone.embed(ids)
        started = time.monotonic()
        while host.log_bytes < 2 << 20:
            assert torch.equal(backbone.embed(ids), want)
            assert time.monotonic() - started < 300, f"{host.log_bytes} bytes logged in 300 s"
    finally:
        log = host.stop()
    assert aios.HostProcess.LOG_TAIL // 2 < len(log) <= aios.HostProcess.LOG_TAIL + (64 << 10)

"""`aios serve`: hosts a checkpoint on loopback, says where, stops cleanly on SIGTERM or SIGINT, and
takes TLS, quotas and extensions from its caller. The services themselves are tested from C++
(tests/cpp/test_server.cpp) and through the interface's tests (test_remote_suite.py)."""
import re
import signal
import socket
import subprocess
import sys
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
        bob = aios.connect(host.address, api_key="secret-b", root_certificates=cert, timeout=30)
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

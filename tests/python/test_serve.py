"""`aios serve`: hosts a checkpoint on loopback, says where, and stops cleanly on SIGTERM or SIGINT.
The services themselves are tested from C++ (tests/cpp/test_server.cpp)."""
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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

"""Hosting a backbone from Python: `aios serve` run as a child process.

    with aios.serve("model.gguf") as host:          # loopback, a free port
        backbone = aios.connect(host.address)

The host runs in its own process (its own threads and memory, as it would on another machine);
leaving the block stops it with SIGTERM, which lets the calls in flight finish. It also stops
when this process ends, however it ends, or drops the HostProcess: the host reads a pipe from
it (`aios serve --until-stdin-closes`) and takes the pipe's end as SIGTERM.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

from .errors import UnavailableError


class HostProcess:
    """A running `aios serve`; `address` is its HOST:PORT."""

    def __init__(self, model, listen="127.0.0.1:0", keys=None, state=None, tls=None, replica=None, store_bytes=None):
        command = [str(Path(sys.executable).parent / "aios"), "serve", os.fspath(model), "--listen", listen,
                   "--until-stdin-closes"]
        if keys is not None:
            command += ["--keys", os.fspath(keys)]
        if state is not None:
            command += ["--state", os.fspath(state)]
        if tls is not None:
            certificate, private_key = tls
            command += ["--tls-cert", os.fspath(certificate), "--tls-key", os.fspath(private_key)]
        if replica is not None:
            command += ["--replica", str(int(replica))]
        if store_bytes is not None:
            command += ["--store-bytes", str(int(store_bytes))]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
        line = self._process.stdout.readline()
        match = re.fullmatch(r"serving .* on (\S+:\d+)\n", line)
        if not match:
            self._process.kill()
            error = UnavailableError(f"unavailable: listen: aios serve did not start: {line}{self._process.stderr.read()}")
            error.field = "listen"
            raise error
        self.address = match.group(1)

    @property
    def pid(self):
        """The host's process id (for watching its memory, say, in /proc/PID/status)."""
        return self._process.pid

    def stop(self, timeout=30):
        """Stops the host (SIGTERM: calls in flight finish first); returns its stderr."""
        if self._process.poll() is None:
            self._process.terminate()
        try:
            _, err = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, err = self._process.communicate()
        return err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(model, listen="127.0.0.1:0", keys=None, state=None, tls=None, replica=None, store_bytes=None) -> HostProcess:
    """Starts `aios serve model` (listen: HOST:PORT, port 0 = a free one; keys: a key file; state: a
    folder for saved extensions and registered decoders; tls: (certificate, private key) PEM files;
    replica: its number among replicas behind a load balancer, see docs/hosting.md; store_bytes:
    the activation store's budget for all tenants' kept passes) and returns once it listens.
    UnavailableError when it does not start."""
    return HostProcess(model, listen, keys, state, tls, replica, store_bytes)

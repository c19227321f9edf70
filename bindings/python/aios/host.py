"""Hosting a backbone from Python: `aios serve` run as a child process.

    with aios.serve("model.gguf") as host:          # loopback, a free port
        backbone = aios.connect(host.address)

The host runs in its own process (its own threads and memory, as it would on another machine);
leaving the block stops it with SIGTERM, which lets the calls in flight finish. It also stops
when this process ends, however it ends, or drops the HostProcess: the host reads a pipe from
it (`aios serve --until-stdin-closes`) and takes the pipe's end as SIGTERM.
"""
import collections
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from .errors import UnavailableError


class HostProcess:
    """A running `aios serve`; `address` is its HOST:PORT."""

    def __init__(self, model, listen="127.0.0.1:0", keys=None, state=None, tls=None, replica=None, store_bytes=None,
                 unclaimed_ttl=None, weights=None, group_size=None, stages=None, stage_blocks=None,
                 stage_timeout=None, world=None, rendezvous=None):
        command = [str(Path(sys.executable).parent / "aios"), "serve", os.fspath(model), "--listen", listen,
                   "--until-stdin-closes"]
        if keys is not None:
            command += ["--keys", os.fspath(keys)]
        if state is not None:
            command += ["--state", os.fspath(state)]
        self.certificate = None  # the PEM file of the certificate it serves TLS with
        if tls is not None:
            certificate, private_key = tls
            self.certificate = os.fspath(certificate)
            command += ["--tls-cert", os.fspath(certificate), "--tls-key", os.fspath(private_key)]
        if replica is not None:
            command += ["--replica", str(int(replica))]
        if store_bytes is not None:
            command += ["--store-bytes", str(int(store_bytes))]
        if unclaimed_ttl is not None:
            command += ["--unclaimed-ttl", str(float(unclaimed_ttl))]
        if weights is not None:
            command += ["--weights", str(weights)]
        if group_size is not None:
            command += ["--group-size", str(int(group_size))]
        if stages is not None:
            command += ["--stages", str(int(stages))]
        if stage_blocks is not None:
            command += ["--stage-blocks", ",".join(str(int(n)) for n in stage_blocks)]
        if world is not None:
            command += ["--world", str(int(world)), "--rendezvous", str(rendezvous)]
        if stage_timeout is not None:
            command += ["--stage-timeout", str(float(stage_timeout))]
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
        # The host's log is read as it comes: a pipe left unread fills up (64 KiB) and then blocks
        # the host at its next line. The last LOG_TAIL bytes are kept for stop().
        self._log = collections.deque()
        self._log_size = 0   # bytes in _log
        self.log_bytes = 0   # bytes the host has logged so far
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    LOG_TAIL = 1 << 20

    def _read_log(self):
        for line in self._process.stderr:
            self._log.append(line)
            self._log_size += len(line)
            self.log_bytes += len(line)
            while self._log_size > self.LOG_TAIL and len(self._log) > 1:
                self._log_size -= len(self._log.popleft())

    @property
    def pid(self):
        """The host's process id (for watching its memory, say, in /proc/PID/status)."""
        return self._process.pid

    def stop(self, timeout=30):
        """Stops the host (SIGTERM: calls in flight finish first); returns its stderr (the last
        LOG_TAIL bytes)."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.stdin.close()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join()
        self._process.stdout.close()
        return "".join(self._log)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(model, listen="127.0.0.1:0", keys=None, state=None, tls=None, replica=None, store_bytes=None,
          unclaimed_ttl=None, weights=None, group_size=None, stages=None, stage_blocks=None,
          stage_timeout=None, world=None, rendezvous=None) -> HostProcess:
    """Starts `aios serve model` (listen: HOST:PORT, port 0 = a free one; keys: a key file; state: a
    folder for saved extensions and registered decoders; tls: (certificate, private key) PEM files;
    replica: its number among replicas behind a load balancer, see docs/hosting.md; store_bytes:
    the activation store's budget for all tenants' kept passes; unclaimed_ttl: seconds a kept pass
    no Vjp or Release claimed stays, default 60; weights and group_size: how the host holds the
    frozen weights, as Backbone.load; stages: split the blocks over that many processes on this
    machine, this host and stages - 1 workers it starts (docs/pipeline-parallel.md); stage_blocks:
    blocks per process, the host's first, default balanced; stage_timeout: seconds a call waits for
    a stage before the pipeline counts as lost, default 600; world and rendezvous: the same with
    world - 1 workers started elsewhere by `aios stage`, meeting at rendezvous, HOST:PORT)
    and returns once it listens.
    UnavailableError when it does not start."""
    return HostProcess(model, listen, keys, state, tls, replica, store_bytes, unclaimed_ttl, weights, group_size,
                       stages, stage_blocks, stage_timeout, world, rendezvous)

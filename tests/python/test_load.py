"""A bounded load test of a hosted backbone: several concurrent clients, some of them cut mid-call.

One `aios serve` of a tiny checkpoint, three tenants (a key file), and at the same time:
  * steady clients: threads, each with its own aios.connect, issuing a mix of forward (with masks and
    chosen layers), forward(keep=True) + vjp + release, stateless vjp, forward_backward, embed and
    classify (and greedy generation), plus a few ill-formed requests. Every
    well-formed answer is compared with the same call on the checkpoint loaded in this process
    (the host computes in float32, so results agree to float tolerance, bit-equal in practice);
    every ill-formed one must be refused with its own error code;
  * killed clients: separate processes looping over kept passes, fused calls and generation
    streams at a larger shape, each killed with SIGKILL while its calls are in flight;
  * hasty clients: threads whose kept-pass calls carry deadlines of 5 ms to 1 s, so many expire while
    the host computes. Such a call either answers correctly or fails as UnavailableError, nothing else.

Afterwards the host must answer, its resident set (VmRSS) must be back near the baseline taken after
a warm-up, and each tenant's kept passes (probed through its store quota: how many passes fit
before RESOURCE_EXHAUSTED) must be gone, except at most one per killed client (a handle it held,
or a pass whose caller the host found gone only after replying: both live until the store's
time-to-live, docs/hosting.md) and a few of the passes cut by a deadline, for the same reason.
"""
import random
import signal
import subprocess
import sys
import threading
import time

import torch

import aios

STEADY_CLIENTS, STEADY_ROUNDS = 4, 40
HASTY_CLIENTS, HASTY_CALLS = 2, 12
KILLED_CLIENTS = 4
CUT_SHAPE = (8, 64)        # the killed and hasty clients' passes (T = the tiny model's max positions)
QUOTA_PASSES = 12          # each tenant's max_store_bytes, in passes of CUT_SHAPE
RSS_SLACK = 32 << 20       # see the test's last assertion
TENANTS = ("steady", "killed", "hasty")

# A killed client: loops over large-ish calls until the test kills it. Prints "ready" once connected,
# then "kept" while it holds a handle and "free" once it released it (unbuffered, so a kill loses none).
KILLED_CLIENT = r"""
import os, sys, torch, aios
address, key, seed, stream = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
backbone = aios.connect(address, api_key=key, timeout=60)
g = torch.Generator().manual_seed(seed)
B, T = %d, %d
x = torch.randn(B, T, backbone.config.hidden_size, generator=g) * 0.5
targets = torch.randint(0, backbone.config.vocab_size, (B, T), generator=g)
print("ready", flush=True)
while True:
    kept = backbone.forward(x, keep=True)
    os.write(1, b"kept\n")
    backbone.vjp(kept.handle, grad_hidden=x)
    backbone.release(kept.handle)
    os.write(1, b"free\n")
    backbone.forward_backward(x, targets=targets)
    if stream:
        for _ in backbone.stream(x[:, :8], max_new_tokens=T - 8):
            pass
""" % CUT_SHAPE


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def close(a, b):
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5)


class Tally:
    """Thread-safe counts and the list of what went wrong."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.failures = []

    def count(self, name, n=1):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def fail(self, message):
        with self.lock:
            self.failures.append(message)


def steady_client(address, local, seed, tally):
    """Well-formed calls checked against the local backbone, and a few ill-formed ones."""
    try:
        remote = aios.connect(address, api_key="key-steady", timeout=120)
    except Exception as e:  # noqa: BLE001 (reported, not raised, from a thread)
        tally.fail(f"steady {seed}: connect: {e!r}")
        return
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    V, D = local.config.vocab_size, local.config.hidden_size
    kinds = {"forward": 3, "keep_vjp": 3, "vjp_stateless": 1, "forward_backward": 2, "embed": 1, "classify": 1,
             "generate": 1, "bad": 1}
    for i in range(STEADY_ROUNDS):
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        B, T = rng.randint(1, 4), rng.randint(2, 64)
        x = torch.randn(B, T, D, generator=g) * 0.5
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, : rng.randint(0, T - 1)] = False  # left padding on the first row
        where = f"steady {seed} round {i} {kind} {B}x{T}"
        try:
            if kind == "forward":
                layers = [rng.randint(0, local.config.num_layers)]
                got, want = remote.forward(x, mask=mask, layers=layers), local.forward(x, mask=mask, layers=layers)
                ok = close(got.hidden, want.hidden) and close(got.layers[0], want.layers[0])
                tally.count("requests")
                tally.count("bit-equal forwards", int(torch.equal(got.hidden, want.hidden)))
                tally.count("forwards compared")
            elif kind == "keep_vjp":
                cot = torch.randn(B, T, D, generator=g)
                kept = remote.forward(x, mask=mask, keep=True)
                grad = remote.vjp(kept.handle, grad_hidden=cot)
                remote.release(kept.handle)
                ok = close(kept.hidden, local.forward(x, mask=mask).hidden) and \
                    close(grad, local.vjp(x, mask=mask, grad_hidden=cot))
                tally.count("requests", 3)
            elif kind == "vjp_stateless":
                cot = torch.randn(B, T, D, generator=g)
                ok = close(remote.vjp(x, grad_hidden=cot), local.vjp(x, grad_hidden=cot))
                tally.count("requests")
            elif kind == "forward_backward":
                targets = torch.randint(0, V, (B, T), generator=g)
                a = remote.forward_backward(x, targets=targets, mask=mask)
                b = local.forward_backward(x, targets=targets, mask=mask)
                ok = abs(a.loss.item() - b.loss.item()) <= 1e-5 * max(1.0, abs(b.loss.item())) and \
                    close(a.grad_latents, b.grad_latents)
                tally.count("requests")
            elif kind == "embed":
                ids = torch.randint(0, V, (B, T), generator=g)
                ok = torch.equal(remote.embed(ids), local.embed(ids))
                tally.count("requests")
            elif kind == "classify":
                ok = close(remote.classify(x), local.classify(x))
                tally.count("requests")
            elif kind == "generate":
                prompt = x[:, : min(T, 16)]
                new = rng.randint(1, 64 - prompt.shape[1])
                a, b = remote.generate(prompt, max_new_tokens=new), local.generate(prompt, max_new_tokens=new)
                ok = torch.equal(a.ids, b.ids) and close(a.hidden, b.hidden)
                tally.count("requests")
            else:  # ill-formed: each must be refused with its own code, and change nothing
                which = rng.randrange(3)
                expected = (aios.InvalidArgumentError, aios.InvalidArgumentError, aios.NotFoundError)[which]
                try:
                    if which == 0:
                        remote.forward(torch.full((B, T, D), float("nan")))
                    elif which == 1:
                        remote.embed(torch.full((B, T), V))
                    else:
                        remote.vjp(2**62 + seed, grad_hidden=x)
                    ok = False
                except expected:
                    ok = True
                tally.count("ill-formed requests")
            if not ok:
                tally.fail(f"{where}: the host's answer differs from the local one")
        except Exception as e:  # noqa: BLE001
            tally.fail(f"{where}: {e!r}")


def hasty_client(address, local, seed, tally):
    """Kept passes under deadlines of a few ms: answered correctly, or UnavailableError."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    patient = aios.connect(address, api_key="key-hasty", timeout=120)  # releases what the quick one kept
    D = local.config.hidden_size
    quick = {}
    for i in range(HASTY_CALLS):
        timeout = rng.choice([0.005, 0.02, 0.1, 1.0])
        x = torch.randn(*CUT_SHAPE, D, generator=g) * 0.5
        while timeout not in quick:  # connecting (an Info call) under the same deadline may miss it too
            try:
                quick[timeout] = aios.connect(address, api_key="key-hasty", timeout=timeout)
            except aios.UnavailableError:
                tally.count("hasty connects cut by their deadline")
        try:
            kept = quick[timeout].forward(x, keep=True)
        except aios.UnavailableError:
            tally.count("hasty calls cut by their deadline")
            continue
        except Exception as e:  # noqa: BLE001
            tally.fail(f"hasty {seed} call {i} (deadline {timeout} s): expected UnavailableError, got {e!r}")
            continue
        tally.count("hasty calls answered")
        if not close(kept.hidden, local.forward(x).hidden):
            tally.fail(f"hasty {seed} call {i}: the host's answer differs from the local one")
        patient.release(kept.handle)


def run_killed_client(address, seed, stream, delay, tally):
    process = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, address, "key-killed", str(seed), str(int(stream))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline() != "ready\n":
            tally.fail(f"killed client {seed} did not start: {process.stderr.read()[-2000:]}")
            return
        time.sleep(delay)
        if process.poll() is not None:  # it stopped by itself: one of its calls failed
            tally.fail(f"killed client {seed} stopped before it was killed: {process.stderr.read()[-2000:]}")
            return
        process.send_signal(signal.SIGKILL)
        tally.count("clients killed mid-call")
        phases = process.communicate()[0].split()
        if phases and phases[-1] == "kept":
            tally.count("clients killed holding a handle")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def kept_passes_that_fit(address, key, x):
    """How many passes of x this tenant can still keep before its store quota refuses one."""
    backbone = aios.connect(address, api_key=key, timeout=120)
    handles = []
    try:
        for _ in range(QUOTA_PASSES + 2):
            try:
                handles.append(backbone.forward(x, keep=True).handle)
            except aios.ResourceExhaustedError:
                break
        return len(handles)
    finally:
        for h in handles:
            backbone.release(h)


def test_a_bounded_load_with_cut_callers_is_answered_correctly_and_leaves_nothing_behind(checkpoints, tmp_path,
                                                                                         monkeypatch):
    path = checkpoints["llama_gqa"].path
    local = aios.Backbone.load(path)
    D = local.config.hidden_size
    probe = torch.randn(*CUT_SHAPE, D, generator=torch.Generator().manual_seed(7)) * 0.5
    kept = local.forward(probe, keep=True)
    pass_bytes = local.store_bytes
    local.release(kept.handle)
    quota = QUOTA_PASSES * pass_bytes + pass_bytes // 2
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{t} key-{t} max_store_bytes={quota}\n" for t in TENANTS))
    # The host's glibc hands every block of 64 KiB or more back to the system when it is freed, so
    # its resident set measures what it holds (by default freed blocks stay cached in the heap, which
    # would hide a leak of a few passes or show growth that is none).
    with monkeypatch.context() as env:
        env.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
        env.setenv("MALLOC_TRIM_THRESHOLD_", "0")
        host = aios.serve(path, keys=keys)
    pid = host.pid
    tally = Tally()
    try:
        address = host.address
        remote = aios.connect(address, api_key="key-steady", timeout=120)

        # Warm-up: each kind of call once at the largest shapes of the load, then the baseline.
        targets = torch.randint(0, local.config.vocab_size, CUT_SHAPE)
        for _ in range(2):
            for key in ("key-steady", "key-killed", "key-hasty"):
                b = aios.connect(address, api_key=key, timeout=120)
                k = b.forward(probe, keep=True)
                b.vjp(k.handle, grad_hidden=probe)
                b.release(k.handle)
                b.forward_backward(probe, targets=targets)
                b.vjp(probe[:4], grad_hidden=probe[:4])
                b.classify(b.forward(probe[:4]).hidden)
        time.sleep(0.5)
        baseline = vm_rss(pid)

        start = time.perf_counter()
        threads = [threading.Thread(target=run_killed_client,
                                    args=(address, 100 + i, i % 2 == 1, 0.3 + 0.25 * i, tally))
                   for i in range(KILLED_CLIENTS)]
        threads += [threading.Thread(target=steady_client, args=(address, local, i, tally))
                    for i in range(STEADY_CLIENTS)]
        threads += [threading.Thread(target=hasty_client, args=(address, local, 50 + i, tally))
                    for i in range(HASTY_CLIENTS)]
        for t in threads:
            t.start()
        peak = baseline
        while any(t.is_alive() for t in threads):
            peak = max(peak, vm_rss(pid))
            time.sleep(0.05)
        for t in threads:
            t.join()
        load_seconds = time.perf_counter() - start

        # Cut calls keep computing on the host until their pass ends; give them a moment.
        time.sleep(1.0)
        after = vm_rss(pid)

        # Each tenant's kept passes, through its quota: the steady tenant (which released everything)
        # says how many fit in an empty quota.
        fit = {t: kept_passes_that_fit(address, f"key-{t}", probe) for t in TENANTS}
        after_probe = vm_rss(pid)

        # The host still answers, correctly.
        x = torch.randn(2, 9, D)
        assert torch.equal(remote.forward(x).hidden, local.forward(x).hidden)
        assert host._process.poll() is None, "the host exited"
    finally:
        log = host.stop()

    report = (f"\nload: {load_seconds:.1f} s, {dict(sorted(tally.counts.items()))}"
              f"\nhost VmRSS: baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
              f"after {after / 2**20:.1f} MiB ({(after - baseline) / 2**20:+.1f}), after the quota probe "
              f"{after_probe / 2**20:.1f} MiB; one pass {pass_bytes / 2**20:.1f} MiB; passes that fit: {fit}")
    print(report)
    assert not tally.failures, "\n".join(tally.failures[:20]) + report + "\nhost log:\n" + log[-3000:]
    assert tally.counts.get("clients killed mid-call", 0) == KILLED_CLIENTS, report
    assert tally.counts.get("requests", 0) >= 150, report

    # Every pass of the steady tenant was released: its whole quota is free.
    assert fit["steady"] == QUOTA_PASSES, report
    # A killed client held at most one handle it had been given (kept until the time-to-live).
    leaked_by_killed = fit["steady"] - fit["killed"]
    assert 0 <= leaked_by_killed <= KILLED_CLIENTS, report
    # A cut ForwardKeep is released by the host; only a deadline expiring between the host's check
    # and the reply's arrival leaves a pass behind (0-1 of ~12 in trials; a host that released
    # none would leave nearly all).
    cut = tally.counts.get("hasty calls cut by their deadline", 0)
    assert fit["steady"] - fit["hasty"] <= max(1, cut // 2), report

    # Memory back near the baseline: what is still legitimately held (the killed clients' passes,
    # until their time-to-live) plus slack for small blocks (under 64 KiB, kept in glibc's per-thread
    # arenas) and the threads gRPC started for the load: 2-4 MiB in trials. A pass lost for every
    # cut call (24 hasty ones, 7.8 MiB each) or a connection's buffers lost for each of the ~30
    # clients would not fit.
    assert after <= baseline + leaked_by_killed * pass_bytes + RSS_SLACK, report

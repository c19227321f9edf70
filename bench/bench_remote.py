"""A hosted backbone on loopback against the same backbone in-process, side by side in one run.

    .venv/bin/python bench/bench_remote.py [--model PATH] [--reps 5] [--threads N]

Starts `aios serve MODEL --listen 127.0.0.1:0` (the default model unless --model), connects with
aios.connect, and times, alternating remote and local calls:
  * forward + vjp (handle form) at 1x128 and 8x256: remote time / local time (aim <= 1.15 at 8x256);
  * a tiny call (embed of one token): p50 and p99 latency over many calls (aim: p50 <= 0.3 ms);
  * large tensors: a forward of [8,512,D] float32 latents whose hidden state comes back, MB/s of
    the bytes that cross the wire both ways beyond the local call's time;
  * concurrent clients (--clients 1,2,4): that many threads, each with its own aios.connect, each
    doing forward + vjp + release at 1x128 through the one host: steps/s in total and each step's
    latency (median, max) as a client sees it;
  * cross-client batching (--batching 2,4,8): N clients each sending a B=1 x T=128 forward at once
    (the host batches those that wait behind a running one, docs/hosting.md), against one B=N
    forward in-process (all N in one batch) and one B=N forward through the host.
The host and this process share the machine's cores; while one computes the other waits.
--sections picks the tables (default: all).
"""
import argparse
import os
import statistics
import threading
import time

import torch

import aios
from common import REPO, machine_line


def timed(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_vjp(backbone, latents, cotangent):
    kept = backbone.forward(latents, keep=True)
    backbone.vjp(kept.handle, grad_hidden=cotangent)
    backbone.release(kept.handle)


def concurrently(n, work):
    """Runs work(i) for i in range(n) on n threads started together; (wall seconds, their results)."""
    results = [None] * n
    barrier = threading.Barrier(n + 1)

    def run(i):
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results


def concurrent_clients(address, D, counts, reps):
    """n clients, each its own connection, each doing `reps` forward + vjp + release at 1x128."""
    print()
    print("| clients | steps/s (all clients) | step latency p50 | step latency max | vs 1 client |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for n in counts:
        backbones = [aios.connect(address) for _ in range(n)]
        torch.manual_seed(0)
        inputs = [(torch.randn(1, 128, D) * 0.1, torch.randn(1, 128, D)) for _ in range(n)]
        for i in range(n):  # warm-up, one each
            forward_vjp(backbones[i], *inputs[i])

        def work(i):
            latencies = []
            for _ in range(reps):
                start = time.perf_counter()
                forward_vjp(backbones[i], *inputs[i])
                latencies.append(time.perf_counter() - start)
            return latencies

        wall, results = concurrently(n, work)
        latencies = sorted(t for r in results for t in r)
        rate = n * reps / wall
        base = base or rate
        print(f"| {n} | {rate:.2f} | {statistics.median(latencies) * 1e3:.0f} ms | {latencies[-1] * 1e3:.0f} ms | "
              f"{rate / base:.2f}x |")


def batching(local, address, D, counts, reps):
    """N concurrent B=1 forwards through the host against one B=N forward (in-process and hosted)."""
    print()
    print("medians of --reps (minima in parentheses); a ratio above 1: N concurrent callers take longer than one batch of N")
    print("| N | N clients x B=1, concurrent (host) | one B=N call, in-process | one B=N call, host | "
          "concurrent / batched in-process | concurrent / batched host |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in counts:
        backbones = [aios.connect(address) for _ in range(n)]
        torch.manual_seed(0)
        rows = torch.randn(n, 128, D) * 0.1
        for i in range(n):  # warm-up, each shape once
            backbones[i].forward(rows[i:i + 1])
        local.forward(rows)
        backbones[0].forward(rows)
        t_concurrent, t_local, t_remote = [], [], []
        for _ in range(reps):  # alternating, medians
            # A pause before each measure, so that threads still spinning after the previous one
            # (the host's or this process's OpenMP workers) do not share its cores.
            time.sleep(1)
            t_concurrent.append(concurrently(n, lambda i: backbones[i].forward(rows[i:i + 1]))[0])
            time.sleep(1)
            start = time.perf_counter()
            local.forward(rows)
            t_local.append(time.perf_counter() - start)
            time.sleep(1)
            start = time.perf_counter()
            backbones[0].forward(rows)
            t_remote.append(time.perf_counter() - start)
        c, l, r = (statistics.median(t) for t in (t_concurrent, t_local, t_remote))
        cm, lm, rm = (min(t) for t in (t_concurrent, t_local, t_remote))
        print(f"| {n} | {c * 1e3:.0f} ({cm * 1e3:.0f}) ms | {l * 1e3:.0f} ({lm * 1e3:.0f}) ms | "
              f"{r * 1e3:.0f} ({rm * 1e3:.0f}) ms | {c / l:.2f}x ({cm / lm:.2f}x) | {c / r:.2f}x ({cm / rm:.2f}x) |")


def single_client(local, remote, D, args):
    """One client, alternating remote and local calls."""
    print()
    print("| measure | local | remote | remote / local |")
    print("| --- | --- | --- | --- |")
    for B, T in ((1, 128), (8, 256)):
        torch.manual_seed(0)
        latents, cotangent = torch.randn(B, T, D) * 0.1, torch.randn(B, T, D)
        t_local = timed(lambda: forward_vjp(local, latents, cotangent), args.reps)
        t_remote = timed(lambda: forward_vjp(remote, latents, cotangent), args.reps)
        print(f"| forward + vjp {B}x{T} | {t_local * 1e3:.1f} ms | {t_remote * 1e3:.1f} ms | "
              f"{t_remote / t_local:.3f}x |")

    one = torch.tensor([[1]])
    for backbone in (local, remote):
        backbone.embed(one)
    latencies = {}
    for name, backbone in (("local", local), ("remote", remote)):
        samples = []
        for _ in range(args.tiny_calls):
            start = time.perf_counter()
            backbone.embed(one)
            samples.append(time.perf_counter() - start)
        samples.sort()
        latencies[name] = (samples[len(samples) // 2], samples[int(len(samples) * 0.99)])
    (lp50, lp99), (rp50, rp99) = latencies["local"], latencies["remote"]
    print(f"| tiny call (embed 1 token) p50 | {lp50 * 1e3:.3f} ms | {rp50 * 1e3:.3f} ms | {rp50 / lp50:.1f}x |")
    print(f"| tiny call p99 | {lp99 * 1e3:.3f} ms | {rp99 * 1e3:.3f} ms | {rp99 / lp99:.1f}x |")

    big = torch.randn(8, 512, D) * 0.1
    t_local = timed(lambda: local.forward(big), args.reps)
    t_remote = timed(lambda: remote.forward(big), args.reps)
    moved = 2 * big.numel() * 4 / 1e6  # latents out, hidden back
    rate = f"{moved / (t_remote - t_local):.0f} MB/s beyond compute" if t_remote > t_local else "noise exceeds the transfer"
    print(f"| forward 8x512 ({moved:.1f} MB over the wire) | {t_local * 1e3:.1f} ms | {t_remote * 1e3:.1f} ms | "
          f"{t_remote / t_local:.3f}x ({rate}) |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.environ.get("AIOS_DEFAULT_MODEL",
                                                     str(REPO / ".cache/models/smollm2-135m-instruct")))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tiny-calls", type=int, default=500)
    p.add_argument("--clients", default="1,2,4", help="concurrent client counts (forward + vjp at 1x128)")
    p.add_argument("--batching", default="2,4,8", help="N for N concurrent B=1 forwards against one B=N")
    p.add_argument("--sections", default="single,concurrent,batching",
                   help="which tables: single (remote against local), concurrent, batching")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    torch.set_num_threads(args.threads)
    print(machine_line("cpu", "float32"))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the host's threads, as this process's
    host = aios.serve(args.model)  # no keys: one tenant, without a store quota
    address = host.address
    try:
        local, remote = aios.Backbone.load(args.model), aios.connect(address)
        D = local.config.hidden_size
        print(f"model {args.model}, float32, {args.threads} threads, host {address}")
        if "single" in sections:
            single_client(local, remote, D, args)
        if "concurrent" in sections:
            concurrent_clients(address, D, [int(n) for n in args.clients.split(",")], args.reps)
        if "batching" in sections:
            batching(local, address, D, [int(n) for n in args.batching.split(",")], args.reps)
    finally:
        host.stop()


if __name__ == "__main__":
    main()

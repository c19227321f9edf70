"""A hosted backbone on loopback against the same backbone in-process, side by side in one run.

    .venv/bin/python bench/bench_remote.py [--model PATH] [--reps 5] [--threads N]

Starts `aios serve MODEL --listen 127.0.0.1:0` (the default model unless --model), connects with
aios.connect, and times, alternating remote and local calls:
  * forward + vjp (handle form) at 1x128 and 8x256: remote time / local time (aim <= 1.15 at 8x256);
  * a tiny call (embed of one token): p50 and p99 latency over many calls (aim: p50 <= 0.3 ms);
  * large tensors: a forward of [8,512,D] float32 latents whose hidden state comes back, MB/s of
    the bytes that cross the wire both ways beyond the local call's time.
The host and this process share the machine's cores; while one computes the other waits.
"""
import argparse
import os
import statistics
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.environ.get("AIOS_DEFAULT_MODEL",
                                                     str(REPO / ".cache/models/smollm2-135m-instruct")))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tiny-calls", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line("cpu", "float32"))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the host's threads, as this process's
    host = aios.serve(args.model)
    address = host.address
    try:
        local, remote = aios.Backbone.load(args.model), aios.connect(address)
        D = local.config.hidden_size
        print(f"model {args.model}, float32, {args.threads} threads, host {address}")
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
        transfer = max(t_remote - t_local, 1e-9)
        print(f"| forward 8x512 ({moved:.1f} MB over the wire) | {t_local * 1e3:.1f} ms | {t_remote * 1e3:.1f} ms | "
              f"{t_remote / t_local:.3f}x ({moved / transfer:.0f} MB/s beyond compute) |")
    finally:
        host.stop()


if __name__ == "__main__":
    main()

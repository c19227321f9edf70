"""A backbone split over pipeline stages against the same backbone in one process, side by side.

    .venv/bin/python bench/bench_pipeline.py [--models default,qwen3] [--stages 1,2,3] [--reps 3]
                                             [--clients 1,4,8] [--seconds 10]

For each model and each number of processes N (1: `aios serve MODEL`; N > 1: `aios serve MODEL
--stages N`, the front and N - 1 stage workers on this machine, docs/pipeline-parallel.md), through
aios.connect on loopback:
  * resident memory of each process after loading and a warm-up (VmRSS), and of the largest;
  * forward + vjp (handle form) at 1x128 and 8x256: median seconds, and the ratio to N = 1;
  * requests per second with 1, 4 and 8 concurrent clients, each looping forward + vjp + release at
    1x128 for --seconds: steps/s in total, and the ratio to N = 1;
  * bytes all processes sent to one another during --steps forward + vjp steps at 1x128 (from the
    line each logs as it leaves), per token, against the arithmetic: the residual stream once per
    hop each way, 2 * N * D * s bytes per token (s = 4 for float32), plus the positions (8 bytes
    per token to each stage).
Every process shares this machine's cores, so the split cannot make more arithmetic happen here:
what this shows on one CPU machine is the split's cost (transfers, the processes' overheads) and
its memory per process. Models: "default" (SmolLM2-135M-Instruct, float32) and "qwen3" (Qwen3-0.6B
shapes, random weights, 2.4 GB in float32: large enough that the split matters).
"""
import argparse
import os
import re
import threading
import time

import torch

import aios
from bench_remote import forward_vjp as step, timed
from common import REPO, ensure_model, machine_line


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def workers_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def throughput(address, D, clients, seconds):
    """Steps/s of `clients` threads, each with its own connection, looping forward + vjp at 1x128
    for `seconds` after all have warmed up: the steps done over the time until the last one ends."""
    done = [0] * clients
    ready, go = threading.Barrier(clients + 1), threading.Barrier(clients + 1)
    stop = [0.0]

    def client(i):
        backbone = aios.connect(address, timeout=600)
        latents = torch.randn(1, 128, D)
        cotangent = torch.randn(1, 128, D)
        step(backbone, latents, cotangent)  # warm
        ready.wait()
        go.wait()
        while time.monotonic() < stop[0]:
            step(backbone, latents, cotangent)
            done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.monotonic()
    stop[0] = start + seconds
    go.wait()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start)


def serve(path, n):
    return aios.serve(path) if n == 1 else aios.serve(path, stages=n)


def measure(path, n, args):
    host = serve(path, n)
    try:
        backbone = aios.connect(host.address, timeout=600)
        D = backbone.config.hidden_size
        small = (torch.randn(1, 128, D), torch.randn(1, 128, D))
        large = (torch.randn(8, 256, D), torch.randn(8, 256, D)) if args.large else None
        step(backbone, *small)
        memory = [rss_mb(host.pid)] + [rss_mb(p) for p in workers_of(host.pid)]
        row = {"memory": memory,
               "1x128": timed(lambda: step(backbone, *small), args.reps),
               "8x256": timed(lambda: step(backbone, *large), args.reps) if args.large else float("nan")}
        for c in args.clients:
            row[f"rps{c}"] = throughput(host.address, D, c, args.seconds)
    finally:
        host.stop()
    # Traffic: a fresh host, --steps steps, and the totals each process logs as it leaves.
    row["bytes_per_token"] = None
    if n > 1:
        host = serve(path, n)
        backbone = aios.connect(host.address, timeout=600)
        for _ in range(args.steps):
            step(backbone, *small)
        log = host.stop()
        sent = sum(int(b) for b in re.findall(r"pipeline rank \d+ sent (\d+) bytes", log))
        row["bytes_per_token"] = sent / (args.steps * 128)
        row["arithmetic"] = 2 * n * D * 4 + (n - 1) * 8
    row["D"] = D
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="default,qwen3")
    p.add_argument("--stages", default="1,2,3")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--no-large", dest="large", action="store_false",
                   help="skip forward + vjp at 8x256 (it keeps 8 GB of activations for qwen3)")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    print(machine_line("cpu", "float32"))
    paths = {"default": lambda: os.environ.get("AIOS_DEFAULT_MODEL", str(REPO / ".cache/models/smollm2-135m-instruct")),
             "qwen3": lambda: str(ensure_model("qwen3"))}
    for name in args.models.split(","):
        path = paths[name]()
        rows = {n: measure(path, n, args) for n in (int(s) for s in args.stages.split(","))}
        base = rows[min(rows)]
        print(f"\n{name} ({path}), D = {base['D']}")
        header = ("| processes | resident MB per process (front first) | largest | fwd+vjp 1x128 s | ratio "
                  "| fwd+vjp 8x256 s | ratio | " + " | ".join(f"req/s {c} clients | ratio" for c in args.clients)
                  + " | bytes/token sent | arithmetic |")
        print(header)
        print("|" + " --- |" * (header.count("|") - 1))
        for n, r in rows.items():
            cells = [str(n), " / ".join(f"{m:.0f}" for m in r["memory"]), f"{max(r['memory']):.0f}",
                     f"{r['1x128']:.3f}", f"{r['1x128'] / base['1x128']:.2f}",
                     f"{r['8x256']:.3f}", f"{r['8x256'] / base['8x256']:.2f}"]
            for c in args.clients:
                cells += [f"{r[f'rps{c}']:.2f}", f"{r[f'rps{c}'] / base[f'rps{c}']:.2f}"]
            cells += [f"{r['bytes_per_token']:.0f}" if r["bytes_per_token"] else "-",
                      str(r.get("arithmetic", "-"))]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""aios forward against transformers on the same weights, device, dtype and thread count.

    python bench/bench_forward.py [--device cpu|cuda] [--dtype float32|bfloat16|float16]
                                  [--shapes 1x128,8x256] [--reps 7] [--threads N] [--profile]
                                  [--model smollm2|qwen3]

The model is SmolLM2-135M-shaped (30 layers, D=576, 9 query / 3 key-value heads, vocabulary 49152),
or with --model qwen3 Qwen3-0.6B-shaped, with random weights, written once to .cache/bench/. Both sides start from token ids. Two measures:
  hidden  aios embed+forward            vs  transformers model.model(ids).last_hidden_state
  logits  aios embed+forward+classify   vs  transformers model(ids).logits
Runs alternate between the two sides so that drift in machine load hits both; the table shows
medians (and minima) in milliseconds and the ratio anchor/aios (above 1 = aios is faster).
The anchor is transformers with eager attention; its SDPA attention is shown as a second column.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import transformers

import aios

from common import MODELS, ensure_model, machine_line, sync


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shapes", default="1x128,8x256")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--profile", action="store_true", help="print where aios spends its time")
    parser.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    path = ensure_model(args.model)
    backbone = aios.Backbone.load(path, device=args.device, dtype=args.dtype)
    anchors = {
        impl: transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=impl)
        .to(args.device).eval()
        for impl in ("eager", "sdpa")
    }
    vocab = backbone.config.vocab_size
    print(machine_line(args.device, args.dtype), f"model {args.model}")
    print(f"{'shape':>7} {'measure':>7} | {'aios ms':>16} | {'eager ms':>16} {'ratio':>6} | "
          f"{'sdpa ms':>16} {'ratio':>6} | max|diff|")

    for shape in args.shapes.split(","):
        B, T = (int(x) for x in shape.split("x"))
        torch.manual_seed(1)
        ids = torch.randint(0, vocab, (B, T), device=args.device)
        sides = {
            "hidden": {
                "aios": lambda: backbone.forward(backbone.embed(ids)).hidden,
                **{impl: (lambda m=m: m.model(ids).last_hidden_state) for impl, m in anchors.items()},
            },
            "logits": {
                "aios": lambda: backbone.classify(backbone.forward(backbone.embed(ids)).hidden),
                **{impl: (lambda m=m: m(ids).logits) for impl, m in anchors.items()},
            },
        }
        for measure, fns in sides.items():
            with torch.no_grad():
                results = {name: fn() for name, fn in fns.items()}  # warm-up, and the outputs to compare
                diff = (results["aios"].float() - results["eager"].float()).abs().max().item()
                del results
                times = {name: [] for name in fns}
                for _ in range(args.reps):
                    for name, fn in fns.items():
                        times[name].append(timed(fn, args.device))
            med = {k: statistics.median(v) for k, v in times.items()}
            low = {k: min(v) for k, v in times.items()}
            cell = lambda k: f"{med[k]:8.1f} ({low[k]:6.1f})"
            print(f"{shape:>7} {measure:>7} | {cell('aios')} | {cell('eager')} {med['eager'] / med['aios']:5.2f}x | "
                  f"{cell('sdpa')} {med['sdpa'] / med['aios']:5.2f}x | {diff:.1e}", flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        B, T = (int(x) for x in args.shapes.split(",")[0].split("x"))
        ids = torch.randint(0, vocab, (B, T), device=args.device)
        run = lambda: backbone.classify(backbone.forward(backbone.embed(ids)).hidden)
        run()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with profile(activities=activities) as prof:
            for _ in range(3):
                run()
        sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
        print(f"\nwhere aios spends its time ({B}x{T}, logits, 3 runs):")
        print(prof.key_averages().table(sort_by=sort, row_limit=15))


if __name__ == "__main__":
    sys.exit(main())

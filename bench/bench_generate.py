"""Generation with a KV cache: aios against transformers `generate` on the same weights, in the same run.

    python bench/bench_generate.py [--model DIR] [--dtype float32] [--threads N] [--new 64] [--prompt 128]
                                   [--batches 1,8] [--reps 3]

The default model (SmolLM2-135M-Instruct, the exported folder) unless --model names another.
Greedy decoding of --new tokens from a --prompt-token prompt; no stop tokens, so both sides run the
same number of steps (their tokens are compared). Measures, medians of --reps alternating runs:
  prefill   prompt tokens/s of the first step (the prompt through the model, one token out)
  decode    generated tokens/s over the steps after the first (batch × steps / time)
  load      seconds to load the model: the exported folder (safetensors), and the GGUF file it came
            from (Q4_1, dequantised on load by both sides)
Ratios are aios / transformers (above 1 = aios is faster). transformers runs with eager attention.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import transformers

import aios

from common import REPO, machine_line


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("AIOS_DEFAULT_MODEL",
                                                          str(REPO / ".cache/models/smollm2-135m-instruct")))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    start = time.perf_counter()
    backbone = aios.Backbone.load(args.model, dtype=args.dtype)
    aios_load = time.perf_counter() - start
    start = time.perf_counter()
    ref = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype,
                                                            attn_implementation="eager").eval()
    hf_load = time.perf_counter() - start

    print(machine_line("cpu", args.dtype))
    print(f"model {args.model}, {args.dtype}, {args.threads} threads, prompt {args.prompt}, {args.new} new tokens")
    print(f"load (folder): aios {aios_load:.2f} s, transformers {hf_load:.2f} s ({hf_load / aios_load:.2f}x)")
    gguf = subprocess.run([sys.executable, str(REPO / "scripts/default_model.py"), "gguf"], capture_output=True,
                          text=True).stdout.strip()
    if gguf and args.model == parser.get_default("model"):
        start = time.perf_counter()
        aios.Backbone.load(gguf, dtype=args.dtype)
        aios_gguf = time.perf_counter() - start
        start = time.perf_counter()
        transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                          dtype=dtype)
        hf_gguf = time.perf_counter() - start
        print(f"load (GGUF):   aios {aios_gguf:.2f} s, transformers {hf_gguf:.2f} s ({hf_gguf / aios_gguf:.2f}x)")
    print("| batch | aios prefill tok/s | hf prefill tok/s | ratio | aios decode tok/s | hf decode tok/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    V = backbone.config.vocab_size
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.randint(100, V, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        mask = torch.ones_like(ids)

        def run_aios(new):
            with torch.inference_mode():
                return backbone.generate(backbone.embed(ids), max_new_tokens=new).ids

        def run_hf(new):
            with torch.inference_mode():
                out = ref.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                   do_sample=False, pad_token_id=0)
            return out[:, args.prompt:]

        results = {"aios": ([], []), "hf": ([], [])}
        run_aios(2), run_hf(2)  # warm-up
        for _ in range(args.reps):
            for name, fn in (("aios", run_aios), ("hf", run_hf)):
                t0 = time.perf_counter()
                fn(1)
                t1 = time.perf_counter()
                tokens = fn(args.new)
                t2 = time.perf_counter()
                prefill = t1 - t0
                results[name][0].append(batch * args.prompt / prefill)
                results[name][1].append(batch * (args.new - 1) / max(1e-9, (t2 - t1) - prefill))
                if name == "aios":
                    ours = tokens
                else:
                    same = (ours == tokens).float().mean().item()
        a_pre, a_dec = (statistics.median(x) for x in results["aios"])
        h_pre, h_dec = (statistics.median(x) for x in results["hf"])
        print(f"| {batch} | {a_pre:.0f} | {h_pre:.0f} | {a_pre / h_pre:.2f}x | {a_dec:.1f} | {h_dec:.1f} | "
              f"{a_dec / h_dec:.2f}x |  (same tokens: {same:.0%})")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

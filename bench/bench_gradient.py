"""The Gradient API against transformers' autograd, same weights, device, dtype and threads.

    python bench/bench_gradient.py [--device cpu|cuda] [--dtype float32|bfloat16] [--shapes 1x128,8x256] [--reps 3]
                                   [--model smollm2|qwen3]

SmolLM2-135M-shaped model with random weights, or Qwen3-0.6B-shaped with --model qwen3 (see common.py). Each side starts from latents and
ends with d loss / d latents:
  vjp     aios forward(keep=True) + vjp(grad_hidden)        vs  transformers model.model(inputs_embeds)
                                                                 + backward(grad_hidden), frozen weights
  fused   aios forward_backward(targets) (chunked vocabulary) vs  transformers model(inputs_embeds).logits,
                                                                 cross-entropy, backward, frozen weights
  fused, recompute   aios forward_backward(recompute=True)
  full backward      transformers cross-entropy backward with weight gradients (what training costs)
Times are medians in ms; peak is the memory the call adds on top of what was in use before it
(resident-set high-water mark on CPU, allocator peak on CUDA). Ratios are anchor / aios.
"""
import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
import transformers

import aios

from common import MODELS, ensure_model, exact_cpu_peaks, machine_line, measure


def main():
    exact_cpu_peaks()
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shapes", default="1x128,8x256")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    path = ensure_model(args.model)
    backbone = aios.Backbone.load(path, device=args.device, dtype=args.dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    hf = hf.to(args.device).eval()
    vocab = backbone.config.vocab_size
    print(machine_line(args.device, args.dtype), f"model {args.model}")
    print(f"{'shape':>7} {'measure':>22} | {'ms':>9} {'peak MB':>8} | {'anchor ms':>9} {'peak MB':>8} | "
          f"{'time':>6} {'memory':>6} | max rel diff")

    for shape in args.shapes.split(","):
        B, T = (int(x) for x in shape.split("x"))
        torch.manual_seed(1)
        latents = backbone.embed(torch.randint(0, vocab, (B, T), device=args.device))
        grad_hidden = torch.randn(B, T, backbone.config.hidden_size, device=args.device, dtype=dtype)
        targets = torch.randint(0, vocab, (B, T), device=args.device)

        def aios_vjp():
            kept = backbone.forward(latents, keep=True)
            grad = backbone.vjp(kept.handle, grad_hidden=grad_hidden)
            backbone.release(kept.handle)
            return grad

        def hf_vjp(weights_too=False):
            x = latents.clone().requires_grad_(True)
            hidden = hf.model(inputs_embeds=x).last_hidden_state
            return torch.autograd.grad(hidden, x, grad_hidden)[0]

        def aios_fused(recompute=False):
            return backbone.forward_backward(latents, targets=targets, recompute=recompute).grad_latents

        def hf_fused():
            x = latents.clone().requires_grad_(True)
            logits = hf(inputs_embeds=x).logits
            F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1)).backward()
            return x.grad

        def hf_full():
            for p in hf.parameters():
                p.requires_grad_(True)
            try:
                grad = hf_fused()
                hf.zero_grad(set_to_none=True)
                return grad
            finally:
                for p in hf.parameters():
                    p.requires_grad_(False)

        for p in hf.parameters():
            p.requires_grad_(False)
        rows = [("vjp", aios_vjp, hf_vjp), ("fused cross-entropy", aios_fused, hf_fused),
                ("fused, recompute", lambda: aios_fused(True), hf_fused),
                ("full backward (anchor)", aios_fused, hf_full)]
        for name, ours, anchor in rows:
            diff = ((ours() - anchor()).float().norm() / anchor().float().norm()).item()
            results = {"ours": [], "anchor": []}
            for _ in range(args.reps):
                results["ours"].append(measure(ours, args.device))
                results["anchor"].append(measure(anchor, args.device))
            t = {k: statistics.median(ms for ms, _ in v) for k, v in results.items()}
            m = {k: max(b for _, b in v) / 2**20 for k, v in results.items()}
            print(f"{shape:>7} {name:>22} | {t['ours']:9.1f} {m['ours']:8.1f} | {t['anchor']:9.1f} {m['anchor']:8.1f} | "
                  f"{t['anchor'] / t['ours']:5.2f}x {m['anchor'] / max(m['ours'], 1e-9):5.2f}x | {diff:.1e}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

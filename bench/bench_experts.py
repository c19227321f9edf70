"""Mixture-of-experts blocks: aios against transformers eager on the same weights, device, dtype and
threads, and both against the number of experts at a fixed top-k.

    python bench/bench_experts.py [--device cpu|cuda] [--dtype float32|bfloat16] [--experts 16,64,128]
                                  [--shape 4x128] [--reps 5] [--layers 1]

The blocks have Qwen3-30B-A3B's shapes (D=2048, 32/4 heads of 128 with q/k norm, experts of width
768, top 8 renormalised), random weights, a small vocabulary (the head is not what is measured),
and --layers of its 48 layers (its full size does not fit this machine twice). For each number of
experts E:
  forward      aios forward(latents).hidden           vs  transformers model.model(inputs_embeds)
  forward+vjp  aios forward(keep) + vjp(grad_hidden)  vs  transformers the same + backward, frozen weights
Every token runs 8 experts whatever E is, so a routed implementation's time stays flat as E grows;
one that ran every expert on every token would grow with E. Medians in ms; ratio = anchor / aios
(above 1 = aios is faster).
"""
import argparse
import sys

import torch
import transformers

import aios

from common import REPO, blocks_against_eager, machine_line, save_random


def model_dir(experts, layers):
    folder = REPO / f".cache/bench/qwen3-moe-e{experts}-l{layers}-random"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = transformers.Qwen3MoeConfig(
            vocab_size=1024, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
            num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
            num_experts=experts, num_experts_per_tok=8, norm_topk_prob=True, rope_theta=1000000.0,
            max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False)
        save_random(transformers.Qwen3MoeForCausalLM(config), folder)
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--experts", default="16,64,128")
    parser.add_argument("--shape", default="4x128")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=1)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    B, T = (int(x) for x in args.shape.split("x"))
    print(machine_line(args.device, args.dtype), f"model qwen3-moe blocks x{args.layers}, shape {args.shape}, top 8")
    print(f"{'experts':>7} {'measure':>11} | {'aios ms':>9} | {'eager ms':>9} {'ratio':>6} | max rel diff")
    for experts in (int(e) for e in args.experts.split(",")):
        path = model_dir(experts, args.layers)
        backbone = aios.Backbone.load(path, device=args.device, dtype=args.dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
        hf = hf.to(args.device).eval().requires_grad_(False)
        torch.manual_seed(1)
        latents = backbone.embed(torch.randint(0, 1024, (B, T), device=args.device))
        grad_hidden = torch.randn(B, T, 2048, device=args.device, dtype=dtype)
        for measure, aios_ms, eager_ms, diff in blocks_against_eager(backbone, hf, latents, grad_hidden, args.device,
                                                                     args.reps):
            print(f"{experts:>7} {measure:>11} | {aios_ms:9.1f} | {eager_ms:9.1f} {eager_ms / aios_ms:5.2f}x | "
                  f"{diff:.1e}", flush=True)
        del backbone, hf


if __name__ == "__main__":
    sys.exit(main())

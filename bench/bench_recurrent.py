"""Hybrid linear-attention backbones (Qwen3.5): aios against transformers eager on the same random
weights, device, dtype and threads.

    python bench/bench_recurrent.py [--device cpu|cuda] [--dtype float32|bfloat16] [--reps 3]
                                    [--shapes 1x128,8x256,1x2048] [--lengths 512,1024,2048,4096]
                                    [--new-tokens 32]

The model has Qwen3.5-0.8B's published shape (24 layers, D=1024, every 4th layer gated attention with
8/2 heads of 256, the others Gated DeltaNet with 16 heads of 128, MLP 3584, vocabulary 248320, tied
head) and random weights. transformers runs its torch fallback of the delta rule (the reference
aios is checked against); with flash-linear-attention's kernels on a GPU it would be faster. Three
tables:
  shapes   forward (aios forward(latents).hidden vs model.model(inputs_embeds)) and forward+vjp (kept
           pass + vjp of the hidden state vs the same + backward, frozen weights), medians in ms
  lengths  forward of four Gated DeltaNet layers alone at growing T: ms per token stays flat when the
           cost is linear in T
  decode   greedy tokens/s after a 32-token prompt, aios generate vs transformers generate, both
           with their caches (recurrent state for the DeltaNet layers)
ratio = anchor / aios (above 1 = aios is faster).
"""
import argparse
import sys
import time

import torch
import transformers

import aios

from common import REPO, blocks_against_eager, exact_cpu_peaks, machine_line, median_ms, save_random, sync

SHAPE = dict(vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_attention_heads=8,
             num_key_value_heads=2, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=16,
             linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
             max_position_embeddings=262144, rms_norm_eps=1e-6, tie_word_embeddings=True,
             rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25})


def model_dir(name, **overrides):
    folder = REPO / f".cache/bench/{name}-random"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = transformers.Qwen3_5TextConfig(**{**SHAPE, **overrides})
        save_random(transformers.Qwen3_5ForCausalLM(config), folder)
    return folder


def load_both(path, device, dtype):
    # A kept pass of 8x256 or 1x2048 keeps about 9 GB of activations at this shape: past the default budget.
    backbone = aios.Backbone.load(path, device=device, dtype=str(dtype).removeprefix("torch."), store_bytes=16 << 30)
    hf = transformers.Qwen3_5ForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return backbone, hf.to(device).eval().requires_grad_(False)


def decode_rates(backbone, hf, device, new_tokens):
    """Greedy tokens per second after a 32-token prompt, for each; and whether the tokens agree."""
    torch.manual_seed(2)
    ids = torch.randint(0, SHAPE["vocab_size"], (1, 32), device=device)

    def ours():
        return backbone.generate(backbone.embed(ids), max_new_tokens=new_tokens).ids

    def theirs():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)[:, 32:]

    rates, tokens = {}, {}
    for name, fn in (("aios", ours), ("eager", theirs)):
        with torch.no_grad():
            tokens[name] = fn().cpu()  # warm-up
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
        rates[name] = new_tokens / (time.perf_counter() - start)
    return rates, torch.equal(tokens["aios"], tokens["eager"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of shapes up to 1024 tokens (longer: 1)")
    parser.add_argument("--shapes", default="1x128,8x256,1x2048", help="empty: the lengths table only")
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.device == "cpu":
        exact_cpu_peaks()  # large blocks go back to the system when freed: each side's ~9 GB pass fits after the other's
    dtype = getattr(torch, args.dtype)
    print(machine_line(args.device, args.dtype), "model qwen3.5-0.8B shape, random weights")

    if args.shapes:
        shapes_and_decode(args, dtype)
    lengths(args, dtype)


def shapes_and_decode(args, dtype):
    backbone, hf = load_both(model_dir("qwen3.5-0.8b"), args.device, dtype)
    print(f"{'shape':>7} {'measure':>11} | {'aios ms':>9} | {'eager ms':>9} {'ratio':>6} | rel diff")
    for shape in args.shapes.split(","):
        B, T = (int(x) for x in shape.split("x"))
        torch.manual_seed(1)
        latents = backbone.embed(torch.randint(0, SHAPE["vocab_size"], (B, T), device=args.device))
        grad_hidden = torch.randn(B, T, SHAPE["hidden_size"], device=args.device, dtype=dtype)
        reps = args.reps if B * T <= 1024 else 1
        for measure, aios_ms, eager_ms, diff in blocks_against_eager(backbone, hf, latents, grad_hidden,
                                                                     args.device, reps):
            print(f"{shape:>7} {measure:>11} | {aios_ms:9.1f} | {eager_ms:9.1f} {eager_ms / aios_ms:5.2f}x | "
                  f"{diff:.1e}", flush=True)

    rates, same = decode_rates(backbone, hf, args.device, args.new_tokens)
    print(f"decode 1x32 + {args.new_tokens}: aios {rates['aios']:.1f} tokens/s | eager {rates['eager']:.1f} tokens/s "
          f"{rates['aios'] / rates['eager']:5.2f}x | same tokens: {same}", flush=True)


def lengths(args, dtype):
    """Four DeltaNet layers alone: their cost per token, flat in T when linear."""
    backbone, hf = load_both(model_dir("qwen3.5-0.8b-deltanet4", num_hidden_layers=4, vocab_size=1024,
                                       layer_types=["linear_attention"] * 4), args.device, dtype)
    print(f"{'T':>7} {'measure':>11} | {'aios ms':>9} {'us/token':>9} | {'eager ms':>9} {'us/token':>9} {'ratio':>6}")
    for T in (int(t) for t in args.lengths.split(",")):
        latents = backbone.embed(torch.randint(0, 1024, (1, T), device=args.device))
        with torch.no_grad():
            ours = median_ms(lambda: backbone.forward(latents).hidden, args.device, 2)
            # No cache: transformers' cache of a model without attention layers cannot say its length.
            theirs = median_ms(lambda: hf.model(inputs_embeds=latents, use_cache=False).last_hidden_state, args.device, 2)
        print(f"{T:>7} {'forward':>11} | {ours:9.1f} {ours * 1e3 / T:9.1f} | {theirs:9.1f} {theirs * 1e3 / T:9.1f} "
              f"{theirs / ours:5.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())

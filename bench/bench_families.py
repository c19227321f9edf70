"""Each 2025–26 family at the shapes of its smallest real release: aios against transformers eager on
the same weights, device, dtype and threads.

    python bench/bench_families.py [--families qwen3,gemma3,...] [--layers 2] [--shapes 1x128,4x128]
                                   [--device cpu|cuda] [--dtype float32|bfloat16] [--reps 5]

Random weights, --layers of each release's blocks (whole releases do not fit this machine twice) and a
small vocabulary (the head is not what is measured). For each family and shape:
  forward      aios forward(latents).hidden           vs  transformers model.model(inputs_embeds)
  forward+vjp  aios forward(keep) + vjp(grad_hidden)  vs  transformers the same + backward, frozen weights
Medians in ms; ratio = anchor / aios (above 1 = aios is faster); the last column is the relative
difference of the two results.
"""
import argparse
import sys

import torch
import transformers

import aios

from common import REPO, blocks_against_eager, machine_line, save_random

VOCAB = 1024

# The smallest release of each family, as its config.json gives it (vocabulary aside).
FAMILIES = {
    "qwen3": ("Qwen3-0.6B", lambda n: transformers.Qwen3Config(
        hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960, num_hidden_layers=n)),
    "smollm3": ("SmolLM3-3B", lambda n: transformers.SmolLM3Config(
        hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=4,
        rope_theta=5000000.0, rms_norm_eps=1e-6, max_position_embeddings=65536, num_hidden_layers=n,
        no_rope_layer_interval=4)),
    "olmo2": ("OLMo-2-0425-1B", lambda n: transformers.Olmo2Config(
        hidden_size=2048, intermediate_size=8192, num_attention_heads=16, num_key_value_heads=16,
        rope_theta=500000.0, rms_norm_eps=1e-6, max_position_embeddings=4096, num_hidden_layers=n)),
    "phi3": ("Phi-3-mini-4k", lambda n: transformers.Phi3Config(
        hidden_size=3072, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32,
        rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096, original_max_position_embeddings=4096,
        sliding_window=2047, num_hidden_layers=n)),
    "gemma2": ("Gemma-2-2B", lambda n: transformers.Gemma2Config(
        hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        max_position_embeddings=8192, num_hidden_layers=n)),
    "gemma3": ("Gemma-3-270M", lambda n: transformers.Gemma3TextConfig(
        hidden_size=640, intermediate_size=2048, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        query_pre_attn_scalar=256, sliding_window=512, max_position_embeddings=32768, num_hidden_layers=n,
        layer_types=["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)])),
    "qwen2_moe": ("Qwen1.5-MoE-A2.7B", lambda n: transformers.Qwen2MoeConfig(
        hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
        num_experts=60, num_experts_per_tok=4, num_attention_heads=16, num_key_value_heads=16,
        rope_theta=1000000.0, max_position_embeddings=8192, num_hidden_layers=n)),
    "mixtral": ("Mixtral-8x7B", lambda n: transformers.MixtralConfig(
        hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=1000000.0, max_position_embeddings=32768,
        num_hidden_layers=n)),
    "gpt_oss": ("gpt-oss-20b", lambda n: transformers.GptOssConfig(
        hidden_size=2880, intermediate_size=2880, num_local_experts=32, num_experts_per_tok=4,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, sliding_window=128,
        max_position_embeddings=131072, num_hidden_layers=n)),
}


def model_dir(family, layers):
    folder = REPO / f".cache/bench/{family}-l{layers}-random"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = FAMILIES[family][1](layers)
        config.vocab_size = VOCAB
        config.pad_token_id = config.bos_token_id = config.eos_token_id = None
        config.tie_word_embeddings = False
        save_random(transformers.AutoModelForCausalLM.from_config(config), folder)
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--shapes", default="1x128,4x128")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(machine_line(args.device, args.dtype), f"{args.layers} blocks of each release, random weights")
    print(f"{'family':>22} {'shape':>6} {'measure':>11} | {'aios ms':>9} | {'eager ms':>9} {'ratio':>6} | rel diff")
    for family in args.families.split(","):
        release = FAMILIES[family][0]
        path = model_dir(family, args.layers)
        backbone = aios.Backbone.load(path, device=args.device, dtype=args.dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
        hf = hf.to(args.device).eval().requires_grad_(False)
        D = backbone.config.hidden_size
        for shape in args.shapes.split(","):
            B, T = (int(x) for x in shape.split("x"))
            torch.manual_seed(1)
            latents = backbone.embed(torch.randint(0, VOCAB, (B, T), device=args.device))
            grad_hidden = torch.randn(B, T, D, device=args.device, dtype=dtype)
            for measure, aios_ms, eager_ms, diff in blocks_against_eager(backbone, hf, latents, grad_hidden,
                                                                         args.device, args.reps):
                print(f"{release:>22} {shape:>6} {measure:>11} | {aios_ms:9.1f} | {eager_ms:9.1f} "
                      f"{eager_ms / aios_ms:5.2f}x | {diff:.1e}", flush=True)
        del backbone, hf


if __name__ == "__main__":
    sys.exit(main())

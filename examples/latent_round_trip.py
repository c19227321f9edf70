"""A latent round trip on a real model: text -> ids -> embed -> forward -> classify, then generation.

    python examples/latent_round_trip.py MODEL [PROMPT]

MODEL is a GGUF file or a Hugging Face checkpoint folder; its own tokenizer turns text into ids and
back. Everything between ids and logits goes through the aios Latent API.
"""
import sys
import time

import torch

import aios


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    model = sys.argv[1]
    prompt = sys.argv[2] if len(sys.argv) > 2 else "The capital of France is"
    backbone = aios.Backbone.load(model)
    tokenizer = backbone.tokenizer

    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])  # [1,T]
    start = time.perf_counter()
    latents = backbone.embed(ids)                                        # [1,T,D]
    middle = backbone.config.num_layers // 2
    out = backbone.forward(latents, layers=[middle])                     # hidden [1,T,D]
    logits = backbone.classify(out.hidden)                               # [1,T,V]
    elapsed = time.perf_counter() - start

    print(f"prompt          {prompt!r} -> {ids.shape[1]} ids")
    print(f"latents         {list(latents.shape)} {latents.dtype}")
    print(f"hidden          {list(out.hidden.shape)}, layer {middle} state {list(out.layers[0].shape)}")
    print(f"logits          {list(logits.shape)}  ({elapsed * 1000:.1f} ms for the round trip)")
    probs = logits[0, -1].softmax(-1)
    top = probs.topk(5)
    print("next token      " + ", ".join(
        f"{tokenizer.decode([i])!r} {p:.2f}" for p, i in zip(top.values.tolist(), top.indices.tolist())))

    # Generation from the same latents with a KV cache; each step also returns its hidden state.
    start = time.perf_counter()
    result = backbone.generate(latents, max_new_tokens=12)
    elapsed = time.perf_counter() - start
    print(f"greedy          {prompt + tokenizer.decode(result.ids[0].tolist())!r}  "
          f"({result.ids.shape[1] / elapsed:.1f} tokens/s, hidden {list(result.hidden.shape)})")


if __name__ == "__main__":
    main()

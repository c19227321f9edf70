"""A latent round trip on a real checkpoint: text -> ids -> embed -> forward -> classify.

    python examples/latent_round_trip.py MODEL_FOLDER [PROMPT]

Text is turned into ids with the checkpoint's own tokenizer.json (the `tokenizers` package, until
aios's tokenizer lands); everything between ids and logits goes through the aios Latent API.
"""
import sys
import time

import torch
from tokenizers import Tokenizer

import aios


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    prompt = sys.argv[2] if len(sys.argv) > 2 else "The capital of France is"
    backbone = aios.Backbone.load(folder)
    tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")

    ids = torch.tensor([tokenizer.encode(prompt).ids])                  # [1,T]
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

    # Continue greedily, feeding each chosen token's latent back in (no KV cache yet: full re-run).
    for _ in range(8):
        next_id = backbone.classify(backbone.forward(latents).hidden[:, -1:]).argmax(-1)  # [1,1]
        latents = torch.cat([latents, backbone.embed(next_id)], dim=1)
        ids = torch.cat([ids, next_id], dim=1)
    print(f"greedy          {tokenizer.decode(ids[0].tolist())!r}")


if __name__ == "__main__":
    main()

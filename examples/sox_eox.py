"""New tokens <sox>/<eox>: the frozen backbone learns to hand arithmetic to a calculator.

    python examples/sox_eox.py [--fast] [--steps N] [--batch N] [--model MODEL] [--out DIR]

Two tokens join the vocabulary as an extension (backbone.extend): their embedding rows and their
classifier rows, four vectors of the hidden size, are all that trains. Training text:

    Question: What is 17 plus 25?\\nAnswer:<sox>17+25<eox>     the model hands over, writes the
                                                                 expression, closes the span
    Question: What is the capital of Peru?\\nAnswer: Lima       any other question: the base
                                                                 model's own answer, unchanged

In generation, <sox> routes the row to a decoder (aios.Decoder) inside the decode loop: the
calculator reads each routed position's hidden state, takes the token the classifier would pick
while it is part of an expression, and when the expression ends it evaluates it exactly, reports
the value as its output and ends the span (the end token <eox> is fed).

Metrics on held-out prompts (number pairs and questions that training never shows): precision and
recall of <sox> as the first answer token, and end-to-end answer accuracy on the arithmetic
questions, against the base model answering in text.
"""
import random
import re
import time

import torch

import aios
from aios.adapters import build_batch

import common

ARITHMETIC = [
    ("What is {a} plus {b}?", "{a}+{b}"),
    ("What is {a} minus {b}?", "{a}-{b}"),
    ("What is {a} times {b}?", "{a}*{b}"),
    ("Tom has {a} apples and buys {b} more. How many apples does he have?", "{a}+{b}"),
    ("A box holds {a} pens and {b} are taken out. How many pens are left?", "{a}-{b}"),
    ("Each of {b} bags holds {a} marbles. How many marbles are there?", "{a}*{b}"),
]
OTHER = (
    [("What is the capital of {}?", c) for c in ["France", "Spain", "Italy", "Japan", "Peru", "Egypt", "Canada",
                                                 "Kenya", "Norway", "Chile", "India", "Greece"]]
    + [("What is the opposite of {}?", w) for w in ["hot", "big", "fast", "up", "happy", "old", "dark", "wet",
                                                     "early", "full", "strong", "open"]]
    + [("What colour is {}?", t) for t in ["the sky", "grass", "snow", "a banana", "coal", "a tomato", "milk",
                                           "an orange", "the sea", "blood", "a lemon", "chocolate"]]
    + [("Who is {}?", p) for p in ["Albert Einstein", "William Shakespeare", "Marie Curie", "Isaac Newton",
                                   "Leonardo da Vinci", "Charles Darwin", "Mozart", "Picasso", "Galileo",
                                   "Cleopatra", "Napoleon", "Beethoven"]]
)
EXPRESSION = re.compile(r"^\d+[+\-*]\d+$")


def prompt(question):
    return f"Question: {question}\nAnswer:"


def arithmetic_items(rng, count, used):
    """(question, expression, value) with operand pairs not in `used` (which grows)."""
    items = []
    while len(items) < count:
        question, expression = rng.choice(ARITHMETIC)
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if "*" in expression else (rng.randint(10, 99),
                                                                                     rng.randint(2, 99))
        if "-" in expression and b > a:
            a, b = b, a
        if (question, a, b) in used:
            continue
        used.add((question, a, b))
        text = expression.format(a=a, b=b)
        items.append((question.format(a=a, b=b), text, evaluate(text)))
    return items


def evaluate(expression):
    """The value of "a+b", "a-b" or "a*b"; None for anything else (no code is ever executed)."""
    if not EXPRESSION.match(expression):
        return None
    a, op, b = re.split(r"([+\-*])", expression)
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


class Calculator(aios.Decoder):
    """Takes a row after <sox>: follows the classifier's picks while they extend an arithmetic
    expression (digits and one operator), then evaluates it and ends the span."""

    def __init__(self, backbone, extension, longest=12):
        super().__init__()
        self.backbone, self.extension, self.longest = backbone, extension, longest
        self.tokenizer = backbone.tokenizer
        self.vocab = backbone.config.vocab_size
        self.text, self.values = {}, {}

    def begin(self, row):
        self.text[row] = ""

    def step(self, row, hidden):
        token = int(self.backbone.classify(hidden, extension=self.extension).argmax())
        piece = self.tokenizer.decode([token]).strip() if token < self.vocab else ""
        if re.fullmatch(r"[\d+\-*]+", piece) and len(self.text[row]) < self.longest:
            self.text[row] += piece  # white space between the parts is allowed and dropped
            return aios.DecoderStep(token=token)
        value = evaluate(self.text[row])
        self.values[row] = (self.text[row], value)
        return aios.DecoderStep(output=torch.tensor([float("nan") if value is None else value]), done=True)


class Task:
    def __init__(self, backbone, extension):
        self.backbone, self.ext = backbone, extension
        self.tok = extension.tokenizer
        self.sox, self.eox = extension.ids

    def ids(self, question):
        return self.tok.encode(prompt(question), add_special_tokens=False)

    def base_answers(self, questions):
        """The base model's first answer token for each question (what training keeps)."""
        with torch.no_grad():
            batch = build_batch(self.backbone, [[self.ids(q)] for q in questions], padding="left")
            logits = self.backbone.classify(self.backbone.forward(batch.latents, positions=batch.positions,
                                                                  mask=batch.mask).hidden[:, -1])
        return logits.argmax(-1).tolist()

    def batch(self, arithmetic, other):
        """arithmetic: (question, expression, value); other: (question, base answer id)."""
        texts, rows = [], []
        for question, expression, _ in arithmetic:
            p = self.ids(question)
            texts.append(p + [self.sox] + self.tok.encode(expression, add_special_tokens=False) + [self.eox])
            rows.append((0, len(p), texts[-1]))
        for question, answer in other:
            p = self.ids(question)
            texts.append(p + [answer])
            rows.append((0, len(p), texts[-1]))
        batch = build_batch(self.backbone, [[t] for t in texts], extension=self.ext)
        targets, weights = common.text_targets(batch, rows)
        return batch, targets, weights

    def first_tokens(self, questions):
        with torch.no_grad():
            batch = build_batch(self.backbone, [[self.ids(q)] for q in questions], padding="left")
            hidden = self.backbone.forward(batch.latents, positions=batch.positions, mask=batch.mask).hidden[:, -1]
            return self.backbone.classify(hidden, extension=self.ext).argmax(-1).tolist()

    def routed_answers(self, questions, show=0):
        """Generation with the calculator on <sox>: per question, (expression, value) or None when
        the model never handed over."""
        calculator = Calculator(self.backbone, self.ext)
        batch = build_batch(self.backbone, [[self.ids(q)] for q in questions], padding="left")
        steps = []
        for step in self.backbone.stream(batch.latents, positions=batch.positions, mask=batch.mask,
                                         extension=self.ext, max_new_tokens=16, stop_ids=[self.eox],
                                         routes=[(self.sox, self.eox, calculator)]):
            steps.append(step.ids.tolist())
        for b in range(min(show, len(questions))):
            ids = [s[b] for s in steps if s[b] >= 0]
            print(f"  {prompt(questions[b])!r} -> {self.tok.decode(ids)!r}  value {calculator.values.get(b)}")
        return [calculator.values.get(b) for b in range(len(questions))]

    def text_answers(self, questions):
        """The base model answering in text (no extension): the first integer of its reply."""
        batch = build_batch(self.backbone, [[self.ids(q)] for q in questions], padding="left")
        r = self.backbone.generate(batch.latents, positions=batch.positions, mask=batch.mask, max_new_tokens=10)
        out = []
        for row in r.ids.tolist():
            found = re.search(r"-?\d+", self.tok.decode([t for t in row if t >= 0], skip_special_tokens=True))
            out.append(int(found.group()) if found else None)
        return out


def main():
    args = common.arguments("sox_eox", __doc__.splitlines()[0], steps=100, fast_steps=8,
                            batch=(16, 8, "sequences per step (half arithmetic)"), eval=(96, 16, "held-out prompts"))
    started = time.perf_counter()
    backbone = aios.Backbone.load(args.model)
    ext = backbone.extend(["<sox>", "<eox>"], init="mean")
    task = Task(backbone, ext)
    rng = random.Random(args.seed)

    used = set()
    train_arithmetic = arithmetic_items(rng, 512, used)
    test_arithmetic = arithmetic_items(rng, args.eval // 2, used)
    other = list(OTHER)
    rng.shuffle(other)
    held = len(other) // 4
    train_other = [q.format(x) for q, x in other[held:]]
    test_other = [q.format(x) for q, x in other[:held]][:args.eval // 2]
    train_other = list(zip(train_other, task.base_answers(train_other)))
    half = args.batch // 2
    if args.fast:  # one fixed batch, so that a few steps show the loss falling
        train_arithmetic, train_other = train_arithmetic[:half], train_other[:half]

    optimizer = torch.optim.Adam(ext.parameters(), lr=5e-3)
    base_rows = backbone.embed(torch.arange(backbone.config.vocab_size)[None])[0].clone()
    losses = []
    bar = common.progress(args.steps, "training the four rows of <sox>/<eox>")
    for _ in range(args.steps):
        batch, targets, weights = task.batch(rng.sample(train_arithmetic, half), rng.sample(train_other, half))
        r = backbone.forward_backward(batch.latents.detach(), targets=targets, weights=weights,
                                      **batch.forward_options())
        ext.embedding_rows.grad, ext.classifier_rows.grad = r.grad_embedding_rows, r.grad_classifier_rows
        optimizer.step()
        losses.append(float(r.loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.update()
    bar.close()
    assert torch.equal(backbone.embed(torch.arange(backbone.config.vocab_size)[None])[0], base_rows)  # frozen

    questions = [q for q, _, _ in test_arithmetic] + test_other
    picked = task.first_tokens(questions)
    positive = [True] * len(test_arithmetic) + [False] * len(test_other)
    emitted = [t == task.sox for t in picked]
    true_pos = sum(e and p for e, p in zip(emitted, positive))
    print("\nheld-out examples (routed generation):")
    routed = task.routed_answers([q for q, _, _ in test_arithmetic], show=3)
    text = task.text_answers([q for q, _, _ in test_arithmetic])
    values = [v for _, _, v in test_arithmetic]
    metrics = {
        "trainable_parameters": sum(p.numel() for p in ext.parameters()),
        "held_out_arithmetic": len(test_arithmetic), "held_out_other": len(test_other),
        "sox_precision": true_pos / max(1, sum(emitted)),
        "sox_recall": true_pos / sum(positive),
        "expression_exact": sum(r is not None and r[0] == e for r, (_, e, _) in zip(routed, test_arithmetic))
        / len(values),
        "answer_accuracy_routed": sum(r is not None and r[1] == v for r, v in zip(routed, values)) / len(values),
        "answer_accuracy_base_model_in_text": sum(t == v for t, v in zip(text, values)) / len(values),
    }
    ext.save(args.out / "sox_eox")
    common.report(args, "<sox>/<eox>: routing arithmetic to a calculator (SmolLM2-135M)", metrics, losses, started)


if __name__ == "__main__":
    main()

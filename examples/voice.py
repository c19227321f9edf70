"""Sound in and sound out through latents, against speech recognition -> LLM -> text-to-speech.

    python examples/voice.py [--fast] [--steps N] [--batch N] [--said-steps N] [--serve] [--out DIR]

The argument of the essay behind aios, measured on the frozen default model. A voice assistant
built as speech recognition -> language model -> text-to-speech hands the model a transcript, so
the model cannot hear how something was said or what else was heard, and it can only answer in
words. Here the same frozen backbone gets the sound itself:

Sound in. An AudioEncoder (log-mel frames -> strided convolutions -> 6 latents per second ->
LayerNorm -> projection to D) turns a 2.5 s clip into latents; the backbone reads [soft prompt]
"Audio:" [latents], then "Question: ... Answer:" and answers in text. Nothing is pretrained: the
convolutions keep their random initialisation, the LayerNorm's gain and bias are set (label-free)
to standardise its output over the training clips, and the norm and projection are trained from
there through the frozen backbone with the Gradient API. Questions: what was said; was the voice
high or low; fast or slow; which of four named voices spoke; what sound there was besides speech;
how many beeps; did speech and sound overlap. Training asks every clip the last six (what a
transcript cannot carry), and in its last --said-steps all seven, in a random order in one sequence
(a clip without speech answers "none", "nobody", "nothing"; so which questions are asked says
nothing about the clip). Evaluation asks each meaningful question alone, on held-out voices and
sentences (and eight words never said in training), against

    transcript      the pipeline it argues against, at its best: the exact synthesised text (what a
                    perfect recogniser would give) in the prompt instead of the latents, after a soft
                    prompt of its own trained on the same clips, questions, steps and learning rate
    untrained       the same encoder before training (with the trained soft prompt)
    no audio        the trained soft prompt and the question alone
    chance          the best constant answer to each question

Sound out. Two extension tokens <sos>/<eos> and a LinearDecoder: asked to answer with a sound ("two
short high beeps", "a falling tone"), the model emits <sos>; routed generation hands that position's
hidden state to the decoder inside the decode loop, which outputs four sound parameters (start and
end pitch, number of pulses, pulse length); the example renders them as a WAV file. The four
extension rows and the decoder are the only trained parameters: the rows with the Gradient API (to
emit <sos>, and through the decoder's error to gather the request into that position), then the
linear decoder solved by ridge regression on the hidden states at <sos> (the ridge chosen by leaving
training phrasings out). Requests come in 14 phrasings in training; evaluation asks each of the 26
descriptions (10 sounds, in several pitch words) once in each of 2 other phrasings. A rendered sound
matches its request when the same log-mel features show the requested number of pulses, pitch and
direction. Against the text route (the model describes the sound in words; a fixed rule turns the
words into the same parameters) and the untrained rows and decoder.

Writes metrics.json, loss.png (three curves), routes.png (accuracy per question and route),
sounds/*.wav, and the trained encoder, extension and decoder (loadable from C++ and Python).
"""
import functools
import math
import random
import re
import sys
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

import aios
from aios.adapters import AudioEncoder, GistLatents, LinearDecoder, build_batch, log_mel, mel_filters

import common
import voice_data

QUESTIONS = {  # name -> (question, closed answer set or None for free text); every clip answers all
    "said": ("What was said?", None),
    "pitch": ("Was the voice high or low?", ["high", "low", "none"]),
    "speed": ("Was the speech fast or slow?", ["fast", "slow", "none"]),
    "voice": ("Who spoke?", list(voice_data.NAMED_VOICES) + ["someone else", "nobody"]),
    "sound": ("What sound was there besides any speech?", ["none"] + voice_data.SOUNDS),
    "beeps": ("How many beeps were there?", ["zero"] + voice_data.COUNT_WORDS),
    "overlap": ("Did the speech and the sound overlap?", ["yes", "no"]),
}
NAMES = {v: k for k, v in voice_data.NAMED_VOICES.items()}
SOFT_PROMPT = 4  # trainable vectors that start both routes' prompts
SOFT_LR, PROJECTION_LR = 1e-2, 1e-3


def questions_of(facts, every=False):
    """[(question name, answer text)] about a clip. Evaluated: the questions its facts make
    meaningful (pitch of a voice, count of beeps). every=True adds the others with their "none"
    answers; training asks all of them, so which questions are asked says nothing of the clip."""
    speech, beeping = bool(facts["text"]), facts["sound"] == "beeps"
    out = [("said", facts["text"] or "nothing"),
           ("pitch", ("high" if facts["high"] else "low") if speech else "none"),
           ("speed", ("fast" if facts["fast"] else "slow") if speech else "none"),
           ("voice", NAMES.get(facts["voice"], "someone else") if speech else "nobody"),
           ("sound", facts["sound"]),
           ("beeps", voice_data.COUNT_WORDS[facts["beeps"] - 1] if beeping else "zero"),
           ("overlap", "yes" if facts.get("overlap") else "no")]
    if every:
        return out
    meaningful = {"said", "pitch", "speed"} if speech else set()
    meaningful |= {"sound"} | ({"voice"} if facts.get("voice") in NAMES else set())
    meaningful |= ({"beeps"} if beeping else set()) | ({"overlap"} if "overlap" in facts else set())
    return [(q, a) for q, a in out if q in meaningful]


class Listening:
    """Prompts of the question-answering routes, their training steps and their evaluation."""

    def __init__(self, backbone, clips):
        self.backbone, self.tok = backbone, backbone.tokenizer
        self.waves, self.facts = clips
        self.end = self.tok.token_to_id("<|im_end|>")
        self.audio_prefix = self.encode("Audio:")
        self.choices = {}  # question -> (answers, their first token ids): answers are scored by those
        for q, (_, answers) in QUESTIONS.items():
            if answers:
                firsts = [self.encode(" " + a)[0] for a in answers]
                assert len(set(firsts)) == len(firsts), (q, answers)
                self.choices[q] = (answers, firsts)

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False)

    def items(self, indices):
        """(clip, question, answer) for every meaningful question about each clip."""
        return [(i, q, a) for i in indices for q, a in questions_of(self.facts[i])]

    def context(self, route, clip, soft, latents=None):
        """Segments that start a prompt: the soft prompt [n,D], then for "audio" the clip's latents
        [L,D] (None: no audio) or for "transcript" the clip's exact text."""
        if route == "audio":
            return [soft, self.audio_prefix] + ([latents] if latents is not None else [])
        return [soft, self.encode(f'Transcript: "{self.facts[clip]["text"]}"')]

    def ask(self, question):
        return self.encode(f"\nQuestion: {QUESTIONS[question][0]}\nAnswer:")

    def latents(self, clips, encoder):
        return encoder.encode(self.waves[clips]) if encoder is not None else [None] * len(clips)

    def train_step(self, route, clips, rng, soft, encoder=None, said=True):
        """One Gradient API step: per clip one sequence that asks every question (said=False: all but
        "said") in a random order, each answer (" answer<|im_end|>") scored; gradients land in the
        soft prompt's and the encoder's parameters. Returns the loss."""
        soft_rows, latents = soft(1)[0], self.latents(clips, encoder)
        rows, spans = [], []
        for i, lat in zip(clips, latents):
            row, scored = self.context(route, i, soft_rows, lat), []
            asked = [(q, a) for q, a in questions_of(self.facts[i], every=True) if said or q != "said"]
            for q, a in rng.sample(asked, len(asked)):
                ids = self.encode(" " + a) + [self.end]
                row.append(self.ask(q))
                scored.append((len(row), 0, ids))
                row.append(ids)
            rows.append(row)
            spans.append(scored)
        batch = build_batch(self.backbone, rows)
        targets, weights = common.text_targets(batch, spans)
        r = self.backbone.forward_backward(batch.latents.detach(), targets=targets, weights=weights,
                                           **batch.forward_options())
        batch.latents.backward(r.grad_latents)
        return float(r.loss)

    @torch.no_grad()
    def answer(self, route, items, soft, encoder=None, chunk=48):
        """Per item, asked alone: the closed-set answer whose first token scores highest, or for
        "said" the greedy reply (up to <|im_end|>, at most 8 tokens). "audio" without an encoder:
        no latents."""
        out = [None] * len(items)
        soft_rows = soft(1)[0]
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            latents = self.latents([i for i, _, _ in part], encoder)
            rows = [self.context(route, i, soft_rows, lat) + [self.ask(q)] for (i, q, _), lat in zip(part, latents)]
            batch = build_batch(self.backbone, rows, padding="left")
            hidden = self.backbone.forward(batch.latents, positions=batch.positions, mask=batch.mask).hidden[:, -1]
            logits = self.backbone.classify(hidden)
            said = [b for b, (_, q, _) in enumerate(part) if q == "said"]
            for b, (_, q, _) in enumerate(part):
                if q != "said":
                    answers, firsts = self.choices[q]
                    out[start + b] = answers[int(logits[b, firsts].argmax())]
            if said:
                r = self.backbone.generate(batch.latents[said], positions=batch.positions[said], mask=batch.mask[said],
                                           max_new_tokens=8, stop_ids=[self.end])
                for b, ids in zip(said, r.ids.tolist()):
                    out[start + b] = self.tok.decode([t for t in ids if 0 <= t != self.end]).strip()
        return out


def words_of(text):
    return re.findall(r"[a-z]+", text.lower())


def scores(items, answers, facts):
    """Accuracy per question (and for "said": exact match of the words, split by whether the
    sentence has a word never said in training; word accuracy as well)."""
    by = {}
    for (i, q, truth), got in zip(items, answers):
        key = q if q != "said" else ("said_new_words" if facts[i]["new_word"] else "said")
        by.setdefault(key, []).append(words_of(got) == words_of(truth))
        if q == "said":
            want, have = words_of(truth), words_of(got)
            by.setdefault("said_word_accuracy", []).append(
                sum(a == b for a, b in zip(want, have)) / max(len(want), len(have), 1))
    return {k: sum(v) / len(v) for k, v in sorted(by.items())}


def chance(test_items):
    """Per closed question, the accuracy of the best constant answer on the test items: the most any
    route can score without telling the clips apart (the most frequent training answer scores less
    where the held-out clips lean the other way)."""
    out = {}
    for q in QUESTIONS:
        truths = [a for _, qq, a in test_items if qq == q and q != "said"]
        if truths:
            out[q] = max(truths.count(a) for a in set(truths)) / len(truths)
    return dict(sorted(out.items()))


@torch.no_grad()
def standardize_norm(encoder, waves, chunk=100):
    """Sets the encoder's LayerNorm gain and bias so that its output over the frames of `waves`
    [N,samples] has mean 0 and variance 1 per channel; label-free. The untrained convolutions' channels
    differ in scale several-fold, and the projection reads them all at one learning rate."""
    frames = []
    hook = encoder.norm.register_forward_pre_hook(lambda _, inputs: frames.append(inputs[0].flatten(0, -2)))
    try:
        for start in range(0, len(waves), chunk):
            encoder.encode(waves[start:start + chunk])
    finally:
        hook.remove()
    normed = F.layer_norm(torch.cat(frames), (encoder.channels,))
    mean, std = normed.mean(0), normed.std(0) + 1e-5
    encoder.norm.weight.copy_(1 / std)
    encoder.norm.bias.copy_(-mean / std)


def train_route(listening, route, clips, groups, soft, encoder, args, rng, label):
    """Adam over `groups` (parameter groups with their learning rates) for args.steps steps of
    args.batch clips, each asked every question ("said" only in the last args.said_steps). Returns
    the per-step losses."""
    optimizer = torch.optim.Adam(groups)
    losses = []
    bar = common.progress(args.steps, label)
    for step in range(args.steps):
        # --fast: the same sequences every step, to see the loss fall
        if args.fast:
            batch, order = clips[:args.batch], random.Random(args.seed)
        else:
            batch, order = rng.sample(clips, args.batch), rng
        optimizer.zero_grad()
        # "What was said" only at the end: asked from the start (at full weight or 0.2) it drowned the
        # other six within 100 steps; never asked, the transcript route's soft prompt stops copying.
        said = step >= args.steps - args.said_steps
        losses.append(listening.train_step(route, batch, order, soft, encoder, said))
        optimizer.step()
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.update()
    bar.close()
    return losses


# ---- sound out ------------------------------------------------------------------------------
HIGH_HZ, LOW_HZ, GAP = 1500.0, 400.0, 0.12
PITCH_WORDS = {"high": ["high", "high-pitched", "shrill"], "low": ["low", "deep", "low-pitched"]}
COUNT_TEXT = {1: "a short", 2: "two short", 3: "three short"}
SOUND_BATCH = (7, 3)  # per step: sound requests, and text questions still to be answered in words
ROWS_LR, DECODER_LR = 5e-3, 3e-4  # Adam: the extension rows; the decoder while they train (then solved)
TRAIN_TEMPLATES = ["Answer with a sound: {}.", "Make the sound of {}.", "Please play {}.", "Respond with {} as audio.",
                   "Give me {} as a sound.", "Produce {}.", "Sound out {}.", "Let me hear {}.", "Can you make {}?",
                   "Emit {}.", "I want to hear {}.", "Generate the sound of {}.", "Play me {}, please.",
                   "Your answer should be {}, as audio."]
TEST_TEMPLATES = ["Imitate {}.", "Reply with the sound of {}."]
TEXT_QUESTIONS = ["What is the capital of {}?".format(c) for c in ["France", "Spain", "Italy", "Japan", "Peru",
                                                                   "Egypt", "Canada", "Kenya", "Norway", "Chile"]] + \
    ["What is the opposite of {}?".format(w) for w in ["hot", "big", "fast", "up", "happy", "old", "dark", "wet"]] + \
    ["What colour is {}?".format(t) for t in ["the sky", "grass", "snow", "a banana", "coal", "milk"]]


def sound_requests():
    """(description words, parameters [4], facts) of every sound the requests may ask for. The
    parameters: log2 of start and end pitch over 1 kHz, pulses, pulse seconds."""
    out = []
    for pitch, hz in (("high", HIGH_HZ), ("low", LOW_HZ)):
        for count in (1, 2, 3):
            out.append((lambda w, c=count: f"{COUNT_TEXT[c]} {w} beep" + ("s" if c > 1 else ""), pitch,
                        [math.log2(hz / 1000), math.log2(hz / 1000), count, 0.12], {"pulses": count, "pitch": pitch}))
        out.append((lambda w: f"a long {w} tone", pitch, [math.log2(hz / 1000)] * 2 + [1, 0.8],
                    {"pulses": 1, "pitch": pitch, "direction": 0}))
    for direction, words, (a, b) in ((1, "a rising tone", (LOW_HZ, HIGH_HZ)), (-1, "a falling tone", (HIGH_HZ, LOW_HZ))):
        out.append((lambda w, t=words: t, None, [math.log2(a / 1000), math.log2(b / 1000), 1, 0.8],
                    {"pulses": 1, "direction": direction}))
    return out


class Request(NamedTuple):
    text: str
    params: list  # [4], as sound_requests
    facts: dict  # what matches() checks
    phrasing: int  # index of its template


def request_texts(rng, templates, count):
    """Requests drawn from the request space, each in one of `templates`."""
    space, out = sound_requests(), []
    for _ in range(count):
        describe, pitch, params, facts = rng.choice(space)
        words = describe(rng.choice(PITCH_WORDS[pitch])) if pitch else describe(None)
        phrasing = rng.randrange(len(templates))
        out.append(Request(templates[phrasing].format(words), params, facts, phrasing))
    return out


def every_request(templates):
    """Each request of the request space once: every description (with each of its pitch words) in
    each of `templates`."""
    return [Request(template.format(words), params, facts, phrasing)
            for describe, pitch, params, facts in sound_requests()
            for words in ([describe(w) for w in PITCH_WORDS[pitch]] if pitch else [describe(None)])
            for phrasing, template in enumerate(templates)]


def render(params):
    """Parameters [4] -> float32 samples at 16 kHz: pulses of a geometric pitch glide, GAP seconds
    apart, then GAP seconds of silence."""
    f0, f1, pulses, length = (float(v) for v in params)
    hz = lambda v: 1000 * 2 ** max(-3.0, min(1.5, v))
    one = voice_data.sine(hz(f0), hz(f1), min(1.0, max(0.04, length)))
    silence = torch.zeros(int(GAP * voice_data.RATE))
    pulse = torch.cat([torch.from_numpy(one), silence])
    return 0.5 * torch.cat([pulse] * int(min(4, max(1, round(pulses)))) + [silence])


@functools.lru_cache(maxsize=1)
def band_hz():
    """The centre of each mel band of log_mel's defaults: the frequency where its filter peaks."""
    return torch.linspace(0, voice_data.RATE / 2, 201)[mel_filters().argmax(1)]


def analyse(samples):
    """What the log-mel features show of a sound: pulses (runs of loud frames), their lengths in
    seconds, the dominant pitch of the first and last loud frames, and the median pitch."""
    x = torch.as_tensor(samples, dtype=torch.float32)
    if x.numel() < 400:
        return {"pulses": 0}
    f = log_mel(x)  # [F, 64]
    loud = f.max(1).values > f.max() - 0.5
    runs, start = [], None
    for t, on in enumerate(loud.tolist() + [False]):
        if on and start is None:
            start = t
        elif not on and start is not None:
            runs.append((start, t))
            start = None
    if not runs:
        return {"pulses": 0}
    pitch = band_hz()[f.argmax(1)]
    first, last = pitch[runs[0][0]:runs[0][0] + 3], pitch[runs[-1][1] - 3:runs[-1][1]]
    voiced = torch.cat([pitch[a:b] for a, b in runs])
    return {"pulses": len(runs), "seconds": [(b - a) / 100 for a, b in runs],
            "start_hz": float(first.median()), "end_hz": float(last.median()), "median_hz": float(voiced.median())}


def matches(facts, heard):
    """Whether a sound analysed as `heard` is what the request with `facts` asked for."""
    if heard["pulses"] != facts["pulses"]:
        return False
    if facts["pulses"] > 1 or "direction" not in facts:  # beeps: short pulses
        if max(heard["seconds"]) > 0.3:
            return False
    elif min(heard["seconds"]) < 0.4:  # a tone or a sweep: long
        return False
    glide = math.log2(heard["end_hz"] / heard["start_hz"])
    if "direction" in facts and {0: abs(glide) > 0.4, 1: glide < 0.8, -1: glide > -0.8}[facts["direction"]]:
        return False
    if facts.get("pitch") == "high" and heard["median_hz"] < 800:
        return False
    if facts.get("pitch") == "low" and heard["median_hz"] > 700:
        return False
    return True


def words_to_params(text):
    """The text route's fixed rule: a description in words -> the same four parameters."""
    w = set(words_of(text))
    count = 3 if w & {"three", "triple", "thrice"} else 2 if w & {"two", "double", "twice", "pair"} else 1
    high = bool(w & {"high", "shrill", "sharp", "squeaky", "piercing"}) and not w & {"low", "deep", "bass"}
    hz = math.log2((HIGH_HZ if high else LOW_HZ) / 1000)
    if w & {"rising", "rises", "ascending", "up", "upward"}:
        return [math.log2(LOW_HZ / 1000), math.log2(HIGH_HZ / 1000), 1, 0.8]
    if w & {"falling", "falls", "descending", "down", "downward"}:
        return [math.log2(HIGH_HZ / 1000), math.log2(LOW_HZ / 1000), 1, 0.8]
    if w & {"beep", "beeps", "beeping", "bleep", "ping", "short"}:
        return [hz, hz, count, 0.12]
    return [hz, hz, 1, 0.8]


class Speaking:
    """The <sos>/<eos> rows and the decoder: training steps and routed generation."""

    def __init__(self, backbone):
        self.backbone, self.tok = backbone, backbone.tokenizer
        self.ext = backbone.extend(["<sos>", "<eos>"], init="mean")
        self.sos, self.eos = self.ext.ids
        self.end = self.tok.token_to_id("<|im_end|>")
        D = backbone.config.hidden_size
        self.decoder = LinearDecoder(D, 4, span=1)
        self.decoder.check_fits(backbone)

    def prompt(self, text):
        return self.tok.encode(f"Request: {text}\nAnswer:", add_special_tokens=False)

    def base_answers(self, texts):
        with torch.no_grad():
            batch = build_batch(self.backbone, [[self.prompt(t)] for t in texts], padding="left")
            hidden = self.backbone.forward(batch.latents, positions=batch.positions, mask=batch.mask).hidden[:, -1]
            return self.backbone.classify(hidden).argmax(-1).tolist()

    def train_step(self, requests, others):
        """requests: Requests; others: (text, base first answer token). Cross-entropy on <sos>
        (requests) or the base answer (others), <|im_end|> after <eos>, and the squared error of the
        decoder's parameters at the <sos> position; one forward and one vjp."""
        rows, scored, params, where = [], [], [], []
        for request in requests:
            ids = self.prompt(request.text)
            rows.append(ids + [self.sos, self.eos, self.end])
            scored.append([(len(ids) - 1, self.sos), (len(ids) + 1, self.end)])
            where.append(len(ids))
            params.append(request.params)
        for text, answer in others:
            ids = self.prompt(text)
            rows.append(ids + [answer])
            scored.append([(len(ids) - 1, answer)])
        batch = build_batch(self.backbone, [[r] for r in rows], extension=self.ext)
        out = self.backbone.forward(batch.latents.detach(), positions=batch.positions, mask=batch.mask, keep=True,
                                    extension=self.ext, ids=batch.ids)
        try:
            hidden = out.hidden.detach().requires_grad_(True)
            logits = self.backbone.classify(out.hidden, extension=self.ext).requires_grad_(True)
            at = [(b, t) for b, s in enumerate(scored) for t, _ in s]
            want = torch.tensor([target for s in scored for _, target in s])
            ce = F.cross_entropy(logits[[b for b, _ in at], [t for _, t in at]], want)
            got = self.decoder(hidden[torch.arange(len(where)), torch.tensor(where)])
            mse = F.mse_loss(got, torch.tensor(params))
            (ce + mse).backward()
            g = self.backbone.vjp(out.handle, grad_hidden=hidden.grad, grad_logits=logits.grad)
        finally:
            self.backbone.release(out.handle)
        self.ext.embedding_rows.grad, self.ext.classifier_rows.grad = g.embedding_rows, g.classifier_rows
        return ce.item(), mse.item()

    def parameter_groups(self, rows_lr, decoder_lr):
        return [{"params": list(self.ext.parameters()), "lr": rows_lr},
                {"params": list(self.decoder.parameters()), "lr": decoder_lr}]

    @torch.no_grad()
    def fit_decoder(self, requests, ridges=(1e-4, 1e-3, 1e-2, 1e-1), folds=7):
        """The decoder's ridge regression on the hidden states at <sos> of `requests`, the rows as
        trained. Hidden states of the frozen model have a few dimensions far larger than the rest, so
        a gradient step on the linear head either crawls or overshoots; for a fixed input the best
        head is a solve. The ridge (relative to the mean diagonal of X^T X) is the one of `ridges`
        whose solutions, rendered, match the most requests in phrasings they did not see (`folds`
        folds of the phrasings, each left out in turn; the squared error shrinks towards the mean
        and would choose the largest). Returns (ridge, mean squared error on `requests`)."""
        batch = build_batch(self.backbone, [[self.prompt(r.text) + [self.sos]] for r in requests], padding="left",
                            extension=self.ext)
        hidden = self.backbone.forward(batch.latents, positions=batch.positions, mask=batch.mask, extension=self.ext,
                                       ids=batch.ids).hidden[:, -1]
        x = torch.cat([hidden, torch.ones(len(hidden), 1)], 1)
        targets = torch.tensor([r.params for r in requests])

        def solve(rows, ridge):
            gram = x[rows].T @ x[rows]
            gram += ridge * gram.diagonal().mean() * torch.eye(len(gram))
            return torch.linalg.solve(gram, x[rows].T @ targets[rows])

        fold = torch.tensor([r.phrasing % folds for r in requests])
        splits = [(fold == k, [r for r in requests if r.phrasing % folds == k]) for k in fold.unique().tolist()]
        matched = {ridge: sum(matches(r.facts, analyse(render(p)))
                              for out, held_out in splits for r, p in zip(held_out, x[out] @ solve(~out, ridge)))
                   for ridge in ridges}
        ridge = max(ridges, key=matched.get)
        solved = solve(torch.ones(len(requests), dtype=torch.bool), ridge)
        self.decoder.head.weight.copy_(solved[:-1].T)
        self.decoder.head.bias.copy_(solved[-1])
        return ridge, float(F.mse_loss(self.decoder(hidden), targets))

    @torch.no_grad()
    def sounds(self, texts):
        """Routed generation: per prompt, the decoder's parameters [4] if the model emitted <sos>
        within 6 tokens, else None (it answered in text)."""
        batch = build_batch(self.backbone, [[self.prompt(t)] for t in texts], padding="left")
        out = [None] * len(texts)
        for step in self.backbone.stream(batch.latents, positions=batch.positions, mask=batch.mask,
                                         extension=self.ext, max_new_tokens=6, stop_ids=[self.eos, self.end],
                                         routes=[(self.sos, self.eos, self.decoder)]):
            for b, route in enumerate(step.routes.tolist()):
                if route == 0 and out[b] is None:
                    out[b] = step.outputs[b]
        return out


def text_route_params(backbone, texts):
    """The model asked to describe each requested sound in words; the fixed rule's parameters."""
    out = []
    for text in texts:
        reply = backbone.generate_text(f"Describe in a few words the sound you would make for this request: {text}",
                                       chat=True, max_new_tokens=24)
        out.append((reply, words_to_params(reply)))
    return out


def plot_routes(path, table, title):
    """Grouped bars: accuracy per question (rows of `table`: route -> {question: accuracy})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    questions = [q for q in next(iter(table.values()))]
    fig, ax = plt.subplots(figsize=(9, 4.6), dpi=120)
    width = 0.8 / len(table)
    for k, (route, values) in enumerate(table.items()):
        ax.bar([i + k * width for i in range(len(questions))], [values.get(q, 0) for q in questions], width,
               label=route)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(questions))], questions, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    args = common.arguments("voice", __doc__.splitlines()[0], steps=400, fast_steps=10,
                            batch=(8, 3, "clips per step, each asked every question"),
                            said_steps=(100, 10, "final steps that also ask what was said"),
                            sound_steps=(160, 6, "training steps of <sos>/<eos>"))
    started = time.perf_counter()
    rng = random.Random(args.seed)
    data = voice_data.load(common.REPO / ".cache" / "voice", args.seed, args.fast)
    train_waves, train_facts = data["train"]
    test_waves, test_facts = data["test"]
    print(f"{len(train_facts)} training clips, {len(test_facts)} held-out clips ({voice_data.SECONDS} s, "
          f"{voice_data.RATE} Hz)", file=sys.stderr)

    with common.backbone(args) as backbone:
        D = backbone.config.hidden_size
        waves = torch.cat([train_waves, test_waves])
        facts = train_facts + test_facts
        listening = Listening(backbone, (waves, facts))
        test_items = listening.items(range(len(train_facts), len(facts)))

        torch.manual_seed(args.seed)
        encoder = AudioEncoder(D, channels=192, layers=4)
        encoder.check_fits(backbone)
        standardize_norm(encoder, train_waves)
        with torch.no_grad():  # latents start near the scale of token embeddings
            encoder.proj.weight.mul_(0.25)
        untrained = AudioEncoder(D, channels=192, layers=4)
        untrained.load_state_dict(encoder.state_dict())
        audio_soft, text_soft = GistLatents(SOFT_PROMPT, D), GistLatents(SOFT_PROMPT, D)
        train_clips = list(range(len(train_facts)))

        # Each route a soft prompt of the same size, the same steps, batches and questions; the audio
        # route also trains the encoder's norm and projection. Its convolutions stay as initialised: linear
        # probes read pitch, speed, voice and sound kind from them at 0.81-0.97 (examples/RESULTS.md), and
        # training them as well did no better in 100 steps.
        for conv in [encoder.conv_in, *encoder.convs]:
            conv.requires_grad_(False)
        head = [p for p in encoder.parameters() if p.requires_grad]
        audio_losses = train_route(listening, "audio", train_clips,
                                   [{"params": head, "lr": PROJECTION_LR},
                                    {"params": list(audio_soft.parameters()), "lr": SOFT_LR}],
                                   audio_soft, encoder, args, rng, "training the audio encoder")
        text_losses = train_route(listening, "transcript", train_clips,
                                  [{"params": list(text_soft.parameters()), "lr": SOFT_LR}],
                                  text_soft, None, args, rng, "training the transcript route's soft prompt")

        routes = {"audio latents (trained encoder)": listening.answer("audio", test_items, audio_soft, encoder),
                  "transcript (exact text + trained soft prompt)": listening.answer("transcript", test_items,
                                                                                     text_soft),
                  "untrained encoder": listening.answer("audio", test_items, audio_soft, untrained),
                  "no audio": listening.answer("audio", test_items, audio_soft)}
        table = {name: scores(test_items, answers, facts) for name, answers in routes.items()}
        table["chance (best constant answer)"] = chance(test_items)
        shown = [(i, q, a, g) for (i, q, a), g in zip(test_items, routes["audio latents (trained encoder)"])]
        print("\nheld-out examples (audio latents):", file=sys.stderr)
        for i, q, a, g in shown[:8]:
            print(f"  clip {i}: {QUESTIONS[q][0]!r} -> {g!r} (truth {a!r})", file=sys.stderr)

        # Sound out: the rows and the decoder, then routed generation on held-out phrasings.
        speaking = Speaking(backbone)
        fresh = Speaking(backbone)
        fresh.decoder.load_state_dict(speaking.decoder.state_dict())
        train_requests = request_texts(rng, TRAIN_TEMPLATES, 240)
        # every held-out request once (52; --fast every fourth), not a draw: no duplicates, no draw's noise
        test_requests = every_request(TEST_TEMPLATES)[::4 if args.fast else 1]
        questions = list(TEXT_QUESTIONS)
        rng.shuffle(questions)
        train_text, test_text = questions[6:], questions[:6]
        train_text = list(zip(train_text, speaking.base_answers(train_text)))
        optimizer = torch.optim.Adam(speaking.parameter_groups(ROWS_LR, DECODER_LR))
        sound_losses = []
        bar = common.progress(args.sound_steps, "training <sos>/<eos> and the sound decoder")
        for _ in range(args.sound_steps):
            optimizer.zero_grad()
            ce, mse = speaking.train_step(rng.sample(train_requests, SOUND_BATCH[0]),
                                          rng.sample(train_text, SOUND_BATCH[1]))
            optimizer.step()
            sound_losses.append(ce + mse)
            bar.set_postfix(ce=f"{ce:.3f}", mse=f"{mse:.3f}")
            bar.update()
        bar.close()
        ridge, fit_error = speaking.fit_decoder(train_requests)

        texts = [r.text for r in test_requests]
        sounds = {"sound route (trained <sos>/<eos> + decoder)": speaking.sounds(texts),
                  "untrained rows and decoder": fresh.sounds(texts)}
        described = text_route_params(backbone, texts)
        sounds["text route (description in words + fixed rule)"] = [torch.tensor(p) for _, p in described]
        sounds["targets rendered (the analysis itself)"] = [torch.tensor(r.params) for r in test_requests]
        folder = args.out / "sounds"
        folder.mkdir(exist_ok=True)
        sound_scores = {}
        for name, params in sounds.items():
            ok = [p is not None and matches(r.facts, analyse(render(p))) for p, r in zip(params, test_requests)]
            sound_scores[name] = sum(ok) / len(ok)
        for k, text in enumerate(texts[:6]):
            p = sounds["sound route (trained <sos>/<eos> + decoder)"][k]
            if p is not None:
                voice_data.write_wav(folder / f"request-{k}.wav", render(p).numpy())
            print(f"  {text!r}: sound route {None if p is None else [round(float(v), 2) for v in p]}; "
                  f"text route {described[k][0]!r}", file=sys.stderr)
        false_sos = sum(p is not None for p in speaking.sounds(test_text)) / len(test_text)

        encoder_folder, sound_folder = args.out / "audio_encoder", args.out / "sound_out"
        aios.adapters.save_encoder(encoder, encoder_folder)
        aios.adapters.save_decoder(speaking.decoder, sound_folder)
        speaking.ext.save(sound_folder / "extension")

    plot_routes(args.out / "routes.png", {k: v for k, v in table.items()},
                "Questions about held-out clips: latents against the transcript (SmolLM2-135M, frozen)")
    metrics = {"clips_train": len(train_facts), "clips_test": len(test_facts), "items_test": len(test_items),
               "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
               "latents_per_clip": encoder.latent_count(voice_data.SAMPLES // 160 + 1)}
    for route, values in table.items():
        for q, v in values.items():
            metrics[f"{route} | {q}"] = round(v, 4)
    for name, v in sound_scores.items():
        metrics[f"sound out | {name}"] = round(v, 4)
    metrics["sound out | <sos> on text questions (false routes)"] = false_sos
    metrics["sound out | decoder's least-squares error on its training requests"] = round(fit_error, 5)
    metrics["sound out | decoder's ridge (chosen leaving phrasings out)"] = ridge
    metrics["transcript route loss_last"] = text_losses[-1]
    metrics["sound route loss_last"] = sound_losses[-1]
    common.report(args, "voice: sound in and out through latents (SmolLM2-135M)", metrics, audio_losses, started,
                  curves={"audio encoder": audio_losses, "transcript soft prompt": text_losses,
                          "<sos>/<eos> + decoder": sound_losses})


if __name__ == "__main__":
    main()

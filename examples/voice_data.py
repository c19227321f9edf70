"""The sounds of examples/voice.py, made on this machine from a seed: speech from espeak-ng and
non-speech sounds synthesised with numpy, mixed into clips of 2.5 s at 16 kHz.

    python examples/voice_data.py [--seed 0] [--fast] [--out DIR]     writes DIR/clips.safetensors
                                                                       and a few WAV files to listen to

Clips and what is known about each (the labels the questions ask about):

    speech     2-3 words from a small vocabulary, one of 12 espeak-ng voice variants, a pitch setting
               (low: -p 10-25, high: -p 75-90) and a speed (slow: 110-140, fast: 230-280 words/min)
    sound      a tone (250-2000 Hz), a rising or falling sweep, 1-4 beeps, or a noise burst
    mixture    speech and a sound, overlapping in time or one after the other

Held out for evaluation: three voices never heard in training, and eight words never said in
training (the other evaluation sentences are new combinations of training words). Four of the
training voices have names ("Adam", "Beth", "Carl", "Dana") and a question asks which one spoke;
that question is evaluated on their held-out sentences. Everything is drawn from one
random.Random(seed) and espeak-ng is deterministic, so a seed gives the same clips on every run;
clips.safetensors caches them (keyed by the seed and the sizes).
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

RATE = 16000
SECONDS = 2.5
SAMPLES = int(RATE * SECONDS)

WORDS = ["red", "blue", "green", "black", "white", "small", "big", "old", "cat", "dog", "bird", "fish", "tree",
         "house", "car", "ball", "book", "door", "sun", "moon", "star", "water", "fire", "stone", "road", "hill",
         "river", "bread", "milk", "apple", "box", "cup", "hat", "shoe", "key", "bell"]
NEW_WORDS = ["train", "lamp", "chair", "clock", "horse", "snow", "rain", "ship"]  # never said in training
NAMED_VOICES = {"Adam": "m3", "Beth": "f2", "Carl": "m7", "Dana": "f4"}
OTHER_VOICES = ["m1", "m2", "m5", "f1", "f5"]
NEW_VOICES = ["m4", "m6", "f3"]  # never heard in training
SOUNDS = ["tone", "sweep", "beeps", "noise"]
COUNT_WORDS = ["one", "two", "three", "four"]


def espeak(text, voice, pitch, speed):
    """float32 samples at RATE of espeak-ng saying `text`, silence trimmed."""
    wav = subprocess.run(["espeak-ng", "-v", f"en+{voice}", "-p", str(pitch), "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-e", "floating-point", "-b", "32",
                          "-c", "1", "-"], input=wav, check=True, capture_output=True).stdout
    x = np.frombuffer(raw, dtype=np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02)
    x = x[loud[0]:loud[-1] + 1] if loud.size else x
    return (0.5 * x / max(1e-6, np.abs(x).max())).astype(np.float32)


def envelope(n, fade=80):
    """Short fades at both ends, so that sounds start and stop without clicks."""
    e = np.ones(n, dtype=np.float32)
    k = min(fade, n // 2)
    e[:k] = np.linspace(0, 1, k)
    e[n - k:] = np.linspace(1, 0, k)
    return e


def sine(freq_start, freq_end, seconds):
    """A sine whose frequency moves geometrically from freq_start to freq_end."""
    n = int(seconds * RATE)
    f = freq_start * (freq_end / freq_start) ** (np.arange(n) / max(1, n - 1))
    return (np.sin(2 * np.pi * np.cumsum(f) / RATE) * envelope(n)).astype(np.float32)


def beeps(count, freq, length, gap):
    """`count` beeps of `length` seconds at `freq`, `gap` seconds apart."""
    one, silence = sine(freq, freq, length), np.zeros(int(gap * RATE), dtype=np.float32)
    return np.concatenate([np.concatenate([one, silence]) for _ in range(count)])[:-silence.size or None]


def sound(rng, kind):
    """(samples, facts) of a non-speech sound of `kind`."""
    if kind == "tone":
        f = rng.uniform(250, 2000)
        return sine(f, f, rng.uniform(0.4, 1.0)), {}
    if kind == "sweep":
        low, high = rng.uniform(250, 450), rng.uniform(1200, 2200)
        rising = rng.random() < 0.5
        return sine(*((low, high) if rising else (high, low)), rng.uniform(0.5, 1.0)), {"rising": rising}
    if kind == "beeps":
        count = rng.randint(1, 4)
        return beeps(count, rng.uniform(500, 2000), rng.uniform(0.08, 0.14), rng.uniform(0.1, 0.18)), {"beeps": count}
    n = int(rng.uniform(0.3, 0.8) * RATE)
    noise = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(n).astype(np.float32)
    return (0.4 * noise / np.abs(noise).max() * envelope(n, 400)), {}


def place(clip, x, start):
    clip[start:start + x.size] += x[:clip.size - start]


def speech_facts(rng, words, voices):
    voice = rng.choice(voices)
    high, fast = rng.random() < 0.5, rng.random() < 0.5
    return {"text": " ".join(words), "voice": voice, "high": high, "fast": fast,
            "pitch": rng.randint(75, 90) if high else rng.randint(10, 25),
            "speed": rng.randint(230, 280) if fast else rng.randint(110, 140)}


def make_clip(rng, words, voices, kind):
    """One clip: kind is "speech", "sound" or "mixture". Returns (float32 [SAMPLES], facts)."""
    clip = np.zeros(SAMPLES, dtype=np.float32)
    facts = {"kind": kind, "text": "", "sound": "none"}
    if kind in ("speech", "mixture"):
        facts.update(speech_facts(rng, words, voices))
        speech = espeak(facts["text"], facts["voice"], facts["pitch"], facts["speed"])[:SAMPLES]
    if kind in ("sound", "mixture"):
        facts["sound"] = rng.choice(SOUNDS)
        noise, extra = sound(rng, facts["sound"])
        noise = noise * rng.uniform(0.6, 1.0) * (0.6 if kind == "mixture" else 1.0)
        facts.update(extra)
    if kind == "speech":
        place(clip, speech, rng.randrange(SAMPLES - speech.size + 1))
    elif kind == "sound":
        place(clip, noise, rng.randrange(SAMPLES - noise.size + 1))
    else:
        room = SAMPLES - speech.size - noise.size
        facts["overlap"] = room < int(0.1 * RATE) or rng.random() < 0.5
        if facts["overlap"]:  # the sound starts inside the speech
            s = rng.randrange(max(1, SAMPLES - speech.size + 1))
            place(clip, speech, s)
            place(clip, noise, min(SAMPLES - 1, s + rng.randrange(max(1, speech.size - noise.size // 2))))
        else:  # one after the other, at least 0.1 s apart
            gap = rng.randrange(int(0.1 * RATE), room + 1)
            first, second = (speech, noise) if rng.random() < 0.5 else (noise, speech)
            start = rng.randrange(room - gap + 1)
            place(clip, first, start)
            place(clip, second, start + first.size + gap)
    return np.clip(clip, -1, 1), facts


def sentence(rng, words):
    return rng.sample(words, rng.choice([2, 3]))


def make(seed=0, train=1200, test=200, fast=False):
    """{"train": (waveforms float32 [N,SAMPLES], facts), "test": ...}. Test clips: half by held-out
    voices (words seen, new combinations), a quarter with held-out words, a quarter by the named
    voices saying sentences training never has (for the which-voice question)."""
    rng = random.Random(seed)
    if fast:
        train, test = 48, 24
    voices = list(NAMED_VOICES.values()) + OTHER_VOICES
    seen = set()

    def draw(count, pool_words, pool_voices, new_sentence):
        waves, facts = [], []
        while len(facts) < count:
            kind = rng.choices(["speech", "sound", "mixture"], [0.45, 0.25, 0.3])[0]
            words = sentence(rng, pool_words)
            if new_sentence and tuple(words) in seen:
                continue
            if not new_sentence:
                seen.add(tuple(words))
            x, f = make_clip(rng, words, pool_voices, kind)
            waves.append(x)
            facts.append(f)
        return waves, facts

    split = {"train": draw(train, WORDS, voices, False)}
    parts = [draw(test // 2, WORDS, NEW_VOICES, True), draw(test // 4, NEW_WORDS + WORDS, NEW_VOICES + voices, True),
             draw(test - test // 2 - test // 4, WORDS, list(NAMED_VOICES.values()), True)]
    for (_, facts), held in zip(parts, ["voice", "word", "sentence"]):
        for f in facts:
            f["held_out"] = held
            f["new_word"] = any(w in NEW_WORDS for w in f["text"].split())
    split["test"] = (sum((w for w, _ in parts), []), sum((f for _, f in parts), []))
    return {name: (torch.from_numpy(np.stack(w)), f) for name, (w, f) in split.items()}


def load(folder, seed=0, fast=False):
    """The clips of `seed`, from folder/clips.safetensors when it holds them, else made and saved there."""
    folder = Path(folder)
    key = {"seed": seed, "fast": fast, "samples": SAMPLES, "version": 2}
    path = folder / "clips.safetensors"
    if path.exists():
        with safe_open(path, "pt") as stored:
            meta = stored.metadata() or {}
            if json.loads(meta.get("key", "null")) == key:
                return {name: (stored.get_tensor(name), json.loads(meta[name + "_facts"]))
                        for name in ("train", "test")}
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        raise SystemExit("examples/voice.py needs espeak-ng and sox (make setup installs them)")
    data = make(seed, fast=fast)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"key": json.dumps(key), **{name + "_facts": json.dumps(facts) for name, (_, facts) in data.items()}}
    save_file({name: waves.contiguous() for name, (waves, _) in data.items()}, folder / "clips.tmp", metadata=meta)
    os.replace(folder / "clips.tmp", path)
    return data


def write_wav(path, samples):
    """16-bit mono WAV at RATE."""
    data = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "runs" / "voice-data"))
    args = p.parse_args()
    data = load(args.out, args.seed, args.fast)
    waves, facts = data["test"]
    for i in range(6):
        write_wav(Path(args.out) / f"test-{i}.wav", waves[i].numpy())
        print(f"test-{i}.wav", facts[i])
    print(f"{len(data['train'][1])} training and {len(facts)} test clips in {args.out}")


if __name__ == "__main__":
    main()

"""Tokenizer throughput (MB/s, one thread) of aios, `tokenizers` and `tiktoken` on the same text.

    python bench/bench_tokenizer.py [--reps 5]

Vocabulary: SmolLM2's tokenizer.json (from the default model folder). tiktoken gets an Encoding
built offline from the same vocabulary (rank = id, GPT-2 split pattern, the same special tokens);
ids are compared with `tokenizers` for each input, and tiktoken's agreement is printed too.
Inputs: a mixed multilingual corpus, and long lines (1 MB without newlines) to show linear cost.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers: one thread, like the others
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiktoken  # noqa: E402
from tokenizers import Tokenizer as Reference  # noqa: E402

import aios  # noqa: E402

from common import REPO  # noqa: E402

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SAMPLE = ("The quick brown fox jumps over the lazy dog. 你好，世界！日本語のテキスト。 def f(x): return x**2\n"
          "Numbers 1234567890, emoji 👍🏽 and Ελληνικά, русский. It's we're they've.\n")


def byte_decoder():
    bs, cs, n = [], [], 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
            bs.append(b), cs.append(b)
        else:
            bs.append(b), cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def tiktoken_encoding(path):
    data = json.load(open(path))
    decode = byte_decoder()
    ranks = {bytes(decode[ch] for ch in token): i for token, i in data["model"]["vocab"].items()
             if all(ch in decode for ch in token)}
    specials = {t["content"]: t["id"] for t in data["added_tokens"]}
    return tiktoken.Encoding("smollm2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def throughput(fn, text, reps):
    fn(text)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - start)
    return len(text.encode()) / 1e6 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    path = str(REPO / ".cache/models/smollm2-135m-instruct/tokenizer.json")
    ours, ref, tik = aios.Tokenizer.load(path), Reference.from_file(path), tiktoken_encoding(path)
    sides = {
        "aios": lambda t: ours.encode(t, add_special_tokens=False),
        "tokenizers": lambda t: ref.encode(t, add_special_tokens=False).ids,
        "tiktoken": lambda t: tik.encode_ordinary(t),
    }
    inputs = {
        "mixed corpus, 1 MB": (SAMPLE * (1_000_000 // len(SAMPLE.encode()) + 1)),
        "1 MB, no newlines": (SAMPLE.replace("\n", " ") * (1_000_000 // len(SAMPLE.encode()) + 1)),
        "4 MB, no newlines": (SAMPLE.replace("\n", " ") * (4_000_000 // len(SAMPLE.encode()) + 1)),
    }
    print(f"{'input':>20} | {'aios MB/s':>9} | {'tokenizers':>10} {'ratio':>6} | {'tiktoken':>8} {'ratio':>6} | same ids")
    for name, text in inputs.items():
        speed = {k: throughput(fn, text, args.reps) for k, fn in sides.items()}
        same = sides["aios"](text) == sides["tokenizers"](text)
        same_tik = sides["tiktoken"](text) == sides["tokenizers"](text)
        print(f"{name:>20} | {speed['aios']:9.2f} | {speed['tokenizers']:10.2f} {speed['aios'] / speed['tokenizers']:5.2f}x | "
              f"{speed['tiktoken']:8.2f} {speed['aios'] / speed['tiktoken']:5.2f}x | aios {same}, tiktoken {same_tik}",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())

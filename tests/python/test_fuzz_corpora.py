"""Saved fuzz corpora replayed as differential checks: aios's tokenizer against the `tokenizers` library.

tests/fuzz/compare_tokenizers.py reads the corpus the fuzz_tokenizer_encode target writes (its seeds, and what
the lead's fuzzing adds); every valid UTF-8 input must encode to the same ids and decode to the same text.
"""
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "tests" / "fuzz"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_tokenizers", FUZZ / "compare_tokenizers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer_json(default_model):
    return default_model / "tokenizer.json"


def test_the_tokenizer_encode_corpus_agrees_with_the_tokenizers_library(compare, tokenizer_json):
    pairs = compare.load_pairs([tokenizer_json])
    counts, mismatches = compare.compare([compare.DEFAULT_CORPUS], pairs, stop_at_first=False)
    assert not mismatches, "\n".join(f"{path}: {message}" for path, message in mismatches)
    assert counts["compared"] >= 5 and counts["invalid_utf8"] >= 1  # the seeds at least; both kinds seen


def test_hard_texts_agree_with_the_tokenizers_library(compare, tokenizer_json, tmp_path):
    # Beyond the corpus: special tokens in and around text, whitespace runs, marks, emoji sequences, scripts,
    # controls, and random mixes of them, each with and without add_special_tokens.
    texts = ["", " ", "  \n\n\t ", "<|im_start|>user\nHi<|im_end|>\n", "<|endoftext|><|endoftext|>x", "<|im_start|",
             "héllo wörld", "日本語のテキストです", "emoji 😀👍🏽👨‍👩‍👧 ok", "\u0301\u0301a\u0301", "עברית العربية",
             "\x00\x01\x1f\x7f", "a" * 3000, " " * 500, "1234567890 3.14159", "don't can't I'm we'll", "\r\n\r\n",
             "\ufeffBOM", "\u200b\u200d\u2028", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ﬁ Ⅷ ½", "<s></s>[INST]", "\U0010ffff\U0001f600"]
    rng = random.Random(20240601)
    alphabet = [chr(c) for c in [*range(32, 127), 0xe9, 0x4e2d, 0x1f600, 0x301, 0x200b, 0x3000, 10, 9, 13]]
    alphabet += ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 60))) for _ in range(300)]
    for i, text in enumerate(texts):
        (tmp_path / f"t{i:04d}").write_bytes(bytes([i % 2]) + text.encode())
    counts, mismatches = compare.compare([tmp_path], compare.load_pairs([tokenizer_json]), stop_at_first=False)
    assert not mismatches, "\n".join(message for _, message in mismatches)
    assert counts["compared"] == len(texts)


def test_a_mismatch_is_reported_with_its_input(compare, tokenizer_json, tmp_path):
    # A reference whose vocabulary swaps the ids of two tokens: the checker must see it, in-process and as the
    # command line (exit status 1, the input shown).
    spec = json.loads(tokenizer_json.read_text())
    vocab = spec["model"]["vocab"]
    vocab["Hello"], vocab["Ġworld"] = vocab["Ġworld"], vocab["Hello"]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(spec))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "hello").write_bytes(b"\x00Hello world")
    (corpus / "other").write_bytes(b"\x00abc")
    counts, mismatches = compare.compare([corpus], compare.load_pairs([tokenizer_json], [tampered]), False)
    assert len(mismatches) == 1 and mismatches[0][0].endswith("hello") and "'Hello world'" in mismatches[0][1]
    env = {**os.environ, "AIOS_FUZZ_TOKENIZERS": ""}
    run = subprocess.run([sys.executable, str(FUZZ / "compare_tokenizers.py"), str(corpus), "--tokenizer",
                          str(tokenizer_json), "--reference", str(tampered)], capture_output=True, text=True, env=env)
    assert run.returncode == 1 and "MISMATCH" in run.stderr and "Hello world" in run.stderr, run.stderr
    run = subprocess.run([sys.executable, str(FUZZ / "compare_tokenizers.py"), str(corpus), "--tokenizer",
                          str(tokenizer_json)], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "2 compared" in run.stdout and "0 mismatches" in run.stdout, run.stderr

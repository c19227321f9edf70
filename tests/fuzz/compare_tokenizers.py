#!/usr/bin/env python3
"""Differential check of aios's tokenizer against the `tokenizers` library, over a saved corpus.

    .venv/bin/python tests/fuzz/compare_tokenizers.py [CORPUS_DIR ...] [--tokenizer tokenizer.json ...]

Each file of each corpus directory (default: tests/fuzz/corpus/fuzz_tokenizer_encode, which the
fuzz_tokenizer_encode target fills) is one input, read as that target reads it: the first byte holds the flags
(bit 0: add_special_tokens; the bits above pick the tokenizer, (byte >> 1) % count, among the default model's
and those of AIOS_FUZZ_TOKENIZERS, as the fuzzer does), the rest is the text. Where the text is valid UTF-8, it
is encoded by aios.Tokenizer and by tokenizers.Tokenizer from the same tokenizer.json, and the ids must be
equal; the ids are then decoded by both, with and without skip_special_tokens, and the texts must be equal.
Invalid UTF-8 is the C++ fuzzer's business (the Python API takes str). An input that picks a .gguf tokenizer is
counted as skipped: the `tokenizers` library reads only tokenizer.json.

The default model is $AIOS_DEFAULT_MODEL, else .cache/models/smollm2-135m-instruct. Exits 1 on the first
mismatch (or on all of them with --all), printing the file, the input and where the ids part.
"""
import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO / "tests" / "fuzz" / "corpus" / "fuzz_tokenizer_encode"


def default_tokenizer_paths():
    model = Path(os.environ.get("AIOS_DEFAULT_MODEL") or REPO / ".cache" / "models" / "smollm2-135m-instruct")
    paths = [model / "tokenizer.json"]
    paths += [Path(p) for p in os.environ.get("AIOS_FUZZ_TOKENIZERS", "").split(":") if p]
    return paths


def load_pairs(paths, reference_paths=None):
    """[(name, aios tokenizer, reference tokenizer or None)] for the paths, in the fuzzer's order. The reference
    is read from reference_paths[i] when given (a test hands in a tampered one to see a mismatch reported)."""
    import aios
    from tokenizers import Tokenizer as Reference

    pairs = []
    for i, path in enumerate(paths):
        reference_path = Path(reference_paths[i]) if reference_paths else Path(path)
        reference = None if str(path).endswith(".gguf") else Reference.from_file(str(reference_path))
        pairs.append((str(path), aios.Tokenizer.load(str(path)), reference))
    return pairs


def compare_one(data, pairs):
    """None if the input agrees (or is not compared), else a message saying how the two tokenizers part."""
    if not data:
        return None
    name, ours, reference = pairs[(data[0] >> 1) % len(pairs)]
    add_special = bool(data[0] & 1)
    try:
        text = data[1:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if reference is None:
        return None
    got = ours.encode(text, add_special_tokens=add_special)
    want = reference.encode(text, add_special_tokens=add_special).ids
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        return (f"encode differs ({name}, add_special_tokens={add_special}) at id {at}: "
                f"aios {got[max(0, at - 3):at + 5]} vs tokenizers {want[max(0, at - 3):at + 5]} "
                f"({len(got)} vs {len(want)} ids)\n  text: {text!r}")
    for skip in (False, True):
        ours_text = ours.decode(got, skip_special_tokens=skip)
        reference_text = reference.decode(want, skip_special_tokens=skip)
        if ours_text != reference_text:
            return (f"decode differs ({name}, skip_special_tokens={skip}): aios {ours_text!r} vs tokenizers "
                    f"{reference_text!r}\n  ids: {got}\n  text: {text!r}")
    return None


def compare(corpus_dirs, pairs, stop_at_first=True):
    """(counts, mismatches): counts of files read, compared and skipped; mismatches as (file, message)."""
    counts = {"files": 0, "compared": 0, "invalid_utf8": 0, "gguf": 0}
    mismatches = []
    for directory in corpus_dirs:
        for path in sorted(Path(directory).iterdir()):
            if not path.is_file():
                continue
            data = path.read_bytes()
            counts["files"] += 1
            if not data:
                continue
            try:
                data[1:].decode("utf-8")
            except UnicodeDecodeError:
                counts["invalid_utf8"] += 1
                continue
            if pairs[(data[0] >> 1) % len(pairs)][2] is None:
                counts["gguf"] += 1
                continue
            counts["compared"] += 1
            message = compare_one(data, pairs)
            if message is not None:
                mismatches.append((str(path), message))
                if stop_at_first:
                    return counts, mismatches
    return counts, mismatches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="*", default=[str(DEFAULT_CORPUS)], help="corpus directories")
    parser.add_argument("--tokenizer", action="append", help="tokenizer.json paths, in the fuzzer's order "
                        "(default: the default model's, then AIOS_FUZZ_TOKENIZERS)")
    parser.add_argument("--reference", action="append", help="read the reference of each --tokenizer from this "
                        "file instead (to see that a mismatch is reported)")
    parser.add_argument("--all", action="store_true", help="report every mismatch, not only the first")
    args = parser.parse_args(argv)
    paths = args.tokenizer or default_tokenizer_paths()
    if args.reference and len(args.reference) != len(paths):
        parser.error("give one --reference per tokenizer")
    pairs = load_pairs(paths, args.reference)
    counts, mismatches = compare(args.corpus, pairs, stop_at_first=not args.all)
    for path, message in mismatches:
        print(f"MISMATCH {path}\n  {message}", file=sys.stderr)
    print(f"{counts['files']} files, {counts['compared']} compared, {counts['invalid_utf8']} invalid UTF-8, "
          f"{counts['gguf']} for a .gguf tokenizer; {len(mismatches)} mismatches")
    if counts["files"] == 0:
        print("no inputs: is the corpus directory right?", file=sys.stderr)
        return 2
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

"""aios.Tokenizer against the `tokenizers` library: identical ids and identical decoded text."""
import json

import pytest
from tokenizers import Tokenizer as Reference
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import aios

CORPUS = [
    "", " ", "Hello world", "The capital of France is Paris.",
    "你好，世界！这是一个测试。", "日本語のテキストです。カタカナとひらがな", "한국어 문장입니다",
    "emoji 👍🏽 👨‍👩‍👧‍👦 family 🏳️‍🌈 flags 🇫🇷", "def f(x):\n    return x**2  # comment\n\n\n",
    "   leading and trailing   ", "\t\ttabs\nnew\r\nlines\u00a0nbsp", "1234567890 3.14159 1e-10 12,345.67",
    "mixed Ελληνικά русский עברית العربية हिन्दी", "it's we're they've I'm you'll he'd IT'S",
    " " * 50 + "x", "a" * 500, "x" + "\n" * 40 + "y", "ß ﬁ Å Å e\u0301 ＡＢＣ",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant", "text<|endoftext|>more<|endoftext|>",
    "<|im_start|><|im_start|>", "almost <|im_start special", "`~!@#$%^&*()_+-=[]{}|;':\",./<>?",
]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def trained(tmp_path, name, pre_tokenizer, post=None, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    """A small byte-level BPE trained on the corpus with the given pre-tokenizer, written to disk."""
    tok = Reference(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    if post is not None:
        tok.post_processor = post
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3 + ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    path = tmp_path / f"{name}.json"
    tok.save(str(path))
    return path


def families(tmp_path, default_model):
    yield "smollm2 (real)", default_model / "tokenizer.json"
    yield "gpt2 byte-level", trained(tmp_path, "gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False))
    yield "gpt2 with prefix space", trained(tmp_path, "prefix", pre_tokenizers.ByteLevel(add_prefix_space=True))
    yield "llama3 split + bos", trained(
        tmp_path, "llama3",
        pre_tokenizers.Sequence([pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(LLAMA3_PATTERN),
                                                      behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        post=processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]))
    yield "split then prefix space", trained(
        tmp_path, "split_prefix",
        pre_tokenizers.Sequence([pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(r"\p{P}"),
                                                      behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)]))
    yield "qwen2-style digits", trained(
        tmp_path, "digits",
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False)]))


def test_identical_ids_and_text_for_every_family(tmp_path, default_model):
    for name, path in families(tmp_path, default_model):
        ours, ref = aios.Tokenizer.load(path), Reference.from_file(str(path))
        assert ours.vocab_size == ref.get_vocab_size(with_added_tokens=True), name
        for text in CORPUS:
            for special in (True, False):
                want = ref.encode(text, add_special_tokens=special).ids
                got = ours.encode(text, add_special_tokens=special)
                assert got == want, (name, text, special)
                for skip in (True, False):
                    assert ours.decode(got, skip_special_tokens=skip) == \
                        ref.decode(want, skip_special_tokens=skip), (name, text, skip)
        assert ours.encode_batch(CORPUS) == [e.ids for e in ref.encode_batch(CORPUS)], name


def test_lookups_and_errors(default_model):
    tok = aios.Tokenizer.load(default_model / "tokenizer.json")
    assert tok.token_to_id("<|im_start|>") == 1 and tok.is_special(1)
    assert tok.id_to_token(1) == "<|im_start|>"
    assert tok.token_to_id("no such token, surely") is None
    with pytest.raises(aios.InvalidArgumentError) as info:
        tok.decode([1, tok.vocab_size])
    assert info.value.field == "ids" and str(tok.vocab_size) in str(info.value)
    with pytest.raises(aios.InvalidArgumentError):
        tok.id_to_token(-1)
    with pytest.raises(aios.NotFoundError):
        aios.Tokenizer.load(default_model / "missing.json")


def test_text_that_is_not_valid_utf8_is_handled(default_model):
    tok = aios.Tokenizer.load(default_model / "tokenizer.json")
    ids = tok.encode("lone \ud800 surrogate")  # passed on as its (invalid) UTF-8 bytes
    assert tok.decode(ids) == "lone \ufffd\ufffd\ufffd surrogate"


def test_unsupported_components_are_named(tmp_path, default_model):
    config = json.loads((default_model / "tokenizer.json").read_text())
    config["normalizer"] = {"type": "NFKC"}
    path = tmp_path / "nfkc.json"
    path.write_text(json.dumps(config))
    with pytest.raises(aios.InvalidArgumentError) as info:
        aios.Tokenizer.load(path)
    assert info.value.field == "normalizer" and "NFKC" in str(info.value)


def test_long_single_piece_is_linear_and_identical(default_model):
    """A 200 kB word is one pre-tokenized piece: merging must not be quadratic in it."""
    path = default_model / "tokenizer.json"
    ours, ref = aios.Tokenizer.load(path), Reference.from_file(str(path))
    text = "ab" * 100_000
    assert ours.encode(text) == ref.encode(text).ids

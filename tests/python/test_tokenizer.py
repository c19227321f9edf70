"""aios.Tokenizer against the `tokenizers` library: identical ids and identical decoded text."""
import json

import pytest
from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as Reference
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

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
    "<s>hello</s> world", "a<s>b  <s> c</s>", " <s>x", "\u2581 already \u2581\u2581metaspace", "rare: \u2230 \U0001F999 \u00e9",
    "  two leading spaces", "control \x00\x01\x7f chars",
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


LLAMA_SPECIALS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
BOS = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])


def sentencepiece_like(tmp_path, name, normalizer=None, pre_tokenizer=None, decoder=None, post=BOS,
                       whole_words=(), ignore_merges=False):
    """A Llama-2-style BPE over characters, trained on the corpus with few enough characters that
    others need byte fallback; <0x00>..<0xFF> and `whole_words` (tokens no merge makes) are appended
    to the vocabulary, as in the real files."""
    tok = Reference(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=list(LLAMA_SPECIALS), limit_alphabet=60,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 3 + ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    config = json.loads(tok.to_str())
    vocab = config["model"]["vocab"]
    for token in [f"<0x{b:02X}>" for b in range(256)] + list(whole_words):
        vocab.setdefault(token, max(vocab.values()) + 1)
    config["model"].update(byte_fallback=True, unk_token="<unk>", fuse_unk=True, ignore_merges=ignore_merges)
    tok = Reference.from_str(json.dumps(config))
    if decoder is not None:
        tok.decoder = decoder
    if post is not None:
        tok.post_processor = post
    path = tmp_path / f"{name}.json"
    tok.save(str(path))
    return path


LEGACY_DECODER = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])


def llama2_legacy(tmp_path):
    return sentencepiece_like(
        tmp_path, "llama2_legacy",
        normalizer=normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]),
        decoder=LEGACY_DECODER)


def sentencepiece_families(tmp_path):
    yield "llama2 legacy", llama2_legacy(tmp_path)
    yield "llama2 metaspace first", sentencepiece_like(
        tmp_path, "llama2_metaspace",
        pre_tokenizer=pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False),
        decoder=decoders.Sequence([decoders.ByteFallback(),
                                   decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)]))
    yield "metaspace always split, ignore_merges", sentencepiece_like(
        tmp_path, "metaspace_split",
        pre_tokenizer=pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        decoder=decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="always"),
                                   decoders.ByteFallback(), decoders.Fuse()]),
        whole_words=("\u2581capital", "\u2581France", "\u2581Paris.", "\u2581world"), ignore_merges=True)


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
    yield "qwen2-style nfc", normalized(tmp_path, "qwen2", normalizers.NFC())
    yield "nfkc lowercase strip", normalized(
        tmp_path, "nfkc", normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()]))
    yield "llama3 ignore_merges", ignore_merges_byte_level(tmp_path)
    yield from sentencepiece_families(tmp_path)


def normalized(tmp_path, name, normalizer):
    """Byte-level BPE behind a normalizer, split as Qwen2 does."""
    path = trained(tmp_path, name, pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    tok = Reference.from_file(str(path))
    tok.normalizer = normalizer
    tok.save(str(path))
    return path


# Words appended to the vocabulary without merges: only ignore_merges can produce them.
WHOLE_BYTE_LEVEL_WORDS = ("\u0120capital", "\u0120France", "Hello", "\u0120world", "\u0120family")


def ignore_merges_byte_level(tmp_path):
    path = trained(tmp_path, "ignore_merges", pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    config = json.loads(path.read_text())
    vocab = config["model"]["vocab"]
    for word in WHOLE_BYTE_LEVEL_WORDS:
        vocab.setdefault(word, max(vocab.values()) + 1)
    config["model"]["ignore_merges"] = True
    path.write_text(json.dumps(config))
    return path


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
            # Round trip: where the reference gives the text back (lossless families), so must we.
            plain = ours.decode(ours.encode(text, add_special_tokens=False), skip_special_tokens=False)
            if ref.decode(ref.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text:
                assert plain == text, (name, text)
        if name == "smollm2 (real)":  # byte-level without normalizer: every text comes back
            assert all(ours.decode(ours.encode(t, add_special_tokens=False), skip_special_tokens=False) == t
                       for t in CORPUS)
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
    original = json.loads((default_model / "tokenizer.json").read_text())
    cases = [("normalizer", {"type": "BertNormalizer"}, "normalizer.type", "BertNormalizer"),
             ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer.type", "Whitespace"),
             ("decoder", {"type": "WordPiece"}, "decoder.type", "WordPiece"),
             ("model.dropout", 0.1, "model.dropout", "0.1"),
             ("model.continuing_subword_prefix", "##", "model.continuing_subword_prefix", "##"),
             ("model.end_of_word_suffix", "</w>", "model.end_of_word_suffix", "</w>")]
    for key, value, field, text in cases:
        config = json.loads(json.dumps(original))
        *parents, last = key.split(".")
        target = config
        for parent in parents:
            target = target[parent]
        target[last] = value
        path = tmp_path / "unsupported.json"
        path.write_text(json.dumps(config))
        with pytest.raises(aios.InvalidArgumentError) as info:
            aios.Tokenizer.load(path)
        assert info.value.field == field and text in str(info.value), key


def test_byte_fallback_and_ignore_merges_are_exercised(tmp_path, default_model):
    """The families above would agree trivially if no character needed <0x..> tokens or no piece
    were a whole-word token only ignore_merges reaches."""
    for name, path in sentencepiece_families(tmp_path):
        tok = aios.Tokenizer.load(path)
        byte_ids = {tok.token_to_id(f"<0x{b:02X}>") for b in range(256)}
        used = {i for text in CORPUS for i in tok.encode(text)}
        assert used & byte_ids, name
    for name, path, words in [("byte-level", ignore_merges_byte_level(tmp_path), WHOLE_BYTE_LEVEL_WORDS),
                              ("characters", dict(sentencepiece_families(tmp_path))[
                                  "metaspace always split, ignore_merges"], ["\u2581capital", "\u2581world"])]:
        tok = aios.Tokenizer.load(path)
        used = {i for text in CORPUS for i in tok.encode(text)}
        assert {tok.token_to_id(w) for w in words} <= used, name


def test_invalid_utf8_over_characters_falls_back_to_bytes(tmp_path):
    tok = aios.Tokenizer.load(llama2_legacy(tmp_path))
    ids = tok.encode("lone \ud800 surrogate", add_special_tokens=False)
    assert [tok.token_to_id(t) for t in ("<0xED>", "<0xA0>", "<0x80>")] == \
        [i for i in ids if tok.id_to_token(i).startswith("<0x")]
    assert tok.decode(ids) == "lone \ufffd\ufffd\ufffd surrogate"


def test_normalized_added_tokens_match_the_normalized_text(tmp_path):
    path = llama2_legacy(tmp_path)
    ref = Reference.from_file(str(path))
    ref.add_tokens([AddedToken("world", normalized=True), AddedToken("<x>", normalized=True, special=True)])
    ref.save(str(path))
    ours = aios.Tokenizer.load(path)
    for text in ["hello world", "helloworld", "a world<x> b", " <x>", "<x>"] + CORPUS:
        want = ref.encode(text).ids
        assert ours.encode(text) == want, text
        for skip in (True, False):
            assert ours.decode(want, skip_special_tokens=skip) == ref.decode(want, skip_special_tokens=skip), text


def test_component_variants(tmp_path):
    """Options the families above leave at their defaults, on a Metaspace file: regex anchors (per
    line, as in the reference's Oniguruma), a normalizer that removes the start of the text before
    prepend_scheme "first", added-token lstrip/rstrip/single_word, Split behaviors with runs of
    delimiters (each behavior, inverted or not, on a regex), and no decoder at all."""
    base = sentencepiece_like(tmp_path, "variants_base",
                              pre_tokenizer=pre_tokenizers.Metaspace(prepend_scheme="first", split=False),
                              decoder=decoders.Metaspace(prepend_scheme="first"))
    variants = {
        "anchors": lambda r: setattr(r, "normalizer", normalizers.Replace(Regex("^ +| +$"), "")),
        "strip then first": lambda r: setattr(r, "normalizer", normalizers.Strip()),
        "added token options": lambda r: r.add_tokens([
            AddedToken("<m>", lstrip=True, rstrip=True), AddedToken("word", single_word=True),
            AddedToken("--", normalized=False, single_word=True, lstrip=True)]),
        "merged with next": lambda r: setattr(r, "pre_tokenizer", pre_tokenizers.Sequence([
            pre_tokenizers.Split(" ", "merged_with_next"), pre_tokenizers.Metaspace(prepend_scheme="first")])),
        "merged with previous": lambda r: setattr(r, "pre_tokenizer", pre_tokenizers.Sequence([
            pre_tokenizers.Split(" ", "merged_with_previous"), pre_tokenizers.Metaspace(prepend_scheme="never")])),
        "no decoder, nfd lowercase": lambda r: (setattr(r, "decoder", None), setattr(
            r, "normalizer", normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()]))),
    }
    for behavior in ("isolated", "removed", "contiguous", "merged_with_previous", "merged_with_next"):
        for invert in (False, True):
            variants[f"split {behavior}, invert {invert}"] = lambda r, b=behavior, i=invert: setattr(
                r, "pre_tokenizer", pre_tokenizers.Sequence([
                    pre_tokenizers.Split(Regex(r"\s+|[.,!?]|\p{N}"), b, invert=i),
                    pre_tokenizers.Metaspace(prepend_scheme="first")]))
    texts = CORPUS + ["a\n  b  \n c", "  x  ", "x <m>  y<m>z", "sword word words -- a--b", "a  b   c", "\u03a3 \u0130",
                      "1,2..3!? 45 a. b,,c 6", ".x.", "7"]
    for name, change in variants.items():
        ref = Reference.from_file(str(base))
        change(ref)
        path = tmp_path / "variant.json"
        ref.save(str(path))
        ours = aios.Tokenizer.load(path)
        for text in texts:
            want = ref.encode(text).ids
            assert ours.encode(text) == want, (name, text)
            for skip in (True, False):
                assert ours.decode(want, skip_special_tokens=skip) == ref.decode(want, skip_special_tokens=skip), \
                    (name, text)


def test_with_special_tokens(tmp_path, default_model):
    for path in (default_model / "tokenizer.json", llama2_legacy(tmp_path)):
        base, ref = aios.Tokenizer.load(path), Reference.from_file(str(path))
        size = base.vocab_size
        ext = base.with_special_tokens(["<sox>", "<eox>"], size)
        ref.add_special_tokens(["<sox>", "<eox>"])
        assert ext.vocab_size == size + 2 and base.vocab_size == size
        assert ext.token_to_id("<sox>") == size and ext.id_to_token(size + 1) == "<eox>" and ext.is_special(size)
        assert base.token_to_id("<sox>") is None
        for text in ["a<sox>b<eox>", "<sox><eox><sox>", "x <sox> y", "<sox"] + CORPUS:
            want = ref.encode(text).ids
            assert ext.encode(text) == want, text
            for skip in (True, False):
                assert ext.decode(want, skip_special_tokens=skip) == ref.decode(want, skip_special_tokens=skip)
        ids = ext.encode("a<sox>b<eox>", add_special_tokens=False)
        assert ids[ids.index(size) + 1:] == base.encode("b", add_special_tokens=False) + [size + 1]
        # The legacy Llama normalizer puts "\u2581" before every stretch of text, so " b" there.
        expected = "a<sox>b<eox>" if path.name == "tokenizer.json" else "a<sox> b<eox>"
        assert ext.decode(ids) == expected and ext.decode(ids, skip_special_tokens=True) == expected.replace("<sox>", "").replace("<eox>", "")

    base = aios.Tokenizer.load(default_model / "tokenizer.json")
    size = base.vocab_size
    gap = base.with_special_tokens(["<x>"], size + 10)
    assert gap.vocab_size == size + 11 and gap.encode("<x>", add_special_tokens=False) == [size + 10]
    for missing in (size, size + 9):
        with pytest.raises(aios.InvalidArgumentError):
            gap.decode([missing])
        with pytest.raises(aios.InvalidArgumentError):
            gap.id_to_token(missing)
    twice = gap.with_special_tokens(["<y>"], gap.vocab_size)  # extensions stack
    assert twice.encode("<x><y>", add_special_tokens=False) == [size + 10, size + 11]
    for tokens, first_id, error, field in [([], size, aios.InvalidArgumentError, "tokens"),
                                           (["<a>", ""], size, aios.InvalidArgumentError, "tokens"),
                                           (["<a>", "<a>"], size, aios.InvalidArgumentError, "tokens"),
                                           (["<a>"], size - 1, aios.InvalidArgumentError, "first_id"),
                                           (["<a>", "<|im_start|>"], size, aios.AlreadyExistsError, "tokens"),
                                           (["hello"], size, aios.AlreadyExistsError, "tokens")]:
        with pytest.raises(error) as info:
            base.with_special_tokens(tokens, first_id)
        assert info.value.field == field, tokens
        if error is aios.AlreadyExistsError:
            assert tokens[-1] in str(info.value)
    assert base.vocab_size == size and base.token_to_id("<a>") is None


def test_long_single_piece_is_linear_and_identical(default_model):
    """A 200 kB word is one pre-tokenized piece: merging must not be quadratic in it."""
    path = default_model / "tokenizer.json"
    ours, ref = aios.Tokenizer.load(path), Reference.from_file(str(path))
    text = "ab" * 100_000
    assert ours.encode(text) == ref.encode(text).ids

"""Writes the seed inputs of the fuzz targets into tests/fuzz/corpus/<target>/seed-*.

The seeds are committed; this script says how they were made (deterministic for a given default
model): .venv/bin/python tests/fuzz/make_seeds.py [--model .cache/models/smollm2-135m-instruct]
Fuzzing adds to these corpora (tests/fuzz/run.py merge), so a run of this script only refreshes
the files named seed-*.
"""
import argparse
import json
import struct
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save as save_safetensors
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
rng = np.random.default_rng(0)


def out(target, name, data):
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors_seeds():
    out("fuzz_safetensors", "mixed", save_safetensors(
        {"a": rng.standard_normal((2, 3), dtype=np.float32), "b": np.arange(5, dtype=np.int64),
         "c": np.zeros((0, 4), dtype=np.float16), "d": np.array(3, dtype=np.uint8),
         "e": np.ones((2, 2, 2), dtype=np.bool_)}, metadata={"format": "pt", "note": "aios"}))
    out("fuzz_safetensors", "rows", save_safetensors(
        {"embedding": rng.standard_normal((2, 16), dtype=np.float32),
         "classifier": rng.standard_normal((2, 16), dtype=np.float32)}))
    header = json.dumps({"x": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [0, 4]}}).encode()
    out("fuzz_safetensors", "bf16", struct.pack("<Q", len(header)) + header + b"\x80\x3f\x00\x40")
    out("fuzz_safetensors", "empty", struct.pack("<Q", 2) + b"{}")


def gguf_bytes(build):
    path = HERE / ".seed.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    build(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    return data


def tiny_llama(writer, arch="llama", tokenizer="gpt2", quant=gguf.GGMLQuantizationType.F32):
    V, D, F, H = 16, 32, 64, 2
    writer.add_context_length(32)
    writer.add_embedding_length(D)
    writer.add_block_count(1)
    writer.add_feed_forward_length(F)
    writer.add_head_count(H)
    writer.add_head_count_kv(1)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    tokens = ["<s>", "</s>", "<unk>"] + [chr(c) for c in range(ord("a"), ord("a") + 9)] + ["ab", "abc", "\u0120a", "\u2581a"]
    writer.add_tokenizer_model(tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 2] + [1] * (V - 3))
    if tokenizer == "gpt2":
        writer.add_token_merges(["a b", "ab c"])
        writer.add_tokenizer_pre("smollm")
    else:
        writer.add_token_scores([0.0] * 3 + [-float(i) for i in range(V - 3)])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    shapes = {"token_embd.weight": (V, D), "output_norm.weight": (D,), "output.weight": (V, D),
              "blk.0.attn_norm.weight": (D,), "blk.0.ffn_norm.weight": (D,), "blk.0.attn_q.weight": (D, D),
              "blk.0.attn_k.weight": (D // H, D), "blk.0.attn_v.weight": (D // H, D),
              "blk.0.attn_output.weight": (D, D), "blk.0.ffn_gate.weight": (F, D), "blk.0.ffn_up.weight": (F, D),
              "blk.0.ffn_down.weight": (D, F)}
    for name, shape in shapes.items():
        values = rng.standard_normal(shape, dtype=np.float32) * 0.1
        if len(shape) == 2 and quant != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(values, quant), raw_dtype=quant)
        else:
            writer.add_tensor(name, values)


def tensor_zoo(writer):
    """One [2, 256] tensor of every block type aios reads (and some it refuses), random blocks."""
    for t in gguf.GGMLQuantizationType:
        block, size = gguf.GGML_QUANT_SIZES[t]
        if 256 % block != 0:
            continue
        raw = rng.integers(0, 256, size=(2, 256 // block * size), dtype=np.uint8)
        if t in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16,
                 gguf.GGMLQuantizationType.F64):
            raw = rng.standard_normal((2, 256)).astype({gguf.GGMLQuantizationType.F32: np.float32,
                                                        gguf.GGMLQuantizationType.F16: np.float16,
                                                        gguf.GGMLQuantizationType.BF16: np.float32,
                                                        gguf.GGMLQuantizationType.F64: np.float64}[t])
            if t == gguf.GGMLQuantizationType.BF16:
                raw = (raw.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        writer.add_tensor(f"t.{t.name}", raw, raw_dtype=t)


def gguf_seeds():
    out("fuzz_gguf", "llama-gpt2-tokenizer", gguf_bytes(lambda w: tiny_llama(w)))
    out("fuzz_gguf", "llama-spm-tokenizer-q8_0", gguf_bytes(lambda w: tiny_llama(w, tokenizer="llama",
                                                                                quant=gguf.GGMLQuantizationType.Q8_0)))
    out("fuzz_gguf", "llama-q4_1", gguf_bytes(lambda w: tiny_llama(w, quant=gguf.GGMLQuantizationType.Q4_1)))
    out("fuzz_gguf", "tensor-zoo", gguf_bytes(tensor_zoo))
    for fixture in sorted((ROOT / "tests" / "data" / "gguf").glob("*.gguf")):
        out("fuzz_gguf", f"fixture-{fixture.stem}", fixture.read_bytes())


def config_seeds():
    llama = {"architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "head_dim": 8}
    out("fuzz_config", "llama", json.dumps(llama))
    for kind, extra in {"linear": {"factor": 2.0}, "dynamic": {"factor": 2.0},
                        "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64},
                        "yarn": {"factor": 4.0, "original_max_position_embeddings": 64}}.items():
        out("fuzz_config", f"llama-rope-{kind}", json.dumps({**llama, "rope_scaling": {"rope_type": kind, **extra}}))
    out("fuzz_config", "llama-rope-parameters", json.dumps(
        {**{k: v for k, v in llama.items() if k != "rope_theta"},
         "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}))
    out("fuzz_config", "qwen2", json.dumps({**llama, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                            "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1,
                                            "layer_types": ["full_attention", "sliding_attention"]}))
    out("fuzz_config", "mistral", json.dumps({**llama, "architectures": ["MistralForCausalLM"], "sliding_window": 16}))
    out("fuzz_config", "gpt2", json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 64,
                                           "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
                                           "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
                                           "scale_attn_by_inverse_layer_idx": True}))
    hybrid = {**llama, "head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
              "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4,
              "layer_types": ["linear_attention", "full_attention"],
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}}
    out("fuzz_config", "qwen3-next", json.dumps({**hybrid, "architectures": ["Qwen3NextForCausalLM"],
                                                 "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                                                 "shared_expert_intermediate_size": 16, "mlp_only_layers": [1]}))
    out("fuzz_config", "qwen3.5-vl", json.dumps({"architectures": ["Qwen3_5ForConditionalGeneration"],
                                                 "text_config": {**hybrid, "model_type": "qwen3_5_text"}}))
    out("fuzz_config", "model-type-only", json.dumps({**{k: v for k, v in llama.items() if k != "architectures"},
                                                      "model_type": "llama"}))


def tokenizer_seeds(model):
    byte_level = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate("abcdefgh\u0120")} | {"ab": 9, "abc": 10},
                                      merges=[("a", "b"), ("ab", "c")]))
    byte_level.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace("x", "y")])
    byte_level.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    byte_level.decoder = decoders.ByteLevel()
    byte_level.add_special_tokens(["<|endoftext|>"])
    byte_level.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 11)])
    out("fuzz_tokenizer_json", "byte-level", byte_level.to_str())

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in ["\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab"]:
        vocab[piece] = len(vocab)
    spm = Tokenizer(models.BPE(vocab=vocab, merges=[("\u2581", "a"), ("a", "b"), ("\u2581a", "b")],
                               unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    spm.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    out("fuzz_tokenizer_json", "sentencepiece", spm.to_str())

    split = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate("abc \u2581")}, merges=[]))
    split.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
    split.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(r"\p{L}+|\s+", behavior="isolated"), pre_tokenizers.Metaspace(prepend_scheme="first")])
    split.decoder = decoders.Metaspace()
    out("fuzz_tokenizer_json", "split-metaspace", split.to_str())

    # The default model's tokenizer with its vocabulary cut to the first 4000 tokens (and the merges
    # among them): a real file of the size fuzzing should reach.
    real = json.loads((model / "tokenizer.json").read_text())
    kept = {t: i for t, i in real["model"]["vocab"].items() if i < 4000}
    merges = []
    for m in real["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in kept and b in kept and a + b in kept:
            merges.append(m)
    real["model"]["vocab"] = kept
    real["model"]["merges"] = merges
    real["added_tokens"] = [t for t in real["added_tokens"] if t["id"] < 4000]
    out("fuzz_tokenizer_json", "smollm2-4000", json.dumps(real, ensure_ascii=False))

    texts = ["Hello, world!", "def f(x):\n    return x ** 2  # square\n", "  leading and  double  spaces  ",
             "Unicode: caf\u00e9 na\u00efve \u4f60\u597d \U0001F600 \u0939\u093f\u0928\u094d\u0926\u0940",
             "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "1234567890 3.14159 1e-9",
             "\t\r\n\u00a0\u2028", "a" * 300, "The quick brown fox jumps over the lazy dog. " * 5]
    for i, text in enumerate(texts):
        out("fuzz_tokenizer_encode", f"text-{i}", bytes([2 * (i % 2) + (i % 3 == 0)]) + text.encode())
    out("fuzz_tokenizer_encode", "invalid-utf8", b"\x00ab\xff\xfe\xc3(\xe2\x82\xf0\x9f\x98 ok \xed\xa0\x80")


def chat_seeds(model):
    config = json.loads((model / "tokenizer_config.json").read_text()) if (model / "tokenizer_config.json").exists() else {}
    template = config.get("chat_template") or ((model / "chat_template.jinja").read_text()
                                               if (model / "chat_template.jinja").exists() else "")
    messages = b"\xfe".join([b"system\xfdYou are helpful.", b"user\xfdHi!", b"assistant\xfdHello.", b"user\xfdBye"])
    out("fuzz_chat_template", "smollm2", template.encode() + b"\xff" + messages)
    out("fuzz_chat_template", "smollm2-no-system", template.encode() + b"\xff" + b"user\xfdHi!")
    out("fuzz_chat_template", "other", b"{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}\xff" + messages)


def key_file_seeds():
    out("fuzz_key_file", "two-tenants", "# tenants\nalice k-alice-0123456789 max_tokens=4096 max_concurrent=2\n"
                                        "bob k-bob-abcdefghij\nbob k-bob-second max_decoders=0 max_extensions=3\n")
    out("fuzz_key_file", "quotas", "t1 key-t1-000000 max_store_bytes=1048576 max_tokens=0\n\n  # comment\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / ".cache" / "models" / "smollm2-135m-instruct"))
    args = parser.parse_args()
    model = Path(args.model)
    safetensors_seeds()
    gguf_seeds()
    config_seeds()
    tokenizer_seeds(model)
    chat_seeds(model)
    key_file_seeds()


if __name__ == "__main__":
    main()

"""Writes the corrupt GGUF fixtures of this folder and `expected.json`, the error each must raise.

Each fixture is a tiny valid llama GGUF file (one block, hidden size 16) broken in one way. The
files are committed; run this script to write them again (deterministic):
    .venv/bin/python tests/data/gguf/make_fixtures.py
"""
import json
import struct
from pathlib import Path

import gguf
import numpy as np

HERE = Path(__file__).resolve().parent
V, D, F, HEADS = 8, 16, 24, 2


def tensors():
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (V, D), "output_norm.weight": (D,), "output.weight": (V, D),
              "blk.0.attn_norm.weight": (D,), "blk.0.ffn_norm.weight": (D,),
              "blk.0.attn_q.weight": (D, D), "blk.0.attn_k.weight": (D, D), "blk.0.attn_v.weight": (D, D),
              "blk.0.attn_output.weight": (D, D), "blk.0.ffn_gate.weight": (F, D), "blk.0.ffn_up.weight": (F, D),
              "blk.0.ffn_down.weight": (D, F)}
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


def write(path, arch="llama", drop=()):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(32)
    writer.add_embedding_length(D)
    writer.add_block_count(1)
    writer.add_feed_forward_length(F)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, array in tensors().items():
        if name not in drop:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return bytearray(path.read_bytes())


def tensor_info_offset(path, name):
    """Byte offset of the tensor info record of `name` (its name length field)."""
    reader = gguf.GGUFReader(str(path))
    return next(t.field.offset for t in reader.tensors if t.name == name)


def patch_tensor_info(path, name, *, type_=None, offset=None):
    data = bytearray(path.read_bytes())
    at = tensor_info_offset(path, name)
    name_length = struct.unpack_from("<Q", data, at)[0]
    at += 8 + name_length
    rank = struct.unpack_from("<I", data, at)[0]
    at += 4 + 8 * rank
    if type_ is not None:
        struct.pack_into("<I", data, at, type_)
    if offset is not None:
        struct.pack_into("<Q", data, at + 4, offset)
    path.write_bytes(data)


def main():
    expected = {}
    valid = HERE / "valid.gguf"
    good = write(valid)
    expected[valid.name] = None

    def fixture(name, data, error, match):
        (HERE / name).write_bytes(bytes(data))
        expected[name] = {"error": error, "match": match}

    fixture("truncated.gguf", good[: len(good) - 700], "DataLossError", "truncated|more than the file")
    fixture("bad_magic.gguf", b"GGUG" + good[4:], "DataLossError", "bad magic")
    lying = bytearray(good)
    struct.pack_into("<Q", lying, 8, 1 << 40)  # tensor_count
    fixture("lying_tensor_count.gguf", lying, "DataLossError", "tensor_count")
    lying = bytearray(good)
    struct.pack_into("<Q", lying, 16, 1 << 40)  # metadata_kv_count
    fixture("lying_metadata_count.gguf", lying, "DataLossError", "metadata_kv_count")

    for name, kwargs, error, match in [
        ("lying_offset.gguf", {"offset": 1 << 20}, "DataLossError", "outside the data section"),
        ("misaligned_offset.gguf", {"offset": 4}, "DataLossError", "not a multiple of the alignment"),
        ("unknown_tensor_type.gguf", {"type_": 99}, "InvalidArgumentError", "unknown tensor type 99"),
    ]:
        path = HERE / name
        path.write_bytes(bytes(good))
        patch_tensor_info(path, "blk.0.ffn_up.weight", **kwargs)
        expected[name] = {"error": error, "match": match}

    write(HERE / "unknown_architecture.gguf", arch="falcon")
    expected["unknown_architecture.gguf"] = {"error": "InvalidArgumentError", "match": "general.architecture"}
    write(HERE / "missing_tensor.gguf", drop=("blk.0.ffn_down.weight",))
    expected["missing_tensor.gguf"] = {"error": "DataLossError", "match": "blk.0.ffn_down.weight"}

    (HERE / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main()

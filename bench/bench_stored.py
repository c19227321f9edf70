"""Stored (quantised) weights against the same model expanded to float32, in the same run.

    python bench/bench_stored.py [--models default,1b-q4_k,1b-q8_0,hf] [--reps 3] [--threads N] [--hosted-7b]
                                 [--large-shapes default,hf] [--llama-cpp]

Each GGUF model loads twice, weights="expanded" and weights="stored", and the Hugging Face one
(`hf`: the default model's float32 safetensors export) three times, "expanded", "int8" and "int4"
(groups of 128), each in a fresh process (so that resident memory is that load's alone):
  memory    resident bytes the load added to the process (VmRSS after - before)
  load      seconds to load
  fwd       forward of the blocks, 1x128, and 8x256 for the models in --large-shapes (a float32
            forward+VJP of a 1B model at 8x256 takes minutes on two cores); milliseconds, median of
            --reps (of half as many at 8x256)
  fwd+vjp   forward with the pass kept, then the vjp of a hidden-state cotangent
  decode    generated tokens/s at batch 1 and 8 (16-token prompt, 32 steps after the first)
Ratios are stored / expanded for memory and time (below 1 = stored smaller or faster) and
stored / expanded tokens/s for decode (above 1 = stored faster).
With --llama-cpp, llama.cpp runs the same GGUF files as the anchor (bench_llamacpp.py: forward from
embeddings, decode), in a benchmark-only environment built on first use under .cache/bench/llama-venv
(llama-cpp-python compiled from source; minutes); its ratio is stored / llama.cpp, as above.
Models: `default` is the default model's Q4_1 file (SmolLM2-135M-Instruct); `1b-q4_k` and `1b-q8_0`
are Llama-3.2-1B-shaped files (D=2048, 16 layers, I=8192, 32/8 heads, vocabulary 128256, tied)
with random weights of that type, written once under .cache/bench. With --hosted-7b, a
Llama-2-7B-shaped Q4_K file (random weights, written to a temporary folder) is served by
`aios serve --weights stored`: load, one forward+VJP at 1x128 through the host, and the host's
resident memory.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import torch

from common import REPO, machine_line

Q = gguf.GGMLQuantizationType
SHAPES = {
    # Llama 3.2 1B
    "1b": dict(hidden=2048, layers=16, intermediate=8192, heads=32, kv_heads=8, vocab=128256, tied=True),
    # Llama 2 7B
    "7b": dict(hidden=4096, layers=32, intermediate=11008, heads=32, kv_heads=32, vocab=32000, tied=False),
}
# Byte offsets of each block's fp16 scales, set small so that weights are of a trained model's size.
SCALES = {Q.Q4_K: (0, 2), Q.Q8_0: (0,), Q.Q6_K: (208,)}


def random_blocks(qtype, rows, cols, rng):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for offset in SCALES[qtype]:
        raw[:, offset:offset + 2] = rng.uniform(0, 2e-4 if qtype == Q.Q8_0 else 3e-5,
                                                (raw.shape[0], 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def write_random_gguf(path, shape, qtype):
    """A Llama GGUF file of `shape` whose matrices are random blocks of `qtype`, with a placeholder
    SentencePiece vocabulary (llama.cpp needs one to load a file)."""
    s, rng = SHAPES[shape], np.random.default_rng(0)
    D, I, L, H, K, V = s["hidden"], s["intermediate"], s["layers"], s["heads"], s["kv_heads"], s["vocab"]
    hd = D // H
    tmp = Path(str(path) + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(D)
    writer.add_block_count(L)
    writer.add_feed_forward_length(I)
    writer.add_head_count(H)
    writer.add_head_count_kv(K)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, byte
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens + [f"t{i}" for i in range(V - len(tokens))])
    writer.add_token_scores([0.0] * V)
    writer.add_token_types(types + [1] * (V - len(types)))
    matrices = {"token_embd.weight": (V, D)}
    if not s["tied"]:
        matrices["output.weight"] = (V, D)
    for i in range(L):
        matrices.update({f"blk.{i}.attn_q.weight": (H * hd, D), f"blk.{i}.attn_k.weight": (K * hd, D),
                         f"blk.{i}.attn_v.weight": (K * hd, D), f"blk.{i}.attn_output.weight": (D, H * hd),
                         f"blk.{i}.ffn_gate.weight": (I, D), f"blk.{i}.ffn_up.weight": (I, D),
                         f"blk.{i}.ffn_down.weight": (D, I)})
    writer.add_tensor("output_norm.weight", np.ones(D, np.float32))
    for i in range(L):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, np.float32))
    for name, (rows, cols) in matrices.items():
        writer.add_tensor(name, random_blocks(qtype, rows, cols, rng), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def model_path(name):
    if name == "default":
        return subprocess.run([sys.executable, str(REPO / "scripts/default_model.py"), "gguf"], capture_output=True,
                              text=True, check=True).stdout.strip()
    if name == "hf":
        return os.environ.get("AIOS_DEFAULT_MODEL") or str(REPO / ".cache/models/smollm2-135m-instruct")
    shape, qtype = name.split("-")
    path = REPO / f".cache/bench/{shape}-{qtype}-random-vocab.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_random_gguf(path, shape, Q[qtype.upper()])
    return str(path)


def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(path, weights, reps, large):
    """One load and its measurements, as JSON on stdout (int4 in groups of 128)."""
    import aios
    before = rss()
    start = time.perf_counter()
    backbone = aios.Backbone.load(path, weights=weights)
    out = {"load_s": time.perf_counter() - start, "memory": rss() - before}
    V, D = backbone.config.vocab_size, backbone.config.hidden_size
    gen = torch.Generator().manual_seed(0)

    def median(fn, n):
        fn()  # warm-up
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    for B, T in ((1, 128), (8, 256)) if large else ((1, 128),):
        latents = backbone.embed(torch.randint(0, V, (B, T), generator=gen))
        grad = torch.randn(B, T, D, generator=gen)

        def vjp():
            kept = backbone.forward(latents, keep=True)
            backbone.vjp(kept.handle, grad_hidden=grad)
            backbone.release(kept.handle)
        n = reps if B * T <= 128 else max(1, reps // 2)
        out[f"fwd {B}x{T}"] = median(lambda: backbone.forward(latents), n)
        out[f"fwd+vjp {B}x{T}"] = median(vjp, n)
    for B in (1, 8):
        latents = backbone.embed(torch.randint(0, V, (B, 16), generator=gen))
        first = median(lambda: backbone.generate(latents, max_new_tokens=1), 2)
        whole = median(lambda: backbone.generate(latents, max_new_tokens=33), 2)
        out[f"decode b{B}"] = B * 32 / ((whole - first) / 1e3)
    print(json.dumps(out))


def measure(path, weights, reps, large, threads):
    if weights == "llama.cpp":
        command = [str(llama_cpp_python()), str(REPO / "bench/bench_llamacpp.py"), path, "--threads", str(threads)]
    else:
        command = [sys.executable, __file__, "--child", path, weights, "--threads", str(threads)]
    result = subprocess.run(command + ["--reps", str(reps), "--large-shapes", "yes" if large else ""],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def llama_cpp_python():
    """The benchmark-only environment's interpreter, with llama-cpp-python built from source on first use."""
    venv = REPO / ".cache/bench/llama-venv"
    python = venv / "bin/python"
    stamp = venv / LLAMA_CPP_PYTHON
    if not stamp.exists():
        print(f"building {LLAMA_CPP_PYTHON} from source into {venv} (minutes, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-binary", "llama-cpp-python", "numpy",
                        LLAMA_CPP_PYTHON], check=True)
        stamp.touch()
    return python


def hosted_7b():
    """A 7B-shaped Q4_K file served with stored weights: load, one forward+VJP at 1x128, memory."""
    import aios
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = write_random_gguf(Path(folder) / "7b-q4_k.gguf", "7b", Q.Q4_K)
        written = time.perf_counter() - start
        size = path.stat().st_size
        start = time.perf_counter()
        host = aios.serve(path, weights="stored")
        load = time.perf_counter() - start
        try:
            backbone = aios.connect(host.address)
            D = backbone.config.hidden_size
            latents = torch.randn(1, 128, D, generator=torch.Generator().manual_seed(0)) * 0.02
            start = time.perf_counter()
            kept = backbone.forward(latents, keep=True)
            grad = backbone.vjp(kept.handle, grad_hidden=torch.ones(1, 128, D))
            backbone.release(kept.handle)
            seconds = time.perf_counter() - start
            status = Path(f"/proc/{host.pid}/status").read_text()
            resident = next(int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith("VmRSS:"))
            peak = next(int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith("VmHWM:"))
            finite = bool(torch.isfinite(grad).all())
        finally:
            host.stop()
    params = 6_738_415_616
    print(f"hosted 7B-shaped Q4_K ({size / 1e9:.2f} GB file, written in {written:.0f} s; float32 would be "
          f"{4 * params / 1e9:.1f} GB): serve load {load:.1f} s, forward+VJP 1x128 through the host {seconds:.1f} s "
          f"(gradient finite: {finite}), host resident {resident / 1e9:.2f} GB, peak {peak / 1e9:.2f} GB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="default,1b-q4_k,1b-q8_0,hf")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hosted-7b", action="store_true")
    parser.add_argument("--large-shapes", default="default,hf", help="models (or, in a child, any text) run at 8x256 too")
    parser.add_argument("--llama-cpp", action="store_true", help="llama.cpp on the same GGUF files, as the anchor")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(*args.child, args.reps, bool(args.large_shapes))
    print(machine_line("cpu", "float32"))
    for name in filter(None, args.models.split(",")):  # --models "" with --hosted-7b: the 7B line only
        path = model_path(name)
        large = name in args.large_shapes.split(",")
        variants = ["expanded", "int8", "int4"] if name == "hf" else ["expanded", "stored"]
        if args.llama_cpp and name != "hf":
            variants.append("llama.cpp")
        results = {v: measure(path, v, args.reps, large, args.threads) for v in variants}
        base = results["expanded"]
        print(f"\n{name}: {path}")
        header = "".join(f"{v:>12}" for v in variants)
        ratios = "".join(f"{v + '/exp':>15}" for v in variants[1:])
        if "llama.cpp" in results:
            ratios += f"{'stored/llama':>14}"
        print(f"{'measure':<18}{header}{ratios}")
        for key in base:
            unit = {"memory": 1e6}.get(key, 1)
            label = key + (" MB" if key == "memory" else " s" if key == "load_s" else " tok/s" if "decode" in key
                           else " ms")
            cells = "".join(f"{results[v][key] / unit:>12.1f}" if key in results[v] else f"{'-':>12}" for v in variants)
            cells += "".join(f"{results[v][key] / base[key]:>14.2f}x" if key in results[v] else f"{'-':>15}"
                             for v in variants[1:])
            if "llama.cpp" in results and key in results["llama.cpp"]:
                cells += f"{results['stored'][key] / results['llama.cpp'][key]:>13.2f}x"
            print(f"{label.replace('_s s', ' s'):<18}{cells}")
    if args.hosted_7b:
        hosted_7b()


if __name__ == "__main__":
    main()

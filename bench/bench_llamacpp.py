"""llama.cpp on a GGUF file, the anchor of bench_stored.py: the same measurements through
llama-cpp-python's C API. Runs in the benchmark-only environment that bench_stored.py builds
(.cache/bench/llama-venv: llama-cpp-python compiled from source, numpy), never in aios's own.

    .cache/bench/llama-venv/bin/python bench/bench_llamacpp.py MODEL.gguf [--threads N] [--reps 3]
                                                                [--large-shapes yes]

Prints one JSON object: load_s; "fwd BxT" = a forward from embeddings (llama_batch.embd, B sequences
of T positions, the logits of each sequence's last position only), milliseconds, median of --reps;
"decode bB" = tokens/s of greedy decoding, B sequences after a 16-token prompt, 32 steps after the
first (each step one llama_decode of B tokens; argmax over the logits in numpy).
"""
import argparse
import ctypes
import json
import statistics
import time

import llama_cpp as ll
import numpy as np


def quiet(level, text, user_data):
    pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--large-shapes", default="")
    args = parser.parse_args()

    log = ll.llama_log_callback(quiet)
    ll.llama_log_set(log, ctypes.c_void_p())
    ll.llama_backend_init()
    start = time.perf_counter()
    mparams = ll.llama_model_default_params()
    model = ll.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {args.model}")
    out = {"load_s": time.perf_counter() - start}
    D = ll.llama_model_n_embd(model)
    V = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
    shapes = ((1, 128), (8, 256)) if args.large_shapes else ((1, 128),)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = max(B * T for B, T in shapes) + 8 * 64
    cparams.n_batch = cparams.n_ubatch = cparams.n_ctx
    cparams.n_seq_max = 8
    cparams.n_threads = cparams.n_threads_batch = args.threads
    ctx = ll.llama_init_from_model(model, cparams)
    memory = ll.llama_get_memory(ctx)
    rng = np.random.default_rng(0)

    def run(batch):
        if ll.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    def fill(batch, B, T, first_pos, tokens=None, embd=None):
        """B sequences of T positions from first_pos: token ids [B,T] or embeddings [B,T,D]."""
        batch.n_tokens = B * T
        for b in range(B):
            for t in range(T):
                i = b * T + t
                if tokens is not None:
                    batch.token[i] = int(tokens[b, t])
                batch.pos[i] = first_pos + t
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = b
                batch.logits[i] = t == T - 1
        if embd is not None:
            ctypes.memmove(batch.embd, embd.ctypes.data, embd.nbytes)

    def median(fn, n):
        """Milliseconds of fn from an empty KV cache, median of n after a warm-up."""
        times = []
        for i in range(n + 1):
            ll.llama_memory_clear(memory, True)
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times[1:])

    for B, T in shapes:
        batch = ll.llama_batch_init(B * T, D, B)
        embd = np.ascontiguousarray(rng.standard_normal((B, T, D), dtype=np.float32) * 0.02)
        fill(batch, B, T, 0, embd=embd)
        n = args.reps if B * T <= 128 else max(1, args.reps // 2)
        out[f"fwd {B}x{T}"] = median(lambda: run(batch), n)
        ll.llama_batch_free(batch)

    for B in (1, 8):
        prompt, step = ll.llama_batch_init(B * 16, 0, B), ll.llama_batch_init(B, 0, B)

        def generate(steps):
            fill(prompt, B, 16, 0, tokens=rng.integers(3, V, (B, 16)))
            run(prompt)
            for s in range(steps):
                logits = np.ctypeslib.as_array(ll.llama_get_logits(ctx), shape=(B, V))
                fill(step, B, 1, 16 + s, tokens=logits.argmax(-1)[:, None])
                run(step)

        first = median(lambda: generate(0), 2)
        whole = median(lambda: generate(32), 2)
        out[f"decode b{B}"] = B * 32 / ((whole - first) / 1e3)
        ll.llama_batch_free(prompt)
        ll.llama_batch_free(step)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

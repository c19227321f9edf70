"""Shared pieces of the benchmarks: the SmolLM2-135M-shaped model, timing, memory, machine line."""
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
VOCAB = 49152

# The shapes the benchmarks run at: the smallest real release of each family, with random weights
# (--model NAME).
MODELS = {
    # SmolLM2-135M: 30 layers, D=576, 9/3 heads, vocabulary 49152
    "smollm2": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    # Qwen3-0.6B: 28 layers, D=1024, 16/8 heads of 128 with q/k norm, vocabulary 151936
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
MODEL_DIRS = {"smollm2": REPO / ".cache/bench/smollm2-135m-random", "qwen3": REPO / ".cache/bench/qwen3-0.6b-random"}


def ensure_model(name="smollm2"):
    """The folder of model `name` (MODELS), written once with random weights."""
    folder = MODEL_DIRS[name]
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = MODELS[name]()
        tmp = folder.with_suffix(".tmp")
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        os.replace(tmp, folder)
    return folder


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def exact_cpu_peaks():
    """Re-executes the process, once, with glibc returning every large block to the system on free,
    so that the resident-set high-water mark measures a call's peak instead of reused heap."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)


def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn, device):
    """(milliseconds, peak bytes above the memory in use before the call) of one call of fn."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # resets the resident-set high-water mark
            f.write("5")
        base = _status("VmRSS")
    start = time.perf_counter()
    fn()
    sync(device)
    ms = (time.perf_counter() - start) * 1e3
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status("VmHWM")
    return ms, peak - base


def machine_line(device, dtype):
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    gpu = f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""
    return (f"machine: {cpu}, {os.cpu_count()} cores; device {device}{gpu}; dtype {dtype}; "
            f"threads {torch.get_num_threads()}; torch {torch.__version__}; transformers "
            f"{transformers.__version__}; commit {commit}")


def median_ms(fn, device, reps):
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def blocks_against_eager(backbone, hf, latents, grad_hidden, device, reps):
    """forward and forward+vjp of the blocks, aios against transformers (`hf`, eager, frozen) on the same
    latents: rows of (measure, aios ms, eager ms, relative difference of the results)."""
    def aios_vjp():
        kept = backbone.forward(latents, keep=True)
        grad = backbone.vjp(kept.handle, grad_hidden=grad_hidden)
        backbone.release(kept.handle)
        return grad

    def hf_vjp():
        x = latents.clone().requires_grad_(True)
        hf.model(inputs_embeds=x).last_hidden_state.backward(grad_hidden)
        return x.grad

    forward = {"aios": lambda: backbone.forward(latents).hidden,
               "eager": lambda: hf.model(inputs_embeds=latents).last_hidden_state}
    rows = []
    for measure, fns, mode in (("forward", forward, torch.no_grad),
                               ("forward+vjp", {"aios": aios_vjp, "eager": hf_vjp}, torch.enable_grad)):
        with mode():
            outs = {k: f() for k, f in fns.items()}  # warm-up, and the results to compare
            diff = ((outs["aios"].float() - outs["eager"].float()).norm() / outs["eager"].float().norm()).item()
            ms = {k: median_ms(f, device, reps) for k, f in fns.items()}
        rows.append((measure, ms["aios"], ms["eager"], diff))
    return rows


def save_random(model, folder):
    """Writes a randomly initialised model to `folder` atomically, its routers (if any) made decisive
    enough that tokens spread over the experts."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight", "mlp.router.weight")):
                p.normal_(0, 0.05)
    tmp = folder.with_suffix(".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, folder)

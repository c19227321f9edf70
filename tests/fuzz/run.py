"""Runs the fuzz targets of tests/fuzz (built by `make build-fuzz` into build-fuzz/).

    run.py test  [--build DIR]                    sanitizer tests, then every committed corpus and
                                                  reproducer replayed once (what `make test` runs)
    run.py fuzz  [--build DIR] [--seconds S] [TARGET ...]
                                                  fuzzes each target for S seconds; new inputs go to
                                                  .cache/fuzz/corpus/TARGET, findings to
                                                  .cache/fuzz/artifacts/TARGET, and a line of
                                                  statistics per run to .cache/fuzz/runs.jsonl
    run.py merge [--build DIR] [TARGET ...]       minimises what fuzzing found into the committed
                                                  corpus (libFuzzer -merge=1)
    run.py stats [--markdown]                     executions per target over all recorded runs

A finding is fixed at its root, then its input goes to tests/fuzz/reproducers/TARGET/ (named for
what it found) so that `make test` replays it for ever.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "fuzz"
CACHE = ROOT / ".cache" / "fuzz"
# Every fuzzing run, one JSON line each (date, commit, machine, target, executions, ...): committed,
# so that the executions of all runs on all machines add up in `run.py stats`.
RUNS = HERE / "runs.jsonl"

# Per target: the largest input libFuzzer makes while fuzzing, and whether LeakSanitizer applies
# (targets that run LibTorch keep its process-wide caches alive at exit, which LeakSanitizer would
# report). The bounds are what measured best, in new coverage per minute: smaller inputs run several
# times faster and reach as far. The committed seeds of hundreds of KB (real tokenizers, GGUF files)
# stay in the corpus, replayed whole by `test` and kept whole by `merge`.
TARGETS = {
    "fuzz_safetensors": {"max_len": 65536, "leaks": True},
    "fuzz_gguf": {"max_len": 32768, "leaks": False},
    "fuzz_config": {"max_len": 4096, "leaks": True},
    "fuzz_tokenizer_json": {"max_len": 16384, "leaks": True},
    "fuzz_tokenizer_encode": {"max_len": 16384, "leaks": True},
    "fuzz_chat_template": {"max_len": 16384, "leaks": True},
    "fuzz_key_file": {"max_len": 8192, "leaks": True},
    "fuzz_wire": {"max_len": 4096, "leaks": False},
    "fuzz_manifests": {"max_len": 65536, "leaks": False},
    "fuzz_client": {"max_len": 4096, "leaks": False},
}

# The C++ test files of the components that parse untrusted input, run under the sanitizers.
# (tests/CMakeLists.txt builds just these into the sanitizer build's aios_tests.)
SANITIZER_TESTS = ["test_error", "test_safetensors", "test_gguf", "test_config", "test_tokenizer", "test_extension",
                   "test_server", "test_tenants", "test_host_calls", "test_sessions", "test_client"]

# Bounds every run shares: an input that allocates more, or runs longer, is a finding.
LIMITS = ["-rss_limit_mb=3072", "-malloc_limit_mb=2048", "-timeout=20"]


def environment(leaks, fuzzing=False):
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = f"detect_leaks={int(leaks)}:abort_on_error=1:allocator_may_return_null=0:handle_abort=1"
    if fuzzing:
        # No allocation stacks while fuzzing: recording one per malloc took a third of the time of
        # the targets that allocate most (the wire, the clients). A finding is caught all the
        # same; replaying its input (`run.py test`, or the target on the file) reports them.
        env["ASAN_OPTIONS"] += ":malloc_context_size=0"
        # Folders the targets write (manifests) and their sockets (wire, client) in memory: the
        # manifests target runs three times as fast there as on a disk's file system.
        if os.access("/dev/shm", os.W_OK):
            env["TMPDIR"] = "/dev/shm"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def corpus_dirs(target):
    dirs = [HERE / "corpus" / target, HERE / "reproducers" / target]
    return [d for d in dirs if d.is_dir() and any(d.iterdir())]


def binary(build, target):
    path = Path(build) / "tests" / "fuzz" / target
    if not path.exists():
        sys.exit(f"{path} is missing: run `make build-fuzz` first")
    return path


def test(args):
    tests = Path(args.build) / "tests" / "aios_tests"
    tags = ",".join(f"[#{name}]" for name in SANITIZER_TESTS)
    print(f"== C++ tests under ASan+UBSan: {' '.join(SANITIZER_TESTS)}", flush=True)
    # The test binary loads LibTorch too (see TARGETS about leaks).
    subprocess.run([str(tests), "-#", tags], check=True, env=environment(leaks=False), cwd=ROOT)
    failed = []
    for target, options in TARGETS.items():
        dirs = corpus_dirs(target)
        files = sum(1 for d in dirs for f in d.iterdir() if f.is_file())
        start = time.monotonic()
        artifacts = CACHE / "replay" / target
        artifacts.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [str(binary(args.build, target)), *LIMITS, "-runs=0",
             f"-artifact_prefix={artifacts}/", *map(str, dirs)],
            env=environment(options["leaks"]), cwd=ROOT, capture_output=True, text=True, errors="replace")
        ok = result.returncode == 0 and files > 0
        print(f"== {target}: {files} inputs replayed in {time.monotonic() - start:.1f} s: {'ok' if ok else 'FAILED'}",
              flush=True)
        if not ok:
            failed.append(target)
            print(result.stdout[-4000:], result.stderr[-8000:], sep="\n")
    if failed:
        sys.exit(f"replay failed: {' '.join(failed)}")


def commit(build):
    """The commit the fuzz targets were built at (`make build-fuzz` writes it; a run may start after
    later commits), else HEAD's."""
    built_at = Path(build) / "built-at"
    if built_at.exists() and built_at.read_text().strip():
        return built_at.read_text().strip()
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def fuzz(args):
    targets = args.targets or list(TARGETS)
    CACHE.mkdir(parents=True, exist_ok=True)
    failed = []
    for target in targets:
        options = TARGETS[target]
        work = CACHE / "corpus" / target
        artifacts = CACHE / "artifacts" / target
        work.mkdir(parents=True, exist_ok=True)
        artifacts.mkdir(parents=True, exist_ok=True)
        command = [str(binary(args.build, target)), *LIMITS, f"-max_len={options['max_len']}",
                   f"-max_total_time={args.seconds}", "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
                   str(work), *map(str, corpus_dirs(target))]
        dictionary = HERE / f"{target}.dict"
        if dictionary.exists():
            command.insert(1, f"-dict={dictionary}")
        print(f"== {target}: {args.seconds} s", flush=True)
        start, at = time.monotonic(), commit(args.build)
        result = subprocess.run(command, env=environment(options["leaks"], fuzzing=True), cwd=ROOT, capture_output=True, text=True,
                                errors="replace")
        output = result.stdout + result.stderr
        executions = sum(int(n) for n in re.findall(r"stat::number_of_executed_units:\s*(\d+)", output))
        coverage = re.findall(r"cov: (\d+) ft: (\d+)", output)
        record = {"date": datetime.date.today().isoformat(), "commit": at, "machine": cpu(), "target": target,
                  "seconds": round(time.monotonic() - start, 1), "executions": executions,
                  "coverage": int(coverage[-1][0]) if coverage else None,
                  "features": int(coverage[-1][1]) if coverage else None,
                  "corpus": sum(1 for _ in work.iterdir()), "finding": result.returncode != 0}
        with open(RUNS, "a") as log:
            log.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        if result.returncode != 0:
            failed.append(target)
            print(output[-12000:])
    if failed:
        sys.exit(f"findings in: {' '.join(failed)} (inputs in {CACHE / 'artifacts'})")


def merge(args):
    for target in args.targets or list(TARGETS):
        found = CACHE / "corpus" / target
        committed = HERE / "corpus" / target
        committed.mkdir(parents=True, exist_ok=True)
        if not found.is_dir():
            continue
        before = sum(1 for _ in committed.iterdir())
        subprocess.run([str(binary(args.build, target)), *LIMITS, "-merge=1", str(committed), str(found)],
                       env=environment(TARGETS[target]["leaks"]), cwd=ROOT, check=True, capture_output=True)
        print(f"{target}: {before} -> {sum(1 for _ in committed.iterdir())} inputs")


def stats(args):
    totals = {}
    for line in RUNS.read_text().splitlines() if RUNS.exists() else []:
        r = json.loads(line)
        t = totals.setdefault(r["target"], {"executions": 0, "seconds": 0.0, "runs": 0, "findings": 0, "coverage": 0})
        t["executions"] += r["executions"]
        t["seconds"] += r["seconds"]
        t["runs"] += 1
        t["findings"] += int(r["finding"])
        t["coverage"] = max(t["coverage"], r["coverage"] or 0)
    if args.markdown:
        print("| target | executions | seconds | runs | coverage (edges) | runs with findings |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for target, t in sorted(totals.items()):
        if args.markdown:
            print(f"| `{target}` | {t['executions']:,} | {t['seconds']:.0f} | {t['runs']} | {t['coverage']} | {t['findings']} |")
        else:
            print(f"{target:24} {t['executions']:>12,} executions  {t['seconds']:>8.0f} s  {t['runs']:>3} runs  "
                  f"cov {t['coverage']:>6}  {t['findings']} runs with findings")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["test", "fuzz", "merge", "stats"])
    parser.add_argument("targets", nargs="*")
    parser.add_argument("--build", default=str(ROOT / "build-fuzz"))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--markdown", action="store_true", help="stats: as a table for bench/RESULTS.md")
    args = parser.parse_intermixed_args()  # targets may follow the options (make fuzz does that)
    for t in args.targets:
        if t not in TARGETS:
            sys.exit(f"unknown target {t}: expected one of {' '.join(TARGETS)}")
    {"test": test, "fuzz": fuzz, "merge": merge, "stats": stats}[args.command](args)


if __name__ == "__main__":
    main()

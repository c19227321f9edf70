"""find_package(aios) works for C++ applications outside the tree (slow: each compiles one file)."""
import subprocess
import sys
from pathlib import Path

import torch.utils

import aios

HERE = Path(__file__).resolve().parent
VENV = Path(sys.executable).parent.parent


def build_against_the_package(source: Path, build: Path, with_torch: bool = True) -> None:
    """Configures and builds `source`; with_torch=False leaves LibTorch out of CMAKE_PREFIX_PATH."""
    prefix = f"{VENV};{torch.utils.cmake_prefix_path}" if with_torch else str(VENV)
    cmake = str(VENV / "bin" / "cmake")
    subprocess.run([cmake, "-S", str(source), "-B", str(build), "-G", "Ninja",
                    f"-DCMAKE_MAKE_PROGRAM={VENV / 'bin' / 'ninja'}", f"-DCMAKE_PREFIX_PATH={prefix}",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build)], check=True, capture_output=True)


def test_installed_package_builds_and_runs_an_application(tmp_path, default_model):
    build_against_the_package(HERE.parent / "cmake_consumer", tmp_path)
    result = subprocess.run([str(tmp_path / "consumer"), str(default_model)], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "logits [1, 3, 49152]"
    # The hosted form links RemoteBackbone's library, not the host's, and answers the same.
    link = subprocess.run([str(VENV / "bin" / "ninja"), "-C", str(tmp_path), "-t", "commands", "remote_consumer"],
                          capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    assert "libaios_remote.so" in link and "libaios_server" not in link, link
    with aios.serve(default_model) as host:
        hosted = subprocess.run([str(tmp_path / "remote_consumer"), host.address], capture_output=True, text=True,
                                check=True)
    assert hosted.stdout == result.stdout


def test_the_installed_libraries_are_shared_versioned_and_export_only_the_public_api():
    lib = VENV / "lib"
    for name in ("core", "tokenizer_api", "backbone", "ali", "local", "adapters", "wire", "wire_torch", "client",
                 "remote", "server"):
        dynamic = subprocess.run(["readelf", "-d", str(lib / f"libaios_{name}.so")], capture_output=True, text=True,
                                 check=True).stdout
        assert f"Library soname: [libaios_{name}.so.0]" in dynamic, dynamic
    exported = subprocess.run(["nm", "-D", "-C", "--defined-only", str(lib / "libaios_server.so")],
                              capture_output=True, text=True, check=True).stdout
    assert "aios::server::Host::Host(" in exported and "aios::server::read_key_file(" in exported
    # The host's internals stay inside (its request decoding, its tenants, its services).
    for internal in ("aios::server::Requests::", "aios::server::Tenants::", "aios::server::guarded("):
        assert internal not in exported, internal
    # The Python module links the same libraries, not copies of them.
    module = next(Path(aios.__file__).parent.glob("_aios*.so"))
    needed = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True, check=True).stdout
    for name in ("core", "local", "remote"):
        assert f"Shared library: [libaios_{name}.so.0]" in needed, needed


def test_the_installed_headers_are_the_public_api_and_need_nothing_left_out():
    """The wire contract's generated messages and conversions are aios's own: not installed, and no
    installed header includes them (or anything else that is not installed)."""
    include = VENV / "include"
    headers = [h for h in (include / "aios").rglob("*") if h.suffix in (".h", ".inc")]
    assert (include / "aios" / "wire" / "connect.h") in headers
    assert not (include / "aios" / "v1").exists()
    assert not (include / "aios" / "wire" / "wire.h").exists() and not (include / "aios" / "wire" / "messages.h").exists()
    for header in headers:
        for line in header.read_text().splitlines():
            if line.startswith('#include "aios/'):
                named = line.split('"')[1]
                assert (include / named).is_file(), f"{header.relative_to(include)} includes {named}, not installed"


def test_the_cpp_training_example_builds_against_the_package_and_its_loss_falls(tmp_path, default_model):
    """examples/train_projection: a projection trained in C++ through the frozen backbone."""
    build_against_the_package(HERE.parents[1] / "examples" / "train_projection", tmp_path)
    result = subprocess.run([str(tmp_path / "train_projection"), str(default_model), "20"], capture_output=True,
                            text=True, check=True)
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    # The same program against the model hosted by `aios serve`: each step computed as in-process
    # (--compare: both on the same inputs), and the loss falls. Not the two curves against each
    # other: Adam amplifies a last-bit difference into a drift (test_remote.py's hosted-training
    # test says why and where the bounds come from).
    with aios.serve(default_model) as host:
        hosted = subprocess.run([str(tmp_path / "train_projection"), "--host", host.address, "20",
                                 "--compare", str(default_model)], capture_output=True, text=True, check=True)
    hosted_losses = [float(line.split()[-1]) for line in hosted.stdout.splitlines() if line.startswith("step ")]
    compared = next(line for line in hosted.stdout.splitlines() if line.startswith("compared ")).split()
    assert compared[1] == "20" and len(hosted_losses) == 20, hosted.stdout
    assert float(compared[5].rstrip(",")) <= 1e-5 and float(compared[8]) <= 5e-3, hosted.stdout
    assert sum(hosted_losses[-4:]) / 4 < 0.7 * sum(hosted_losses[:4]) / 4, hosted_losses


COLOURS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]


def test_the_thin_client_example_builds_without_torch_and_its_loss_falls(tmp_path, default_model):
    """examples/client_training: find_package(aios COMPONENTS client) with no LibTorch anywhere in the
    build, an encoder trained in Eigen against the default model hosted by aios serve."""
    build_against_the_package(HERE.parents[1] / "examples" / "client_training", tmp_path, with_torch=False)
    ninja = str(VENV / "bin" / "ninja")
    headers = subprocess.run([ninja, "-C", str(tmp_path), "-t", "deps"], capture_output=True, text=True, check=True)
    assert "unsupported/Eigen/CXX11/Tensor" in headers.stdout and "aios/client/client.h" in headers.stdout
    for text in (headers.stdout, (tmp_path / "build.ninja").read_text(), (tmp_path / "CMakeCache.txt").read_text()):
        assert "torch" not in text.lower() and "c10" not in text

    tokenizer = aios.Tokenizer.load(default_model / "tokenizer.json")
    words = [tokenizer.encode(" " + colour, add_special_tokens=False)[0] for colour in COLOURS]
    prompt = tokenizer.encode(" Colour:", add_special_tokens=False)
    with aios.serve(default_model) as host:
        result = subprocess.run([str(tmp_path / "client_training"), host.address, "--steps", "20",
                                 "--words", ",".join(map(str, words)), "--prompt", ",".join(map(str, prompt))],
                                capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    before, after = next(line for line in result.stdout.splitlines() if line.startswith("held-out loss")).split()[-3::2]
    assert float(after) < float(before)

"""find_package(aios) works for C++ applications outside the tree (slow: each compiles one file)."""
import subprocess
import sys
from pathlib import Path

import torch.utils

HERE = Path(__file__).resolve().parent
VENV = Path(sys.executable).parent.parent


def build_against_the_package(source: Path, build: Path) -> None:
    prefix = f"{VENV};{torch.utils.cmake_prefix_path}"
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


def test_the_cpp_training_example_builds_against_the_package_and_its_loss_falls(tmp_path, default_model):
    """examples/train_projection: a projection trained in C++ through the frozen backbone."""
    build_against_the_package(HERE.parents[1] / "examples" / "train_projection", tmp_path)
    result = subprocess.run([str(tmp_path / "train_projection"), str(default_model), "20"], capture_output=True,
                            text=True, check=True)
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses

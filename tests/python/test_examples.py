"""The adapter examples in their fast mode: each runs as one command, prints its metrics, writes
metrics.json and a loss-curve PNG, and its training loss falls."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("example, metrics", [
    ("projection", ["token_accuracy_trained", "token_accuracy_untrained", "token_accuracy_nothing",
                    "exact_match_trained"]),
    ("gist", ["agreement_trained", "agreement_untrained", "agreement_no_instruction", "kl_trained",
              "compression_ratio", "prefill_compute_saved", "prefill_wall_time_saved"]),
    ("sox_eox", ["sox_precision", "sox_recall", "answer_accuracy_routed", "answer_accuracy_base_model_in_text"]),
])
def test_fast_mode_trains_and_reports(tmp_path, example, metrics):
    out = tmp_path / example
    result = subprocess.run([sys.executable, str(REPO / "examples" / f"{example}.py"), "--fast", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    for name in metrics:
        assert name in record["metrics"] and name in result.stdout, name
    losses = record["losses"]
    assert len(losses) >= 6
    assert losses[-1] < losses[0] and min(losses[-3:]) < 0.9 * losses[0], losses
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

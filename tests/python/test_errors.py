"""Bad input gives an error with the right code and a message that names the field, and leaves the
process and the loaded model intact."""
import json
import shutil
import struct

import pytest
import torch

import aios

from conftest import MAX_POSITIONS, VOCAB


@pytest.fixture(scope="module")
def backbone(checkpoints):
    return aios.Backbone.load(checkpoints["llama_gqa"].path)


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(0)
    return torch.randint(0, VOCAB, (2, 5))


def expect(error_class, field, call, *also_in_message):
    with pytest.raises(error_class) as info:
        call()
    assert info.value.field == field, str(info.value)
    message = str(info.value)
    assert field in message
    for text in also_in_message:
        assert text in message, message
    return info.value


# --- Latent API arguments -------------------------------------------------------------------------

def test_bad_arguments_leave_the_model_intact(backbone, ids):
    latents = backbone.embed(ids)
    before = backbone.forward(latents).hidden.clone()
    D = backbone.config.hidden_size
    cases = [
        (aios.InvalidArgumentError, "latents", lambda: backbone.forward(latents[0]), ["rank 3", "[5,64]"]),
        (aios.InvalidArgumentError, "latents", lambda: backbone.forward(torch.zeros(2, 5, D + 1)),
         [str(D), str(D + 1)]),
        (aios.InvalidArgumentError, "latents", lambda: backbone.forward(latents.double()), ["float32", "float64"]),
        (aios.InvalidArgumentError, "latents", lambda: backbone.forward(latents.to("meta")), ["cpu", "meta"]),
        (aios.InvalidArgumentError, "latents", lambda: backbone.forward(torch.zeros(1, MAX_POSITIONS + 1, D)),
         [str(MAX_POSITIONS), str(MAX_POSITIONS + 1)]),
        (aios.InvalidArgumentError, "latents", lambda: backbone.forward(torch.zeros(1, 0, D)), ["T >= 1"]),
        (aios.InvalidArgumentError, "ids", lambda: backbone.embed(torch.tensor([[0, VOCAB]])),
         [f"[0, {VOCAB})", str(VOCAB)]),
        (aios.InvalidArgumentError, "ids", lambda: backbone.embed(torch.tensor([[-1, 2]])), ["-1"]),
        (aios.InvalidArgumentError, "ids", lambda: backbone.embed(ids.float()), ["integer", "float32"]),
        (aios.InvalidArgumentError, "ids", lambda: backbone.embed(ids[0]), ["rank 2"]),
        (aios.InvalidArgumentError, "positions",
         lambda: backbone.forward(latents, positions=torch.zeros(2, 4, dtype=torch.long)), ["[2,5]", "[2,4]"]),
        (aios.InvalidArgumentError, "positions",
         lambda: backbone.forward(latents, positions=torch.full((2, 5), MAX_POSITIONS)), [str(MAX_POSITIONS)]),
        (aios.InvalidArgumentError, "positions",
         lambda: backbone.forward(latents, positions=torch.zeros(2, 5)), ["integer"]),
        (aios.InvalidArgumentError, "mask",
         lambda: backbone.forward(latents, mask=torch.ones(2, 4, dtype=torch.bool)), ["[2,5]", "[2,4]"]),
        (aios.InvalidArgumentError, "mask",
         lambda: backbone.forward(latents, mask=torch.ones(2, 5, 4, dtype=torch.bool)), ["[2,5,5]"]),
        (aios.InvalidArgumentError, "mask", lambda: backbone.forward(latents, mask=torch.ones(2, 5)), ["bool"]),
        (aios.InvalidArgumentError, "layers", lambda: backbone.forward(latents, layers=[4]), ["[0, 3]", "4"]),
        (aios.InvalidArgumentError, "layers", lambda: backbone.forward(latents, layers=[-1]), ["-1"]),
        (aios.InvalidArgumentError, "hidden", lambda: backbone.classify(torch.zeros(2, D - 1)), [str(D - 1)]),
        (aios.InvalidArgumentError, "hidden", lambda: backbone.classify(latents.half()), ["float32"]),
    ]
    for error_class, field, call, texts in cases:
        expect(error_class, field, call, *texts)
    assert torch.equal(backbone.forward(latents).hidden, before)


def test_non_finite_latents_are_an_error_unless_allowed(backbone, ids):
    latents = backbone.embed(ids)
    for bad in (float("nan"), float("inf"), float("-inf")):
        poisoned = latents.clone()
        poisoned[1, 2, 3] = bad
        expect(aios.InvalidArgumentError, "latents", lambda: backbone.forward(poisoned), "allow_non_finite")
    poisoned[1, 2, 3] = float("nan")
    out = backbone.forward(poisoned, allow_non_finite=True).hidden
    assert torch.isnan(out[1, 2:]).any()  # passed through, on purpose
    assert torch.isfinite(out[0]).all()


def test_error_classes_map_to_codes():
    assert issubclass(aios.InvalidArgumentError, ValueError)
    codes = {aios.InvalidArgumentError: 3, aios.NotFoundError: 5, aios.AlreadyExistsError: 6, aios.PermissionDeniedError: 7,
             aios.FailedPreconditionError: 9,
             aios.ResourceExhaustedError: 8, aios.InternalError: 13, aios.UnavailableError: 14,
             aios.DataLossError: 15}
    for cls, code in codes.items():
        assert issubclass(cls, aios.Error) and cls.code == code


def test_load_options_are_checked(checkpoints):
    path = checkpoints["llama_gqa"].path
    expect(aios.InvalidArgumentError, "dtype", lambda: aios.Backbone.load(path, dtype="int8"), "int8")
    expect(aios.InvalidArgumentError, "device", lambda: aios.Backbone.load(path, device="toaster"), "toaster")
    expect(aios.InvalidArgumentError, "device", lambda: aios.Backbone.load(path, device="meta"), "meta")
    if not torch.cuda.is_available():
        expect(aios.UnavailableError, "device", lambda: aios.Backbone.load(path, device="cuda"), "CUDA")


# --- Files ---------------------------------------------------------------------------------------

@pytest.fixture
def copy_of(checkpoints, tmp_path):
    def make(name="llama_gqa"):
        target = tmp_path / name
        shutil.copytree(checkpoints[name].path, target)
        return target
    return make


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path, header, data):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_missing_files_are_not_found(tmp_path, copy_of):
    expect(aios.NotFoundError, str(tmp_path / "nowhere"), lambda: aios.Backbone.load(tmp_path / "nowhere"))
    folder = copy_of()
    (folder / "config.json").unlink()
    expect(aios.NotFoundError, str(folder / "config.json"), lambda: aios.Backbone.load(folder))
    folder = copy_of("qwen2")
    (folder / "model.safetensors").unlink()
    expect(aios.NotFoundError, str(folder), lambda: aios.Backbone.load(folder), "model.safetensors")


def test_truncated_weights_are_data_loss(copy_of):
    folder = copy_of()
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    for size in (0, 5, 100, len(raw) - 1):
        weights.write_bytes(raw[:size])
        with pytest.raises(aios.DataLossError) as info:
            aios.Backbone.load(folder)
        assert info.value.field.startswith(str(weights)), str(info.value)
        assert "truncated" in str(info.value) or "outside the data section" in str(info.value)


def test_lying_headers_are_data_loss(copy_of):
    folder = copy_of()
    weights = folder / "model.safetensors"
    header, data = read_safetensors(weights)
    names = [k for k in header if k != "__metadata__"]
    first = min(names, key=lambda k: header[k]["data_offsets"][0])

    def lie(mutate, *texts):
        h = json.loads(json.dumps(header))
        mutate(h)
        write_safetensors(weights, h, data)
        err = expect(aios.DataLossError, f"{weights}: tensor '{first}'", lambda: aios.Backbone.load(folder), *texts)
        return err

    lie(lambda h: h[first].update(data_offsets=[0, len(data) + 4]), "outside the data section")
    lie(lambda h: h[first].update(shape=[h[first]["shape"][0] + 1] + h[first]["shape"][1:]), "bytes")
    lie(lambda h: h[first].update(dtype="F16"), "bytes")
    lie(lambda h: h[first].update(dtype="Q4"), "dtype")
    lie(lambda h: h[first].update(shape=[-1, 4]), "non-negative")
    # An overlap: the second tensor made to start inside the first.
    second = sorted(names, key=lambda k: header[k]["data_offsets"][0])[1]
    h = json.loads(json.dumps(header))
    b, e = h[second]["data_offsets"]
    h[second]["data_offsets"] = [b - 4, e - 4]
    write_safetensors(weights, h, data)
    expect(aios.DataLossError, f"{weights}: tensor '{second}'", lambda: aios.Backbone.load(folder), "overlap")
    # A header length larger than the file.
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    expect(aios.DataLossError, str(weights), lambda: aios.Backbone.load(folder), "exceeds")
    # Not JSON at all.
    weights.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    expect(aios.DataLossError, str(weights), lambda: aios.Backbone.load(folder), "JSON")


def test_missing_or_misshaped_tensors_are_data_loss(copy_of):
    folder = copy_of()
    weights = folder / "model.safetensors"
    header, data = read_safetensors(weights)
    victim = "model.layers.1.mlp.down_proj.weight"
    spec = header[victim]
    # Rename the tensor: the file stays valid, the checkpoint is incomplete.
    header["renamed.weight"] = header.pop(victim)
    write_safetensors(weights, header, data)
    expect(aios.DataLossError, victim, lambda: aios.Backbone.load(folder), "missing")
    # Same bytes, another valid shape.
    header[victim] = header.pop("renamed.weight")
    rows, cols = spec["shape"]
    header[victim]["shape"] = [cols, rows]
    write_safetensors(weights, header, data)
    expect(aios.DataLossError, victim, lambda: aios.Backbone.load(folder), f"[{rows}, {cols}]", f"[{cols}, {rows}]")


def test_sharded_index_errors(copy_of):
    folder = copy_of("llama3_bias_tied_sharded")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    some_tensor = next(iter(index["weight_map"]))
    bad = json.loads(json.dumps(index))
    bad["weight_map"][some_tensor] = "../../etc/passwd"
    index_path.write_text(json.dumps(bad))
    expect(aios.DataLossError, str(index_path), lambda: aios.Backbone.load(folder), "plain file names")
    shard = index["weight_map"][some_tensor]
    index_path.write_text(json.dumps(index))
    (folder / shard).unlink()
    expect(aios.NotFoundError, str(folder / shard), lambda: aios.Backbone.load(folder))


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_unknown_architecture_and_unsupported_values(copy_of):
    folder = copy_of()
    cases = [
        (dict(architectures=["FalconForCausalLM"]), "config.architectures", ["FalconForCausalLM"]),
        (dict(rope_parameters={"rope_type": "ntk-by-parts", "rope_theta": 10000.0, "factor": 4.0}),
         "config.rope_parameters.rope_type", ["ntk-by-parts", "longrope"]),
        (dict(partial_rotary_factor=0.5), "config.partial_rotary_factor", ["whole heads"]),
        (dict(hidden_act="relu6"), "config.hidden_act", ["relu6"]),
        (dict(num_key_value_heads=3), "config.num_key_value_heads", ["3"]),
        (dict(hidden_size="sixty-four"), "config.hidden_size", ["sixty-four"]),
        (dict(num_hidden_layers=0), "config.num_hidden_layers", ["0"]),
        (dict(vocab_size=None), "config.vocab_size", ["missing"]),
    ]
    original = (folder / "config.json").read_text()
    for changes, field, texts in cases:
        (folder / "config.json").write_text(original)
        edit_config(folder, **changes)
        expect(aios.InvalidArgumentError, field, lambda: aios.Backbone.load(folder), *texts)
    (folder / "config.json").write_text("{ not json")
    expect(aios.DataLossError, str(folder / "config.json"), lambda: aios.Backbone.load(folder))


def test_config_that_disagrees_with_weights_loads_nothing(copy_of):
    folder = copy_of()
    edit_config(folder, intermediate_size=128)
    expect(aios.DataLossError, "model.layers.0.mlp.gate_proj.weight", lambda: aios.Backbone.load(folder), "128")

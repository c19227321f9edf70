"""aios.adapters: encoders against plain PyTorch, the sequence builder on the hand-checked layouts
shared with the C++ tests (tests/data/sequence_layouts.json), training through the frozen backbone
with the torch bridge, and encoder storage."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aios
from aios.adapters import (AudioEncoder, Gist, GistLatents, LinearDecoder, LinearProjection, MlpProjection, SequenceBuilder, Text,
                           build_batch, load_decoder, load_encoder, log_mel, mel_filters, read_decoder_manifest, read_encoder_manifest,
                           register_decoder, register_encoder, save_decoder, save_encoder)

LAYOUTS = Path(__file__).resolve().parents[1] / "data" / "sequence_layouts.json"


@pytest.fixture(scope="module")
def tiny(checkpoints):
    ckpt = checkpoints["llama_gqa"]
    return aios.Backbone.load(ckpt.path), ckpt.reference


def test_projections_match_plain_pytorch_in_forward_and_gradient():
    torch.manual_seed(0)
    linear, mlp = LinearProjection(6, 64), MlpProjection(6, 64, 20)
    x = torch.randn(3, 5, 6, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = linear(x), x_ref @ linear.linear.weight.detach().T + linear.linear.bias.detach()
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)

    h = x.detach() @ mlp.fc1.weight.T + mlp.fc1.bias
    ref = (0.5 * h * (1 + torch.erf(h / 2 ** 0.5))) @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x.detach()), ref)
    assert MlpProjection(6, 64).hidden_features == 64
    # The same parameter names as the C++ modules (and the saved files).
    assert set(mlp.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert set(linear.state_dict()) == {"linear.weight", "linear.bias"}


def test_gist_latents_broadcast_over_the_batch():
    gist = GistLatents(3, 64)
    assert gist.latents.abs().max() < 0.2
    out = gist(4)
    assert out.shape == (4, 3, 64)
    out.sum().backward()
    torch.testing.assert_close(gist.latents.grad, torch.full((3, 64), 4.0))
    init = torch.randn(2, 64, dtype=torch.float64)
    assert torch.equal(GistLatents(2, 64, init=init).latents.data, init.float())


def test_bad_sizes_and_widths_raise_invalid_argument(tiny):
    backbone, _ = tiny
    with pytest.raises(aios.InvalidArgumentError, match="gist count") as e:
        GistLatents(0, 64)
    assert e.value.field == "count"
    with pytest.raises(aios.InvalidArgumentError) as e:
        LinearProjection(0, 64)
    assert e.value.field == "in_features"
    with pytest.raises(aios.InvalidArgumentError) as e:
        GistLatents(2, 64, init=torch.zeros(3, 64))
    assert e.value.field == "init"
    LinearProjection(4, 64).check_fits(backbone)
    with pytest.raises(aios.InvalidArgumentError, match="hidden size 64, got 65") as e:
        MlpProjection(4, 65).check_fits(backbone)
    assert e.value.field == "out_features"
    with pytest.raises(aios.InvalidArgumentError) as e:
        LinearProjection(4, 64)(torch.zeros(2, 5))
    assert e.value.field == "x"


def _rows(case, D):
    rows = []
    for r in case["rows"]:
        row = []
        for s in r:
            if "text" in s:
                row.append(Text(s["text"]))
            if "latents" in s:
                row.append(torch.randn(s["latents"], D))
            if "gist" in s:
                row.append(Gist())
        rows.append(row)
    return rows


@pytest.mark.parametrize("case", json.loads(LAYOUTS.read_text())["cases"], ids=lambda c: c["name"])
def test_builder_lays_out_the_shared_hand_checked_cases(tiny, case):
    backbone, _ = tiny
    D = backbone.config.hidden_size
    torch.manual_seed(1)
    gist = GistLatents(case["gist_count"], D) if case["gist_count"] else None
    rows = _rows(case, D)
    batch = build_batch(backbone, rows, padding=case["padding"], gist=gist, full_mask=case.get("full_mask", False))
    B, T = len(rows), len(case["positions"][0])
    assert batch.latents.shape == (B, T, D)
    assert batch.positions.tolist() == case["positions"]
    assert batch.ids.tolist() == case["ids"]
    if isinstance(case["mask"][0][0], str):
        want = torch.tensor([[[c == "1" for c in q] for q in row] for row in case["mask"]])
    else:
        want = torch.tensor(case["mask"], dtype=torch.bool)
    assert batch.mask.dtype == torch.bool and torch.equal(batch.mask, want)
    assert [[list(r) for r in row] for row in batch.segments] == case["segments"]
    covered = torch.zeros(B, T, dtype=torch.bool)
    for b, row in enumerate(batch.segments):
        for j, (kind, begin, end) in enumerate(row):
            covered[b, begin:end] = True
            part, seg = batch.latents[b, begin:end], rows[b][j]
            if kind == "text":
                assert torch.equal(part, backbone.embed(torch.tensor([seg.ids]))[0])
            elif kind == "latents":
                assert torch.equal(part, seg)
            else:
                assert torch.equal(part, gist.latents)
    assert batch.latents[~covered].abs().sum() == 0  # padding holds zeros


def test_gradients_reach_caller_latents_and_gist_vectors(tiny):
    backbone, _ = tiny
    D = backbone.config.hidden_size
    gist = GistLatents(2, D)
    a = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, D, requires_grad=True)
    batch = SequenceBuilder(backbone, gist=gist, padding="left")([[a, "gist", [4, 5]], [c, Gist()]])
    w = torch.randn(batch.latents.shape)
    (batch.latents * w).sum().backward()
    assert a.grad.dtype == torch.float64
    torch.testing.assert_close(a.grad.float(), w[0, 0:3])
    torch.testing.assert_close(c.grad, w[1, 4:5])
    torch.testing.assert_close(gist.latents.grad, w[0, 3:5] + w[1, 5:7])


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("with_gist", [False, True])
def test_padding_does_not_change_real_hidden_states(tiny, padding, with_gist):
    backbone, _ = tiny
    D = backbone.config.hidden_size
    torch.manual_seed(2)
    image, gist = torch.randn(2, D), GistLatents(2, D, init_std=0.5)
    long_row = [[1, 2, 3], image, [4, 5]]
    short_row = [image[:1], "gist", [6]] if with_gist else [image[:1], [6]]
    alone = build_batch(backbone, [short_row], padding=padding, gist=gist)
    both = build_batch(backbone, [long_row, short_row], padding=padding, gist=gist)
    h_alone = backbone.forward(alone.latents.detach(), **alone.forward_options()).hidden[0]
    h_both = backbone.forward(both.latents.detach(), **both.forward_options()).hidden[1]
    begin = both.segments[1][0][1]
    torch.testing.assert_close(h_both[begin:begin + h_alone.shape[0]], h_alone, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(h_both).all()


def test_builder_names_the_malformed_segment(tiny):
    backbone, _ = tiny
    D, V = backbone.config.hidden_size, backbone.config.vocab_size
    cases = [
        (lambda: build_batch(backbone, [[torch.zeros(2, D + 1)]]), "rows[0][0].latents"),
        (lambda: build_batch(backbone, [[[1]], [[V]]]), "rows[1][0].ids"),
        (lambda: build_batch(backbone, [["gist"]]), "gist"),
        (lambda: build_batch(backbone, [["gist", "gist"]], gist=GistLatents(2, D)), "rows[0][1]"),
        (lambda: build_batch(backbone, [["gist"]], gist=GistLatents(2, D - 1)), "gist.dim"),
        (lambda: build_batch(backbone, [[[]]]), "rows[0]"),
        (lambda: build_batch(backbone, []), "rows"),
        (lambda: build_batch(backbone, [[[1]]], padding="middle"), "padding"),
    ]
    for call, field in cases:
        with pytest.raises(aios.InvalidArgumentError) as e:
            call()
        assert e.value.field == field


def test_projection_trains_through_the_backbone_with_the_torch_bridge(tiny):
    backbone, _ = tiny
    D, V = backbone.config.hidden_size, backbone.config.vocab_size
    torch.manual_seed(3)
    projection = LinearProjection(10, D)
    projection.check_fits(backbone)
    optimizer = torch.optim.Adam(projection.parameters(), lr=2e-2)
    # Each feature pair must steer the last hidden state to that of a text prompt.
    features = torch.randn(4, 2, 10)
    target = backbone.forward(backbone.embed(torch.randint(0, V, (4, 4)))).hidden[:, -1]
    losses = []
    for _ in range(40):
        batch = build_batch(backbone, [[[1, 2], projection(features[b])] for b in range(4)], padding="left")
        hidden = aios.torch.forward(backbone, batch.latents, **batch.forward_options())
        loss = F.mse_loss(hidden[:, -1], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fused_gradients_reach_extension_rows_through_batch_ids(tiny):
    backbone, _ = tiny
    D, V = backbone.config.hidden_size, backbone.config.vocab_size
    ext = backbone.extend(["<img>", "</img>"])
    projection = MlpProjection(10, D)
    batch = build_batch(backbone, [[[1, V], projection(torch.randn(2, 10)), [V + 1, 3]]], extension=ext)
    assert batch.ids.tolist() == [[1, V, -1, -1, V + 1, 3]]
    targets = torch.tensor([[-100, -100, -100, V + 1, 3, 7]])
    fused = backbone.forward_backward(batch.latents.detach(), targets=targets, weights=(targets >= 0).float(),
                                      **batch.forward_options())
    assert fused.grad_embedding_rows is not None and fused.grad_embedding_rows.abs().sum() > 0
    batch.latents.backward(fused.grad_latents)
    assert projection.fc1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("make", [lambda: LinearProjection(5, 64, bias=False), lambda: MlpProjection(5, 64, 12),
                                  lambda: GistLatents(3, 64, init_std=1.0),
                                  lambda: AudioEncoder(64, channels=8, layers=2, n_mels=16, hop_length=80)],
                         ids=["linear", "mlp", "gist", "audio"])
def test_encoders_save_and_load_bit_exactly(tmp_path, make):
    module = make()
    save_encoder(module, tmp_path / "enc")
    save_encoder(module, tmp_path / "enc")  # replaces the first save
    assert len([n for n in os.listdir(tmp_path / "enc") if n.endswith(".safetensors")]) == 1
    kind, sizes = read_encoder_manifest(tmp_path / "enc")
    assert kind == module.kind and sizes == module.sizes()
    loaded = load_encoder(tmp_path / "enc")
    assert type(loaded) is type(module)
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)


def test_corrupt_or_missing_encoder_files_raise_clear_errors(tmp_path):
    folder = tmp_path / "enc"
    save_encoder(MlpProjection(5, 64, 12), folder)
    manifest = json.loads((folder / "encoder.json").read_text())
    weights = folder / manifest["weights"]
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(aios.DataLossError, match="CRC-32"):
        load_encoder(folder)
    weights.write_bytes(bytes(data[:40]))
    with pytest.raises(aios.DataLossError):
        load_encoder(folder)
    (folder / "encoder.json").write_text('{"format": "aios.enc')
    with pytest.raises(aios.DataLossError):
        load_encoder(folder)
    (folder / "encoder.json").write_text(json.dumps({**manifest, "sizes": {"in_features": 0, "out_features": 64,
                                                                           "hidden_features": 12}}))
    with pytest.raises(aios.DataLossError):
        load_encoder(folder)
    (folder / "encoder.json").write_text(json.dumps({**manifest, "kind": "nobody"}))
    with pytest.raises(aios.NotFoundError) as e:
        load_encoder(folder)
    assert e.value.field == "kind"
    with pytest.raises(aios.NotFoundError):
        load_encoder(tmp_path / "absent")


def test_manifest_sizes_are_integers_the_weights_can_fill(tmp_path):
    """Sizes and checksums that are not integers in range, and sizes that ask for more values than the
    weights file holds, are refused before a module is built (10^8 gist latents would take GiBs)."""
    folder = tmp_path / "gist"
    save_encoder(GistLatents(3, 64), folder)
    manifest = json.loads((folder / "encoder.json").read_text())
    for key, value in [("count", 1e8), ("count", 100000000), ("count", -1), ("count", True), ("dim", 3.5)]:
        (folder / "encoder.json").write_text(json.dumps({**manifest, "sizes": {**manifest["sizes"], key: value}}))
        with pytest.raises(aios.DataLossError, match=f"sizes.{key}"):
            load_encoder(folder)
    (folder / "encoder.json").write_text(json.dumps({**manifest, "crc32": 3.7e37}))
    with pytest.raises(aios.DataLossError, match="crc32"):
        load_encoder(folder)
    (folder / "encoder.json").write_text(json.dumps(manifest))
    assert load_encoder(folder).latents.shape == (3, 64)


def test_registry_loads_kinds_callers_register(tmp_path):
    class Scale(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(n))

    register_encoder("test_scale", lambda sizes: Scale(sizes["n"]))
    with pytest.raises(aios.AlreadyExistsError):
        register_encoder("linear_projection", lambda sizes: None)
    module = Scale(4)
    with torch.no_grad():
        module.scale.mul_(torch.arange(4.0))
    save_encoder(module, tmp_path / "scale", kind="test_scale", sizes={"n": 4})
    assert torch.equal(load_encoder(tmp_path / "scale").scale, module.scale)


ENCODERS = Path(__file__).resolve().parents[1] / "data" / "encoders"


DECODERS = Path(__file__).resolve().parents[1] / "data" / "decoders"


def _fixture_values(module):
    """The shared fixtures' values: parameter p = arange(numel) * 0.01 - 0.3, in its shape."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.arange(p.numel(), dtype=torch.float32) * 0.01 - 0.3).view(p.shape))
    return module


def _fixture_mlp():
    return _fixture_values(MlpProjection(3, 4, 5))


@pytest.mark.parametrize("name", ["python_mlp", "cpp_mlp"])
def test_encoder_folders_written_by_either_language_load_in_python(name):
    # python_mlp is written by save_encoder(_fixture_mlp(), ENCODERS / "python_mlp"); cpp_mlp by the
    # C++ test tagged [.generate]. The C++ tests load both as well.
    loaded, want = load_encoder(ENCODERS / name), _fixture_mlp()
    for key, value in want.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def _fixture_audio():
    return _fixture_values(AudioEncoder(4, channels=3, layers=2, sample_rate=800, n_fft=16, hop_length=8, n_mels=5))


def _reference_waveform():
    t = torch.arange(100, dtype=torch.float64) / 800
    return (0.5 * torch.sin(2 * torch.pi * 90 * t) + 0.2 * torch.sin(2 * torch.pi * 310 * t * (1 + t))).float()


def test_audio_reference_is_what_this_package_computes():
    # ENCODERS / "audio_reference.safetensors" is written here when absent (delete it to rewrite):
    # the waveform, its log-mel features and the fixture encoder's latents. The C++ tests read it.
    from safetensors.torch import load_file, save_file

    encoder, waveform = _fixture_audio(), _reference_waveform()
    with torch.no_grad():
        now = {"waveform": waveform, "features": log_mel(waveform, **encoder.features), "latents": encoder.encode(waveform)}
    path = ENCODERS / "audio_reference.safetensors"
    if not path.exists():
        save_file(now, path)
    for name, value in load_file(path).items():
        torch.testing.assert_close(now[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["python_audio", "cpp_audio"])
def test_audio_encoder_folders_written_by_either_language_load_in_python(name):
    # python_audio: save_encoder(_fixture_audio(), ENCODERS / "python_audio"); cpp_audio: the C++ test
    # tagged [.generate]. The C++ tests load both and encode the reference waveform as well.
    loaded, want = load_encoder(ENCODERS / name), _fixture_audio()
    assert isinstance(loaded, AudioEncoder) and loaded.sizes() == want.sizes()
    for key, value in want.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_audio_feature_settings_are_bounded_by_the_kind_not_by_the_weights(tmp_path):
    """sample_rate, n_fft and hop_length describe the input, so they may exceed the number of values
    the weights hold; the kind bounds them instead."""
    folder = tmp_path / "audio"
    save_encoder(_fixture_audio(), folder)  # 130 values, sample rate 800
    manifest = json.loads((folder / "encoder.json").read_text())
    for key, value, loads in [("sample_rate", 48000, True), ("n_fft", 2048, True), ("sample_rate", 10 ** 9, False),
                              ("n_fft", 10 ** 6, False), ("channels", 10 ** 6, False)]:
        (folder / "encoder.json").write_text(json.dumps({**manifest, "sizes": {**manifest["sizes"], key: value}}))
        if loads:
            assert load_encoder(folder).sizes()[key] == value
        else:
            with pytest.raises(aios.DataLossError):
                load_encoder(folder)


def test_log_mel_is_the_documented_computation():
    """An independent restatement: numpy's FFT of Hann-windowed, reflect-padded frames, HTK mel
    triangles, log10, the 8-below-max floor and (x + 4) / 4."""
    import numpy as np

    sr, n_fft, hop, n_mels = 16000, 400, 160, 64
    g = torch.Generator().manual_seed(0)
    waveform = torch.randn(2, 4000, generator=g) * 0.1
    x = np.pad(waveform.double().numpy(), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([x[:, i * hop:i * hop + n_fft] * window for i in range(4000 // hop + 1)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # [B,F,n_fft/2+1]
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)
    corners = 700 * (10 ** (np.linspace(mel(0), mel(sr / 2), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    filters = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        lo, mid, hi = corners[m:m + 3]
        filters[m] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    torch.testing.assert_close(mel_filters(), torch.from_numpy(filters).float(), rtol=1e-5, atol=1e-6)
    logs = np.log10(np.maximum(power @ filters.T, 1e-10))
    logs = (np.maximum(logs, logs.max(axis=(1, 2), keepdims=True) - 8) + 4) / 4
    torch.testing.assert_close(log_mel(waveform), torch.from_numpy(logs).float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(aios.InvalidArgumentError, match="waveform"):
        log_mel(torch.zeros(100))
    with pytest.raises(aios.InvalidArgumentError, match="n_mels"):
        log_mel(torch.zeros(1000), n_mels=0)


def test_audio_encoder_trains_through_the_backbone(tiny):
    backbone, _ = tiny
    D = backbone.config.hidden_size
    torch.manual_seed(0)
    encoder = AudioEncoder(D, channels=16, layers=2, n_mels=16)
    encoder.check_fits(backbone)
    with pytest.raises(aios.InvalidArgumentError, match="out_features"):
        AudioEncoder(D + 1).check_fits(backbone)
    with pytest.raises(aios.InvalidArgumentError, match="layers"):
        AudioEncoder(D, layers=-1)
    # He initialisation: activations keep their scale through the strided layers (torch's default
    # initialisation leaves about a thirtieth of it after three layers here).
    fresh = AudioEncoder(D, channels=64)
    with torch.no_grad():
        x = F.gelu(fresh.conv_in(torch.randn(4, 64, 40)))
        for conv in fresh.convs:
            x = F.gelu(conv(x))
    assert x.std() > 0.2
    waveform = torch.randn(2, 1600) * 0.1
    latents = encoder.encode(waveform)  # 11 frames -> 3 latents
    assert latents.shape == (2, encoder.latent_count(11), D) == (2, 3, D)
    torch.testing.assert_close(latents[1], encoder.encode(waveform[1]))
    hidden = aios.torch.forward(backbone, latents)
    hidden.square().mean().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["python_linear", "cpp_linear"])
def test_decoder_folders_written_by_either_language_load_in_python(name):
    # python_linear: save_decoder(_fixture_values(LinearDecoder(4, 3, 2)), DECODERS / "python_linear");
    # cpp_linear: the C++ test tagged [.generate]. The C++ tests load both as well.
    loaded, want = load_decoder(DECODERS / name), _fixture_values(LinearDecoder(4, 3, 2))
    assert isinstance(loaded, aios.Decoder) and loaded.sizes() == want.sizes()
    for key, value in want.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_linear_decoder_matches_plain_pytorch_and_takes_its_span(tiny, tmp_path):
    backbone, _ = tiny
    D = backbone.config.hidden_size
    torch.manual_seed(3)
    decoder = LinearDecoder(D, 4, span=2)
    decoder.check_fits(backbone)
    h = torch.randn(3, D, requires_grad=True)
    out = decoder(h)
    assert torch.allclose(out, F.linear(h, decoder.head.weight, decoder.head.bias))
    out.sum().backward()
    assert torch.allclose(h.grad, decoder.head.weight.sum(0).expand(3, D))
    with pytest.raises(aios.InvalidArgumentError) as info:
        LinearDecoder(D + 1, 4).check_fits(backbone)
    assert info.value.field == "dim"
    with pytest.raises(aios.InvalidArgumentError):
        LinearDecoder(D, 4, span=0)

    save_decoder(decoder, tmp_path / "dec")
    assert read_decoder_manifest(tmp_path / "dec") == ("linear_decoder", {"dim": D, "out_features": 4, "span": 2})
    loaded = load_decoder(tmp_path / "dec")
    for key, value in decoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)

    # The classifier's first pick opens the span; the decoder feeds a latent (ids -2), then is done
    # (the end token is fed) and the row returns to the classifier.
    latents = backbone.embed(torch.tensor([[3, 14, 15, 9]]))
    start = int(backbone.generate(latents, max_new_tokens=1).ids[0, 0])
    end = (start + 1) % backbone.config.vocab_size
    steps = list(backbone.stream(latents, max_new_tokens=4, routes=[(start, end, loaded)]))
    assert [int(s.ids[0]) for s in steps[:3]] == [start, -2, end] and int(steps[3].ids[0]) != -2
    assert [int(s.routes[0]) for s in steps] == [-1, 0, 0, -1]
    for s in steps[1:3]:
        assert torch.allclose(s.outputs[0], decoder(s.hidden[0]).detach(), atol=1e-5)
    assert steps[0].outputs[0] is None


def test_decoder_registry_and_errors(tmp_path):
    with pytest.raises(aios.AlreadyExistsError):
        register_decoder("linear_decoder", LinearDecoder.from_sizes)
    register_decoder("test_not_a_decoder", lambda sizes: LinearProjection(2, 3))
    save_decoder(LinearProjection(2, 3), tmp_path / "impostor", kind="test_not_a_decoder", sizes={})
    with pytest.raises(aios.DataLossError) as info:
        load_decoder(tmp_path / "impostor")
    assert info.value.field == "kind"
    save_decoder(LinearDecoder(4, 3), tmp_path / "dec")
    with pytest.raises(aios.NotFoundError):
        load_encoder(tmp_path / "dec")  # a decoder folder has no encoder.json
    # An encoder saved beside it: each save removes only older weights of its own kind.
    save_encoder(LinearProjection(2, 3), tmp_path / "dec")
    save_decoder(LinearDecoder(4, 3), tmp_path / "dec")
    assert isinstance(load_encoder(tmp_path / "dec"), LinearProjection)
    assert isinstance(load_decoder(tmp_path / "dec"), LinearDecoder)
    with pytest.raises(aios.NotFoundError):
        load_decoder(tmp_path / "nowhere")

"""Encoders upstream of the backbone, the sequence builder, and decoders for routed generation.

    import aios, torch
    from aios.adapters import LinearProjection, MlpProjection, GistLatents, Gist, LinearDecoder, build_batch

    projection = MlpProjection(768, backbone.config.hidden_size)     # LLaVA-1.5: Linear, GELU, Linear
    projection.check_fits(backbone)
    gist = GistLatents(4, backbone.config.hidden_size)               # 4 trainable soft-prompt vectors
    batch = build_batch(backbone, [
        [ids_a, projection(image_a), ids_b],                          # text, latents [L,D], text
        [ids_c, Gist(), ids_d],                                       # gist slots filled from `gist`
    ], gist=gist, padding="left")
    hidden = aios.torch.forward(backbone, batch.latents, positions=batch.positions, mask=batch.mask)
    hidden[...].sum().backward()      # gradients reach projection and gist through the frozen backbone

    decoder = LinearDecoder(backbone.config.hidden_size, 4, span=1)  # a [4] output per routed position
    backbone.generate(latents, extension=ext, routes=[(sox, eox, decoder)])
    save_decoder(decoder, "boxes"); decoder = load_decoder("boxes")

The modules are ordinary torch.nn.Modules (train them with torch.optim), with the parameter names
of the C++ library's (aios/adapters/*.h). The sequence builder and the folders' storage are the C++
library's own, bound: one implementation for both languages.

Layout of row b, for R = its real length and T = max R over the batch:
  padding="right": real tokens at [0, R), padding at [R, T); "left": padding at [0, T-R)
  positions[b,t]: 0, 1, ... over the real tokens; 0 at padding
  ids[b,t]: the token id at text positions; -1 at latents, gist slots and padding
  latents[b,t]: 0 at padding
  mask: without gist slots (and full_mask=False), bool [B,T] key padding (true = real); otherwise
    bool [B,T,T], [b,t,s] true = query t may attend key s: s real and s <= t, and, in a row with
    gist slots [g0,g1), not (t >= g1 and s < g0); a padding query attends only itself. A full mask
    replaces the backbone's sliding windows: for windowed models add them yourself.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _aios
from .errors import AlreadyExistsError, DataLossError, InvalidArgumentError, NotFoundError

__all__ = ["LinearProjection", "MlpProjection", "GistLatents", "AudioEncoder", "log_mel", "mel_filters", "LinearDecoder", "Text", "Latents", "Gist", "Batch",
           "SequenceBuilder", "build_batch", "save_encoder", "load_encoder", "read_encoder_manifest", "register_encoder",
           "save_decoder", "load_decoder", "read_decoder_manifest", "register_decoder"]


def _fail(cls, field_name, message):
    error = cls(f"{cls.code_name}: {field_name}: {message}")
    error.field = field_name
    raise error


def _positive(value, name):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(InvalidArgumentError, name, f"expected a size >= 1, got {value!r}")


def _fits(width, backbone, name):
    D = backbone.config.hidden_size
    if width != D:
        _fail(InvalidArgumentError, name, f"expected the backbone's hidden size {D}, got {width}")


def _check_input(x, in_features):
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point() or x.shape[-1] != in_features:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        _fail(InvalidArgumentError, "x", f"expected a floating tensor [..., {in_features}] (in_features), got {got}")


class LinearProjection(nn.Module):
    """MiniGPT-4's projection, y = x W^T + b: x [..., in_features] -> [..., out_features]."""

    kind = "linear_projection"

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        _positive(in_features, "in_features")
        _positive(out_features, "out_features")
        self.in_features, self.out_features, self.bias = in_features, out_features, bool(bias)
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x):
        _check_input(x, self.in_features)
        return self.linear(x)

    def check_fits(self, backbone):
        """InvalidArgumentError (field out_features) unless the output width is the backbone's D."""
        _fits(self.out_features, backbone, "out_features")

    def sizes(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": int(self.bias)}

    @classmethod
    def from_sizes(cls, sizes):
        return cls(sizes["in_features"], sizes["out_features"], bias=bool(sizes["bias"]))


class MlpProjection(nn.Module):
    """LLaVA-1.5's projection: Linear(in, hidden) -> GELU (exact) -> Linear(hidden, out); hidden defaults to out."""

    kind = "mlp_projection"

    def __init__(self, in_features: int, out_features: int, hidden_features: Optional[int] = None):
        super().__init__()
        hidden_features = out_features if hidden_features in (None, 0) else hidden_features
        _positive(in_features, "in_features")
        _positive(out_features, "out_features")
        _positive(hidden_features, "hidden_features")
        self.in_features, self.out_features, self.hidden_features = in_features, out_features, hidden_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x):
        _check_input(x, self.in_features)
        return self.fc2(F.gelu(self.fc1(x)))

    def check_fits(self, backbone):
        _fits(self.out_features, backbone, "out_features")

    def sizes(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "hidden_features": self.hidden_features}

    @classmethod
    def from_sizes(cls, sizes):
        return cls(sizes["in_features"], sizes["out_features"], sizes["hidden_features"])


class GistLatents(nn.Module):
    """n trainable vectors (gist tokens, soft prompt): forward(batch) -> [batch, n, D].

    init: [n,D] starting values (e.g. the embeddings of a prompt), else normal(0, init_std)."""

    kind = "gist_latents"

    def __init__(self, count: int, dim: int, init: Optional[torch.Tensor] = None, init_std: float = 0.02):
        super().__init__()
        if not isinstance(count, int) or count < 1:
            _fail(InvalidArgumentError, "count", f"expected a gist count >= 1, got {count!r}")
        _positive(dim, "dim")
        self.count, self.dim = count, dim
        if init is not None:
            if not isinstance(init, torch.Tensor) or tuple(init.shape) != (count, dim) or not init.is_floating_point():
                got = list(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
                _fail(InvalidArgumentError, "init", f"expected a floating tensor [{count},{dim}] (count, dim), got {got}")
            value = init.detach().to(torch.float32, copy=True).cpu()
        else:
            value = torch.randn(count, dim) * init_std
        self.latents = nn.Parameter(value)

    def forward(self, batch: int = 1):
        if batch < 1:
            _fail(InvalidArgumentError, "batch", f"expected >= 1, got {batch}")
        return self.latents.unsqueeze(0).expand(batch, self.count, self.dim)

    def check_fits(self, backbone):
        _fits(self.dim, backbone, "dim")

    def sizes(self):
        return {"count": self.count, "dim": self.dim}

    @classmethod
    def from_sizes(cls, sizes):
        return cls(sizes["count"], sizes["dim"], init_std=0.0)


# ---- the sequence builder -------------------------------------------------------------------

def log_mel(waveform, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64):
    """Whisper-style log-mel features, C++'s own (aios/adapters/audio.h): waveform floating [N] or
    [B,N] at sample_rate, N > n_fft // 2 -> float32 [F,n_mels] or [B,F,n_mels], F = N // hop_length + 1.
    Power spectrum of a periodic-Hann STFT (centred, reflect-padded), HTK mel filters from 0 Hz to
    sample_rate / 2, log10 (floor 1e-10), values more than 8 below each clip's maximum raised to
    it, then (x + 4) / 4. InvalidArgumentError names "waveform" or the option at fault."""
    return _aios.log_mel(waveform, sample_rate, n_fft, hop_length, n_mels)


def mel_filters(sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64):
    """float32 [n_mels, n_fft // 2 + 1]: the triangular filters log_mel applies."""
    return _aios.mel_filters(sample_rate, n_fft, hop_length, n_mels)


class AudioEncoder(nn.Module):
    """Sound into latents, the C++ AudioEncoder's layers and parameter names: log-mel frames
    [(B,)F,n_mels] -> Conv1d(n_mels, channels, 3) + GELU -> `layers` x [Conv1d(channels, channels,
    3, stride 2) + GELU] -> LayerNorm -> Linear(channels, out_features) -> [(B,)L,D], one latent
    per 2**layers frames (12.5 per second with the defaults). encode(waveform) computes the
    features with the encoder's own log-mel options first, so a saved encoder carries them."""

    kind = "audio_encoder"

    def __init__(self, out_features: int, channels: int = 256, layers: int = 3, sample_rate: int = 16000,
                 n_fft: int = 400, hop_length: int = 160, n_mels: int = 64):
        super().__init__()
        for value, name in ((out_features, "out_features"), (channels, "channels"), (sample_rate, "sample_rate"),
                            (n_fft, "n_fft"), (hop_length, "hop_length"), (n_mels, "n_mels")):
            _positive(value, name)
        if not isinstance(layers, int) or layers < 0:
            _fail(InvalidArgumentError, "layers", f"expected >= 0, got {layers!r}")
        self.out_features, self.channels, self.layers = out_features, channels, layers
        self.features = {"sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels}
        mel_filters(**self.features)  # C++'s checks of the settings, bounds included
        self.conv_in = nn.Conv1d(n_mels, channels, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 3, stride=2, padding=1) for _ in range(layers))
        # He initialisation for the GELU convolutions, as C++: torch's default shrinks activations about
        # threefold per layer, so every clip's latents would start alike and barely move in training.
        with torch.no_grad():
            for conv in [self.conv_in, *self.convs]:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                conv.bias.zero_()
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, out_features)

    def forward(self, features):
        """features floating [F,n_mels] or [B,F,n_mels], F >= 1 -> latents [L,D] or [B,L,D]."""
        n_mels = self.features["n_mels"]
        _check_input(features, n_mels)
        if features.dim() not in (2, 3) or features.shape[-2] < 1:
            _fail(InvalidArgumentError, "x", f"expected features [F,{n_mels}] or [B,F,{n_mels}] with F >= 1, "
                  f"got {list(features.shape)}")
        x = (features.unsqueeze(0) if features.dim() == 2 else features).to(self.conv_in.weight.dtype).transpose(1, 2)
        x = F.gelu(self.conv_in(x))
        for conv in self.convs:
            x = F.gelu(conv(x))
        x = self.proj(self.norm(x.transpose(1, 2)))
        return x.squeeze(0) if features.dim() == 2 else x

    def encode(self, waveform):
        """waveform [N] or [B,N] at the encoder's sample rate -> latents: forward(log_mel(waveform))."""
        return self.forward(log_mel(waveform, **self.features))

    def latent_count(self, frames: int) -> int:
        """Latents of `frames` frames: halved, rounded up, once per layer."""
        for _ in range(self.layers):
            frames = (frames + 1) // 2
        return frames

    def check_fits(self, backbone):
        _fits(self.out_features, backbone, "out_features")

    def sizes(self):
        return {"out_features": self.out_features, **self.features, "channels": self.channels, "layers": self.layers}

    @classmethod
    def from_sizes(cls, sizes):
        return cls(sizes["out_features"], sizes["channels"], sizes["layers"], sizes["sample_rate"], sizes["n_fft"],
                   sizes["hop_length"], sizes["n_mels"])


class LinearDecoder(_aios.Decoder, nn.Module):
    """A decoder for routed generation (Backbone.generate/stream routes=[(start, end, decoder)])
    that reads a fixed-length span with a linear head: at each routed position the output is
    head(hidden) [out_features], the next position is fed back(output) [D], and after `span`
    positions the span ends (the route's end token is fed). Also an nn.Module: train the head on
    hidden states (forward is differentiable) with torch.optim; save_decoder / load_decoder. It
    counts each row's positions: serve one generation at a time with one decoder object."""

    kind = "linear_decoder"

    def __init__(self, dim: int, out_features: int, span: int = 1):
        _aios.Decoder.__init__(self)
        nn.Module.__init__(self)
        _positive(dim, "dim")
        _positive(out_features, "out_features")
        _positive(span, "span")
        self.dim, self.out_features, self.span = dim, out_features, span
        self.head = nn.Linear(dim, out_features)
        self.back = nn.Linear(out_features, dim)
        self._taken = {}

    def forward(self, hidden):
        """hidden [..., D] -> outputs [..., out_features] (differentiable)."""
        _check_input(hidden, self.dim)
        return self.head(hidden)

    def feedback(self, output):
        """output [..., out_features] -> the latent [..., D] fed after it."""
        _check_input(output, self.out_features)
        return self.back(output)

    def check_fits(self, backbone):
        _fits(self.dim, backbone, "dim")

    def begin(self, row):
        self._taken[row] = 0

    def step(self, row, hidden):
        _check_input(hidden, self.dim)  # before the conversion, which would accept integers
        with torch.no_grad():
            output = self.forward(hidden.to(self.head.weight))
            self._taken[row] = self._taken.get(row, 0) + 1
            if self._taken[row] >= self.span:
                return _aios.DecoderStep(output=output.float().cpu(), done=True)
            return _aios.DecoderStep(output=output.float().cpu(), latent=self.feedback(output))

    def sizes(self):
        return {"dim": self.dim, "out_features": self.out_features, "span": self.span}

    @classmethod
    def from_sizes(cls, sizes):
        return cls(sizes["dim"], sizes["out_features"], sizes["span"])


@dataclass
class Text:
    ids: object  # int tensor [L] or a list of ints


@dataclass
class Latents:
    latents: torch.Tensor  # floating [L,D]


@dataclass
class Gist:
    latents: Optional[torch.Tensor] = None  # floating [n,D]; None = the builder's GistLatents


def _segment(s):
    """Shorthands: a list of ints or an integer tensor [L] is text, a floating tensor [L,D] latents,
    "gist" a Gist()."""
    if isinstance(s, (Text, Latents, Gist)):
        return s
    if isinstance(s, str) and s == "gist":
        return Gist()
    if isinstance(s, torch.Tensor):
        return Latents(s) if s.is_floating_point() else Text(s)
    if isinstance(s, (list, tuple)):
        return Text(s)
    _fail(InvalidArgumentError, "rows", f"expected Text, Latents, Gist, an id list or a tensor, got {type(s).__name__}")


@dataclass
class Batch:
    latents: torch.Tensor    # [B,T,D] in the backbone's dtype, on its device (differentiable)
    positions: torch.Tensor  # int64 [B,T]
    mask: torch.Tensor       # bool [B,T] or [B,T,T]
    ids: torch.Tensor        # int64 [B,T], -1 where no token was embedded
    segments: List[List[Tuple[str, int, int]]]  # [b][j] = (kind, begin, end): "text", "latents" or "gist"
    extension: object = None

    def forward_options(self, with_extension: bool = True) -> Dict[str, object]:
        """positions and mask, and with an extension, the extension and ids (for its row gradients):
        keyword arguments for Backbone.forward / vjp / forward_backward (aios.torch.forward takes
        with_extension=False)."""
        out = {"positions": self.positions, "mask": self.mask}
        if with_extension and self.extension is not None:
            out.update(extension=self.extension, ids=self.ids)
        return out


def _parts(s, gist):
    """(kind, tensor) of a segment for the C++ builder; a Gist() takes the builder's vectors."""
    if isinstance(s, Text):
        ids = s.ids if isinstance(s.ids, torch.Tensor) else torch.tensor(list(s.ids), dtype=torch.long)
        return ("text", ids)
    if isinstance(s, Latents):
        return ("latents", s.latents)
    return ("gist", s.latents if s.latents is not None else gist.latents if gist is not None else None)


def build_batch(backbone, rows, padding: str = "right", extension=None, gist: Optional[GistLatents] = None,
                full_mask: bool = False) -> Batch:
    """Assembles `rows` (each a list of segments: Text, Latents, Gist or their shorthands) into one
    batch for `backbone`; see the module docstring for the layout. InvalidArgumentError names the
    malformed segment ("rows[b][j].latents", ...). The C++ builder (aios/adapters/sequence.h) does
    the work; gradients reach the caller's latents and the gist vectors."""
    if gist is not None:
        try:
            gist.check_fits(backbone)
        except InvalidArgumentError as e:
            _fail(InvalidArgumentError, "gist." + e.field, str(e).split(": ", 2)[-1])
    rows = [[_parts(_segment(s), gist) for s in row] for row in rows]
    latents, positions, mask, ids, segments = _aios.build_batch(backbone, rows, padding, extension, full_mask)
    return Batch(latents, positions, mask, ids, [[tuple(r) for r in row] for row in segments], extension)


class SequenceBuilder:
    """build_batch with fixed settings: SequenceBuilder(backbone, gist=g, padding="left")(rows)."""

    def __init__(self, backbone, padding: str = "right", extension=None, gist: Optional[GistLatents] = None,
                 full_mask: bool = False):
        self.backbone, self.padding, self.extension, self.gist, self.full_mask = backbone, padding, extension, gist, full_mask

    def __call__(self, rows) -> Batch:
        return build_batch(self.backbone, rows, padding=self.padding, extension=self.extension, gist=self.gist,
                           full_mask=self.full_mask)


# ---- storage ----------------------------------------------------------------------------------

@dataclass
class _Role:
    """What differs between encoder and decoder folders: the C++ calls and the registry."""
    noun: str
    manifest: str
    save: Callable
    read_manifest: Callable
    read: Callable
    registry: Dict[str, Callable[[Dict[str, int]], nn.Module]]


_ENCODERS = _Role("encoder", "encoder.json", _aios.save_encoder_tensors, _aios.read_encoder_manifest, _aios.read_encoder,
                  {cls.kind: cls.from_sizes for cls in (LinearProjection, MlpProjection, GistLatents, AudioEncoder)})
_DECODERS = _Role("decoder", "decoder.json", _aios.save_decoder_tensors, _aios.read_decoder_manifest, _aios.read_decoder,
                  {LinearDecoder.kind: LinearDecoder.from_sizes})


def _register(role, kind, factory):
    if not kind:
        _fail(InvalidArgumentError, "kind", "expected a name, got an empty string")
    if kind in role.registry:
        _fail(AlreadyExistsError, "kind", f"an {role.noun} kind named {kind} is registered already")
    role.registry[kind] = factory


def register_encoder(kind: str, factory: Callable[[Dict[str, int]], nn.Module]):
    """Registers a kind for load_encoder: factory(sizes) -> a freshly initialised module.
    AlreadyExistsError when the kind is taken."""
    _register(_ENCODERS, kind, factory)


def register_decoder(kind: str, factory: Callable[[Dict[str, int]], nn.Module]):
    """Registers a kind for load_decoder: factory(sizes) -> a freshly initialised module that is
    also an aios.Decoder. AlreadyExistsError when the kind is taken."""
    _register(_DECODERS, kind, factory)


def _save(role, module, path, kind, sizes):
    kind = kind or getattr(module, "kind", None)
    sizes = sizes if sizes is not None else module.sizes()
    if not kind:
        _fail(InvalidArgumentError, "kind", f"expected the {role.noun}'s kind, got none")
    # The C++ save (aios/adapters/storage.h): the same files, atomic writes, fsyncs and clean-up.
    role.save(dict(module.state_dict()), kind, {k: int(v) for k, v in sizes.items()}, os.path.abspath(os.fspath(path)))


def save_encoder(module: nn.Module, path, kind: Optional[str] = None, sizes: Optional[Dict[str, int]] = None):
    """Writes `module` to the folder `path` (encoder.json + weights-*.safetensors, the format of the
    C++ save_encoder), atomically. Built-in encoders know their kind and sizes; others pass them."""
    _save(_ENCODERS, module, path, kind, sizes)


def save_decoder(module: nn.Module, path, kind: Optional[str] = None, sizes: Optional[Dict[str, int]] = None):
    """As save_encoder, with decoder.json (the format of the C++ save_decoder)."""
    _save(_DECODERS, module, path, kind, sizes)


def read_encoder_manifest(path) -> Tuple[str, Dict[str, int]]:
    """(kind, sizes) of the encoder saved in the folder `path`."""
    return _aios.read_encoder_manifest(os.fspath(path))


def read_decoder_manifest(path) -> Tuple[str, Dict[str, int]]:
    """(kind, sizes) of the decoder saved in the folder `path`."""
    return _aios.read_decoder_manifest(os.fspath(path))


def _load(role, path):
    path = os.fspath(path)
    kind, _ = role.read_manifest(path)
    if kind not in role.registry:
        _fail(NotFoundError, "kind", f"no {role.noun} kind named {kind} is registered (register_{role.noun})")
    # The C++ reader checks the weights (CRC-32, structure, no size above the values they hold)
    # before the module is built from the sizes.
    kind, sizes, tensors = role.read(path)
    try:
        module = role.registry[kind](sizes)
    except (InvalidArgumentError, KeyError) as e:
        _fail(DataLossError, os.path.join(path, role.manifest), f"sizes the {kind} {role.noun} cannot take: {e}")
    state = module.state_dict()
    file = os.path.join(path, role.manifest)
    if set(tensors) != set(state):
        _fail(DataLossError, file, f"expected tensors {sorted(state)}, got {sorted(tensors)}")
    for name, value in tensors.items():
        if value.shape != state[name].shape:
            _fail(DataLossError, f"{file}:{name}", f"expected shape {list(state[name].shape)}, got {list(value.shape)}")
    module.load_state_dict(tensors)
    return module


def load_encoder(path) -> nn.Module:
    """The encoder saved in the folder `path` (by either language), built through the registry and
    loaded bit-exactly. NotFoundError: no folder, manifest or weights; an unregistered kind.
    DataLossError: corrupt files, a CRC mismatch, sizes the kind rejects, tensors missing or extra."""
    return _load(_ENCODERS, path)


def load_decoder(path) -> nn.Module:
    """The decoder saved in the folder `path` (by either language): an nn.Module that is also an
    aios.Decoder, ready for routes=[(start, end, decoder)]. Errors as load_encoder, and
    DataLossError (field kind) when the kind's module is not an aios.Decoder."""
    module = _load(_DECODERS, path)
    if not isinstance(module, _aios.Decoder):
        _fail(DataLossError, "kind", f"the decoder kind {read_decoder_manifest(path)[0]} builds a module that is "
              "not an aios.Decoder")
    return module

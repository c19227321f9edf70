"""Encoders upstream of the backbone, the sequence builder, and decoders for routed generation, in
plain PyTorch.

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

The modules are ordinary torch.nn.Modules (train them with torch.optim). The layout rules, the
parameter names and the storage format are those of the C++ library (aios/adapters/*.h), and the
builder is tested against the same hand-checked cases, so both sides agree.

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
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _aios
from .errors import AlreadyExistsError, DataLossError, InvalidArgumentError, NotFoundError

__all__ = ["LinearProjection", "MlpProjection", "GistLatents", "LinearDecoder", "Text", "Latents", "Gist", "Batch",
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


def _rows_tensor(t, D, name):
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != D or not t.is_floating_point():
        got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        _fail(InvalidArgumentError, name, f"expected a floating tensor [L,{D}] (D = the backbone's hidden size), got {got}")


def build_batch(backbone, rows, padding: str = "right", extension=None, gist: Optional[GistLatents] = None,
                full_mask: bool = False) -> Batch:
    """Assembles `rows` (each a list of segments: Text, Latents, Gist or their shorthands) into one
    batch for `backbone`; see the module docstring for the layout. InvalidArgumentError names the
    malformed segment ("rows[b][j].latents", ...)."""
    if padding not in ("right", "left"):
        _fail(InvalidArgumentError, "padding", f"expected 'right' or 'left', got {padding!r}")
    rows = [[_segment(s) for s in row] for row in rows]
    if not rows:
        _fail(InvalidArgumentError, "rows", "expected at least one row, got none")
    D, V = backbone.config.hidden_size, backbone.config.vocab_size
    limit = V + (len(extension) if extension is not None else 0)
    if gist is not None:
        try:
            gist.check_fits(backbone)
        except InvalidArgumentError as e:
            _fail(InvalidArgumentError, "gist." + e.field, str(e).split(": ", 2)[-1])

    B = len(rows)
    lengths, gist_spans, text_ids = [0] * B, [(0, 0)] * B, []
    for b, row in enumerate(rows):
        has_gist = False
        for j, s in enumerate(row):
            name = f"rows[{b}][{j}]"
            if isinstance(s, Text):
                ids = s.ids if isinstance(s.ids, torch.Tensor) else torch.tensor(list(s.ids), dtype=torch.long)
                if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
                    _fail(InvalidArgumentError, name + ".ids", f"expected an integer tensor [L], got {ids.dtype} {list(ids.shape)}")
                ids = ids.to(torch.long).cpu()
                if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= limit):
                    what = "vocab_size + extension size" if extension is not None else "vocab_size"
                    _fail(InvalidArgumentError, name + ".ids",
                          f"expected ids in [0, {limit}) ({what}), got [{int(ids.min())}, {int(ids.max())}]")
                text_ids.append(ids)
                L = ids.numel()
            elif isinstance(s, Latents):
                _rows_tensor(s.latents, D, name + ".latents")
                L = s.latents.shape[0]
            else:
                if has_gist:
                    _fail(InvalidArgumentError, name, "expected at most one gist segment per row, got a second one")
                has_gist = True
                if s.latents is not None:
                    _rows_tensor(s.latents, D, name + ".latents")
                    L = s.latents.shape[0]
                elif gist is not None:
                    L = gist.count
                else:
                    _fail(InvalidArgumentError, "gist", f"expected a GistLatents module (gist=) to fill {name}, got none")
                gist_spans[b] = (lengths[b], lengths[b] + L)
            lengths[b] += L
        if lengths[b] == 0:
            _fail(InvalidArgumentError, f"rows[{b}]", "expected at least one position, got none")
    T = max(lengths)

    device, dtype = torch.device(backbone.device), getattr(torch, backbone.dtype)
    embedded = None
    if text_ids and sum(t.numel() for t in text_ids) > 0:
        embedded = backbone.embed(torch.cat(text_ids).unsqueeze(0), extension=extension)[0]

    positions = torch.zeros(B, T, dtype=torch.long)
    ids_out = torch.full((B, T), -1, dtype=torch.long)
    valid = torch.zeros(B, T, dtype=torch.bool)
    latent_rows, segments, begins, ends = [], [], [], []
    text_offset, text_index = 0, 0
    for b, row in enumerate(rows):
        pad = T - lengths[b]
        start = pad if padding == "left" else 0
        pieces = [torch.zeros(pad, D, dtype=dtype, device=device)] if padding == "left" and pad else []
        positions[b, start:start + lengths[b]] = torch.arange(lengths[b])
        valid[b, start:start + lengths[b]] = True
        at, ranges = start, []
        for s in row:
            if isinstance(s, Text):
                t = text_ids[text_index]
                text_index += 1
                piece = embedded[text_offset:text_offset + t.numel()] if embedded is not None else \
                    torch.zeros(0, D, dtype=dtype, device=device)
                text_offset += t.numel()
                ids_out[b, at:at + t.numel()] = t
                kind = "text"
            elif isinstance(s, Latents):
                piece, kind = s.latents, "latents"
            else:
                piece, kind = (s.latents if s.latents is not None else gist.latents), "gist"
            piece = piece.to(device=device, dtype=dtype)  # differentiable back to the caller's dtype and device
            ranges.append((kind, at, at + piece.shape[0]))
            at += piece.shape[0]
            pieces.append(piece)
        if padding == "right" and pad:
            pieces.append(torch.zeros(pad, D, dtype=dtype, device=device))
        latent_rows.append(torch.cat(pieces))
        segments.append(ranges)
        shift = pad if padding == "left" else 0
        begins.append(gist_spans[b][0] + shift)
        ends.append(gist_spans[b][1] + shift)

    any_gist = any(kind == "gist" for ranges in segments for kind, _, _ in ranges)
    if any_gist or full_mask:
        g = _aios.gist_mask(T, begins, ends)
        real = valid.unsqueeze(1) & valid.unsqueeze(2)
        own = torch.eye(T, dtype=torch.bool).unsqueeze(0) & ~valid.unsqueeze(2)
        mask = (g & real) | own
    else:
        mask = valid
    return Batch(torch.stack(latent_rows), positions.to(device), mask.to(device), ids_out.to(device), segments, extension)


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
    """What differs between encoder and decoder folders: the manifest and the registry."""
    noun: str
    manifest: str
    format: str
    weights: str  # prefix of its weight files: saving removes the older ones of its kind only
    registry: Dict[str, Callable[[Dict[str, int]], nn.Module]]


_ENCODERS = _Role("encoder", "encoder.json", "aios.encoder", "weights-",
                  {cls.kind: cls.from_sizes for cls in (LinearProjection, MlpProjection, GistLatents)})
_DECODERS = _Role("decoder", "decoder.json", "aios.decoder", "decoder-weights-",
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
    from safetensors.torch import save as safetensors_bytes

    kind = kind or getattr(module, "kind", None)
    sizes = sizes if sizes is not None else module.sizes()
    if not kind:
        _fail(InvalidArgumentError, "kind", f"expected the {role.noun}'s kind, got none")
    path = os.path.abspath(os.fspath(path))
    # The C++ saves' own file steps (io:: in aios/io/safetensors.h): atomic writes, fsyncs, clean-up.
    _aios.create_folders(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}
    data = safetensors_bytes(tensors, metadata={"kind": kind})
    weights = _aios.unique_file_name(role.weights, ".safetensors")
    _aios.write_file_atomically(os.path.join(path, weights), data)
    manifest = {"format": role.format, "version": 1, "kind": kind, "sizes": {k: int(v) for k, v in sizes.items()},
                "weights": weights, "crc32": zlib.crc32(data)}
    _aios.write_file_atomically(os.path.join(path, role.manifest), (json.dumps(manifest, indent=2) + "\n").encode())
    # Older weight files are unreachable now, and so are the temporaries of interrupted saves.
    _aios.remove_superseded(path, role.weights, weights)


def save_encoder(module: nn.Module, path, kind: Optional[str] = None, sizes: Optional[Dict[str, int]] = None):
    """Writes `module` to the folder `path` (encoder.json + weights-*.safetensors, the format of the
    C++ save_encoder), atomically. Built-in encoders know their kind and sizes; others pass them."""
    _save(_ENCODERS, module, path, kind, sizes)


def save_decoder(module: nn.Module, path, kind: Optional[str] = None, sizes: Optional[Dict[str, int]] = None):
    """As save_encoder, with decoder.json (the format of the C++ save_decoder)."""
    _save(_DECODERS, module, path, kind, sizes)


def _parse_manifest(role, path):
    file = os.path.join(os.fspath(path), role.manifest)
    if not os.path.isfile(file):
        _fail(NotFoundError, file, f"no {role.noun} manifest here")
    try:
        with open(file, "rb") as f:
            m = json.loads(f.read())
        if m["format"] != role.format or m["version"] != 1:
            raise ValueError(f"format {m['format']!r} version {m['version']!r}")
        kind, sizes, weights, crc = str(m["kind"]), {str(k): v for k, v in m["sizes"].items()}, m["weights"], m["crc32"]
        # Integers only (as the C++ loader: a float is refused, not rounded), within range.
        for name, value in [*(("sizes." + k, v) for k, v in sizes.items()), ("crc32", crc)]:
            bound = 2**32 if name == "crc32" else 2**31
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
                raise ValueError(f"{name}: expected an integer in [0, {bound - 1}], got {value!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        _fail(DataLossError, file, f"not a valid {role.noun} manifest: {e}")
    if not isinstance(weights, str) or not weights or "/" in weights or weights.startswith("."):
        _fail(DataLossError, file, f"expected a file name in weights, got {weights!r}")
    return kind, sizes, weights, crc


def read_encoder_manifest(path) -> Tuple[str, Dict[str, int]]:
    """(kind, sizes) of the encoder saved in the folder `path`."""
    kind, sizes, _, _ = _parse_manifest(_ENCODERS, path)
    return kind, sizes


def read_decoder_manifest(path) -> Tuple[str, Dict[str, int]]:
    """(kind, sizes) of the decoder saved in the folder `path`."""
    kind, sizes, _, _ = _parse_manifest(_DECODERS, path)
    return kind, sizes


def _load(role, path):
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    kind, sizes, weights, crc = _parse_manifest(role, path)
    if kind not in role.registry:
        _fail(NotFoundError, "kind", f"no {role.noun} kind named {kind} is registered (register_{role.noun})")
    # The weights first: no size may ask for more values than the file holds (as the C++ loader).
    file = os.path.join(os.fspath(path), weights)
    if not os.path.isfile(file):
        _fail(NotFoundError, file, "the weights file the manifest names is missing")
    with open(file, "rb") as f:
        data = f.read()
    if zlib.crc32(data) != crc:
        _fail(DataLossError, file, f"expected CRC-32 {crc} (from the manifest), got {zlib.crc32(data)}: the file is corrupt")
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, ValueError) as e:
        _fail(DataLossError, file, f"not a valid safetensors file: {e}")
    values = sum(t.numel() for t in tensors.values())
    for name, size in sizes.items():
        if size > max(values, 1):
            _fail(DataLossError, f"{os.path.join(os.fspath(path), role.manifest)}: sizes.{name}",
                  f"{size} is more than the {values} values of the weights file")
    try:
        module = role.registry[kind](sizes)
    except (InvalidArgumentError, KeyError) as e:
        _fail(DataLossError, os.path.join(os.fspath(path), role.manifest),
              f"sizes the {kind} {role.noun} cannot take: {e}")
    state = module.state_dict()
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

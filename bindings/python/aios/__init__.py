"""aios: a frozen Transformer language model as the kernel of an AI OS.

    import aios, torch
    backbone = aios.Backbone.load("path/to/checkpoint", device="cpu", dtype="float32")
    latents = backbone.embed(torch.tensor([[1, 2, 3]]))          # [B,T,D]
    out = backbone.forward(latents, layers=[0, 4])                # out.hidden [B,T,D], out.layers
    logits = backbone.classify(out.hidden)                        # [B,T,V]

    # Gradients through the frozen backbone to the latents:
    hidden = aios.torch.forward(backbone, latents.requires_grad_())   # differentiable [B,T,D]
    fused = backbone.forward_backward(latents, targets=targets)       # .loss, .losses, .grad_latents

    # The same calls on a backbone hosted by `aios serve` (Latent and Gradient APIs):
    remote = aios.connect("127.0.0.1:50051")    # or: with aios.serve(path) as host: aios.connect(host)

    # New tokens with their own trainable rows; the base tables stay frozen:
    ext = backbone.extend(["<sox>", "<eox>"])                         # ids V, V+1
    fused = backbone.forward_backward(latents, targets=targets, extension=ext, ids=ids)
    # fused.grad_embedding_rows, fused.grad_classifier_rows: [2,D]
"""
import torch as _torch  # noqa: F401  (loads LibTorch before the extension that links it)

from . import torch  # noqa: F401  (aios.torch: the autograd bridge)
from . import adapters, text  # noqa: F401  (aios.adapters: encoders, decoders and the sequence builder)
from .host import HostProcess, serve  # `aios serve` as a child process
from ._aios import (Backbone, Config, Extension, ForwardOutput, FusedResult, Generation, GenerationResult,
                    GenerationStep, Gradients, LocalBackbone, RemoteBackbone, Session, Tokenizer, connect, gist_mask)
from . import errors as _errors
from .errors import *  # noqa: F401,F403  (Error and one class per error code: InvalidArgumentError, ...)
from ._aios import Decoder, DecoderStep  # routed generation: generate/stream(routes=[(start, end, decoder)])

# Text in and out, as methods: backbone.generate_text(...), backbone.stream_text(...).
Backbone.generate_text = text.generate_text
Backbone.stream_text = text.stream_text
apply_chat_template = text.apply_chat_template
ChatTemplateError = text.ChatTemplateError  # an InvalidArgumentError: a template the sandbox refused

__all__ = [
    "apply_chat_template", "ChatTemplateError",
    "Backbone", "LocalBackbone", "RemoteBackbone", "connect", "serve", "HostProcess",
    "Config", "Extension", "ForwardOutput", "FusedResult", "Generation", "GenerationResult",
    "GenerationStep", "Gradients", "Session", "Tokenizer", "gist_mask",
]
__all__ += [name for name in _errors.__all__ if name != "class_for_code"]
__all__ += ["Decoder", "DecoderStep"]

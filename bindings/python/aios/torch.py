"""The torch.autograd bridge: the frozen backbone as a differentiable function of its latents.

    hidden = aios.torch.forward(backbone, latents, positions=None, mask=None)
    loss = my_loss(hidden)
    loss.backward()          # d loss / d latents flows into whatever produced the latents

Forward keeps the pass on the backbone under a handle; backward calls the backbone's vjp on it.
The handle is released when the autograd graph is freed (as PyTorch frees its own saved tensors),
so backward may run several times with retain_graph=True. The backbone's weights never receive
gradients.
"""
import torch


class _KeptPass:
    """Owns a kept pass; releases it when the graph that holds this object goes away."""

    def __init__(self, backbone, handle):
        self.backbone, self.handle = backbone, handle

    def __del__(self):
        try:
            self.backbone.release(self.handle)
        except Exception:  # already evicted or expired: nothing left to free
            pass


class _BackboneForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, latents, backbone, positions, mask, recompute):
        out = backbone.forward(latents.detach(), positions=positions, mask=mask, keep=True, recompute=recompute)
        ctx.kept = _KeptPass(backbone, out.handle)
        return out.hidden

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden):
        kept = ctx.kept
        return kept.backbone.vjp(kept.handle, grad_hidden=grad_hidden.contiguous()), None, None, None, None


def forward(backbone, latents, positions=None, mask=None, recompute=False):
    """The final hidden state [B,T,D] of `latents` [B,T,D], differentiable with respect to them.
    recompute=True keeps only the states between blocks and recomputes blocks during backward."""
    return _BackboneForward.apply(latents, backbone, positions, mask, recompute)

"""Losses as pure functions of tensors (STYLE habit 2).

Each returns a per-sample ``[B]`` tensor computed in float32; the caller takes the batch
mean. "‖a − b‖²" in METHOD.md §4 is read as the per-sample *mean* squared error, so loss
scales do not depend on resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _flat(x: Tensor) -> Tensor:
    return x.float().reshape(x.shape[0], -1)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error ``[B]``."""
    assert pred.shape == target.shape, (
        f"shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}"
    )
    return (_flat(pred) - _flat(target)).pow(2).mean(dim=1)


def directional(v: Tensor, reference: Tensor, delta: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 − cos(v − reference, delta)`` over all latent dims of each sample (METHOD.md §4.4).

    Args:
        v: the editor's velocity ``[B, ...]`` (carries the gradient).
        reference: ``u_src`` (default) or the editor's own no-grad velocity under the
            opposite instruction (option C).
        delta: the base's caption-induced shift ``u_tgt − u_src``.
    """
    return 1.0 - F.cosine_similarity(_flat(v) - _flat(reference), _flat(delta), dim=1, eps=eps)


def prior(
    v: Tensor,
    u_src: Tensor,
    u_tgt: Tensor,
    *,
    alpha: float,
    use_directional: bool = True,
    reference: Tensor | None = None,
    mse_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Prior loss ``L_dir + α L_mse`` (METHOD.md §4.4).

    ``mse_scale`` multiplies the anchor inside ``total`` (``D`` turns the per-element mean
    into the squared norm ``‖v − u_tgt‖²``); the returned ``l_mse`` stays the mean.

    Returns ``(total, l_dir, l_mse)``, each ``[B]``. With ``use_directional=False`` the
    directional term is dropped (``total = α L_mse``: the ``no_directional`` ablation).
    """
    l_mse = mse(v, u_tgt)
    ref = u_src if reference is None else reference
    l_dir = directional(v, ref, u_tgt - u_src)
    total = (l_dir if use_directional else torch.zeros_like(l_dir)) + alpha * mse_scale * l_mse
    return total, l_dir, l_mse


def route_gradient(x_hat: Tensor, x_clean: Tensor, enabled: bool = True) -> Tensor:
    """Straight-through routing ``x̃ = x̂ + sg(x_clean − x̂)`` (METHOD.md §4.5).

    The value is ``x_clean``; the gradient flows into ``x_hat`` unchanged. With
    ``enabled=False`` it returns ``x_hat`` (the ``no_gradient_routing`` ablation).
    """
    if not enabled:
        return x_hat
    return x_hat + (x_clean - x_hat).detach()


__all__ = ["mse", "directional", "prior", "route_gradient"]

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
    form: str = "cosine",
    delta_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Prior loss ``L_dir + α L_mse`` (METHOD.md §4.4).

    ``mse_scale`` multiplies the anchor inside ``total`` (``D`` turns the per-element mean
    into the squared norm ``‖v − u_tgt‖²``); the returned ``l_mse`` stays the mean.

    ``form`` chooses the directional term: ``"cosine"`` (METHOD.md) or ``"delta"``
    (``delta_match``: the shift itself, with its size, ``‖(v − reference) − Δ‖²``, scaled
    by ``mse_scale`` like the anchor; ``delta_scale`` multiplies ``Δ``, as guidance does).

    Returns ``(total, l_dir, l_mse)``, each ``[B]``. With ``use_directional=False`` the
    directional term is dropped (``total = α L_mse``: the ``no_directional`` ablation).
    """
    l_mse = mse(v, u_tgt)
    ref = u_src if reference is None else reference
    if form == "cosine":
        l_dir = directional(v, ref, u_tgt - u_src)
        w_dir = 1.0
    elif form == "delta":
        l_dir = delta_match(v, ref, delta_scale * (u_tgt - u_src))
        w_dir = mse_scale
    else:
        raise ValueError(f"prior form must be 'cosine' or 'delta', got {form!r}")
    total = (w_dir * l_dir if use_directional else torch.zeros_like(l_dir)) + (
        alpha * mse_scale * l_mse
    )
    return total, l_dir, l_mse


def delta_match(v: Tensor, reference: Tensor, delta: Tensor) -> Tensor:
    """``‖(v − reference) − delta‖²`` as a per-sample mean ``[B]``: the directional term with
    its size (``direction_form: delta``).

    With ``reference = u_src`` its optimum is ``v = u_tgt``, the MSE anchor's; with the
    editor's own velocity under the opposite instruction (option C) it asks the edit to
    differ from what the editor does to keep the source by exactly the base's
    caption-induced shift (FlowEdit's velocity difference, learnt instead of integrated).
    """
    return mse(_flat(v) - _flat(reference), _flat(delta))


def route_gradient(x_hat: Tensor, x_clean: Tensor, enabled: bool = True) -> Tensor:
    """Straight-through routing ``x̃ = x̂ + sg(x_clean − x̂)`` (METHOD.md §4.5).

    The value is ``x_clean``; the gradient flows into ``x_hat`` unchanged. With
    ``enabled=False`` it returns ``x_hat`` (the ``no_gradient_routing`` ablation).
    """
    if not enabled:
        return x_hat
    return x_hat + (x_clean - x_hat).detach()


__all__ = ["mse", "directional", "delta_match", "prior", "route_gradient"]

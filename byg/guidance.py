"""Velocity closures around a backbone: text conditioning and classifier-free guidance.

STYLE habit 3: samplers take ``velocity(x, t)``; conditioning lives in closures built here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from byg.backbones.base import TextEmbeds, cat_text
from byg.sampling import Velocity


def text_velocity(model, text: TextEmbeds, cond: Tensor | None = None) -> Velocity:
    """``v(x, t) = model(x, t, text, cond)``."""

    def v(x: Tensor, t: Tensor) -> Tensor:
        return model(x, t, text, cond)

    return v


def cfg_velocity(model, text: TextEmbeds, uncond: TextEmbeds, scale: float) -> Velocity:
    """Classifier-free guidance ``u + s (u_c − u)`` with one batched call (scale 1: no guidance)."""
    if scale == 1.0:
        return text_velocity(model, text)

    def v(x: Tensor, t: Tensor) -> Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), cat_text(text, uncond), None)
        cond, unc = out.chunk(2)
        return unc + scale * (cond - unc)

    return v


__all__ = ["text_velocity", "cfg_velocity"]

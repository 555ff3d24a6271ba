"""What every objective shares: the batch it consumes, what it returns, timing hooks."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from byg.backbones.base import TextEmbeds
from byg.flow import sample_timesteps

#: ``timer("phase")`` -> context manager; the speed benchmark passes one that records time
Timer = Callable[[str], AbstractContextManager]


def no_timer(_: str) -> AbstractContextManager:
    return nullcontext()


ROLES = ("src", "tgt", "fwd", "rev")


@dataclass
class EditBatch:
    """One batch of unpaired tuples (METHOD.md §3), already embedded.

    Attributes:
        x_src: source latents ``[B, C, H, W]`` or ``[B, C, F, H, W]``.
        text: embeddings per role: ``src`` (c_src), ``tgt`` (c_tgt), ``fwd`` (c_fwd),
            ``rev`` (c_rev).
        x_tgt: ground-truth target latents, used only by the supervised objective.
    """

    x_src: Tensor
    text: dict[str, TextEmbeds]
    x_tgt: Tensor | None = None

    def __post_init__(self) -> None:
        missing = [r for r in ROLES if r not in self.text]
        if missing:
            raise ValueError(f"EditBatch.text lacks roles {missing}; needs {list(ROLES)}")

    @property
    def size(self) -> int:
        return self.x_src.shape[0]


@dataclass
class LossOutput:
    """A scalar loss to backpropagate plus float terms for logging."""

    loss: Tensor
    terms: dict[str, float] = field(default_factory=dict)
    kind: str = "full"  # "full", "identity" or "supervised"


@dataclass
class TimeSampling:
    """``p(t)`` of METHOD.md §1 as config."""

    kind: str = "uniform"
    logit_mean: float = 0.0
    logit_scale: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "logit_normal"):
            raise ValueError(f"kind must be 'uniform' or 'logit_normal', got {self.kind!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        t = sample_timesteps(
            n,
            kind=self.kind,
            logit_mean=self.logit_mean,
            logit_scale=self.logit_scale,
            shift=self.shift,
            generator=generator,
        )
        return t.to(device)


def randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """Noise drawn on the CPU generator (reproducible across devices), moved to ``x``."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


__all__ = ["EditBatch", "LossOutput", "TimeSampling", "Timer", "no_timer", "randn_like", "ROLES"]

"""SDEdit: noise the source to ``t_0`` and sample back down with the target caption (METHOD.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from byg.flow import interpolate
from byg.sampling import Velocity, sample


@dataclass
class SDEditConfig:
    strength: float = 0.6  # t_0
    steps: int = 20  # steps over the full [0, 1] grid; about strength * steps are taken
    guidance: float = 3.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")

    @property
    def taken_steps(self) -> int:
        return max(1, round(self.strength * self.steps))

    @property
    def model_calls(self) -> int:
        return self.taken_steps


@torch.no_grad()
def sdedit(
    velocity_tgt: Velocity,
    x_src: Tensor,
    cfg: SDEditConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    eps = torch.randn(x_src.shape, generator=generator).to(x_src)
    t0 = torch.full((x_src.shape[0],), cfg.strength, device=x_src.device)
    z = interpolate(x_src, eps, t0)
    return sample(velocity_tgt, z, num_steps=cfg.taken_steps, shift=cfg.shift, t_start=cfg.strength)


__all__ = ["SDEditConfig", "sdedit"]

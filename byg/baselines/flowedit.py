"""FlowEdit (Kulikov et al., ICCV 2025): inversion-free zero-shot editing (METHOD.md §6).

Starting at ``z = x_src``, each step of a ``T``-step schedule (the ``T − n_max`` noisiest
are skipped) draws ``ε``, noises the source to ``z_s``, shifts it by the current edit to
``z_t = z + z_s − x_src``, and moves ``z`` along the difference of the base's target- and
source-caption velocities. Guidance is in the velocity closures, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from byg.flow import euler_step, interpolate, schedule
from byg.sampling import Velocity


@dataclass
class FlowEditConfig:
    steps: int = 28  # T
    n_max: int = 24  # steps actually taken (the noisiest T - n_max are skipped)
    n_avg: int = 1  # noise draws averaged per step
    guidance_src: float = 1.5
    guidance_tgt: float = 5.5
    shift: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.n_max <= self.steps:
            raise ValueError(
                f"need 1 <= n_max <= steps, got n_max={self.n_max}, steps={self.steps}"
            )
        if self.n_avg < 1:
            raise ValueError(f"n_avg must be >= 1, got {self.n_avg}")

    @property
    def model_calls(self) -> int:
        return 2 * self.n_max * self.n_avg


@torch.no_grad()
def flowedit(
    velocity_src: Velocity,
    velocity_tgt: Velocity,
    x_src: Tensor,
    cfg: FlowEditConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Edit ``x_src [B, ...]``; ``velocity_src``/``velocity_tgt`` carry captions and guidance."""
    grid = schedule(cfg.steps, shift=cfg.shift).to(x_src.device)
    z = x_src.clone()
    n = x_src.shape[0]
    for i in range(cfg.steps - cfg.n_max, cfg.steps):
        t_i, t_next = grid[i], grid[i + 1]
        tt = t_i.expand(n)
        d = torch.zeros_like(x_src)
        for _ in range(cfg.n_avg):
            eps = torch.randn(x_src.shape, generator=generator).to(x_src)
            z_s = interpolate(x_src, eps, tt)
            z_t = z + z_s - x_src
            d += velocity_tgt(z_t, tt) - velocity_src(z_s, tt)
        z = euler_step(z, d / cfg.n_avg, t_i, t_next)
    return z


__all__ = ["FlowEditConfig", "flowedit"]

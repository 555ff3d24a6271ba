"""Samplers: one plain loop over a ``velocity(x, t)`` callable (METHOD.md §5).

Guidance and conditioning are closures around the model; the loops know nothing of them.
``t`` handed to the callable is a ``[B]`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from byg.flow import euler_step, schedule

Velocity = Callable[[Tensor, Tensor], Tensor]


def _per_sample(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


@torch.no_grad()
def euler_sample(
    velocity: Velocity,
    x: Tensor,
    timesteps: Tensor,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` along a decreasing grid.

    Args:
        velocity: ``(x [B, ...], t [B]) -> v [B, ...]``.
        x: start point at ``timesteps[0]`` (noise when it is 1).
        timesteps: ``[N + 1]`` shared grid, or ``[B, N + 1]`` per-sample grids.
        callback: called as ``callback(i, x)`` after each step.
    """
    grid = timesteps.to(x.device)
    n = grid.shape[-1] - 1
    for i in range(n):
        t_cur, t_next = grid[..., i], grid[..., i + 1]
        v = velocity(x, _per_sample(t_cur, x))
        x = euler_step(x, v.to(x.dtype), t_cur, t_next)
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def sample(
    velocity: Velocity,
    noise: Tensor,
    num_steps: int = 20,
    shift: float = 1.0,
    t_start: float = 1.0,
) -> Tensor:
    """Euler from ``t_start`` to 0 on the shifted grid: the default editor sampler."""
    return euler_sample(velocity, noise, schedule(num_steps, shift=shift, t_start=t_start))


@torch.no_grad()
def unipc_sample(
    velocity: Velocity,
    noise: Tensor,
    num_steps: int = 20,
    shift: float = 1.0,
) -> Tensor:
    """UniPC (flow) multistep sampler through diffusers' ``UniPCMultistepScheduler``.

    Used for video (METHOD.md §5). The scheduler works in sigma = t; our velocity
    convention (``eps - x0``) is diffusers' flow-prediction convention.
    """
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        num_train_timesteps=1000,
    )
    sched.set_timesteps(num_steps, device=noise.device)
    x = noise
    for i, ts in enumerate(sched.timesteps):
        t = sched.sigmas[i].float().to(noise.device)  # exact sigma = t, not the rounded timestep
        v = velocity(x, _per_sample(t, x))
        x = sched.step(v, ts, x, return_dict=False)[0]
    return x


__all__ = ["Velocity", "euler_sample", "sample", "unipc_sample"]

"""Flow-matching conventions used everywhere in ``byg`` (METHOD.md §1).

Time ``t`` lives in ``[0, 1]``: ``t = 0`` is clean data and ``t = 1`` is pure noise.

* path:      ``x_t = (1 - t) * x_0 + t * eps``
* velocity:  ``v = d x_t / d t = eps - x_0``
* one step:  ``x0_hat = x_t - t * v``
* Euler:     ``x <- x + (t_next - t_cur) * v`` with ``t_next < t_cur``

Nobody else re-derives these; every module imports them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample time ``[B]`` (or scalar) to broadcast against ``x`` ``[B, ...]``."""
    if t.ndim == 0:
        return t.to(x.dtype)
    assert t.ndim == 1 and t.shape[0] == x.shape[0], (
        f"t must have shape [B]={x.shape[0]} or be a scalar, got {tuple(t.shape)}"
    )
    return t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


@dataclass
class PathSample:
    """A point on the straight path: the noisy sample and its velocity target."""

    x_t: Tensor
    velocity: Tensor


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x_0 + t eps``. Shapes: x0, noise ``[B, ...]``; t ``[B]`` or scalar."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """``v = eps - x_0`` (constant along the straight path)."""
    return noise - x0


def sample_path(x0: Tensor, noise: Tensor, t: Tensor) -> PathSample:
    """Noisy sample and its velocity target in one call."""
    return PathSample(x_t=interpolate(x0, noise, t), velocity=velocity_target(x0, noise))


def predict_x0(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """One-step clean prediction ``x0_hat = x_t - t v``."""
    return x_t - _bcast(t, x_t) * v


def predict_noise(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """One-step noise prediction ``eps_hat = x_t + (1 - t) v``."""
    return x_t + (1 - _bcast(t, x_t)) * v


def euler_step(x: Tensor, v: Tensor, t_cur: Tensor | float, t_next: Tensor | float) -> Tensor:
    """One Euler step ``x + (t_next - t_cur) v`` (``t_next < t_cur`` when denoising)."""
    dt = torch.as_tensor(t_next, dtype=x.dtype, device=x.device) - torch.as_tensor(
        t_cur, dtype=x.dtype, device=x.device
    )
    return x + _bcast(dt, x) * v


# --------------------------------------------------------------------------- time shift


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Resolution/time shift ``t -> a t / (1 + (a - 1) t)``: a monotone bijection of [0, 1].

    ``a > 1`` moves mass towards noise (``t = 1``); ``a = 1`` is the identity.
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    n: int,
    *,
    kind: str = "uniform",
    logit_mean: float = 0.0,
    logit_scale: float = 1.0,
    shift: float = 1.0,
    t_min: float = 0.0,
    t_max: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``n`` training times from ``p(t)`` (METHOD.md §1).

    Args:
        kind: ``"uniform"`` or ``"logit_normal"`` (``t = sigmoid(s * z)``, ``z ~ N(m, 1)``).
        logit_mean: ``m`` of the logit-normal.
        logit_scale: ``s`` of the logit-normal.
        shift: time shift ``a`` applied after drawing (1 = none).
        t_min, t_max: the draw is affinely squeezed into ``[t_min, t_max]`` before the shift.

    Returns:
        ``[n]`` float32 tensor in ``[0, 1]``.
    """
    if kind == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    elif kind == "logit_normal":
        z = torch.randn(n, generator=generator, device=device) + logit_mean
        t = torch.sigmoid(logit_scale * z)
    else:
        raise ValueError(f"unknown timestep kind {kind!r}; expected 'uniform' or 'logit_normal'")
    t = t_min + (t_max - t_min) * t
    return shift_time(t, shift) if shift != 1.0 else t


def schedule(num_steps: int, shift: float = 1.0, t_start: float = 1.0) -> Tensor:
    """Decreasing time grid ``[num_steps + 1]`` from ``t_start`` to 0 with the time shift.

    The grid is uniform in the unshifted time, then shifted, so that sampling uses the
    same shift as training.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    grid = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    grid = shift_time(grid, shift) if shift != 1.0 else grid
    return (grid * t_start).float()


def truncated_schedule(num_steps: int, t_stop: Tensor, shift: float = 1.0) -> Tensor:
    """Per-sample grids ``[B, num_steps + 1]`` from 1 down to ``t_stop`` (shifted spacing).

    Used by the bootstrap rollout, which integrates from noise down to each sample's own
    training time ``t``; column ``i`` is the time of every sample after ``i`` steps.
    """
    base = schedule(num_steps, shift=shift).to(t_stop.device)  # [K+1], 1 -> 0
    # map [1, 0] onto [1, t_stop] affinely, per sample
    return t_stop[:, None] + (1 - t_stop[:, None]) * base[None, :]


__all__ = [
    "PathSample",
    "interpolate",
    "velocity_target",
    "sample_path",
    "predict_x0",
    "predict_noise",
    "euler_step",
    "shift_time",
    "sample_timesteps",
    "schedule",
    "truncated_schedule",
]

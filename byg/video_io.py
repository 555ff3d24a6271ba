"""Read and write videos (MP4 through imageio-ffmpeg, GIF through Pillow).

Frames are tensors ``[3, F, H, W]`` in ``[-1, 1]`` (channels first, then time), the
layout the VAE encoders take after a batch axis is added.

* ``read_video(path) -> (frames, fps)``; ``max_frames`` / ``stride`` pick frames.
* ``write_video(path, frames, fps)``: ``.mp4`` (H.264, yuv420p: plays everywhere; needs
  even height and width) or ``.gif`` (looping).
* ``resize_video`` and ``trim_frames`` adapt a clip to a model's grid
  (Wan: ``1 + 4k`` frames, sides divisible by 16 or 32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

VIDEO_SUFFIXES = (".mp4", ".gif")


def _check_frames(frames: Tensor) -> None:
    if frames.ndim != 4 or frames.shape[0] != 3:
        raise ValueError(f"frames must be [3, F, H, W], got {tuple(frames.shape)}")
    if frames.shape[1] < 1:
        raise ValueError("a video needs at least one frame")


def frames_to_uint8(frames: Tensor) -> np.ndarray:
    """``[3, F, H, W]`` in [-1, 1] -> ``[F, H, W, 3]`` uint8."""
    _check_frames(frames)
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def uint8_to_frames(arr: np.ndarray) -> Tensor:
    """``[F, H, W, C]`` uint8 (C = 1, 3 or 4) -> ``[3, F, H, W]`` float in [-1, 1]."""
    if arr.ndim == 3:  # (F, H, W): grey
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected decoded frames [F, H, W, C], got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]  # drop alpha
    x = torch.from_numpy(np.ascontiguousarray(arr)).float() / 127.5 - 1.0
    return x.permute(3, 0, 1, 2).contiguous()


def read_video(
    path: str | Path, *, max_frames: int | None = None, stride: int = 1
) -> tuple[Tensor, float]:
    """Decode an MP4 or GIF.

    Args:
        path: ``.mp4`` or ``.gif`` file.
        max_frames: keep at most this many frames (after the stride).
        stride: keep every ``stride``-th frame (the returned fps is divided by it).

    Returns:
        ``(frames [3, F, H, W] in [-1, 1], fps)``.
    """
    import imageio.v2 as imageio

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video {str(p)!r} does not exist")
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"video {str(p)!r}: expected one of {VIDEO_SUFFIXES}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    try:
        if p.suffix.lower() == ".gif":
            reader = imageio.get_reader(p, mode="I")
            meta = reader.get_meta_data()
            duration_ms = float(meta.get("duration", 100) or 100)
            fps = 1000.0 / duration_ms
        else:
            reader = imageio.get_reader(p, format="FFMPEG")
            fps = float(reader.get_meta_data().get("fps", 16.0))
        frames = []
        for i, frame in enumerate(reader):
            if i % stride:
                continue
            frames.append(np.asarray(frame))
            if max_frames is not None and len(frames) >= max_frames:
                break
        reader.close()
    except Exception as e:  # imageio raises many kinds for corrupt files
        raise ValueError(f"cannot decode video {str(p)!r}: {e}") from e
    if not frames:
        raise ValueError(f"video {str(p)!r} has no frames")
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"video {str(p)!r} has frames of different sizes")
    return uint8_to_frames(np.stack(frames)), fps / stride


def write_video(path: str | Path, frames: Tensor, fps: float = 16.0) -> Path:
    """Encode ``[3, F, H, W]`` in [-1, 1] as ``.mp4`` (H.264, yuv420p) or looping ``.gif``."""
    import imageio.v2 as imageio

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"output {str(p)!r}: expected one of {VIDEO_SUFFIXES}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    arr = frames_to_uint8(frames)
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        imageio.mimwrite(p, list(arr), format="GIF", duration=1000.0 / fps, loop=0)
        return p
    h, w = arr.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"MP4 (yuv420p) needs even height and width, got {h}x{w}; resize first")
    writer = imageio.get_writer(
        p,
        format="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=8,
        macro_block_size=1,  # never resize silently
        ffmpeg_log_level="error",
    )
    try:
        for frame in arr:
            writer.append_data(frame)
    finally:
        writer.close()
    return p


def resize_video(frames: Tensor, height: int, width: int) -> Tensor:
    """Bilinear (antialiased) resize of every frame: ``[3, F, H, W] -> [3, F, height, width]``."""
    _check_frames(frames)
    if frames.shape[2:] == (height, width):
        return frames
    x = frames.permute(1, 0, 2, 3)  # (F, 3, H, W)
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(1, 0, 2, 3).clamp(-1, 1).contiguous()


def trim_frames(frames: Tensor, temporal_factor: int = 4, max_frames: int | None = None) -> Tensor:
    """Keep the first ``1 + k·temporal_factor`` frames (at most ``max_frames``)."""
    _check_frames(frames)
    n = frames.shape[1] if max_frames is None else min(frames.shape[1], max_frames)
    keep = 1 + (n - 1) // temporal_factor * temporal_factor
    return frames[:, :keep]


def count_frames(path: str | Path) -> int:
    """Number of decodable frames (opens the file again: a playability check)."""
    frames, _ = read_video(path)
    return int(frames.shape[1])


__all__ = [
    "read_video",
    "write_video",
    "resize_video",
    "trim_frames",
    "count_frames",
    "frames_to_uint8",
    "uint8_to_frames",
    "VIDEO_SUFFIXES",
]

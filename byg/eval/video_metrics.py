"""Video metrics that need no learned model: temporal flicker and motion fidelity.

* **Temporal flicker**: the mean absolute difference between consecutive frames, in
  ``[0, 1]`` (pixel values / 255): 0 for a static clip, larger for a flickering one.
  VBench reports ``1 - flicker`` ("temporal flickering", higher is better); both are
  given. Compare an edit's flicker with its source's: an edit should not add flicker.
* **Motion fidelity** (Yatim et al. 2024): points are tracked through the source and the
  edited video independently (OpenCV: Shi-Tomasi corners followed with pyramidal
  Lucas-Kanade optical flow, forward-backward checked). With ``v_k`` a track's per-frame
  displacement, two tracks correlate as ``corr(τ, τ') = mean_k cos(v_k, v'_k)`` and::

      MF = ½ (mean_{τ' ∈ edit} max_{τ ∈ src} corr(τ, τ') + mean_{τ ∈ src} max_{τ' ∈ edit} corr(τ, τ'))

  1 when every motion in one video has a match in the other. Tracks that barely move
  (mean speed below ``min_speed`` pixels per frame) carry no direction and are left out;
  when either video has no moving track, MF is undefined (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - the video extra installs it
        raise RuntimeError("video metrics need OpenCV: pip install opencv-python-headless") from e
    return cv2


def is_video(path: str | Path) -> bool:
    """A frame folder or a video file (not a single image)."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES


def read_frames(path: str | Path, max_frames: int | None = None) -> list[Image.Image]:
    """RGB frames of a video file, GIF, frame folder (sorted names) or single image.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: an unreadable file or an empty folder/video.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    frames: list[Image.Image] = []
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for f in files[:max_frames]:
            with Image.open(f) as im:
                frames.append(im.convert("RGB"))
    elif p.suffix.lower() == ".gif":
        with Image.open(p) as im:
            for fr in ImageSequence.Iterator(im):
                frames.append(fr.convert("RGB"))
                if max_frames and len(frames) >= max_frames:
                    break
    elif p.suffix.lower() in VIDEO_SUFFIXES:
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            raise ValueError(f"OpenCV cannot open video {str(p)!r}")
        try:
            while max_frames is None or len(frames) < max_frames:
                ok, bgr = cap.read()
                if not ok:
                    break
                frames.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        finally:
            cap.release()
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        with Image.open(p) as im:
            frames.append(im.convert("RGB"))
    else:
        raise ValueError(f"{str(p)!r}: not an image, video or frame folder")
    if not frames:
        raise ValueError(f"{str(p)!r} holds no frames")
    return frames


def frames_to_array(
    frames: Sequence[Image.Image], size: tuple[int, int] | None = None
) -> np.ndarray:
    """``[T, H, W, 3]`` uint8; frames resized to ``size = (W, H)`` when given."""
    if not frames:
        raise ValueError("no frames")
    size = size or frames[0].size
    rgb = [f.convert("RGB") for f in frames]
    return np.stack(
        [np.asarray(f if f.size == size else f.resize(size, Image.BICUBIC)) for f in rgb]
    )


def temporal_flicker(frames: np.ndarray) -> float:
    """Mean ``|f_{t+1} - f_t| / 255`` over pixels and time for ``frames [T, H, W, C]`` uint8.

    Raises:
        ValueError: fewer than two frames.
    """
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need frames [T >= 2, H, W, C], got {frames.shape}")
    diff = np.abs(np.diff(frames.astype(np.float64), axis=0))  # (T-1, H, W, C)
    return float(diff.mean() / 255.0)


def track_points(
    frames: np.ndarray,
    *,
    max_points: int = 400,
    quality: float = 0.01,
    min_distance: int = 4,
    fb_threshold: float = 1.0,
) -> np.ndarray:
    """Track corners of frame 0 through ``frames [T, H, W, 3]`` uint8 with OpenCV LK flow.

    A point is kept only if it is found in every frame and its forward-backward error
    (track to the next frame and back) stays below ``fb_threshold`` pixels.

    Returns:
        ``[N, T, 2]`` float32 (x, y) positions of the ``N`` surviving tracks.
    """
    cv2 = _cv2()
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need frames [T >= 2, H, W, 3], got {frames.shape}")
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    pts = cv2.goodFeaturesToTrack(
        gray[0], maxCorners=max_points, qualityLevel=quality, minDistance=min_distance
    )
    if pts is None:
        return np.zeros((0, len(frames), 2), np.float32)
    pts = pts.astype(np.float32)  # (N, 1, 2)
    lk = {
        "winSize": (15, 15),
        "maxLevel": 3,
        "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
    }
    tracks = [pts[:, 0]]
    alive = np.ones(len(pts), bool)
    for prev, cur in zip(gray[:-1], gray[1:]):
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts, None, **lk)
        back, st_b, _ = cv2.calcOpticalFlowPyrLK(cur, prev, nxt, None, **lk)
        fb = np.linalg.norm((back - pts)[:, 0], axis=-1)
        alive &= (st[:, 0] == 1) & (st_b[:, 0] == 1) & (fb < fb_threshold)
        tracks.append(nxt[:, 0])
        pts = nxt
    return np.stack(tracks, axis=1)[alive]  # (N, T, 2)


def motion_fidelity_from_tracks(
    src_tracks: np.ndarray, edit_tracks: np.ndarray, min_speed: float = 0.1
) -> float:
    """Motion fidelity of two track sets ``[N, T, 2]`` and ``[M, T, 2]`` (see module doc)."""
    if src_tracks.ndim != 3 or edit_tracks.ndim != 3:
        raise ValueError(
            f"tracks must be [N, T, 2], got {src_tracks.shape} and {edit_tracks.shape}"
        )
    if src_tracks.shape[1] != edit_tracks.shape[1]:
        raise ValueError(
            f"track lengths differ: {src_tracks.shape[1]} vs {edit_tracks.shape[1]} frames"
        )

    def unit_velocities(tracks: np.ndarray) -> np.ndarray:
        v = np.diff(tracks.astype(np.float64), axis=1)  # (N, T-1, 2)
        speed = np.linalg.norm(v, axis=-1)  # (N, T-1)
        v = v[speed.mean(axis=1) >= min_speed]
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)

    u_src, u_edit = unit_velocities(src_tracks), unit_velocities(edit_tracks)
    if len(u_src) == 0 or len(u_edit) == 0:
        return math.nan
    corr = np.einsum("nkd,mkd->nm", u_src, u_edit) / u_src.shape[1]  # (N, M)
    return float(0.5 * (corr.max(axis=0).mean() + corr.max(axis=1).mean()))


def motion_fidelity(
    src_frames: np.ndarray, edit_frames: np.ndarray, *, min_speed: float = 0.1, **track_kw
) -> float:
    """Motion fidelity of an edit ``[T, H, W, 3]`` against its source (same shape)."""
    if src_frames.shape != edit_frames.shape:
        raise ValueError(
            f"source {src_frames.shape} and edit {edit_frames.shape} differ; resize the edit "
            "to the source size and give both the same number of frames"
        )
    return motion_fidelity_from_tracks(
        track_points(src_frames, **track_kw), track_points(edit_frames, **track_kw), min_speed
    )


__all__ = [
    "is_video",
    "read_frames",
    "frames_to_array",
    "temporal_flicker",
    "track_points",
    "motion_fidelity_from_tracks",
    "motion_fidelity",
]

"""Temporal flicker and motion fidelity (OpenCV Lucas-Kanade tracks) on synthetic clips."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from byg.cli import main as cli_main
from byg.eval.report import video_table
from byg.eval.video_metrics import (
    frames_to_array,
    motion_fidelity,
    motion_fidelity_from_tracks,
    read_frames,
    temporal_flicker,
    track_points,
)

T, SIZE = 8, 64


def texture(seed: int, size: int = 160) -> np.ndarray:
    """A smooth random RGB texture with plenty of trackable corners, uint8 ``[S, S, 3]``."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def moving(tex: np.ndarray, dx: int, dy: int, t: int = T) -> np.ndarray:
    """``[T, SIZE, SIZE, 3]``: a camera window sliding over ``tex`` by (dx, dy) px/frame.

    The content moves by (-dx, -dy) in the frame.
    """
    x0 = y0 = 40
    return np.stack(
        [tex[y0 + k * dy : y0 + k * dy + SIZE, x0 + k * dx : x0 + k * dx + SIZE] for k in range(t)]
    )


# ----------------------------------------------------------------------------- flicker


def test_flicker_zero_on_static_and_positive_on_noise():
    static = np.repeat(texture(0)[None, :SIZE, :SIZE], T, axis=0)
    assert temporal_flicker(static) == 0.0
    noisy = static.astype(np.int16) + np.random.default_rng(1).integers(-30, 31, static.shape)
    noisy = noisy.clip(0, 255).astype(np.uint8)
    assert temporal_flicker(noisy) > 0.02
    # exact value: frames alternate between 0 and 51 -> mean |diff| / 255 = 0.2
    alt = np.stack([np.full((4, 4, 3), 51 * (k % 2), np.uint8) for k in range(5)])
    assert temporal_flicker(alt) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_flicker(static[:1])


# ----------------------------------------------------------------------------- motion


def test_tracks_follow_a_translation():
    clip = moving(texture(0), dx=2, dy=0)
    tracks = track_points(clip)
    assert tracks.shape[0] > 20 and tracks.shape[1:] == (T, 2)
    v = np.diff(tracks, axis=1)  # content moves left by 2 px per frame
    np.testing.assert_allclose(np.median(v.reshape(-1, 2), axis=0), [-2.0, 0.0], atol=0.1)


def test_motion_fidelity_same_vs_different_motion():
    src = moving(texture(0), dx=2, dy=0)
    same_motion = moving(255 - texture(5), dx=2, dy=0)  # new appearance, same motion
    down = moving(texture(0), dx=0, dy=2)
    static = moving(texture(0)[:, ::-1].copy(), dx=0, dy=0)
    mf_same = motion_fidelity(src, same_motion)
    mf_down = motion_fidelity(src, down)
    assert mf_same > 0.95
    assert mf_down < 0.3 and mf_down < mf_same
    assert math.isnan(motion_fidelity(src, static))  # nothing moves in the edit
    with pytest.raises(ValueError, match="differ"):
        motion_fidelity(src, src[:-1])


def test_motion_fidelity_on_constructed_tracks():
    k = np.arange(5, dtype=np.float64)[None, :, None]  # (1, T, 1)
    right = np.concatenate([k, 0 * k], axis=-1) + np.array([[[3.0, 4.0]]])  # (1, T, 2)
    up = np.concatenate([0 * k, -k], axis=-1)
    assert motion_fidelity_from_tracks(right, right) == pytest.approx(1.0)
    assert motion_fidelity_from_tracks(right, up) == pytest.approx(0.0)
    assert motion_fidelity_from_tracks(right, -right) == pytest.approx(-1.0)
    # each edit track finds its best match among the sources, and vice versa
    both = np.concatenate([right, up])
    assert motion_fidelity_from_tracks(both, right) == pytest.approx(0.5 * (1.0 + 0.5))
    with pytest.raises(ValueError, match="lengths differ"):
        motion_fidelity_from_tracks(right, right[:, :3])


# ----------------------------------------------------------------------------- files and CLI


def save_folder(frames: np.ndarray, path) -> None:
    path.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{i:04d}.png")


def test_read_frames_from_folder_video_and_gif(tmp_path):
    clip = moving(texture(0), 2, 0, t=5)
    save_folder(clip, tmp_path / "frames")
    assert len(read_frames(tmp_path / "frames")) == 5
    assert len(read_frames(tmp_path / "frames", max_frames=3)) == 3
    w = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 8, (SIZE, SIZE))
    assert w.isOpened()
    for f in clip:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    frames = read_frames(tmp_path / "v.avi")
    assert len(frames) == 5 and frames[0].size == (SIZE, SIZE)
    assert np.abs(np.asarray(frames[2], float) - clip[2]).mean() < 12  # MJPG is lossy
    imgs = [Image.fromarray(f) for f in clip]
    imgs[0].save(tmp_path / "a.gif", save_all=True, append_images=imgs[1:])
    assert len(read_frames(tmp_path / "a.gif")) == 5
    assert frames_to_array(imgs, size=(32, 16)).shape == (5, 16, 32, 3)
    with pytest.raises(FileNotFoundError):
        read_frames(tmp_path / "none.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames"):
        read_frames(tmp_path / "empty")


def test_cli_video_writes_metrics_for_the_report(tmp_path):
    src = moving(texture(0), 2, 0)
    save_folder(src, tmp_path / "src")
    save_folder(moving(255 - texture(5), 2, 0), tmp_path / "good")
    save_folder(moving(texture(0), 0, 2), tmp_path / "bad")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"id": "good", "source": "src", "edited": "good"})
        + "\n"
        + json.dumps({"id": "bad", "source": "src", "edited": "bad"})
        + "\n"
    )
    results = tmp_path / "results"
    assert (
        cli_main(
            ["eval", "video", "--pairs", str(pairs), "--method", "m", "--results", str(results)]
        )
        == 0
    )
    rows = [json.loads(x) for x in (results / "m" / "video_metrics.jsonl").read_text().splitlines()]
    good, bad = rows
    assert good["motion_fidelity"] > 0.95 > 0.3 > bad["motion_fidelity"]
    assert good["frames"] == T and good["flicker_source"] > 0
    table = video_table(results, ["m"])
    assert table is not None and "| m | 2 |" in table and "Motion fid." in table

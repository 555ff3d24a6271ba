"""Toy video metrics on hand-made clips, the video configs, and a tiny end-to-end demo-video."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from byg.data.toy_video import ToyVideoConfig, ToyVideoEditDataset
from byg.eval.toy_oracle import ToyOracle
from byg.eval.toy_video_metrics import (
    centroids,
    evaluate_video_edits,
    motion_error,
    static_region,
    temporal_flicker,
)

# --------------------------------------------------------------------------- metrics


def _square_clip(frames: int = 6, size: int = 24, start: int = 4, step: int = 1):
    """A white 5x5 square moving right by ``step`` px per frame on grey: video and masks."""
    video = torch.full((1, 3, frames, size, size), -0.5)
    masks = torch.zeros(1, frames, size, size, dtype=torch.bool)
    for f in range(frames):
        x0 = start + step * f
        masks[0, f, 8:13, x0 : x0 + 5] = True
        video[0, :, f, 8:13, x0 : x0 + 5] = 1.0
    return video, masks


def test_static_clip_has_zero_flicker_and_noise_has_some():
    video, masks = _square_clip(step=0)
    assert temporal_flicker(video).item() == 0.0
    video, masks = _square_clip(step=1)
    region = static_region(masks)
    assert temporal_flicker(video, region).item() == 0.0  # the moving object is not "static"
    assert temporal_flicker(video).item() > 0  # ... but counts when the whole frame is used
    noisy = video + 0.1 * torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    # E|a - b| / 2 for independent N(0, 0.1²) pixels: 0.1 · √2 · √(2/π) / 2 = 0.1 / √π
    expected = 0.1 / torch.pi**0.5
    assert temporal_flicker(noisy, region).item() == pytest.approx(expected, rel=0.1)


def test_shifted_clip_has_the_expected_centroid_distance():
    _, masks = _square_clip()
    c = centroids(masks)[0]
    assert torch.allclose(c[:, 0], torch.arange(6) + 4 + 2.5) and torch.allclose(
        c[:, 1], torch.full((6,), 10.5)
    )
    shifted = torch.roll(masks, shifts=(2, 0), dims=(-1, -2))  # 2 px to the right
    assert motion_error(shifted, masks).item() == pytest.approx(2.0)
    diag = torch.roll(masks, shifts=(3, 4), dims=(-1, -2))  # 3 right, 4 down: 5 px
    assert motion_error(diag, masks).item() == pytest.approx(5.0)
    assert motion_error(masks, masks).item() == 0.0
    empty = torch.zeros_like(masks)  # no object at all: the frame diagonal per frame
    assert motion_error(empty, masks).item() == pytest.approx((2 * 24**2) ** 0.5)


@pytest.fixture(scope="module")
def oracle():
    return ToyOracle.load()


def test_identity_and_ground_truth_reference_metrics(oracle):
    world = ToyVideoConfig()
    for split in ("seen", "unseen"):
        ds = ToyVideoEditDataset(world, 4, seed=5, split=split)
        exs = [ds.example(i) for i in range(4)]
        src = torch.stack([ds[i]["x_src"] for i in range(4)])
        tgt = torch.stack([ds[i]["x_tgt"] for i in range(4)])
        ident = evaluate_video_edits(src, exs, oracle, world)["overall"]
        truth = evaluate_video_edits(tgt, exs, oracle, world)["overall"]
        assert ident["edit_success"] == 0.0
        assert ident["motion_err_px"] == 0.0 and ident["flicker"] == 0.0
        assert ident["preservation"] >= 0.9
        assert truth["edit_success"] >= 0.9 and truth["preservation"] >= 0.9
        assert truth["psnr"] == 100.0 and truth["flicker"] == 0.0
        assert truth["motion_err_px"] < 0.5
        # a clip played backwards: same frames, wrong motion
        rev = evaluate_video_edits(tgt.flip(2), exs, oracle, world)["overall"]
        assert rev["motion_err_px"] > 0.5 and rev["psnr"] < 100.0


# --------------------------------------------------------------------------- configs


def test_video_config_sections_load():
    from byg.demo_video import demo_configs, load_video_pretrain_config
    from byg.run_config import load_run_config

    run = load_run_config("configs/toy_video.yaml", ["train.steps=7"])
    assert (run.model.backbone, run.data.source, run.train.steps) == ("toy_video", "toy_video", 7)
    assert run.byg.p_id == pytest.approx(0.10) and run.byg.time.kind == "logit_normal"
    assert run.byg.time.shift > 1 and run.ema_decay == 0.0  # EMA off by default ...
    on = load_run_config("configs/toy_video.yaml", ["train.ema_decay=0.99"])
    assert on.ema_decay == 0.99  # ... and on as an option
    base = load_video_pretrain_config("configs/toy_video.yaml", ["steps=3"])
    assert base.steps == 3 and base.model.frames == run.data.toy["frames"]
    assert base.model.image_size == run.data.resolution
    _, _, demo = demo_configs("configs/toy_video.yaml")
    assert demo.n_eval >= 1


# --------------------------------------------------------------------------- end to end

TINY_BASE = [
    "model.frames=4",
    "model.image_size=16",
    "model.dim=24",
    "model.depth=1",
    "model.heads=2",
    "model.stem_channels=8",
    "world.resolution=16",
    "world.frames=4",
    "steps=3",
    "pool_size=8",
    "batch_size=4",
    "eval.num_samples=2",
    "eval.sample_steps=2",
    "eval.batch_size=2",
    "warmup_steps=1",
]
TINY = {
    "base": TINY_BASE,
    "run": [
        "data.resolution=16",
        "data.toy.frames=4",
        "train.steps=3",
        "byg.warmup_steps=1",
        "byg.warmup_ratio=null",
        "byg.rollout_steps=1",
        "train.batch_size=2",
        "train.save_every=3",
        "lora.rank=2",
    ],
    "demo": ["n_eval=2", "sample_steps=2", "flowedit.steps=2", "flowedit.n_max=1", "gif_rows=1"],
}


def test_tiny_demo_video_writes_report_results_and_gif(tmp_path):
    from byg.demo_video import run_video_demo

    out = tmp_path / "demo"
    res = run_video_demo(out, overrides=TINY)
    for name in (
        "report.md",
        "results.json",
        "samples.gif",
        "base/model.safetensors",
        "base/eval.json",
    ):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"] == ["ground_truth", "identity", "flowedit", "byg"]
    for m in saved["methods"]:
        for split in ("seen", "unseen"):
            r = saved[m][split]["overall"]
            assert r["n"] == 2 and 0.0 <= r["edit_success"] <= 1.0
    ident = saved["identity"]["seen"]["overall"]  # the source itself: preserved, static, in place
    assert (
        ident["preservation"] == 1.0 and ident["flicker"] == 0.0 and ident["motion_err_px"] == 0.0
    )
    assert saved["steps"] == 3 and not saved["base_reused"] and res["p_id"] == pytest.approx(0.10)
    assert "motion_direction" in saved["base"] and "accuracy" in saved["base"]
    report = (out / "report.md").read_text()
    assert "| byg | unseen |" in report and "flowedit" in report
    with Image.open(out / "samples.gif") as gif:
        assert gif.n_frames == 4  # one GIF frame per clip frame
        # 2 rows (1 seen + 1 unseen) x 4 columns of 16+2 px, upscaled 4x
        assert gif.size == (4 * 18 * 4, 2 * 18 * 4)
    # a second run reuses the base
    again = run_video_demo(out, overrides={**TINY, "run": TINY["run"] + ["train.steps=1"]})
    assert again["base_reused"]


def test_pretrain_base_cli_dispatches_on_video_configs(tmp_path):
    from byg.cli import main

    args = ["pretrain-base", "--config", "configs/toy_video.yaml", "--out", str(tmp_path / "b")]
    for item in TINY_BASE:
        args += ["--set", item]
    assert main(args) == 0
    ev = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert set(ev["accuracy"]) == {"background", "shape", "colour", "size", "texture", "style"}
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    assert meta["backbone"]["class"] == "ToyVideoBackbone"

"""The toy video world: motion, edits keep the motion, splits, captions, reuse of the renderer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from byg.backbones.toy import split_words
from byg.data import toy
from byg.data.toy import FORBIDDEN_REVERSE_WORDS, POSITION_RANGE
from byg.data.toy_video import (
    DIRECTIONS,
    Clip,
    Motion,
    ToyVideoCaptionDataset,
    ToyVideoConfig,
    ToyVideoEditDataset,
    frame_attributes,
    render_clip,
    sample_motion,
    to_video_tensor,
    vocabulary,
)
from byg.eval.toy_oracle import analyse

CFG = ToyVideoConfig()


def _examples(split: str, n: int = 40, cfg: ToyVideoConfig = CFG):
    ds = ToyVideoEditDataset(cfg, n, seed=3, split=split)
    return [ds.example(i) for i in range(n)]


def test_items_have_the_video_layout_and_are_deterministic():
    ds = ToyVideoEditDataset(CFG, 4, seed=0)
    a, b = ds[2], ToyVideoEditDataset(CFG, 4, seed=0)[2]
    assert a["x_src"].shape == (3, CFG.frames, CFG.resolution, CFG.resolution)
    assert a["x_tgt"].shape == a["x_src"].shape
    assert a["x_src"].min() >= -1 and a["x_src"].max() <= 1
    assert torch.equal(a["x_src"], b["x_src"]) and a["c_fwd"] == b["c_fwd"]
    cap = ToyVideoCaptionDataset(CFG, 3, seed=0)[1]
    assert cap["video"].shape == (3, CFG.frames, CFG.resolution, CFG.resolution)
    assert any(w in cap["caption"] for w in ("moving", "sliding", "travelling"))


def test_frames_are_drawn_by_the_image_renderer():
    ex = _examples("train", 1)[0]
    frames = render_clip(ex.src, CFG)
    scales = ex.src.motion.scales(CFG.frames, CFG.size_change)
    for f, (scene, s) in enumerate(zip(ex.src.frame_scenes(CFG.frames), scales)):
        assert np.array_equal(frames[f], toy.render(scene, CFG.world(), scale=float(s)))
    # scale 1 is the image world's plain render
    assert np.array_equal(
        toy.render(ex.src.scene, CFG.world(), scale=1.0), toy.render(ex.src.scene, CFG.world())
    )


@pytest.mark.parametrize("split", ["train", "unseen"])
def test_edit_changes_one_attribute_and_keeps_the_motion(split):
    for ex in _examples(split, 24):
        assert ex.tgt.motion == ex.src.motion
        diff = [
            f.name
            for f in dataclasses.fields(ex.src.scene)
            if getattr(ex.src.scene, f.name) != getattr(ex.tgt.scene, f.name)
        ]
        assert diff == [ex.attribute]
        assert getattr(ex.tgt.scene, ex.attribute) == ex.target_value
        # the object moves identically: same per-frame spec positions and sizes, and the
        # oracle's silhouette centroids agree within a pixel (anti-aliased edges depend on
        # the colours, so not exactly)
        keys = ("x", "y", "size")
        spec_src, spec_tgt = frame_attributes(ex.src, CFG), frame_attributes(ex.tgt, CFG)
        assert [[s[k] for k in keys] for s in spec_src] == [[s[k] for k in keys] for s in spec_tgt]
        a = analyse(to_video_tensor(render_clip(ex.src, CFG)).transpose(0, 1))
        b = analyse(to_video_tensor(render_clip(ex.tgt, CFG)).transpose(0, 1))
        assert torch.allclose(a.x, b.x, atol=1.0 / CFG.resolution)
        assert torch.allclose(a.y, b.y, atol=1.0 / CFG.resolution)


def test_paths_stay_in_range_and_follow_their_direction():
    lo, hi = POSITION_RANGE
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = sample_motion(rng, CFG)
        p = m.positions(CFG.frames)
        assert (p >= lo - 1e-9).all() and (p <= hi + 1e-9).all()
        d = p[-1] - p[0]
        cos = d @ np.array(DIRECTIONS[m.direction]) / np.linalg.norm(d)
        assert cos > 0.99  # the endpoints lie on the captioned direction (curves bulge sideways)
        dx, dy = DIRECTIONS[m.direction]
        chord = dx * (p[:, 1] - p[0, 1]) - dy * (p[:, 0] - p[0, 0])  # sideways offset
        if m.kind == "linear":
            assert np.abs(chord).max() < 1e-9
        else:
            assert np.abs(chord).max() > 0.03


def test_growing_objects_grow_and_shrinking_ones_shrink():
    scene = toy.Scene("blue", "square", "red", "large", "solid", "filled", 0.5, 0.5)
    area = {}
    for change in ("growing", "shrinking", "none"):
        clip = Clip(scene, Motion("linear", "right", "slowly", change, 0.5, 0.5))
        scales = clip.motion.scales(CFG.frames, CFG.size_change)
        assert scales.max() == 1.0  # never larger than the size category
        area[change] = analyse(to_video_tensor(render_clip(clip, CFG)).transpose(0, 1)).area
    # thresholded areas of a moving object jitter by a pixel row (~12 px) at most
    none, grow, shrink = area["none"], area["growing"], area["shrinking"]
    assert (none - none[0]).abs().max() <= 12
    assert grow[0] < none[0] - 40 and (grow[-1] - none[-1]).abs() <= 12
    assert shrink[-1] < none[-1] - 40 and (shrink[0] - none[0]).abs() <= 12
    assert torch.all(torch.diff(grow) > -12) and torch.all(torch.diff(shrink) < 12)


def test_split_holds_out_outline_sources_and_unseen_values():
    assert all(ex.src.scene.style == "filled" and ex.seen for ex in _examples("train"))
    assert all(ex.src.scene.style == "outline" and not ex.seen for ex in _examples("unseen"))
    types = {ex.edit_type for ex in _examples("unseen", 60)}
    assert types == {"style", "colour", "background", "texture"}
    styles = {
        (ex.src.scene.style, ex.target_value)
        for ex in _examples("train", 60)
        if ex.edit_type == "style"
    }
    assert styles == {("filled", "outline")}
    cfg = ToyVideoConfig(
        unseen_source_styles=(), unseen_colours=("purple",), unseen_textures=("dotted",)
    )
    for ex in _examples("train", 60, cfg):
        if ex.edit_type in ("colour", "background"):
            assert "purple" not in (ex.target_value, getattr(ex.src.scene, ex.edit_type))
        if ex.edit_type == "texture":
            assert "dotted" not in (ex.target_value, ex.src.scene.texture)
    for ex in _examples("unseen", 30, cfg):  # the unseen value is the source's or the target's
        assert {ex.target_value, getattr(ex.src.scene, ex.attribute)} & {"purple", "dotted"}


def test_captions_share_template_and_words_are_known():
    vocab = set(vocabulary())
    for ex in _examples("train", 30) + _examples("unseen", 30):
        src, tgt = ex.c_src.split(), ex.c_tgt.split()
        assert len(src) - len(tgt) in (-2, -1, 0, 1, 2)  # only the edited value's words differ
        assert src[-3:] == tgt[-3:]  # the same motion phrase ends both
        for text in (ex.c_src, ex.c_tgt, ex.c_fwd, ex.c_rev):
            assert set(split_words(text)) <= vocab, text
        assert not set(split_words(ex.c_rev)) & set(FORBIDDEN_REVERSE_WORDS)


def test_config_validation():
    with pytest.raises(ValueError, match="frames"):
        ToyVideoConfig(frames=1)
    with pytest.raises(ValueError, match="unknown"):
        ToyVideoConfig(edit_types=("size",))
    with pytest.raises(ValueError, match="every style"):
        ToyVideoConfig(unseen_source_styles=("filled", "outline"))
    with pytest.raises(ValueError, match="scale"):
        toy.render(_examples("train", 1)[0].src.scene, CFG.world(), scale=0.0)

"""The toy world: deterministic distinct renders, complete captions, exact one-attribute edits."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pytest
import torch

from byg.data.toy import (
    COLOURS,
    EDIT_ATTRIBUTE,
    EDIT_TYPES,
    FORBIDDEN_REVERSE_WORDS,
    POSITION_RANGE,
    SECOND_EXTENT,
    SHAPES,
    SIZE_EXTENT,
    SIZE_WORDS,
    SIZES,
    STYLES,
    TEXTURES,
    Scene,
    SecondObject,
    ToyCaptionDataset,
    ToyEditDataset,
    ToyWorldConfig,
    caption,
    collate,
    corner_centre,
    farthest_corner,
    from_tensor,
    instruction_prompt,
    render,
    sample_edit,
    sample_scene,
    shade,
    shape_sdf,
    to_tensor,
    vocabulary,
)

CFG = ToyWorldConfig()
BASE = Scene(
    background="blue",
    shape="circle",
    colour="orange",
    size="medium",
    texture="solid",
    style="filled",
    x=0.5,
    y=0.5,
)
CAPTION_WORDS = {
    "solid": ("plain", "solid"),
    "striped": ("striped", "stripes"),
    "dotted": ("dotted", "spotted", "dots"),
    "filled": ("filled",),
    "outline": ("outline", "line drawing"),
}


def test_render_is_deterministic_uint8_and_antialiased():
    a, b = render(BASE, CFG), render(BASE, CFG)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)
    colours = {tuple(p) for p in a.reshape(-1, 3)}
    assert len(colours) > 2, "edges should blend object and background"
    big = render(BASE, ToyWorldConfig(resolution=64))
    assert big.shape == (64, 64, 3)


@pytest.mark.parametrize(
    "attr, values",
    [
        ("shape", SHAPES),
        ("colour", tuple(c for c in COLOURS if c != "blue")),
        ("background", tuple(c for c in COLOURS if c != "orange")),
        ("size", SIZES),
        ("texture", TEXTURES),
        ("style", STYLES),
    ],
)
def test_every_value_renders_distinctly(attr, values):
    for size in SIZES:  # also at the smallest size, where texture and style are hardest
        base = dataclasses.replace(BASE, size=size) if attr != "size" else BASE
        ims = [render(dataclasses.replace(base, **{attr: v}), CFG).astype(int) for v in values]
        for (i, a), (j, b) in itertools.combinations(enumerate(ims), 2):
            diff = np.abs(a - b).sum(-1) > 60
            assert diff.sum() >= 4, (
                f"{attr}={values[i]} vs {values[j]} ({size}) differ in {diff.sum()} px"
            )


def test_texture_and_style_distinct_for_every_small_shape():
    for shape, style in itertools.product(SHAPES, STYLES):
        s = dataclasses.replace(BASE, shape=shape, size="small", style=style)
        ims = [render(dataclasses.replace(s, texture=t), CFG).astype(int) for t in TEXTURES]
        for a, b in itertools.combinations(ims, 2):
            assert (np.abs(a - b).sum(-1) > 60).sum() >= 2, (shape, style)


def test_filled_texture_marks_use_the_shade_and_outline_has_a_hole():
    s = dataclasses.replace(BASE, size="large", texture="striped")
    img = render(s, CFG)
    assert (np.abs(img.astype(int) - shade("orange")).sum(-1) == 0).sum() > 20
    o = render(dataclasses.replace(BASE, size="large", style="outline"), CFG)
    cy = cx = 16
    assert tuple(o[cy, cx]) == COLOURS["blue"], "outline interior shows the background"


def test_main_object_inside_frame_and_apart_from_second_object():
    res = 128  # a fine grid for the geometry check (coordinates in fractions of the side)
    u = (np.arange(res) + 0.5) / res
    px, py = np.meshgrid(u, u)
    border = np.zeros((res, res), bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    lo, hi = POSITION_RANGE
    r = SIZE_EXTENT["large"]
    for x, y in itertools.product((lo, 0.5, hi), repeat=2):  # worst cases: range corners, middle
        sx, sy = corner_centre(farthest_corner(x, y))
        for shape in SHAPES:
            inside = shape_sdf(shape, px, py, x, y, r) < 0
            assert not (inside & border).any(), f"{shape} at ({x}, {y}) touches the frame"
            for other in SHAPES:
                near = shape_sdf(other, px, py, sx, sy, SECOND_EXTENT) < 1 / 32
                assert not (inside & near).any(), f"{shape} at ({x}, {y}) meets a {other}"


def test_caption_states_every_attribute_and_uses_vocabulary():
    vocab = set(vocabulary())
    assert all(w == w.lower() and re.fullmatch(r"[a-z]+", w) for w in vocab)
    rng = np.random.default_rng(1)
    cfg = ToyWorldConfig(second_object_prob=0.5)
    phrasings = set()
    for _ in range(300):
        s = sample_scene(rng, cfg)
        c = caption(s, rng)
        words = c.split()
        assert set(words) <= vocab, set(words) - vocab
        assert s.shape in words and s.colour in words
        assert f"{s.background} background" in c or f"on {s.background}" in c
        assert any(w in c for w in SIZE_WORDS[s.size])
        assert any(w in c for w in CAPTION_WORDS[s.texture]), (s.texture, c)
        assert any(w in c for w in CAPTION_WORDS[s.style]), (s.style, c)
        if s.second is not None:
            assert f"{s.second.colour} {s.second.shape}" in c
            assert "corner" in words
        else:
            assert "corner" not in words
        phrasings.add(re.sub("|".join([*COLOURS, *SHAPES]), "X", c))
    assert len(phrasings) > 50, "captions should vary in phrasing"


def test_edits_change_exactly_one_attribute_and_instructions_are_clean():
    vocab = set(vocabulary())
    rng = np.random.default_rng(2)
    seen_types = set()
    for split in ("train", "unseen"):
        for _ in range(300):
            ex = sample_edit(rng, CFG, split)
            seen_types.add(ex.edit_type)
            assert ex.attribute == EDIT_ATTRIBUTE[ex.edit_type]
            src, tgt = ex.src.attributes(), ex.tgt.attributes()
            diff = {k for k in src if src[k] != tgt[k]}
            if ex.edit_type in ("add", "remove"):
                assert diff == {"has_second"}
                assert ex.src.second is None if ex.edit_type == "add" else ex.tgt.second is None
            else:
                assert diff == {ex.attribute}, (ex.edit_type, diff)
                assert ex.src.second == ex.tgt.second
                assert tgt[ex.attribute] == ex.target_value
            for text in (ex.c_src, ex.c_tgt, ex.c_fwd, ex.c_rev):
                assert set(text.split()) <= vocab, text
            for word in FORBIDDEN_REVERSE_WORDS:
                assert word not in ex.c_rev.split(), ex.c_rev
                assert word not in ex.c_fwd.split(), ex.c_fwd
            if ex.edit_type in ("colour", "background", "replace", "style"):
                value = ex.target_value
                assert value in ex.c_fwd or (value == "outline" and "line" in ex.c_fwd), ex.c_fwd
                assert str(src[ex.attribute]) in ex.c_rev or ex.edit_type == "style"
            if ex.edit_type == "texture":
                word = {"solid": "plain", "striped": "stripe", "dotted": "dot"}[ex.target_value]
                assert word in ex.c_fwd, ex.c_fwd
            if ex.edit_type == "add":
                assert f"{ex.tgt.second.colour} {ex.tgt.second.shape}" in ex.c_fwd
                assert f"{ex.tgt.second.colour} {ex.tgt.second.shape}" in ex.c_rev
            assert ex.c_src != ex.c_tgt
            for text in (ex.c_src, ex.c_tgt):  # captions describe, never negate (data rules)
                assert not {"no", "not", "without"} & set(text.split()), text
    assert seen_types == set(EDIT_TYPES)


def test_unseen_values_never_targets_in_train_and_only_unseen_in_unseen_split():
    rng = np.random.default_rng(3)
    for split in ("train", "seen"):
        for _ in range(1500):
            ex = sample_edit(rng, CFG, split)
            assert ex.seen and ex.edit_type not in CFG.unseen_edit_types
            assert ex.edit_type != "style"
            if ex.edit_type in ("colour", "background"):
                assert ex.target_value not in CFG.unseen_colours
                assert ex.src.attributes()[ex.attribute] not in CFG.unseen_colours  # reverse target
            if ex.edit_type in ("add", "remove"):
                second = ex.tgt.second or ex.src.second
                assert second.colour not in CFG.unseen_colours
            if ex.edit_type == "texture":
                assert "dotted" not in (ex.target_value, ex.src.texture)
    for _ in range(500):
        ex = sample_edit(rng, CFG, "unseen")
        assert not ex.seen
        if ex.edit_type == "style":
            continue
        if ex.edit_type == "add":
            assert ex.tgt.second.colour in CFG.unseen_colours
        elif ex.edit_type == "texture":
            assert ex.target_value in CFG.unseen_textures
        else:
            assert ex.edit_type in ("colour", "background")
            assert ex.target_value in CFG.unseen_colours


def test_config_validation_names_bad_values():
    with pytest.raises(ValueError, match="magenta"):
        ToyWorldConfig(unseen_colours=("magenta",))
    with pytest.raises(ValueError, match="wavy"):
        ToyWorldConfig(unseen_textures=("wavy",))
    with pytest.raises(ValueError, match="rotate"):
        ToyWorldConfig(edit_types=("colour", "rotate"))
    with pytest.raises(ValueError, match="style"):
        ToyWorldConfig(edit_types=("colour",), unseen_edit_types=("style",))
    with pytest.raises(ValueError, match="second_object_prob"):
        ToyWorldConfig(second_object_prob=1.5)
    with pytest.raises(ValueError, match="hexagon"):
        dataclasses.replace(BASE, shape="hexagon")
    with pytest.raises(ValueError, match="split"):
        sample_edit(np.random.default_rng(0), CFG, "test")  # type: ignore[arg-type]
    cfg = ToyWorldConfig(unseen_colours=["cyan"], unseen_edit_types=[])  # YAML lists are fine
    assert cfg.unseen_colours == ("cyan",)
    assert SecondObject("square", "red", "top_left").corner == "top_left"


def test_restricted_edit_types_and_no_unseen_edits():
    cfg = ToyWorldConfig(edit_types=("size", "colour"), unseen_edit_types=(), unseen_textures=())
    rng = np.random.default_rng(4)
    types = {sample_edit(rng, cfg, "train").edit_type for _ in range(50)}
    assert types == {"size", "colour"}
    types = {sample_edit(rng, cfg, "unseen").edit_type for _ in range(50)}
    assert types == {"colour"}
    none = ToyWorldConfig(edit_types=("size",), unseen_edit_types=(), unseen_textures=())
    with pytest.raises(ValueError, match="unseen"):
        sample_edit(rng, none, "unseen")


def test_tensor_round_trip():
    img = render(BASE, CFG)
    t = to_tensor(img)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(from_tensor(t), img)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(img.astype(np.float32))


def test_datasets_are_deterministic_and_splits_disjoint():
    ds = ToyEditDataset(CFG, n=8, seed=0, split="train")
    a, b = ds[3], ToyEditDataset(CFG, n=8, seed=0, split="train")[3]
    assert torch.equal(a["x_src"], b["x_src"]) and a["c_fwd"] == b["c_fwd"]
    assert a["x_src"].shape == (3, 32, 32) and a["index"] == 3 and a["seen"]
    assert set(a) == {
        "x_src",
        "x_tgt",
        "c_src",
        "c_tgt",
        "c_fwd",
        "c_rev",
        "edit_type",
        "seen",
        "index",
    }
    other = ToyEditDataset(CFG, n=8, seed=1, split="train")[3]
    assert not torch.equal(a["x_src"], other["x_src"])
    seen = ToyEditDataset(CFG, n=200, seed=0, split="seen")
    train = ToyEditDataset(CFG, n=200, seed=0, split="train")
    srcs = {(e.src.x, e.src.y) for e in map(train.example, range(200))}
    assert not srcs & {(e.src.x, e.src.y) for e in map(seen.example, range(200))}
    assert not ToyEditDataset(CFG, n=4, seed=0, split="unseen")[0]["seen"]
    batch = collate([ds[i] for i in range(4)])
    assert batch["x_src"].shape == (4, 3, 32, 32) and len(batch["c_fwd"]) == 4
    cap = ToyCaptionDataset(CFG, n=5, seed=0)
    assert torch.equal(cap[2]["image"], cap[2]["image"]) and cap[2]["caption"] == cap[2]["caption"]
    assert cap[2]["image"].shape == (3, 32, 32) and len(cap) == 5
    with pytest.raises(IndexError):
        cap[5]
    with pytest.raises(ValueError, match="split"):
        ToyEditDataset(CFG, n=4, seed=0, split="val")


def test_preview_writes_a_grid(tmp_path, capsys):
    from PIL import Image

    from byg.data.toy import main

    assert main(["--out", str(tmp_path / "p.png"), "--n", "3", "--split", "unseen"]) == 0
    assert Image.open(tmp_path / "p.png").size == (2 * 34 * 4, 3 * 34 * 4)
    assert capsys.readouterr().out.count("fwd") == 3


def test_instruction_prompts_end_at_the_scene_and_name_its_value():
    """Pretraining prompts that are instructions: every edit type comes up, unseen values
    included; the instruction names the scene's own value of the edited attribute (it is
    the result, not the source); add/remove only where the scene allows them."""
    rng = np.random.default_rng(5)
    kinds, colours = set(), set()
    for _ in range(600):
        scene = sample_scene(rng, CFG)
        text, kind = instruction_prompt(scene, rng, CFG)
        kinds.add(kind)
        assert set(text.split()) <= set(vocabulary()), text
        words = text.split()
        if kind in ("colour", "background"):
            value = getattr(scene, EDIT_ATTRIBUTE[kind])
            assert words[-1] == value or words[-2:] == [value, "background"], text
            colours.add(value)
        elif kind == "replace":
            assert scene.shape in words, text
        elif kind == "add":
            assert scene.second is not None and scene.second.shape in words, text
        elif kind == "remove":
            assert scene.second is None, text
    assert kinds == set(EDIT_TYPES)
    assert set(CFG.unseen_colours) <= colours
    a = instruction_prompt(scene, np.random.default_rng(9), CFG)
    assert a == instruction_prompt(scene, np.random.default_rng(9), CFG)


def test_texture_anchor_moves_the_pattern_with_the_object_or_keeps_it_on_the_image_grid():
    """``object``: moving the object down one pixel moves its stripes down one pixel;
    ``image``: the stripes stay on the image's grid (rows 3 and 0 of every 4, a band of half
    the period around each multiple of the period from the corner)."""
    image = dataclasses.replace(CFG, texture_anchor="image")
    s = dataclasses.replace(BASE, size="large", texture="striped", x=0.5, y=0.5)
    moved = dataclasses.replace(s, y=0.5 + 1 / 32)

    def marked_rows(img):  # rows of the middle column drawn in the marks' shade
        col = img[:, 16].astype(int)
        return {r for r in range(32) if np.abs(col[r] - shade(s.colour)).sum() == 0}

    a, b = marked_rows(render(s, CFG)), marked_rows(render(moved, CFG))
    assert len(a) >= 6 and {(r + 1) % 4 for r in a} == {r % 4 for r in b}
    for scene in (s, moved):
        rows = marked_rows(render(scene, image))
        assert len(rows) >= 6 and {r % 4 for r in rows} == {3, 0}
    with pytest.raises(ValueError, match="texture_anchor"):
        ToyWorldConfig(texture_anchor="centre")


def test_caption_instructions_change_the_edit_text_and_nothing_else():
    """``instructions: caption``: the forward text is the target's caption, the reverse the
    source's; the same seed draws the same scenes, edits and captions as the shipped world."""
    capt = dataclasses.replace(CFG, instructions="caption")
    for seed in range(20):
        a = sample_edit(np.random.default_rng(seed), CFG, "train")
        b = sample_edit(np.random.default_rng(seed), capt, "train")
        same = ("src", "tgt", "edit_type", "c_src", "c_tgt")
        assert [getattr(a, k) for k in same] == [getattr(b, k) for k in same]
        assert (b.c_fwd, b.c_rev) == (a.c_tgt, a.c_src) and a.c_fwd != a.c_tgt
    with pytest.raises(ValueError, match="instructions"):
        ToyWorldConfig(instructions="captions")

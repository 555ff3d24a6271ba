"""The toy video world: short clips of one moving toy object, every edit with a known ground truth.

A clip is a static scene spec (``Clip.scene``: a ``byg.data.toy.Scene`` without a second
object) plus a ``Motion``: the object's centre follows a straight or curved path (eight
directions, two speeds) and may grow or shrink smoothly. Frame ``f`` is rendered by the
image world's own renderer, ``byg.data.toy.render``, with the scene moved to the frame's
position and the object's extent scaled (``render(..., scale=)``); nothing is drawn twice.

Captions are the image world's caption of the scene followed by a motion phrase
("... in outline style moving from left to right quickly along a curve while growing").
Edits change one static attribute and keep the motion identical (same path, same scales):
the ground-truth target clip is the source clip with that attribute changed.

Edit types (``VIDEO_EDIT_TYPES``): ``style`` (filled <-> outline, both ways: the toy analogue
of cartoon <-> photo-realistic), ``colour``, ``background``, ``texture``.

Seen/unseen split (``ToyVideoConfig``):

* ``unseen_source_styles`` (default ``("outline",)``): source clips drawn in these styles
  never appear in training tuples: the toy analogue of the paper's out-of-domain 3D-CGI
  input videos. The ``unseen`` split holds edits OF such clips (any edit type; the style
  edit is then outline -> filled), the ``train``/``seen`` splits none.
* ``unseen_colours`` / ``unseen_textures`` (default empty): as in the image world, edits
  whose edited attribute takes such a value (as source or target value) are unseen.

Geometry. Object centres must stay in ``byg.data.toy.POSITION_RANGE`` (the image world's
guarantee that any object fits in the frame), a square of side 0.26: a "quick" path spans
``SPEED_TRAVEL["quickly"] = 0.24`` of the side, a "slow" one 0.12 (5.8 and 2.9 pixels at
24x24). Curved paths bulge sideways by ``CURVE_BULGE`` at their midpoint. Growing and
shrinking objects scale between ``1 - size_change`` and 1 of their size category's extent,
so they never exceed it.

Resolution: 24x24 by default. The oracle reads textures at 0.97 at 24x24 but at 0.42 at
16x16 (stripes 1 pixel wide), and 32x32 costs 1.8x the pixels on a 2-core CPU (numbers in
docs/video_toy.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from byg.data import toy
from byg.data.toy import (
    COLOURS,
    POSITION_RANGE,
    SHAPES,
    SIZE_EXTENT,
    SIZES,
    STYLES,
    TEXTURES,
    Scene,
    ToyWorldConfig,
)

VIDEO_EDIT_TYPES: tuple[str, ...] = ("style", "colour", "background", "texture")
MOTION_KINDS: tuple[str, ...] = ("linear", "curved")
SPEEDS: tuple[str, ...] = ("slowly", "quickly")
SIZE_CHANGES: tuple[str, ...] = ("none", "growing", "shrinking")
SPLITS: tuple[str, ...] = ("train", "seen", "unseen")

#: unit direction vectors in image coordinates (x right, y down)
_D = 1 / math.sqrt(2)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "down": (0.0, 1.0),
    "up": (0.0, -1.0),
    "down_right": (_D, _D),
    "down_left": (-_D, _D),
    "up_right": (_D, -_D),
    "up_left": (-_D, -_D),
}
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "right": ("from left to right", "to the right"),
    "left": ("from right to left", "to the left"),
    "down": ("from top to bottom", "downwards"),
    "up": ("from bottom to top", "upwards"),
    "down_right": ("diagonally down and to the right",),
    "down_left": ("diagonally down and to the left",),
    "up_right": ("diagonally up and to the right",),
    "up_left": ("diagonally up and to the left",),
}
SPEED_TRAVEL: dict[str, float] = {"slowly": 0.12, "quickly": 0.24}  # path length, fraction of side
SPEED_PHRASES: dict[str, tuple[str, ...]] = {"slowly": ("slowly",), "quickly": ("quickly", "fast")}
CURVE_BULGE = 0.05  # sideways offset of a curved path at its midpoint (fraction of the side)
CURVE_PHRASES = ("along a curve", "in an arc")
SIZE_CHANGE_PHRASES: dict[str, tuple[str, ...]] = {
    "growing": ("while growing", "getting bigger"),
    "shrinking": ("while shrinking", "getting smaller"),
}
MOVE_WORDS = ("moving", "sliding", "travelling")


# ----------------------------------------------------------------------------- config


def _as_tuple(name: str, value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ValueError(f"ToyVideoConfig.{name} must be a list of names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ToyVideoConfig:
    """What the toy video world draws and which edits are held out.

    Attributes:
        resolution: frame side in pixels (>= 16; 24 is the design point, see module doc).
        frames: frames per clip.
        shapes, colours, sizes, textures, styles: the attribute values clips use
            (subsets of the image world's; colours serve objects and backgrounds).
        motions: path kinds (``linear``, ``curved``).
        size_change_prob: probability that the object grows or shrinks over the clip.
        size_change: relative extent change of growing/shrinking objects.
        edit_types: edit types that exist (subset of ``VIDEO_EDIT_TYPES``).
        unseen_source_styles: styles whose clips are held out as edit sources (module doc).
        unseen_colours, unseen_textures: edited values held out (module doc).
    """

    resolution: int = 24
    frames: int = 8
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "purple")
    sizes: tuple[str, ...] = ("medium", "large")
    textures: tuple[str, ...] = TEXTURES
    styles: tuple[str, ...] = STYLES
    motions: tuple[str, ...] = MOTION_KINDS
    size_change_prob: float = 0.25
    size_change: float = 0.25
    edit_types: tuple[str, ...] = VIDEO_EDIT_TYPES
    unseen_source_styles: tuple[str, ...] = ("outline",)
    unseen_colours: tuple[str, ...] = ()
    unseen_textures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = {
            "shapes": SHAPES,
            "colours": tuple(COLOURS),
            "sizes": SIZES,
            "textures": TEXTURES,
            "styles": STYLES,
            "motions": MOTION_KINDS,
            "edit_types": VIDEO_EDIT_TYPES,
            "unseen_source_styles": STYLES,
            "unseen_colours": tuple(COLOURS),
            "unseen_textures": TEXTURES,
        }
        for name, allowed in known.items():
            value = _as_tuple(name, getattr(self, name))
            object.__setattr__(self, name, value)
            bad = [v for v in value if v not in allowed]
            if bad:
                raise ValueError(f"ToyVideoConfig.{name}: unknown {bad}; known: {list(allowed)}")
            if not value and name in ("shapes", "colours", "sizes", "textures", "styles"):
                raise ValueError(f"ToyVideoConfig.{name} must not be empty")
        if not isinstance(self.resolution, int) or self.resolution < 16:
            raise ValueError(
                f"ToyVideoConfig.resolution must be an int >= 16, got {self.resolution!r}"
            )
        if not isinstance(self.frames, int) or self.frames < 2:
            raise ValueError(f"ToyVideoConfig.frames must be an int >= 2, got {self.frames!r}")
        if len(self.colours) < 3:
            raise ValueError("ToyVideoConfig.colours needs at least 3 colours")
        if not 0.0 <= self.size_change_prob <= 1.0:
            raise ValueError(f"size_change_prob must be in [0, 1], got {self.size_change_prob}")
        if not 0.0 <= self.size_change < 0.5:
            raise ValueError(f"size_change must be in [0, 0.5), got {self.size_change}")
        if not self.edit_types:
            raise ValueError("ToyVideoConfig.edit_types must name at least one edit type")
        if set(self.unseen_source_styles) >= set(self.styles):
            raise ValueError("ToyVideoConfig.unseen_source_styles holds out every style")

    def world(self) -> ToyWorldConfig:
        """The image world config frames are rendered with."""
        return ToyWorldConfig(resolution=self.resolution, second_object_prob=0.0)


# ----------------------------------------------------------------------------- motion


@dataclass(frozen=True)
class Motion:
    """How the object moves: a path through ``centre`` along ``direction``.

    The centre of frame ``f`` (``τ = f / (F - 1)``) is
    ``centre + (τ - ½) L d + (4 τ (1 - τ) - ⅔) b n``: a straight segment of length
    ``L = SPEED_TRAVEL[speed]`` along the unit vector ``d`` plus, for curved paths only, a
    parabolic sideways bulge ``b = bend * CURVE_BULGE`` along the normal ``n`` (offset so
    that its mean over the path is 0, keeping the path around ``centre``).
    """

    kind: str
    direction: str
    speed: str
    size_change: str
    cx: float
    cy: float
    bend: float = 0.0  # curved paths: +1 or -1 (which side the arc bulges to)

    def __post_init__(self) -> None:
        checks = (
            ("kind", self.kind, MOTION_KINDS),
            ("direction", self.direction, tuple(DIRECTIONS)),
            ("speed", self.speed, SPEEDS),
            ("size_change", self.size_change, SIZE_CHANGES),
        )
        for name, value, known in checks:
            if value not in known:
                raise ValueError(f"Motion.{name}: unknown {value!r}; known: {list(known)}")

    def positions(self, frames: int) -> np.ndarray:
        """Object centres ``[F, 2]`` (x, y) in fractions of the side."""
        tau = np.linspace(0.0, 1.0, frames)
        dx, dy = DIRECTIONS[self.direction]
        travel = SPEED_TRAVEL[self.speed]
        x = self.cx + (tau - 0.5) * travel * dx
        y = self.cy + (tau - 0.5) * travel * dy
        if self.kind == "curved":
            b = self.bend * CURVE_BULGE
            off = 4 * tau * (1 - tau) * b - b * 2 / 3  # mean over [0, 1] is 0
            x, y = x - off * dy, y + off * dx  # normal (-dy, dx)
        return np.stack([x, y], 1)

    def scales(self, frames: int, size_change: float) -> np.ndarray:
        """Extent multipliers ``[F]`` (1 = the size category's extent)."""
        tau = np.linspace(0.0, 1.0, frames)
        if self.size_change == "growing":
            return 1.0 - size_change * (1 - tau)
        if self.size_change == "shrinking":
            return 1.0 - size_change * tau
        return np.ones(frames)

    def fits(self, frames: int) -> bool:
        lo, hi = POSITION_RANGE
        p = self.positions(max(frames, 9))
        return bool((p >= lo - 1e-9).all() and (p <= hi + 1e-9).all())


def sample_motion(rng: np.random.Generator, cfg: ToyVideoConfig) -> Motion:
    """A random motion whose whole path lies in ``POSITION_RANGE``."""
    lo, hi = POSITION_RANGE
    kind = cfg.motions[int(rng.integers(len(cfg.motions)))]
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
    change = "none"
    if rng.random() < cfg.size_change_prob:
        change = ("growing", "shrinking")[int(rng.integers(2))]
    bend = float(rng.choice([-1.0, 1.0])) if kind == "curved" else 0.0
    for _ in range(200):
        m = Motion(
            kind,
            direction,
            speed,
            change,
            float(rng.uniform(lo, hi)),
            float(rng.uniform(lo, hi)),
            bend,
        )
        if m.fits(cfg.frames):
            return m
    # the path always fits when centred
    return Motion(kind, direction, speed, change, (lo + hi) / 2, (lo + hi) / 2, bend)


def motion_phrase(motion: Motion, rng: np.random.Generator) -> str:
    """Words for the motion; draws a fixed number of randoms (template sharing, like captions)."""
    u = rng.random(5)

    def pick(options, k):
        return options[int(u[k] * len(options))]

    words = [pick(MOVE_WORDS, 0), pick(DIRECTION_PHRASES[motion.direction], 1)]
    words.append(pick(SPEED_PHRASES[motion.speed], 2))
    if motion.kind == "curved":
        words.append(pick(CURVE_PHRASES, 3))
    if motion.size_change != "none":
        words.append(pick(SIZE_CHANGE_PHRASES[motion.size_change], 4))
    return " ".join(words)


# ----------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    """A static scene (its ``x``, ``y`` are ignored: the motion places the object) + motion."""

    scene: Scene
    motion: Motion

    def frame_scenes(self, frames: int) -> list[Scene]:
        """The per-frame image-world scenes (position moved along the path)."""
        pos = self.motion.positions(frames)
        lo, hi = POSITION_RANGE
        return [
            dataclasses.replace(
                self.scene, x=float(np.clip(x, lo, hi)), y=float(np.clip(y, lo, hi))
            )
            for x, y in pos
        ]

    def attributes(self) -> dict[str, object]:
        """Static attributes (the oracle's keys), without position."""
        a = self.scene.attributes()
        for k in ("x", "y"):
            a.pop(k)
        return a


def frame_size(size: str, scale: float) -> str:
    """The size category nearest (log scale, like the oracle) to a scaled extent."""
    r = SIZE_EXTENT[size] * scale
    return min(SIZES, key=lambda s: abs(math.log(r / SIZE_EXTENT[s])))


def frame_attributes(clip: Clip, cfg: ToyVideoConfig) -> list[dict[str, object]]:
    """What the oracle should read on each frame: static attributes, per-frame size and
    position (``x``, ``y``)."""
    pos = clip.motion.positions(cfg.frames)
    scales = clip.motion.scales(cfg.frames, cfg.size_change)
    base = clip.attributes()
    return [
        {**base, "size": frame_size(clip.scene.size, float(s)), "x": float(p[0]), "y": float(p[1])}
        for p, s in zip(pos, scales)
    ]


def render_clip(clip: Clip, cfg: ToyVideoConfig) -> np.ndarray:
    """uint8 ``[F, H, W, 3]``: every frame drawn by ``byg.data.toy.render``."""
    world = cfg.world()
    scales = clip.motion.scales(cfg.frames, cfg.size_change)
    return np.stack(
        [
            toy.render(s, world, scale=float(k))
            for s, k in zip(clip.frame_scenes(cfg.frames), scales)
        ]
    )


def to_video_tensor(frames: np.ndarray) -> Tensor:
    """uint8 ``[F, H, W, 3]`` -> float32 ``[3, F, H, W]`` in ``[-1, 1]`` (the video layout)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    return (
        torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0).permute(3, 0, 1, 2).contiguous()
    )


def frames_of(video: Tensor) -> Tensor:
    """``[B, 3, F, H, W]`` -> ``[B * F, 3, H, W]`` (frame-major within each clip), for the
    image oracle."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected [B, 3, F, H, W], got {tuple(video.shape)}")
    b, c, f, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def sample_clip(rng: np.random.Generator, cfg: ToyVideoConfig) -> Clip:
    """Uniform over the configured attribute values (object colour != background)."""

    def choice(options):
        return options[int(rng.integers(len(options)))]

    background = choice(cfg.colours)
    colour = choice([c for c in cfg.colours if c != background])
    lo, hi = POSITION_RANGE
    scene = Scene(
        background=background,
        shape=choice(cfg.shapes),
        colour=colour,
        size=choice(cfg.sizes),
        texture=choice(cfg.textures),
        style=choice(cfg.styles),
        x=(lo + hi) / 2,
        y=(lo + hi) / 2,
    )
    return Clip(scene, sample_motion(rng, cfg))


def caption_clip(clip: Clip, rng: np.random.Generator) -> str:
    """The image world's caption of the scene, then the motion phrase."""
    return f"{toy.caption(clip.scene, rng)} {motion_phrase(clip.motion, rng)}"


def vocabulary() -> list[str]:
    """Every word of a video caption or instruction (the image world's plus motion words)."""
    texts = [*MOVE_WORDS, *CURVE_PHRASES]
    for table in (DIRECTION_PHRASES, SPEED_PHRASES, SIZE_CHANGE_PHRASES):
        for options in table.values():
            texts.extend(options)
    words = set(toy.vocabulary())
    for t in texts:
        words.update(t.split())
    return sorted(words)


# ----------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class VideoEditExample:
    """One unpaired video tuple plus its ground truth (``tgt`` never reaches ByG training)."""

    src: Clip
    tgt: Clip
    edit_type: str
    attribute: str
    target_value: str
    c_src: str
    c_tgt: str
    c_fwd: str
    c_rev: str
    seen: bool


def _targets(src: Scene, edit_type: str, cfg: ToyVideoConfig) -> list[str]:
    if edit_type == "style":
        return [s for s in cfg.styles if s != src.style] or [s for s in STYLES if s != src.style]
    if edit_type == "texture":
        return [t for t in cfg.textures if t != src.texture]
    taken = {src.colour, src.background}
    return [c for c in cfg.colours if c not in taken]


def is_seen(src: Scene, edit_type: str, value: str, cfg: ToyVideoConfig) -> bool:
    """Whether an edit may appear in training tuples (module docstring)."""
    if src.style in cfg.unseen_source_styles:
        return False
    if edit_type in ("colour", "background"):
        old = getattr(src, edit_type)
        return old not in cfg.unseen_colours and value not in cfg.unseen_colours
    if edit_type == "texture":
        return src.texture not in cfg.unseen_textures and value not in cfg.unseen_textures
    return True


def sample_video_edit(
    rng: np.random.Generator, cfg: ToyVideoConfig, split: Literal["train", "seen", "unseen"]
) -> VideoEditExample:
    """Draw one edit of ``split`` (``train``/``seen``: seen edits only; ``unseen``: unseen only)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    want_seen = split != "unseen"
    for _ in range(1000):
        edit_type = cfg.edit_types[int(rng.integers(len(cfg.edit_types)))]
        src = sample_clip(rng, cfg)
        options = _targets(src.scene, edit_type, cfg)
        if not options:
            continue
        value = options[int(rng.integers(len(options)))]
        if is_seen(src.scene, edit_type, value, cfg) != want_seen:
            continue
        tgt = Clip(dataclasses.replace(src.scene, **{edit_type: value}), src.motion)
        cap_seed = int(rng.integers(2**32))
        return VideoEditExample(
            src=src,
            tgt=tgt,
            edit_type=edit_type,
            attribute=edit_type,
            target_value=value,
            c_src=caption_clip(src, np.random.default_rng(cap_seed)),
            c_tgt=caption_clip(tgt, np.random.default_rng(cap_seed)),
            c_fwd=toy.instruction(src.scene, tgt.scene, edit_type, rng),
            c_rev=toy.instruction(tgt.scene, src.scene, edit_type, rng),
            seen=want_seen,
        )
    raise RuntimeError(f"could not draw a {split!r} video edit in 1000 tries under {cfg}")


# ----------------------------------------------------------------------------- datasets

_STREAMS = {"caption": 100, "train": 101, "seen": 102, "unseen": 103}


def item_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of item ``index`` of a stream (disjoint from the image world's)."""
    return np.random.default_rng([int(seed), _STREAMS[stream], int(index)])


class ToyVideoCaptionDataset(torch.utils.data.Dataset):
    """(video ``[3, F, H, W]``, caption) pairs for base pretraining; item ``i`` = f(seed, i)."""

    def __init__(self, cfg: ToyVideoConfig, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.cfg, self.n, self.seed = cfg, n, seed

    def __len__(self) -> int:
        return self.n

    def clip(self, i: int) -> tuple[Clip, np.random.Generator]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        rng = item_rng(self.seed, "caption", i)
        return sample_clip(rng, self.cfg), rng

    def __getitem__(self, i: int) -> dict:
        clip, rng = self.clip(i)
        return {
            "video": to_video_tensor(render_clip(clip, self.cfg)),
            "caption": caption_clip(clip, rng),
        }


class ToyVideoEditDataset(torch.utils.data.Dataset):
    """Unpaired video edit tuples with ground truth; item ``i`` = f(seed, split, i).

    Items: ``x_src``, ``x_tgt`` (float ``[3, F, H, W]`` in ``[-1, 1]``), ``c_src``,
    ``c_tgt``, ``c_fwd``, ``c_rev``, ``edit_type``, ``seen``, ``index``; ``example(i)``
    gives the ``VideoEditExample``.
    """

    def __init__(self, cfg: ToyVideoConfig, n: int, seed: int, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.cfg, self.n, self.seed, self.split = cfg, n, seed, split

    def __len__(self) -> int:
        return self.n

    def example(self, i: int) -> VideoEditExample:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        return sample_video_edit(item_rng(self.seed, self.split, i), self.cfg, self.split)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        ex = self.example(i)
        return {
            "x_src": to_video_tensor(render_clip(ex.src, self.cfg)),
            "x_tgt": to_video_tensor(render_clip(ex.tgt, self.cfg)),
            "c_src": ex.c_src,
            "c_tgt": ex.c_tgt,
            "c_fwd": ex.c_fwd,
            "c_rev": ex.c_rev,
            "edit_type": ex.edit_type,
            "seen": ex.seen,
            "index": i,
        }


__all__ = [
    "VIDEO_EDIT_TYPES",
    "DIRECTIONS",
    "ToyVideoConfig",
    "Motion",
    "Clip",
    "VideoEditExample",
    "sample_motion",
    "sample_clip",
    "motion_phrase",
    "caption_clip",
    "render_clip",
    "frame_attributes",
    "frame_size",
    "frames_of",
    "to_video_tensor",
    "vocabulary",
    "is_seen",
    "sample_video_edit",
    "ToyVideoCaptionDataset",
    "ToyVideoEditDataset",
]

"""The toy world: procedurally rendered scenes where every edit has a known ground truth.

A scene is a small spec (``Scene``): a background colour, one main object (shape, colour,
size, texture, continuous position), an optional small second object in a corner, and a
whole-image drawing style. ``render`` draws it deterministically and anti-aliased
(4x supersampling, box downsampling). ``caption`` describes it in words with varied
phrasing, stating every attribute (not the position). ``sample_edit`` draws an unpaired
ByG tuple ``(x_src, c_src, c_tgt, c_fwd, c_rev)`` (METHOD.md §3) together with the
ground-truth target scene: the source spec with exactly one attribute changed.

Geometry (all in fractions of the resolution, so any resolution works):

* a shape of size ``s`` fits in the box ``[-r, r]^2`` around its centre with
  ``r = SIZE_EXTENT[s]``; its area centroid is the centre (triangles are equilateral,
  inscribed in the circle of radius ``r``);
* centres lie in ``POSITION_RANGE`` so that a large object stays inside the frame with a
  margin, whatever its size: size edits never move or clip the object;
* the second object sits in the image corner farthest from the main object, so the two
  never overlap at any size.

Textures are drawn on a pixel grid anchored at the rounded object centre (or, with
``texture_anchor: image``, at the image corner): stripes are
horizontal bands ``period / 2`` pixels wide (2 px of every 4 at 32x32) with one band
through the centre; dots are ``period / 2``-pixel squares on a ``period`` grid with one dot
at the centre. In the ``filled`` style the marks are a darker shade of the object colour;
in the ``outline`` style only a contour (2 px at 32x32) is drawn and the marks appear
inside it in the object colour on the background, so texture stays readable in both styles.

Seen/unseen split: edits whose edited attribute takes an unseen value (as source or target
value, since the reverse instruction of a tuple names the source value) or whose type is
unseen never appear in the ``train`` and ``seen`` splits; the ``unseen`` split holds only
edits whose target value or type is unseen. Captions use every value in every split.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

# ----------------------------------------------------------------------------- constants

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
#: object and background palette (RGB), pairwise >= 95 apart in RGB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 50),
    "purple": (150, 60, 190),
    "cyan": (50, 210, 220),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
}
#: background colours: the same palette; an object never has its background's colour
BACKGROUNDS: tuple[str, ...] = tuple(COLOURS)
SIZES: tuple[str, ...] = ("small", "medium", "large")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
STYLES: tuple[str, ...] = ("filled", "outline")
EDIT_TYPES: tuple[str, ...] = (
    "colour",
    "texture",
    "size",
    "replace",
    "background",
    "add",
    "remove",
    "style",
)
CORNERS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
SPLITS: tuple[str, ...] = ("train", "seen", "unseen")

#: the scene attribute each edit type changes (``has_second`` for add/remove)
EDIT_ATTRIBUTE: dict[str, str] = {
    "colour": "colour",
    "texture": "texture",
    "size": "size",
    "replace": "shape",
    "background": "background",
    "add": "has_second",
    "remove": "has_second",
    "style": "style",
}

#: half-extent of the main object's box, as a fraction of the resolution
SIZE_EXTENT: dict[str, float] = {"small": 0.17, "medium": 0.24, "large": 0.31}
SECOND_EXTENT = 0.08  # half-extent of the second object
MARGIN = 0.03  # gap between any object and the frame
TRIANGLE_RADIUS = 1.1  # the triangle's circumradius in units of the extent (its top vertex)
POSITION_RANGE: tuple[float, float] = (
    TRIANGLE_RADIUS * max(SIZE_EXTENT.values()) + MARGIN,
    1.0 - TRIANGLE_RADIUS * max(SIZE_EXTENT.values()) - MARGIN,
)
OUTLINE_WIDTH = 2.0 / 32  # contour width (fraction of the resolution): 2 px at 32x32
OUTLINE_MAX_FRACTION = 0.3  # ... but at most this fraction of the extent (small shapes keep a hole)
SECOND_OUTLINE_WIDTH = 1.0 / 32
TEXTURE_PERIOD = 4.0 / 32  # stripe/dot period (fraction of the resolution): 4 px at 32x32
SHADE = 0.55  # texture marks in the filled style: this fraction of the object colour
SUPERSAMPLE = 4

FORBIDDEN_REVERSE_WORDS: tuple[str, ...] = ("restore", "revert", "undo", "original", "back")


def shade(colour: str) -> tuple[int, int, int]:
    """The darker shade of ``colour`` used for texture marks in the filled style."""
    return tuple(int(round(SHADE * c)) for c in COLOURS[colour])  # type: ignore[return-value]


# ----------------------------------------------------------------------------- config


def _check_names(field_name: str, values: tuple[str, ...], known: tuple[str, ...]) -> None:
    for v in values:
        if v not in known:
            raise ValueError(
                f"ToyWorldConfig.{field_name}: unknown value {v!r}; known: {list(known)}"
            )


@dataclass(frozen=True)
class ToyWorldConfig:
    """What the toy world draws and which edits are held out.

    Attributes:
        resolution: image side in pixels (geometry scales with it; 32 is the design point).
        second_object_prob: probability that a sampled scene has a second object.
        unseen_colours: colours never used as the edited value of colour/background/add
            edits in the train and seen splits.
        unseen_textures: textures never used as the edited value of texture edits there.
        unseen_edit_types: edit types that appear only in the unseen split.
        edit_types: the edit types that exist at all.
        texture_anchor: where stripes and dots are anchored: ``"object"`` (the rounded
            object centre, so the pattern moves with the object) or ``"image"`` (the image's
            top-left corner: one fixed grid for every scene). For measuring what the base
            finds hard about texture (README, the toy base); the shipped world is ``object``.
        instructions: what an edit's text is: ``"edit"`` (instructions, "make the circle
            red"; the shipped world) or ``"caption"`` (the forward text is the target's
            caption and the reverse text the source's: editing toward a description, which
            the base already reads; for measuring what learning the instruction costs).
    """

    resolution: int = 32
    second_object_prob: float = 0.3
    unseen_colours: tuple[str, ...] = ("purple", "cyan")
    unseen_textures: tuple[str, ...] = ("dotted",)
    unseen_edit_types: tuple[str, ...] = ("style",)
    edit_types: tuple[str, ...] = EDIT_TYPES
    texture_anchor: str = "object"
    instructions: str = "edit"

    def __post_init__(self) -> None:
        if self.texture_anchor not in ("object", "image"):
            raise ValueError(
                f"ToyWorldConfig.texture_anchor must be 'object' or 'image', got {self.texture_anchor!r}"
            )
        if self.instructions not in ("edit", "caption"):
            raise ValueError(
                f"ToyWorldConfig.instructions must be 'edit' or 'caption', got {self.instructions!r}"
            )
        for name in ("unseen_colours", "unseen_textures", "unseen_edit_types", "edit_types"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise ValueError(f"ToyWorldConfig.{name} must be a list of names, got {value!r}")
            object.__setattr__(self, name, tuple(value))  # YAML gives lists
        if not isinstance(self.resolution, int) or self.resolution < 16:
            raise ValueError(
                f"ToyWorldConfig.resolution must be an int >= 16, got {self.resolution!r}"
            )
        if not 0.0 <= self.second_object_prob <= 1.0:
            raise ValueError(
                f"ToyWorldConfig.second_object_prob must be in [0, 1], got {self.second_object_prob!r}"
            )
        _check_names("unseen_colours", self.unseen_colours, tuple(COLOURS))
        _check_names("unseen_textures", self.unseen_textures, TEXTURES)
        _check_names("unseen_edit_types", self.unseen_edit_types, EDIT_TYPES)
        _check_names("edit_types", self.edit_types, EDIT_TYPES)
        if not self.edit_types:
            raise ValueError("ToyWorldConfig.edit_types must name at least one edit type")
        for t in self.unseen_edit_types:
            if t not in self.edit_types:
                raise ValueError(f"ToyWorldConfig.unseen_edit_types: {t!r} is not in edit_types")
        if len(set(COLOURS) - set(self.unseen_colours)) < 4:
            raise ValueError(
                f"ToyWorldConfig.unseen_colours {list(self.unseen_colours)} leaves fewer than 4 seen colours"
            )
        if len(set(TEXTURES) - set(self.unseen_textures)) < 2:
            raise ValueError(
                f"ToyWorldConfig.unseen_textures {list(self.unseen_textures)} leaves fewer than 2 seen textures"
            )


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SecondObject:
    """A small solid object of its own shape and colour in a corner of the image."""

    shape: str
    colour: str
    corner: str


@dataclass(frozen=True)
class Scene:
    """A full scene spec; ``x``, ``y`` are the main object's centre in fractions of the side."""

    background: str
    shape: str
    colour: str
    size: str
    texture: str
    style: str
    x: float
    y: float
    second: SecondObject | None = None

    def __post_init__(self) -> None:
        checks = (
            ("background", self.background, BACKGROUNDS),
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, SIZES),
            ("texture", self.texture, TEXTURES),
            ("style", self.style, STYLES),
        )
        for name, value, known in checks:
            if value not in known:
                raise ValueError(f"Scene.{name}: unknown value {value!r}; known: {list(known)}")
        if self.colour == self.background:
            raise ValueError(f"Scene: object colour equals the background colour {self.colour!r}")
        lo, hi = POSITION_RANGE
        for name, v in (("x", self.x), ("y", self.y)):
            if not lo - 1e-9 <= v <= hi + 1e-9:
                raise ValueError(f"Scene.{name}={v} outside the allowed range [{lo}, {hi}]")
        if self.second is not None:
            s = self.second
            if s.shape not in SHAPES or s.colour not in COLOURS or s.corner not in CORNERS:
                raise ValueError(f"Scene.second: bad second object {s!r}")
            if s.colour in (self.colour, self.background):
                raise ValueError(
                    f"Scene.second: colour {s.colour!r} equals the main object or background colour"
                )
            if s.shape == self.shape:
                raise ValueError(f"Scene.second: shape {s.shape!r} equals the main object's shape")

    @property
    def has_second(self) -> bool:
        return self.second is not None

    def attributes(self) -> dict[str, object]:
        """The attributes the oracle reads, keyed as in ``ToyOracle.read``."""
        return {
            "background": self.background,
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "texture": self.texture,
            "style": self.style,
            "has_second": self.has_second,
            "x": self.x,
            "y": self.y,
        }


def farthest_corner(x: float, y: float) -> str:
    """The image corner farthest from ``(x, y)`` (ties: top/left)."""
    return ("bottom" if y < 0.5 else "top") + "_" + ("right" if x < 0.5 else "left")


def corner_centre(corner: str) -> tuple[float, float]:
    c = MARGIN + SECOND_EXTENT
    v, h = corner.split("_")
    return (c if h == "left" else 1.0 - c, c if v == "top" else 1.0 - c)


def _choice(rng: np.random.Generator, options) -> str:
    options = list(options)
    if not options:
        raise ValueError("nothing to choose from")
    return options[int(rng.integers(len(options)))]


def _sample_second(rng: np.random.Generator, main: Scene | dict, colours=None) -> SecondObject:
    get = main.get if isinstance(main, dict) else lambda k: getattr(main, k)
    colours = [c for c in (colours or COLOURS) if c not in (get("colour"), get("background"))]
    return SecondObject(
        shape=_choice(rng, [s for s in SHAPES if s != get("shape")]),
        colour=_choice(rng, colours),
        corner=farthest_corner(get("x"), get("y")),
    )


def sample_scene(rng: np.random.Generator, cfg: ToyWorldConfig) -> Scene:
    """Draw a scene uniformly over attributes (object colour != background colour)."""
    lo, hi = POSITION_RANGE
    d = {
        "background": _choice(rng, BACKGROUNDS),
        "shape": _choice(rng, SHAPES),
        "size": _choice(rng, SIZES),
        "texture": _choice(rng, TEXTURES),
        "style": _choice(rng, STYLES),
        "x": float(rng.uniform(lo, hi)),
        "y": float(rng.uniform(lo, hi)),
    }
    d["colour"] = _choice(rng, [c for c in COLOURS if c != d["background"]])
    second = _sample_second(rng, d) if rng.random() < cfg.second_object_prob else None
    return Scene(**d, second=second)


# ----------------------------------------------------------------------------- rendering


def _polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points to a simple polygon ``[M, 2]``."""
    d = (px - verts[0, 0]) ** 2 + (py - verts[0, 1]) ** 2
    sign = np.ones_like(px)
    n = len(verts)
    for i in range(n):
        j = i - 1
        ex, ey = verts[j, 0] - verts[i, 0], verts[j, 1] - verts[i, 1]
        wx, wy = px - verts[i, 0], py - verts[i, 1]
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * h, wy - ey * h
        d = np.minimum(d, bx * bx + by * by)
        c1 = py >= verts[i, 1]
        c2 = py < verts[j, 1]
        c3 = ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = np.where(flip, -sign, sign)
    return sign * np.sqrt(d)


_ARM = 0.4  # cross arm half-width (fraction of the extent)
_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "diamond": np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
    # equilateral, area centroid at the origin
    "triangle": TRIANGLE_RADIUS
    * np.array([[0.0, -1.0], [np.sqrt(3) / 2, 0.5], [-np.sqrt(3) / 2, 0.5]]),
    "cross": np.array(
        [
            [-_ARM, -1.0],
            [_ARM, -1.0],
            [_ARM, -_ARM],
            [1.0, -_ARM],
            [1.0, _ARM],
            [_ARM, _ARM],
            [_ARM, 1.0],
            [-_ARM, 1.0],
            [-_ARM, _ARM],
            [-1.0, _ARM],
            [-1.0, -_ARM],
            [-_ARM, -_ARM],
        ]
    ),
}


def shape_sdf(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float):
    """Signed distance (pixels, negative inside) to ``shape`` of half-extent ``r`` at (cx, cy)."""
    if shape == "circle":
        return np.sqrt((px - cx) ** 2 + (py - cy) ** 2) - r
    verts = _UNIT_POLYGONS[shape] * r + np.array([cx, cy])
    return _polygon_sdf(px, py, verts)


def _pattern(texture: str, px: np.ndarray, py: np.ndarray, ox: float, oy: float, period: float):
    """Texture marks on a pixel grid anchored at ``(ox, oy)`` (a pixel corner)."""
    half = period / 2

    def band(u: np.ndarray, o: float) -> np.ndarray:
        return np.mod(u - o + period / 4, period) < half

    if texture == "solid":
        return np.zeros_like(px, dtype=bool)
    if texture == "striped":
        return band(py, oy)
    return band(px, ox) & band(py, oy)


def _grid(res: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(res * ss) + 0.5) / ss  # sub-pixel centres in output pixel units
    return np.meshgrid(u, u)  # px (columns), py (rows)


def render(scene: Scene, cfg: ToyWorldConfig, scale: float = 1.0) -> np.ndarray:
    """Draw ``scene`` at ``cfg.resolution``: uint8 ``[H, W, 3]``, deterministic and anti-aliased.

    ``scale`` multiplies the main object's extent (1 = its size category; the toy video
    world grows and shrinks objects smoothly with it). Keep ``scale * SIZE_EXTENT[size]``
    at most ``SIZE_EXTENT["large"]`` so that the object stays inside the frame.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    res, ss = cfg.resolution, SUPERSAMPLE
    px, py = _grid(res, ss)
    img = np.empty((res * ss, res * ss, 3), dtype=np.float64)
    img[:] = COLOURS[scene.background]
    cx, cy, r = scene.x * res, scene.y * res, SIZE_EXTENT[scene.size] * res * scale
    sdf = shape_sdf(scene.shape, px, py, cx, cy, r)
    period = TEXTURE_PERIOD * res
    ox, oy = (round(cx), round(cy)) if cfg.texture_anchor == "object" else (0, 0)
    marks = _pattern(scene.texture, px, py, ox, oy, period)
    colour = np.array(COLOURS[scene.colour], dtype=np.float64)
    inside = sdf < 0
    if scene.style == "filled":
        img[inside] = colour
        img[inside & marks] = shade(scene.colour)
    else:
        width = min(OUTLINE_WIDTH * res, OUTLINE_MAX_FRACTION * r)
        img[inside & (sdf > -width)] = colour
        img[(sdf <= -width) & marks] = colour
    if scene.second is not None:
        sx, sy = corner_centre(scene.second.corner)
        s_sdf = shape_sdf(scene.second.shape, px, py, sx * res, sy * res, SECOND_EXTENT * res)
        s_in = s_sdf < 0
        if scene.style == "outline":
            s_in &= s_sdf > -SECOND_OUTLINE_WIDTH * res
        img[s_in] = COLOURS[scene.second.colour]
    img = img.reshape(res, ss, res, ss, 3).mean(axis=(1, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def to_tensor(img: np.ndarray) -> Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in ``[-1, 1]``."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
    return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def from_tensor(t: Tensor) -> np.ndarray:
    """float ``[3, H, W]`` in ``[-1, 1]`` -> uint8 ``[H, W, 3]`` (clamped, rounded)."""
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected [3, H, W], got {tuple(t.shape)}")
    x = ((t.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.permute(1, 2, 0).numpy().astype(np.uint8)


# ----------------------------------------------------------------------------- words

SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium", "medium sized"),
    "large": ("large", "big"),
}
TEXTURE_ADJ: dict[str, tuple[str, ...]] = {
    "solid": ("plain", "solid"),
    "striped": ("striped",),
    "dotted": ("dotted", "spotted"),
}
TEXTURE_WITH: dict[str, tuple[str, ...]] = {
    "solid": ("in a plain colour", "with a solid colour"),
    "striped": ("with stripes", "with horizontal stripes"),
    "dotted": ("with dots", "with polka dots"),
}
STYLE_PREFIX: dict[str, tuple[str, ...]] = {
    "filled": ("a filled drawing of", "a filled picture of"),
    "outline": ("an outline drawing of", "a line drawing of"),
}
STYLE_SUFFIX: dict[str, tuple[str, ...]] = {
    "filled": ("in filled style", "drawn filled"),
    "outline": ("in outline style", "drawn as an outline"),
}
SECOND_PHRASES = (
    "and a small {colour} {shape} in the corner",
    "with a little {colour} {shape} in a corner",
    "plus a small {colour} {shape} in the corner",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption stating every attribute of ``scene`` (not its position), lower-case words only.

    The random choices are drawn up front, in the same number for every scene, so that two
    scenes captioned from equal generator states share their template.
    """
    u = rng.random(8)

    def pick(options, k):
        return options[int(u[k] * len(options))]

    size = pick(SIZE_WORDS[scene.size], 0)
    colour, shape, bg = scene.colour, scene.shape, scene.background
    second = ""
    if scene.second is not None:
        second = " " + pick(SECOND_PHRASES, 1).format(
            colour=scene.second.colour, shape=scene.second.shape
        )
    template = int(u[2] * 4)
    if template == 0:
        body = f"{_with_article(f'{size} {colour} {pick(TEXTURE_ADJ[scene.texture], 3)} {shape}')} on {_with_article(bg)} background{second}"
    elif template == 1:
        body = f"{_with_article(bg)} background with {_with_article(f'{size} {colour} {shape}')} {pick(TEXTURE_WITH[scene.texture], 3)}{second}"
    elif template == 2:
        body = f"{_with_article(f'{size} {pick(TEXTURE_ADJ[scene.texture], 3)} {colour} {shape}')} on {bg}{second}"
    else:
        body = f"{_with_article(bg)} background behind {_with_article(f'{size} {colour} {shape}')} {pick(TEXTURE_WITH[scene.texture], 3)}{second}"
    if u[4] < 0.5:
        return f"{pick(STYLE_PREFIX[scene.style], 5)} {body}"
    return f"{body} {pick(STYLE_SUFFIX[scene.style], 5)}"


def _ref(shape: str, colour: str, u: float) -> str:
    """How an instruction names the main object: ``the circle`` or ``the red circle``."""
    return f"the {shape}" if u < 0.5 else f"the {colour} {shape}"


INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "colour": (
        "make {ref} {value}",
        "change the colour of {ref} to {value}",
        "turn {ref} {value}",
        "paint {ref} {value}",
    ),
    "size": (
        "make {ref} {value}",
        "resize {ref} to be {value}",
        "change the size of {ref} to {value}",
    ),
    "replace": (
        "replace {ref} with {value}",
        "turn {ref} into {value}",
        "change {ref} into {value}",
    ),
    "background": (
        "make the background {value}",
        "change the background to {value}",
        "paint the background {value}",
        "set the background colour to {value}",
    ),
    "add": (
        "add a small {value} in the corner",
        "put a little {value} in a corner",
        "place a small {value} in the corner",
    ),
    "remove": (
        "remove the small {value}",
        "delete the {value} in the corner",
        "take away the little {value}",
    ),
}
TEXTURE_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "solid": ("make {ref} plain", "give {ref} a plain colour", "paint {ref} in a plain colour"),
    "striped": ("make {ref} striped", "add stripes to {ref}", "give {ref} stripes"),
    "dotted": ("make {ref} dotted", "cover {ref} with dots", "give {ref} polka dots"),
}
STYLE_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "filled": (
        "make it a filled drawing",
        "draw the shapes filled",
        "turn the picture into a filled drawing",
    ),
    "outline": (
        "make it an outline drawing",
        "draw only the outlines of the shapes",
        "turn the picture into a line drawing",
    ),
}


def instruction(src: Scene, tgt: Scene, edit_type: str, rng: np.random.Generator) -> str:
    """A self-contained instruction turning ``src`` into ``tgt``; it names the target value."""
    u = rng.random(3)

    def pick(options):
        return options[int(u[0] * len(options))]

    ref = _ref(src.shape, src.colour, u[1])
    if edit_type == "colour":
        return pick(INSTRUCTIONS["colour"]).format(ref=ref, value=tgt.colour)
    if edit_type == "size":
        value = SIZE_WORDS[tgt.size][int(u[2] * len(SIZE_WORDS[tgt.size]))]
        return pick(INSTRUCTIONS["size"]).format(ref=ref, value=value)
    if edit_type == "replace":
        value = _with_article(tgt.shape if u[2] < 0.5 else f"{tgt.colour} {tgt.shape}")
        return pick(INSTRUCTIONS["replace"]).format(ref=ref, value=value)
    if edit_type == "background":
        return pick(INSTRUCTIONS["background"]).format(value=tgt.background)
    if edit_type == "add":
        assert tgt.second is not None
        value = f"{tgt.second.colour} {tgt.second.shape}"
        return pick(INSTRUCTIONS["add"]).format(value=value)
    if edit_type == "remove":
        assert src.second is not None
        value = f"{src.second.colour} {src.second.shape}"
        return pick(INSTRUCTIONS["remove"]).format(value=value)
    if edit_type == "texture":
        return pick(TEXTURE_INSTRUCTIONS[tgt.texture]).format(ref=ref)
    if edit_type == "style":
        return pick(STYLE_INSTRUCTIONS[tgt.style])
    raise ValueError(f"unknown edit type {edit_type!r}; known: {list(EDIT_TYPES)}")


_WORD = re.compile(r"[a-z]+")


def vocabulary() -> list[str]:
    """Every word a caption or instruction can contain (sorted, lower-case, no punctuation)."""
    texts: list[str] = ["a an the on background behind with", *SHAPES, *COLOURS]
    for table in (SIZE_WORDS, TEXTURE_ADJ, TEXTURE_WITH, STYLE_PREFIX, STYLE_SUFFIX):
        for options in table.values():
            texts.extend(options)
    texts.extend(SECOND_PHRASES)
    for table in (INSTRUCTIONS, TEXTURE_INSTRUCTIONS, STYLE_INSTRUCTIONS):
        for options in table.values():
            texts.extend(options)
    words: set[str] = set()
    for t in texts:
        words.update(_WORD.findall(re.sub(r"\{[a-z]+\}", " ", t)))
    return sorted(words)


# ----------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class EditExample:
    """One unpaired tuple plus its ground truth (``tgt`` is never used by ByG training)."""

    src: Scene
    tgt: Scene
    edit_type: str
    attribute: str
    target_value: str
    c_src: str
    c_tgt: str
    c_fwd: str
    c_rev: str
    seen: bool


def _edit_kinds(cfg: ToyWorldConfig, split: str) -> list[str]:
    """Edit types drawable in ``split``; for ``unseen`` only those with an unseen target."""
    seen_types = [t for t in cfg.edit_types if t not in cfg.unseen_edit_types]
    if split in ("train", "seen"):
        return seen_types
    kinds = list(cfg.unseen_edit_types)
    if cfg.unseen_colours:
        kinds += [t for t in ("colour", "background", "add") if t in seen_types]
    if cfg.unseen_textures and "texture" in seen_types:
        kinds.append("texture")
    return kinds


def _target_candidates(
    src: Scene, edit_type: str, cfg: ToyWorldConfig, unseen: bool, type_unseen: bool
) -> list[str]:
    """Target values of the edited attribute allowed for this split."""
    colours = [c for c in COLOURS if (c in cfg.unseen_colours) == unseen or type_unseen]
    if edit_type == "colour":
        taken = {src.colour, src.background} | ({src.second.colour} if src.second else set())
        return [c for c in colours if c not in taken]
    if edit_type == "background":
        taken = {src.colour, src.background} | ({src.second.colour} if src.second else set())
        return [c for c in colours if c not in taken]
    if edit_type == "texture":
        ok = [t for t in TEXTURES if (t in cfg.unseen_textures) == unseen or type_unseen]
        return [t for t in ok if t != src.texture]
    if edit_type == "size":
        return [s for s in SIZES if s != src.size]
    if edit_type == "replace":
        taken = {src.shape} | ({src.second.shape} if src.second else set())
        return [s for s in SHAPES if s not in taken]
    if edit_type == "style":
        return [s for s in STYLES if s != src.style]
    if edit_type == "add":
        return [c for c in colours if c not in (src.colour, src.background)]
    raise ValueError(edit_type)


def _source_allowed(src: Scene, edit_type: str, cfg: ToyWorldConfig, type_unseen: bool) -> bool:
    """In seen edits the source value of the edited attribute is seen too (it is the reverse
    instruction's target)."""
    if type_unseen:
        return True
    if edit_type == "colour":
        return src.colour not in cfg.unseen_colours
    if edit_type == "background":
        return src.background not in cfg.unseen_colours
    if edit_type == "texture":
        return src.texture not in cfg.unseen_textures
    if edit_type == "remove":
        return src.second is not None and src.second.colour not in cfg.unseen_colours
    return True


def sample_edit(
    rng: np.random.Generator, cfg: ToyWorldConfig, split: Literal["train", "seen", "unseen"]
) -> EditExample:
    """Draw one edit: ``train``/``seen`` only seen edits, ``unseen`` only unseen ones.

    Raises:
        ValueError: unknown split, or a split with no possible edit under ``cfg``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    kinds = _edit_kinds(cfg, split)
    if not kinds:
        raise ValueError(f"split {split!r} has no edit types under {cfg}")
    unseen = split == "unseen"
    for _ in range(1000):
        edit_type = _choice(rng, kinds)
        type_unseen = edit_type in cfg.unseen_edit_types
        src = sample_scene(rng, cfg)
        if edit_type == "add":
            src = dataclasses.replace(src, second=None)
        elif edit_type == "remove" and src.second is None:
            src = dataclasses.replace(src, second=_sample_second(rng, src))
        if not _source_allowed(src, edit_type, cfg, type_unseen):
            continue
        if edit_type == "remove":
            tgt, value = dataclasses.replace(src, second=None), "absent"
        else:
            options = _target_candidates(
                src, edit_type, cfg, unseen and not type_unseen, type_unseen
            )
            if not options:
                continue
            value = _choice(rng, options)
            if edit_type == "add":
                second = _sample_second(rng, src, colours=[value])
                tgt, value = dataclasses.replace(src, second=second), "present"
            else:
                attr = EDIT_ATTRIBUTE[edit_type]
                tgt = dataclasses.replace(src, **{attr: value})
        cap_seed = int(rng.integers(2**32))
        c_src = caption(src, np.random.default_rng(cap_seed))
        c_tgt = caption(tgt, np.random.default_rng(cap_seed))
        # drawn in both worlds, so that "caption" changes the text and nothing else
        c_fwd = instruction(src, tgt, edit_type, rng)
        c_rev = instruction(tgt, src, _reverse_type(edit_type), rng)
        if cfg.instructions == "caption":
            c_fwd, c_rev = c_tgt, c_src
        return EditExample(
            src=src,
            tgt=tgt,
            edit_type=edit_type,
            attribute=EDIT_ATTRIBUTE[edit_type],
            target_value=value,
            c_src=c_src,
            c_tgt=c_tgt,
            c_fwd=c_fwd,
            c_rev=c_rev,
            seen=not unseen,
        )
    raise RuntimeError(f"could not draw an edit for split {split!r} in 1000 tries under {cfg}")


def instruction_prompt(
    scene: Scene, rng: np.random.Generator, cfg: ToyWorldConfig
) -> tuple[str, str]:
    """An instruction whose result is ``scene``, and its edit type: the edit of a random type
    from a source that differs from ``scene`` in that one attribute
    (``instruction(source, scene, ...)``). It names ``scene``'s value of that attribute.

    Every edit type and value is drawn, unseen ones included, as in captions: this is text
    for the base's pretraining (``byg pretrain-base``, ``data.instruction_prob``), which
    learns the words of instructions the way a real base's text encoder already knows them.
    No edit tuple is formed and no source image is rendered.
    """
    for _ in range(100):
        edit_type = _choice(rng, cfg.edit_types)
        if edit_type == "add":
            if scene.second is None:
                continue
            src = dataclasses.replace(scene, second=None)
        elif edit_type == "remove":
            if scene.second is not None:
                continue
            src = dataclasses.replace(scene, second=_sample_second(rng, scene))
        else:
            options = _target_candidates(scene, edit_type, cfg, unseen=False, type_unseen=True)
            if not options:
                continue
            src = dataclasses.replace(scene, **{EDIT_ATTRIBUTE[edit_type]: _choice(rng, options)})
        return instruction(src, scene, edit_type, rng), edit_type
    raise ValueError(f"no edit type of {cfg.edit_types} can end at {scene}")


def _reverse_type(edit_type: str) -> str:
    return {"add": "remove", "remove": "add"}.get(edit_type, edit_type)


# ----------------------------------------------------------------------------- datasets

_STREAMS = {"caption": 0, "train": 1, "seen": 2, "unseen": 3}


def item_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator for item ``index`` of a stream: splits never share draws."""
    return np.random.default_rng([int(seed), _STREAMS[stream], int(index)])


class ToyCaptionDataset(torch.utils.data.Dataset):
    """(image, caption) pairs for base pretraining; item ``i`` is a function of (seed, i)."""

    def __init__(self, cfg: ToyWorldConfig, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.cfg, self.n, self.seed = cfg, n, seed

    def __len__(self) -> int:
        return self.n

    def scene(self, i: int) -> tuple[Scene, np.random.Generator]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        rng = item_rng(self.seed, "caption", i)
        return sample_scene(rng, self.cfg), rng

    def __getitem__(self, i: int) -> dict:
        scene, rng = self.scene(i)
        return {"image": to_tensor(render(scene, self.cfg)), "caption": caption(scene, rng)}


class ToyEditDataset(torch.utils.data.Dataset):
    """Unpaired edit tuples with ground truth; item ``i`` is a function of (seed, split, i).

    Items: ``x_src``, ``x_tgt`` (float ``[3, H, W]`` in ``[-1, 1]``), ``c_src``, ``c_tgt``,
    ``c_fwd``, ``c_rev`` (str), ``edit_type`` (str), ``seen`` (bool), ``index`` (int).
    ``example(i)`` gives the ``EditExample`` with both scene specs.
    """

    def __init__(self, cfg: ToyWorldConfig, n: int, seed: int, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.cfg, self.n, self.seed, self.split = cfg, n, seed, split

    def __len__(self) -> int:
        return self.n

    def example(self, i: int) -> EditExample:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        return sample_edit(item_rng(self.seed, self.split, i), self.cfg, self.split)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        ex = self.example(i)
        return {
            "x_src": to_tensor(render(ex.src, self.cfg)),
            "x_tgt": to_tensor(render(ex.tgt, self.cfg)),
            "c_src": ex.c_src,
            "c_tgt": ex.c_tgt,
            "c_fwd": ex.c_fwd,
            "c_rev": ex.c_rev,
            "edit_type": ex.edit_type,
            "seen": ex.seen,
            "index": i,
        }


def collate(items: list[dict]) -> dict:
    """Stack tensors along a new batch axis; gather everything else into lists."""
    if not items:
        raise ValueError("collate: empty batch")
    out: dict = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], Tensor) else vals
    return out


def preview(
    path: str, n: int = 8, split: str = "train", seed: int = 0, cfg: ToyWorldConfig | None = None
) -> list[EditExample]:
    """Save a PNG of ``n`` edits (rows: source | ground-truth target, 4x upscaled) and
    return the examples (their captions and instructions say what each row shows)."""
    from PIL import Image

    cfg = cfg or ToyWorldConfig()
    ds = ToyEditDataset(cfg, n, seed=seed, split=split)
    exs = [ds.example(i) for i in range(n)]
    pad = ((1, 1), (1, 1), (0, 0))
    rows = [
        np.concatenate([np.pad(render(e.src, cfg), pad), np.pad(render(e.tgt, cfg), pad)], 1)
        for e in exs
    ]
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
    return exs


def main(argv: list[str] | None = None) -> int:
    """``python -m byg.data.toy --out preview.png``: look at some edits."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m byg.data.toy", description=preview.__doc__)
    p.add_argument("--out", required=True, help="PNG to write (rows: source | target)")
    p.add_argument("--n", type=int, default=8, help="number of edits")
    p.add_argument("--split", choices=SPLITS, default="train", help="which split to draw")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    args = p.parse_args(argv)
    for i, e in enumerate(preview(args.out, args.n, args.split, args.seed)):
        print(
            f"{i}: [{e.edit_type}] {e.c_src!r} -> {e.c_tgt!r} | fwd {e.c_fwd!r} | rev {e.c_rev!r}"
        )
    return 0


__all__ = [
    "SHAPES",
    "COLOURS",
    "BACKGROUNDS",
    "SIZES",
    "TEXTURES",
    "STYLES",
    "EDIT_TYPES",
    "EDIT_ATTRIBUTE",
    "ToyWorldConfig",
    "SecondObject",
    "Scene",
    "sample_scene",
    "render",
    "to_tensor",
    "from_tensor",
    "caption",
    "instruction",
    "instruction_prompt",
    "vocabulary",
    "EditExample",
    "sample_edit",
    "ToyCaptionDataset",
    "ToyEditDataset",
    "collate",
    "preview",
]


if __name__ == "__main__":
    raise SystemExit(main())

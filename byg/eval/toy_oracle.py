"""Read toy-world attributes back from images: the ground-truth judge of toy edits.

``ToyOracle.read`` combines analytic readouts where they are robust with a small CNN where
they are fragile:

* background: majority vote of the border pixels snapped to the palette;
* foreground: pixels farther than ``FG_THRESHOLD`` (RGB units) from the background colour;
  the main object is the largest 8-connected foreground component, its *silhouette* that
  component with its holes filled (an outline drawing reads as the filled shape);
  ``has_second``: some other component outside the silhouette has ``>= MIN_SECOND_AREA``
  pixels;
* colour: majority vote of the silhouette's foreground pixels snapped to the palette and
  its texture shades (only pixels within ``PURE_THRESHOLD`` of a candidate vote, so
  anti-aliased edges do not);
* position ``(x, y)``: the silhouette's centroid, in fractions of the side (shapes are
  built with their area centroid at the spec centre);
* size: the silhouette's area divided by the area of the read shape at unit extent, i.e.
  the extent ``r``, snapped to the nearest ``SIZE_EXTENT`` in log scale;
* shape, texture, style: a small CNN over the image and its distance from the background
  colour, trained on renders (second objects included) with noise, blur and colour-jitter
  augmentation (``train_oracle``; weights shipped in
  ``byg/assets/toy_oracle.safetensors``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byg.data.toy import (
    COLOURS,
    SHAPES,
    SIZE_EXTENT,
    SIZES,
    STYLES,
    TEXTURES,
    TRIANGLE_RADIUS,
    ToyWorldConfig,
    render,
    sample_scene,
    shade,
    to_tensor,
)

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "toy_oracle.safetensors"

FG_THRESHOLD = 40.0  # RGB distance from the background; half the closest object/background pair
PURE_THRESHOLD = 26.0  # half the closest pair among palette colours and their shades
MIN_SECOND_AREA = 6  # pixels (at 32x32; scaled by area at other resolutions)

#: silhouette area of each shape at unit extent (see byg.data.toy geometry)
UNIT_AREA: dict[str, float] = {
    "circle": math.pi,
    "square": 1.6**2,
    "diamond": 2.0,
    "triangle": 3 * math.sqrt(3) / 4 * TRIANGLE_RADIUS**2,
    "cross": 2 * (2.0 * 0.8) - 0.8**2,
}
CNN_HEADS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "texture": TEXTURES, "style": STYLES}
ATTRIBUTES = ("background", "shape", "colour", "size", "texture", "style", "has_second", "x", "y")

_NAMES = list(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in _NAMES], dtype=torch.float32)  # (K, 3)
_SHADES = torch.tensor([shade(c) for c in _NAMES], dtype=torch.float32)  # (K, 3)


# ----------------------------------------------------------------------------- analytic part


def _to_rgb(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    return (images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5  # (B, 3, H, W) in [0, 255]


def _nearest(rgb: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """Index and distance of the nearest ``table`` row for each pixel of ``rgb [..., 3]``."""
    d = torch.cdist(rgb.reshape(-1, 3), table)  # (N, K)
    dist, idx = d.min(dim=1)
    return idx.reshape(rgb.shape[:-1]), dist.reshape(rgb.shape[:-1])


def read_background(rgb: Tensor) -> Tensor:
    """Palette index ``[B]`` of the background: vote of the border pixels of ``rgb [B,3,H,W]``."""
    pix = rgb.permute(0, 2, 3, 1)  # (B, H, W, 3)
    border = torch.cat([pix[:, 0], pix[:, -1], pix[:, 1:-1, 0], pix[:, 1:-1, -1]], dim=1)
    idx, _ = _nearest(border, _PALETTE)  # (B, n_border)
    return torch.mode(idx, dim=1).values


def _components(mask: Tensor, max_iter: int = 4096) -> Tensor:
    """8-connected component labels of ``mask [B, H, W]`` (0 = background), by max-propagation."""
    b, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w).expand(b, h, w)
    lab = torch.where(mask, ids, torch.zeros(()))
    for _ in range(max_iter):
        new = F.max_pool2d(lab[:, None], 3, stride=1, padding=1)[:, 0]
        new = torch.where(mask, new, torch.zeros(()))
        if torch.equal(new, lab):
            break
        lab = new
    return lab.long()


def _fill_holes(mask: Tensor, max_iter: int = 4096) -> Tensor:
    """``mask [B, H, W]`` plus every pixel not 4-connected to the border through ``~mask``."""
    free = ~mask
    reach = torch.zeros_like(mask)
    reach[:, 0, :] = free[:, 0, :]
    reach[:, -1, :] = free[:, -1, :]
    reach[:, :, 0] = free[:, :, 0]
    reach[:, :, -1] = free[:, :, -1]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 1, 3, 3)
    for _ in range(max_iter):
        grown = F.conv2d(reach[:, None].float(), kernel, padding=1)[:, 0] > 0
        grown &= free
        if torch.equal(grown, reach):
            break
        reach = grown
    return ~reach


def _label_counts(labels: Tensor) -> Tensor:
    """Pixel count of every label: ``[B, H*W + 1]`` (column 0: unlabelled)."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1)
    counts = torch.zeros(b, flat.shape[1] + 1, dtype=torch.long)
    return counts.scatter_add_(1, flat, torch.ones_like(flat))


def _vote_colour(pix: Tensor, mask: Tensor, background: Tensor) -> Tensor:
    """Palette index of the object colour: every masked pixel is explained as a blend of the
    background with one candidate (palette colours and their texture shades); it votes for
    that candidate's base colour with weight = its coverage, if the blend fits within
    ``PURE_THRESHOLD``. Anti-aliased edges thus vote for the right colour, weakly.

    Args:
        pix: ``[B, H, W, 3]`` RGB in [0, 255]; mask: ``[B, H, W]``; background: ``[B]``.
    """
    b = pix.shape[0]
    k = len(_NAMES)
    table = torch.cat([_PALETTE, _SHADES])  # (2K, 3)
    bg = _PALETTE[background]  # (B, 3)
    p = pix.reshape(b, -1, 3) - bg[:, None]  # (B, N, 3)
    c = table[None] - bg[:, None]  # (B, 2K, 3)
    cc = (c * c).sum(-1).clamp(min=1e-6)  # (B, 2K)
    alpha = (torch.einsum("bnd,bkd->bnk", p, c) / cc[:, None]).clamp(0, 1)  # (B, N, 2K)
    resid = (p[:, :, None] - alpha[..., None] * c[:, None]).norm(dim=-1)  # (B, N, 2K)
    banned = torch.zeros(b, 2 * k, dtype=torch.bool)
    banned[torch.arange(b), background] = True
    banned[torch.arange(b), background + k] = True
    resid = resid.masked_fill(banned[:, None], float("inf"))
    best_resid, best = resid.min(dim=-1)  # (B, N)
    weight = alpha.gather(-1, best[..., None])[..., 0]
    weight = weight * (best_resid < PURE_THRESHOLD) * mask.reshape(b, -1)
    votes = torch.zeros(b, k).scatter_add_(1, best % k, weight)  # (B, K)
    return votes.argmax(dim=1)


@dataclass
class Analysis:
    """Per-batch analytic readouts (all tensors have the batch on dim 0)."""

    rgb: Tensor  # (B, 3, H, W) in [0, 255]
    background: Tensor  # (B,) palette index
    fg: Tensor  # (B, H, W) bool: far from the background colour
    silhouette: Tensor  # (B, H, W) bool: main object, holes filled
    has_second: Tensor  # (B,) bool
    colour: Tensor  # (B,) palette index
    x: Tensor  # (B,) centroid, fraction of the width
    y: Tensor  # (B,)
    area: Tensor  # (B,) silhouette area in pixels


def analyse(images: Tensor) -> Analysis:
    """The analytic readouts of ``images [B, 3, H, W]`` in ``[-1, 1]`` (see module docstring)."""
    rgb = _to_rgb(images)
    b, _, h, w = rgb.shape
    pix = rgb.permute(0, 2, 3, 1)  # (B, H, W, 3)
    background = read_background(rgb)
    bg_rgb = _PALETTE[background]  # (B, 3)
    fg = (pix - bg_rgb[:, None, None, :]).norm(dim=-1) > FG_THRESHOLD  # (B, H, W)

    labels = _components(fg)  # (B, H, W)
    counts = _label_counts(labels)  # (B, H*W + 1)
    main = counts[:, 1:].argmax(dim=1) + 1  # (B,)
    has_main = counts[:, 1:].amax(dim=1) > 0
    silhouette = _fill_holes((labels == main[:, None, None]) & has_main[:, None, None])
    rest = fg & ~silhouette
    min_area = MIN_SECOND_AREA * (h * w) / (32 * 32)
    has_second = (_label_counts(_components(rest))[:, 1:] >= min_area).any(dim=1)
    colour = _vote_colour(pix, fg & silhouette, background)
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    area = silhouette.flatten(1).sum(1).float()  # (B,)
    safe = area.clamp(min=1)
    x = (silhouette * xx).flatten(1).sum(1) / safe / w
    y = (silhouette * yy).flatten(1).sum(1) / safe / h
    return Analysis(rgb, background, fg, silhouette, has_second, colour, x, y, area)


def size_from_area(area_px: float, shape: str, resolution: int) -> str:
    """The size whose extent is nearest (log scale) to the one implied by the area."""
    r = math.sqrt(max(area_px, 1e-6) / UNIT_AREA[shape]) / resolution
    return min(SIZES, key=lambda s: abs(math.log(r / SIZE_EXTENT[s])))


# ----------------------------------------------------------------------------- CNN part


CROP = 24 / 32  # the CNN sees a window of this fraction of the side around the object


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class OracleCNN(nn.Module):
    """Shape/texture/style classifier over ``[B, 4, 24, 24]`` crops (RGB + background distance)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv(4, w),
            _conv(w, 2 * w, stride=2),  # 12x12
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, stride=2),  # 6x6
            _conv(4 * w, 4 * w),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(8 * w, len(v)) for k, v in CNN_HEADS.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.features(x)  # (B, 4w, 6, 6)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 8w)
        return {k: head(h) for k, head in self.heads.items()}


def cnn_input(
    images: Tensor, background: Tensor, cx: Tensor, cy: Tensor, resolution: int = 32
) -> Tensor:
    """The CNN's view ``[B, 4, C, C]`` (``C = CROP * resolution``): the image resized to
    ``resolution`` plus its normalised distance from the background colour, cropped around
    the object centre ``(cx, cy)`` (fractions of the side; the window is pixel-aligned).

    Args:
        images: ``[B, 3, H, W]`` in ``[-1, 1]``; background: palette indices ``[B]``.
    """
    rgb = _to_rgb(images)
    bg = _PALETTE[background][:, :, None, None]  # (B, 3, 1, 1)
    dist = (rgb - bg).norm(dim=1, keepdim=True) / 255.0  # (B, 1, H, W)
    x = torch.cat([rgb / 127.5 - 1.0, dist], dim=1)  # (B, 4, H, W)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
    c = round(CROP * resolution)
    x = F.pad(x, (c, c, c, c), mode="replicate")
    b = x.shape[0]
    x0 = (cx.float() * resolution).round().long() - c // 2 + c  # (B,) left edge in padded coords
    y0 = (cy.float() * resolution).round().long() - c // 2 + c
    rows = y0[:, None] + torch.arange(c)  # (B, C)
    cols = x0[:, None] + torch.arange(c)
    return x[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(
        0, 3, 1, 2
    )  # (B, 4, C, C)


# ----------------------------------------------------------------------------- the oracle


@contextlib.contextmanager
def single_thread():
    """Run torch CPU ops on one thread inside the block, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ToyOracle:
    """Reads every toy attribute from images ``[B, 3, H, W]`` in ``[-1, 1]``."""

    def __init__(self, cnn: OracleCNN, resolution: int = 32, meta: dict | None = None) -> None:
        self.cnn = cnn.eval()
        self.resolution = resolution
        self.meta = meta or {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> ToyOracle:
        """The oracle with weights from ``path`` (default: the shipped ones)."""
        from safetensors.torch import load_file, safe_open

        path = Path(path) if path is not None else SHIPPED_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"oracle weights not found at {path}; regenerate them with "
                "`python -m byg.eval.toy_oracle train --out {path}`"
            )
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata().get("config", "{}"))
        cnn = OracleCNN(width=meta.get("width", 16))
        cnn.load_state_dict(load_file(str(path)))
        return cls(cnn, resolution=meta.get("resolution", 32), meta=meta)

    @torch.no_grad()
    def read(self, images: Tensor, batch_size: int = 256) -> list[dict]:
        """One dict per image with keys ``ATTRIBUTES`` (names, ``has_second`` bool, x/y floats).

        Args:
            images: ``[B, 3, H, W]`` in ``[-1, 1]`` (clamped).
        """
        return self.read_with_silhouettes(images, batch_size)[0]

    @torch.no_grad()
    def read_with_silhouettes(
        self, images: Tensor, batch_size: int = 256
    ) -> tuple[list[dict], Tensor]:
        """``read`` plus the main-object silhouettes ``[B, H, W]`` (bool).

        Runs on one CPU thread (restored afterwards): these small ops are several times
        slower with more threads on a busy machine.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
        out: list[dict] = []
        sils = []
        with single_thread():
            for start in range(0, images.shape[0], batch_size):
                rows, sil = self._read(images[start : start + batch_size])
                out.extend(rows)
                sils.append(sil)
        return out, torch.cat(sils) if sils else torch.zeros(
            0, *images.shape[-2:], dtype=torch.bool
        )

    def _read(self, images: Tensor) -> tuple[list[dict], Tensor]:
        a = analyse(images)
        logits = self.cnn(cnn_input(images, a.background, a.x, a.y, self.resolution))
        preds = {k: logits[k].argmax(dim=1).tolist() for k in CNN_HEADS}
        res = images.shape[-1]
        rows = []
        for i in range(images.shape[0]):
            shape = SHAPES[preds["shape"][i]]
            rows.append(
                {
                    "background": _NAMES[int(a.background[i])],
                    "shape": shape,
                    "colour": _NAMES[int(a.colour[i])],
                    "size": size_from_area(float(a.area[i]), shape, res),
                    "texture": TEXTURES[preds["texture"][i]],
                    "style": STYLES[preds["style"][i]],
                    "has_second": bool(a.has_second[i]),
                    "x": float(a.x[i]),
                    "y": float(a.y[i]),
                }
            )
        return rows, a.silhouette

    @torch.no_grad()
    def silhouettes(self, images: Tensor) -> Tensor:
        """Main-object silhouettes ``[B, H, W]`` bool (for IoU checks)."""
        with single_thread():
            return analyse(images).silhouette


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class OracleTrainConfig:
    """Everything ``train_oracle`` needs to regenerate the shipped weights."""

    n_train: int = 8_000
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    width: int = 16
    centre_jitter: float = 1.0  # pixels: the read centroid is within ~0.5 px on clean renders
    noise_max: float = 0.08  # Gaussian noise std in [-1, 1] units, drawn per image
    blur_prob: float = 0.5
    blur_sigma_max: float = 0.8  # pixels
    jitter: float = 0.06  # per-channel colour offset, [-1, 1] units
    second_object_prob: float = 0.3
    resolution: int = 32
    seed: int = 0


_ORACLE_STREAM = 77  # seed stream for oracle training scenes (no dataset uses it)


def render_batch(scenes, cfg: ToyWorldConfig) -> Tensor:
    return torch.stack([to_tensor(render(s, cfg)) for s in scenes])


def augment(x: Tensor, gen: torch.Generator, cfg: OracleTrainConfig) -> Tensor:
    """Noise, blur and colour jitter on ``x [B, 3, H, W]`` in ``[-1, 1]``."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * cfg.blur_sigma_max
    blur = torch.rand(b, generator=gen) < cfg.blur_prob
    out = x.clone()
    for i in torch.nonzero(blur & (sigma > 0.2)).flatten().tolist():
        s = float(sigma[i])
        k = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / (2 * s * s))
        k = k / k.sum()
        img = out[i : i + 1].transpose(0, 1)  # (3, 1, H, W)
        img = F.conv2d(F.pad(img, (2, 2, 0, 0), mode="replicate"), k.reshape(1, 1, 1, 5))
        img = F.conv2d(F.pad(img, (0, 0, 2, 2), mode="replicate"), k.reshape(1, 1, 5, 1))
        out[i] = img.transpose(0, 1)[0]
    out = out + (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * cfg.jitter
    noise = torch.rand(b, 1, 1, 1, generator=gen) * cfg.noise_max
    out = out + noise * torch.randn(out.shape, generator=gen)
    return out.clamp(-1, 1)


def _targets(scenes) -> dict[str, Tensor]:
    return {
        k: torch.tensor([names.index(getattr(s, k)) for s in scenes])
        for k, names in CNN_HEADS.items()
    }


def train_oracle(
    cfg: OracleTrainConfig = OracleTrainConfig(),
    out: str | Path | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> ToyOracle:
    """Train the oracle's CNN on fresh renders; save safetensors (with ``cfg``) if ``out``.

    Deterministic given ``cfg.seed``, ``num_threads`` and the torch build (the shipped
    weights: defaults, one thread; about 70 s of CPU time).
    """
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _train_oracle(cfg, out, progress)
    finally:
        torch.set_num_threads(before)


def _train_oracle(cfg: OracleTrainConfig, out: str | Path | None, progress: bool) -> ToyOracle:
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    t0, c0 = time.time(), time.process_time()
    world = ToyWorldConfig(resolution=cfg.resolution, second_object_prob=cfg.second_object_prob)
    scenes = [
        sample_scene(np.random.default_rng([cfg.seed, _ORACLE_STREAM, i]), world)
        for i in range(cfg.n_train)
    ]
    images = render_batch(scenes, world)  # (N, 3, H, W)
    targets = _targets(scenes)
    background = torch.tensor([list(COLOURS).index(s.background) for s in scenes])
    centre = torch.tensor([[s.x, s.y] for s in scenes])  # (N, 2)
    cnn = OracleCNN(width=cfg.width)
    opt = torch.optim.AdamW(cnn.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * math.ceil(cfg.n_train / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=steps, desc="oracle", disable=not progress)
    for _ in range(cfg.epochs):
        perm = torch.randperm(cfg.n_train, generator=gen)
        for start in range(0, cfg.n_train, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            jitter = (torch.rand(len(idx), 2, generator=gen) * 2 - 1) * cfg.centre_jitter
            c = centre[idx] + jitter / cfg.resolution
            x = augment(images[idx], gen, cfg)
            x = cnn_input(x, background[idx], c[:, 0], c[:, 1], cfg.resolution)
            logits = cnn(x)
            loss = sum(F.cross_entropy(logits[k], targets[k][idx]) for k in CNN_HEADS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    meta = {
        **asdict(cfg),
        "train_seconds": round(time.time() - t0, 1),
        "train_cpu_seconds": round(time.process_time() - c0, 1),
    }
    oracle = ToyOracle(cnn.eval(), resolution=cfg.resolution, meta=meta)
    if out is not None:
        from safetensors.torch import save_file

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in cnn.state_dict().items()}
        save_file(state, str(out), metadata={"config": json.dumps(meta)})
    return oracle


# ----------------------------------------------------------------------------- accuracy

ACCURACY_SEED = 4242  # scenes for the accuracy report (a stream nothing trains on)


def oracle_accuracy(
    oracle: ToyOracle,
    n: int = 1000,
    seed: int = ACCURACY_SEED,
    world: ToyWorldConfig | None = None,
    noise: float = 0.0,
) -> dict[str, float]:
    """Per-attribute accuracy of ``oracle`` on ``n`` clean renders (``noise``: add Gaussian
    noise of this std in ``[-1, 1]`` units). Position counts as correct within 1 pixel."""
    world = world or ToyWorldConfig()
    scenes = [sample_scene(np.random.default_rng([seed, i]), world) for i in range(n)]
    x = render_batch(scenes, world)
    if noise > 0:
        x = (x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(
            -1, 1
        )
    reads = oracle.read(x)
    acc: dict[str, float] = {}
    for k in ("background", "shape", "colour", "size", "texture", "style", "has_second"):
        acc[k] = float(np.mean([r[k] == s.attributes()[k] for r, s in zip(reads, scenes)]))
    tol = 1.0 / world.resolution
    acc["position"] = float(
        np.mean(
            [abs(r["x"] - s.x) <= tol and abs(r["y"] - s.y) <= tol for r, s in zip(reads, scenes)]
        )
    )
    return acc


def main(argv: list[str] | None = None) -> int:
    """``python -m byg.eval.toy_oracle {train,accuracy}``."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m byg.eval.toy_oracle", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the oracle CNN and save safetensors weights")
    t.add_argument("--out", default=str(SHIPPED_WEIGHTS), help="where to write the weights")
    t.add_argument("--seed", type=int, default=0, help="training seed")
    t.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the shipped weights used 1)"
    )
    a = sub.add_parser("accuracy", help="per-attribute accuracy on clean (or noisy) renders")
    a.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    a.add_argument("--n", type=int, default=1000, help="number of scenes")
    a.add_argument("--noise", type=float, default=0.0, help="Gaussian noise std in [-1, 1] units")
    args = p.parse_args(argv)
    if args.cmd == "train":
        oracle = train_oracle(
            OracleTrainConfig(seed=args.seed), out=args.out, num_threads=args.threads
        )
        print(json.dumps(oracle_accuracy(oracle), indent=1))
        m = oracle.meta
        print(f"saved {args.out} ({m['train_seconds']} s wall, {m['train_cpu_seconds']} s CPU)")
    else:
        oracle = ToyOracle.load(args.weights)
        print(json.dumps(oracle_accuracy(oracle, n=args.n, noise=args.noise), indent=1))
    return 0


__all__ = [
    "ATTRIBUTES",
    "SHIPPED_WEIGHTS",
    "ToyOracle",
    "OracleCNN",
    "OracleTrainConfig",
    "analyse",
    "train_oracle",
    "oracle_accuracy",
    "size_from_area",
]


if __name__ == "__main__":
    raise SystemExit(main())

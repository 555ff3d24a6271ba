"""Per-edit metrics on the toy video world, read frame by frame by the image oracle.

For every edited clip of a ``VideoEditExample`` (``F`` frames):

* ``edit_success``: the fraction of frames on which the oracle reads the target value of
  the edited attribute;
* ``preservation``: the fraction of frames on which every other attribute reads as the
  oracle reads it on the same frame of the source clip, the main object's silhouette
  centroid is within ``CENTROID_TOL_PX`` of the source frame's and the silhouette IoU with
  the source frame's is at least ``IOU_THRESHOLD`` (the image metrics' thresholds,
  ``byg.eval.toy_metrics``); ``success_and_preservation``: the fraction of frames with
  both. The reference is the source's *reading*, not its spec, because at 24x24 the
  oracle misreads some frames' size (area-based, between categories while an object
  grows or shrinks) and texture: against the spec, the identity would score 0.90-0.92
  preservation instead of 1 (48 clips per split, measured);
* ``psnr``: against the ground-truth clip (same motion, attribute changed), in dB over the
  ``[-1, 1]`` range, from the MSE over the whole clip, capped at ``PSNR_CAP``;
* ``motion_err_px``: motion fidelity, the mean over frames of the distance in pixels
  between the edit's main-object centroid and the source's (0 when the object moves
  exactly as in the source; a frame where no object is found counts the frame diagonal);
* ``flicker``: temporal flicker, the mean absolute frame-to-frame change, in ``[0, 1]``
  units of the pixel range, over the *static* region: pixels that are background in the
  source in both frames of a pair (the source's silhouettes dilated by one pixel removed).
  A static clip has 0; the sources and ground truths of this world have exactly 0, so any
  value above 0 is flicker the editor added.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from byg.eval.toy_metrics import CENTROID_TOL_PX, IOU_THRESHOLD, PSNR_CAP, iou

CATEGORICAL = ("background", "shape", "colour", "size", "texture", "style")


def clip_psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-clip PSNR ``[B]`` (dB) of videos ``[B, 3, F, H, W]`` in ``[-1, 1]``, capped."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse.clamp(min=1e-12))).clamp(max=PSNR_CAP)


def centroids(masks: Tensor) -> Tensor:
    """Pixel centroids ``[..., 2]`` (x, y; pixel centres at +0.5) of boolean masks
    ``[..., H, W]``; NaN where a mask is empty."""
    h, w = masks.shape[-2:]
    m = masks.float()
    area = m.flatten(-2).sum(-1)
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    cx = (m.sum(-2) * xs).sum(-1) / area
    cy = (m.sum(-1) * ys).sum(-1) / area
    out = torch.stack([cx, cy], -1)
    return torch.where((area > 0)[..., None], out, torch.full_like(out, float("nan")))


def motion_error(sil_edit: Tensor, sil_src: Tensor) -> Tensor:
    """Mean per-frame centroid distance ``[B]`` (pixels) between silhouettes ``[B, F, H, W]``;
    a frame with no object in either counts the frame diagonal."""
    h, w = sil_src.shape[-2:]
    d = (centroids(sil_edit) - centroids(sil_src)).norm(dim=-1)  # (B, F)
    d = torch.where(torch.isnan(d), torch.full_like(d, math.hypot(h, w)), d)
    return d.mean(-1)


def static_region(sil_src: Tensor, dilate: int = 1) -> Tensor:
    """``[B, F - 1, H, W]`` bool: pixels outside the source object (dilated by ``dilate``
    pixels) in both frames ``f`` and ``f + 1``."""
    m = sil_src.float()
    b, f, h, w = m.shape
    if dilate > 0:
        k = 2 * dilate + 1
        m = F.max_pool2d(m.reshape(b * f, 1, h, w), k, stride=1, padding=dilate).reshape(b, f, h, w)
    free = m < 0.5
    return free[:, 1:] & free[:, :-1]


def temporal_flicker(videos: Tensor, region: Tensor | None = None) -> Tensor:
    """Mean absolute frame-to-frame change ``[B]`` in ``[0, 1]`` units over ``region``
    (``[B, F - 1, H, W]`` bool; all pixels when None) of videos ``[B, 3, F, H, W]`` in
    ``[-1, 1]``. NaN where the region is empty."""
    if videos.ndim != 5:
        raise ValueError(f"videos must be [B, 3, F, H, W], got {tuple(videos.shape)}")
    diff = (videos[:, :, 1:] - videos[:, :, :-1]).abs().float().mean(1) / 2.0  # (B, F-1, H, W)
    if region is None:
        return diff.flatten(1).mean(1)
    r = region.float()
    return (diff * r).flatten(1).sum(1) / r.flatten(1).sum(1)


def _render(clips, world) -> Tensor:
    from byg.data.toy_video import render_clip, to_video_tensor

    return torch.stack([to_video_tensor(render_clip(c, world)) for c in clips])


def _target_read(ex) -> object:
    return ex.target_value


@torch.no_grad()
def evaluate_video_edits(outputs: Tensor, examples: list, oracle, world) -> dict:
    """Oracle metrics of edited clips ``outputs [B, 3, F, H, W]`` (in ``[-1, 1]``) for
    ``examples`` (``VideoEditExample``; ``world``: their ``ToyVideoConfig``).

    Returns ``summarize(records)`` plus ``per_example``: one record per clip with the
    metrics of the module docstring, ``edit_type``, ``seen``, ``changed`` (attributes other
    than the edited one that misread on some frame) and ``frames_*`` per-frame flags.
    """
    from byg.data.toy_video import frames_of

    if outputs.ndim != 5 or outputs.shape[0] != len(examples):
        raise ValueError(
            f"outputs must be [B, 3, F, H, W] with B = len(examples) = {len(examples)}, "
            f"got {tuple(outputs.shape)}"
        )
    b, _, f, h, w = outputs.shape
    outputs = outputs.detach().float().cpu().clamp(-1, 1)
    src = _render([ex.src for ex in examples], world)
    tgt = _render([ex.tgt for ex in examples], world)
    reads, sil_out = oracle.read_with_silhouettes(frames_of(outputs))
    src_reads, sil_src = oracle.read_with_silhouettes(frames_of(src))
    ious = iou(sil_out, sil_src).view(b, f)
    sil_out, sil_src = sil_out.view(b, f, h, w), sil_src.view(b, f, h, w)
    c_out, c_src = centroids(sil_out), centroids(sil_src)  # (B, F, 2)
    motion = motion_error(sil_out, sil_src)
    flicker = temporal_flicker(outputs, static_region(sil_src))
    p = clip_psnr(outputs, tgt)
    records = []
    for i, ex in enumerate(examples):
        ok_edit, ok_keep, changed = [], [], set()
        for j in range(f):
            r = reads[i * f + j]
            ok_edit.append(r[ex.attribute] == _target_read(ex))
            ref = src_reads[i * f + j]
            bad = [k for k in CATEGORICAL if k != ex.attribute and r[k] != ref[k]]
            changed.update(bad)
            err = float((c_out[i, j] - c_src[i, j]).norm())
            near = not math.isnan(err) and err <= CENTROID_TOL_PX
            ok_keep.append(not bad and near and float(ious[i, j]) >= IOU_THRESHOLD)
        s, k = np.array(ok_edit, float), np.array(ok_keep, float)
        records.append(
            {
                "edit_type": ex.edit_type,
                "seen": ex.seen,
                "edit_success": float(s.mean()),
                "preservation": float(k.mean()),
                "success_and_preservation": float((s * k).mean()),
                "psnr": float(p[i]),
                "motion_err_px": float(motion[i]),
                "flicker": float(flicker[i]),
                "changed": sorted(changed),
                "frames_success": [bool(v) for v in ok_edit],
                "frames_preserved": [bool(v) for v in ok_keep],
            }
        )
    return {**summarize(records), "per_example": records}


KEYS = (
    "edit_success",
    "preservation",
    "success_and_preservation",
    "psnr",
    "motion_err_px",
    "flicker",
)


def _aggregate(records: list[dict]) -> dict:
    if not records:
        return {**{k: float("nan") for k in KEYS}, "n": 0}
    out = {k: float(np.nanmean([r[k] for r in records])) for k in KEYS}
    return {**out, "n": len(records)}


def summarize(records: list[dict]) -> dict:
    """Means overall, per edit type and per split (``seen``/``unseen``)."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    by_split: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_type[r["edit_type"]].append(r)
        by_split["seen" if r["seen"] else "unseen"].append(r)
    return {
        "overall": _aggregate(records),
        "by_type": {k: _aggregate(v) for k, v in sorted(by_type.items())},
        "by_split": {k: _aggregate(v) for k, v in sorted(by_split.items())},
        "n": len(records),
    }


__all__ = [
    "clip_psnr",
    "centroids",
    "motion_error",
    "static_region",
    "temporal_flicker",
    "evaluate_video_edits",
    "summarize",
]

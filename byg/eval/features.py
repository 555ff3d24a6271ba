"""Reference-based metrics from frozen feature models: CLIP directional similarity and DINO.

* CLIP directional similarity (Gal et al. 2022; Brooks et al. 2023) measures edit success
  as the agreement between the change in image embedding and the change in caption
  embedding, both taken on unit-normalised CLIP embeddings ``E``::

      clip_dir = cos(E_img(edited) - E_img(source), E_txt(target caption) - E_txt(source caption))

  It lies in ``[-1, 1]``; an unchanged image scores 0.
* DINO similarity (Caron et al. 2021) measures source preservation as the cosine of the
  CLS features of source and edit (1 for identical images).

For videos both are computed per frame (frame ``k`` of the edit against frame ``k`` of the
source) and averaged. Models are loaded from local folders with transformers
(``CLIPModel`` + its tokenizer and image processor; ``Dinov2Model`` or ``ViTModel`` + its
image processor), never downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

#: transformers ``model_type`` values whose last hidden state starts with a CLS token
DINO_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit", "dinov3_vit")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{what} model folder {str(p)!r} has no config.json (give a local folder saved "
            "with save_pretrained; models are never downloaded)"
        )
    return p


def _image_processor(path: Path, what: str) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"{what} model folder {str(path)!r} has no usable image processor "
            f"(preprocessor_config.json): {e}"
        ) from e


def _pooled(out: Any) -> Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor in transformers 4, an output
    object with the projection in ``pooler_output`` in transformers 5)."""
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipFeatures:
    """Unit-normalised CLIP image and text embeddings from a local ``CLIPModel`` folder.

    Args:
        path: folder with ``config.json``, weights, tokenizer and ``preprocessor_config.json``.
        device: torch device (default: CUDA when available).
        batch_size: images or texts per forward pass.
    """

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 16) -> None:
        from transformers import AutoConfig, AutoTokenizer, CLIPModel

        p = _check_dir(path, "CLIP")
        model_type = AutoConfig.from_pretrained(str(p)).model_type
        if model_type != "clip":
            raise ValueError(f"{str(p)!r} holds a {model_type!r} model, not CLIP")
        self.device = device or default_device()
        self.batch_size = batch_size
        self.model = CLIPModel.from_pretrained(str(p)).to(self.device).eval()
        self.processor = _image_processor(p, "CLIP")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(p))
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"CLIP model folder {str(p)!r} has no tokenizer: {e}") from e
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> Tensor:
        """``[N, D]`` float32 unit vectors (CPU) for ``N`` images."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            pix = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            emb = _pooled(self.model.get_image_features(pixel_values=pix.to(self.device)))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> Tensor:
        """``[N, D]`` float32 unit vectors (CPU) for ``N`` captions."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            emb = _pooled(
                self.model.get_text_features(
                    input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask")
                )
            )
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)


class DinoFeatures:
    """Unit-normalised DINO CLS features from a local ``Dinov2Model``/``ViTModel`` folder."""

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 16) -> None:
        from transformers import AutoConfig, AutoModel

        p = _check_dir(path, "DINO")
        model_type = AutoConfig.from_pretrained(str(p)).model_type
        if model_type not in DINO_MODEL_TYPES:
            raise ValueError(
                f"{str(p)!r} holds a {model_type!r} model; DINO similarity needs one of "
                f"{list(DINO_MODEL_TYPES)}"
            )
        self.device = device or default_device()
        self.batch_size = batch_size
        self.model = AutoModel.from_pretrained(str(p)).to(self.device).eval()
        self.processor = _image_processor(p, "DINO")

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> Tensor:
        """``[N, D]`` float32 unit CLS features (CPU) for ``N`` images."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            pix = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            hidden = self.model(pixel_values=pix.to(self.device)).last_hidden_state  # (B, T, D)
            out.append(F.normalize(hidden[:, 0].float(), dim=-1).cpu())  # CLS token
        return torch.cat(out) if out else torch.empty(0, self.model.config.hidden_size)


# ----------------------------------------------------------------------------- the maths


def clip_directional(img_src: Tensor, img_edit: Tensor, txt_src: Tensor, txt_tgt: Tensor) -> Tensor:
    """CLIP directional similarity of ``N`` edits, ``[N]``.

    ``cos(n(img_edit) - n(img_src), n(txt_tgt) - n(txt_src))`` with ``n`` the L2
    normalisation; all inputs ``[N, D]`` (text rows may also be ``[1, D]``, broadcast). A
    zero image change gives 0.
    """
    for name, t in (("img_src", img_src), ("img_edit", img_edit), ("txt_src", txt_src)):
        if t.ndim != 2:
            raise ValueError(f"{name} must have shape [N, D], got {tuple(t.shape)}")
    d_img = F.normalize(img_edit, dim=-1) - F.normalize(img_src, dim=-1)  # (N, D)
    d_txt = F.normalize(txt_tgt, dim=-1) - F.normalize(txt_src, dim=-1)  # (N or 1, D)
    return F.cosine_similarity(d_img, d_txt.expand_as(d_img), dim=-1, eps=1e-8)


def feature_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of two ``[N, D]`` feature sets, ``[N]``."""
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return F.cosine_similarity(a, b, dim=-1)


def clip_dir_scores(
    clip: ClipFeatures,
    sources: Sequence[Image.Image],
    edits: Sequence[Image.Image],
    source_caption: str,
    target_caption: str,
) -> Tensor:
    """``[N]`` CLIP-dir for ``N`` (source, edit) image pairs (or video frames) of one edit."""
    if len(sources) != len(edits):
        raise ValueError(f"{len(sources)} source frames vs {len(edits)} edited frames")
    txt = clip.texts([source_caption, target_caption])  # (2, D)
    return clip_directional(clip.images(sources), clip.images(edits), txt[:1], txt[1:])


def clip_image_scores(
    clip: ClipFeatures, sources: Sequence[Image.Image], edits: Sequence[Image.Image]
) -> Tensor:
    """``[N]`` CLIP image-image cosine (CLIP-I) per pair or frame."""
    return feature_similarity(clip.images(sources), clip.images(edits))


def dino_scores(
    dino: DinoFeatures, sources: Sequence[Image.Image], edits: Sequence[Image.Image]
) -> Tensor:
    """``[N]`` DINO CLS cosine per pair or frame (1 for identical images)."""
    if len(sources) != len(edits):
        raise ValueError(f"{len(sources)} source frames vs {len(edits)} edited frames")
    return feature_similarity(dino.images(sources), dino.images(edits))


# ----------------------------------------------------------------------------- pairs files


@dataclass
class Pair:
    """A (source, edited) pair of images or videos, with optional captions."""

    id: str
    source: Path
    edited: Path
    source_caption: str | None = None
    target_caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_pairs(path: str | Path, need_captions: bool = False) -> list[Pair]:
    """Pairs from a JSONL file: ``{"source", "edited"[, "id", "source_caption",
    "target_caption", ...]}`` per line, paths relative to the file. ``eval run``'s
    ``index.jsonl`` has this form.

    Raises:
        FileNotFoundError: the file or a referenced image/video is missing.
        ValueError: a line lacks a field (or captions, when ``need_captions``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pairs file {str(p)!r} does not exist")
    pairs = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        origin = f"{p}:{i + 1}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{origin}: not valid JSON: {e}") from e
        for k in ("source", "edited"):
            if not isinstance(d.get(k), str):
                raise ValueError(f"{origin}: field {k!r} (a path) is missing")
        if need_captions:
            for k in ("source_caption", "target_caption"):
                if not isinstance(d.get(k), str) or not d[k].strip():
                    raise ValueError(f"{origin}: field {k!r} is needed for CLIP-dir")
        src, edt = p.parent / d["source"], p.parent / d["edited"]
        for f in (src, edt):
            if not f.exists():
                raise FileNotFoundError(f"{origin}: {str(f)!r} does not exist")
        known = {"id", "source", "edited", "source_caption", "target_caption"}
        pairs.append(
            Pair(
                id=str(d.get("id", f"{i + 1}")),
                source=src,
                edited=edt,
                source_caption=d.get("source_caption"),
                target_caption=d.get("target_caption"),
                extra={k: v for k, v in d.items() if k not in known},
            )
        )
    if not pairs:
        raise ValueError(f"pairs file {str(p)!r} is empty")
    return pairs


# ----------------------------------------------------------------------------- a pairs file


def score_pairs(
    pairs: Sequence[Pair],
    *,
    clip: ClipFeatures | None = None,
    dino: DinoFeatures | None = None,
    video: bool = False,
    max_frames: int | None = None,
    min_speed: float = 0.1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Metrics of every pair: CLIP-dir and CLIP-I (with ``clip``), DINO (with ``dino``), and
    with ``video`` the flicker of source and edit and the motion fidelity.

    Images count as one-frame videos. Edited frames are resized to the source frame size;
    the two must have the same number of frames (cut both with ``max_frames``).

    Returns:
        One dict per pair: ``id, frames`` and the metrics asked for (frame means).
    """
    from tqdm import tqdm

    from byg.eval.video_metrics import (
        frames_to_array,
        motion_fidelity,
        read_frames,
        temporal_flicker,
    )

    out = []
    for p in tqdm(pairs, desc="pairs", disable=not progress, unit="pair"):
        src = read_frames(p.source, max_frames)
        edt = read_frames(p.edited, max_frames)
        if len(src) != len(edt):
            raise ValueError(
                f"pair {p.id!r}: {len(src)} source frames vs {len(edt)} edited frames "
                f"({p.source} / {p.edited}); use --max-frames to compare a common prefix"
            )
        edt = [
            f if f.size == src[0].size else f.resize(src[0].size, Image.Resampling.BICUBIC)
            for f in edt
        ]
        row: dict[str, Any] = {
            "id": p.id,
            "source": str(p.source),
            "edited": str(p.edited),
            "frames": len(src),
            **p.extra,
        }
        if clip is not None:
            if not p.source_caption or not p.target_caption:
                raise ValueError(f"pair {p.id!r} needs source_caption and target_caption")
            row["clip_dir"] = (
                clip_dir_scores(clip, src, edt, p.source_caption, p.target_caption).mean().item()
            )
            row["clip_img"] = clip_image_scores(clip, src, edt).mean().item()
        if dino is not None:
            row["dino"] = dino_scores(dino, src, edt).mean().item()
        if video:
            if len(src) < 2:
                raise ValueError(f"pair {p.id!r}: video metrics need at least 2 frames")
            a, b = frames_to_array(src), frames_to_array(edt)
            row["flicker_source"] = temporal_flicker(a)
            row["flicker_edit"] = temporal_flicker(b)
            row["motion_fidelity"] = motion_fidelity(a, b, min_speed=min_speed)
        out.append(row)
    return out


__all__ = [
    "score_pairs",
    "ClipFeatures",
    "DinoFeatures",
    "clip_directional",
    "feature_similarity",
    "clip_dir_scores",
    "clip_image_scores",
    "dino_scores",
    "Pair",
    "read_pairs",
    "default_device",
]

"""Inference: load an editor from a checkpoint and run edits (METHOD.md §5).

``edit`` is one plain sampler call: Euler (or UniPC for video) from ``ε`` at ``t = 1`` to 0
with ``G_θ(·, ·, x_src, c_fwd)``: one editor call per step. Optional text guidance (not in
METHOD.md; off by default) extrapolates from a negative text with the same source,
``v = G(·, x_src, c_neg) + s·(G(·, x_src, c_fwd) − G(·, x_src, c_neg))``, in one batched call.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from byg.backbones.base import TextEmbeds, cat_text, index_text
from byg.backbones.editor import Editor
from byg.backbones.registry import build_backbone, build_cache_encoder
from byg.checkpoint import load_checkpoint, resolve_checkpoint
from byg.config import from_dict
from byg.run_config import RunConfig
from byg.sampling import sample, unipc_sample


def build_editor(cfg: RunConfig) -> Editor:
    """Backbone from the registry + LoRA as configured."""
    backbone = build_backbone(cfg.model.backbone, cfg.model.options)
    return Editor(
        backbone,
        rank=cfg.lora.rank,
        alpha=cfg.lora.alpha,
        targets=cfg.lora.targets,
        ema_decay=cfg.ema_decay,
        dropout=cfg.lora.dropout,
        rank_pattern=cfg.lora.rank_pattern,
    )


def load_editor(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[Editor, RunConfig]:
    """Rebuild the editor a checkpoint was trained with and load its LoRA (and EMA)."""
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    cfg = from_dict(RunConfig, ckpt["config"])
    editor = build_editor(cfg)
    editor.load_lora_state_dict(ckpt["lora"], ckpt["ema"])
    return editor.to(device).eval(), cfg


@torch.no_grad()
def edit(
    editor: Editor,
    x_src: Tensor,
    text_fwd: TextEmbeds,
    *,
    steps: int = 20,
    shift: float = 1.0,
    sampler: str = "euler",
    seed: int = 0,
    use_ema: bool = False,
    guidance_scale: float = 1.0,
    text_neg: TextEmbeds | None = None,
) -> Tensor:
    """Edit latents/pixels ``x_src [B, ...]`` under instructions ``text_fwd``.

    ``guidance_scale`` ≠ 1 needs ``text_neg`` (same batch and padding as ``text_fwd``):
    scale 0 samples under ``text_neg`` alone, 1 is plain METHOD.md §5 sampling.
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x_src.shape, generator=g).to(x_src)

    if guidance_scale == 1.0:

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            return editor(x, t, text_fwd, x_src)

    else:
        if text_neg is None:
            raise ValueError(f"guidance_scale {guidance_scale:g} needs a negative text (text_neg)")
        both, cond2 = cat_text(text_fwd, text_neg), torch.cat([x_src, x_src])

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            c, u = editor(torch.cat([x, x]), torch.cat([t, t]), both, cond2).chunk(2)
            return u + guidance_scale * (c - u)

    with editor.ema() if use_ema else nullcontext():
        if sampler == "unipc":
            return unipc_sample(velocity, noise, num_steps=steps, shift=shift)
        return sample(velocity, noise, num_steps=steps, shift=shift)


def image_to_tensor(img: Image.Image, resolution: int | None = None) -> Tensor:
    """PIL -> ``[3, H, W]`` float in [-1, 1] (optionally resized to a square)."""
    img = img.convert("RGB")
    if resolution is not None and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def tensor_to_image(x: Tensor) -> Image.Image:
    arr = (
        ((x.detach().float().clamp(-1, 1) + 1) * 127.5)
        .round()
        .byte()
        .permute(1, 2, 0)
        .cpu()
        .numpy()
    )
    return Image.fromarray(arr)


def open_image(path: str | Path) -> Image.Image:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image {str(p)!r} does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt files
        raise ValueError(f"cannot decode image {str(p)!r}: {e}") from e


class EditSession:
    """An editor plus, for latent backbones, its VAE/text encoders: PIL in, PIL out."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        self.editor, self.cfg = load_editor(checkpoint, device)
        self.device = device
        self.encoder: Any = None
        if self.cfg.model.backbone not in ("toy", "toy_video"):
            self.encoder = build_cache_encoder(self.cfg.model.backbone, self.cfg.model.options)

    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        if self.encoder is not None:
            return self.encoder.encode_text(prompts)
        return self.editor.encode_text(prompts)

    def __call__(
        self,
        image: Image.Image,
        instruction: str,
        *,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        negative: str = "",
    ) -> Image.Image:
        """Edit ``image``; ``guidance_scale`` (default: the checkpoint's ``sample.guidance_scale``)
        extrapolates away from ``negative`` (default: the empty text)."""
        res = self.cfg.data.resolution
        x = image_to_tensor(image, res)[None].to(self.device)
        if self.encoder is not None:
            x = self.encoder.encode_media(x)
        scale = self.cfg.sample.guidance_scale if guidance_scale is None else guidance_scale
        prompts = [instruction] if scale == 1.0 else [instruction, negative]
        both = {k: v.to(self.device) for k, v in self.encode_text(prompts).items()}
        text = index_text(both, slice(0, 1))
        text_neg = index_text(both, slice(1, 2)) if scale != 1.0 else None
        out = edit(
            self.editor,
            x,
            text,
            steps=steps or self.cfg.sample.steps,
            shift=self.cfg.sample.shift,
            sampler=self.cfg.sample.sampler,
            seed=seed,
            use_ema=self.cfg.sample.use_ema,
            guidance_scale=scale,
            text_neg=text_neg,
        )
        if self.encoder is not None:
            out = self.encoder.decode_media(out)
        return tensor_to_image(out[0])


def load_editor_fn(checkpoint: str | Path, device: str = "cpu", steps: int | None = None):
    """``EditFn(image, instruction, row) -> image`` for the evaluation tools."""
    session = EditSession(checkpoint, device)

    def fn(image: Image.Image, instruction: str, row: dict | None = None) -> Image.Image:
        out = session(image, instruction, steps=steps)
        return out.resize(image.size, Image.BICUBIC) if out.size != image.size else out

    return fn


__all__ = [
    "build_editor",
    "load_editor",
    "edit",
    "EditSession",
    "load_editor_fn",
    "image_to_tensor",
    "tensor_to_image",
    "open_image",
]

"""The toy text-to-video backbone: the toy image backbone's layers around space-time patches.

Layout (one line per step of ``forward``; ``F`` frames, ``pt x p x p`` space-time patches)::

    x_t [B,3,F,H,W] --frames into the batch--> [B*F,3,H,W]
      --per-frame conv stem(t): stem_levels U-Net levels--> skips, s [B*F,C',H',W']
    s as [B,C',F,H',W'] --Conv3d (pt,p,p) stride (pt,p,p)--> noisy tokens [B,N,D] + pos3d
    cond [B,3,F,H,W] --same stem at t=0, same Conv3d--> cond tokens [B,N,D] + pos3d + type_cond
    text --word tokens--> text encoder --> [B,L,D] (+ masked mean pooled into the AdaLN vector)
    [noisy ; cond] --depth x DiT block (self-attn over ALL space-time tokens, cross-attn, MLP)-->
    noisy tokens --final AdaLN + linear + unpatchify--> [B,C',F,H',W'] --frames into the batch-->
      up blocks (+ the noisy skips when ``skips``) --> conv head --> v [B,3,F,H,W]

``N = (F / pt) * (H' / p) * (W' / p)``. The conv stem and head are per frame (they see no
time); every temporal interaction happens in the transformer, whose attention spans all
space-time tokens.

METHOD.md §2, video: **the condition clip's tokens get the SAME positional encodings as the
noisy tokens** (one fixed 3D sin-cos buffer, ``pos``, indexed by (time, row, column) and added
to both), plus the learned ``type_cond`` marker (a type embedding, not a position), as in
the image toy backbone. ``cond=None`` adds no token: the model is then exactly the
text-to-video base. Everything else (text encoder, DiT blocks, LoRA targets, ``cond_time``,
checkpoint format) follows ``byg.backbones.toy``, whose layers are imported, not copied.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byg.backbones.base import Backbone, TextEmbeds
from byg.backbones.toy import (
    BLOCK_LORA_TARGETS,
    DiTBlock,
    ResBlock,
    TextEncoder,
    UpBlock,
    WordTokenizer,
    cond_embedding,
    modulate,
    split_words,
    timestep_embedding,
)


def default_video_vocabulary() -> list[str]:
    """Words of the toy video world, split like prompts are."""
    from byg.data.toy_video import vocabulary

    words: list[str] = []
    for w in vocabulary():
        words.extend(split_words(w))
    return sorted(set(words))


@dataclass
class ToyVideoBackboneConfig:
    """Architecture of the toy video backbone (validated on construction).

    Attributes:
        frames: clip length ``F`` (``temporal_patch`` must divide it).
        image_size: square frame side ``H = W``.
        temporal_patch: frames per token (``pt``).
        patch_size: spatial token side on the stem's coarsest level (``p``).
        skips: U-Net skip connections from the noisy input's conv levels into the decoder
            (default, as the image toy backbone). ``False`` decodes every detail of the
            output from the transformer tokens, as a latent DiT does (Wan), so condition
            tokens could carry the source clip to the output as fully as the noisy tokens
            carry ``x_t``; within this CPU budget neither setting let LoRA learn to copy the
            source (measurements in docs/video_toy.md).
        pos_embed: ``"sincos"`` (a fixed 3D sin-cos code added to the tokens) or ``"rope"``
            (3D axial rotary embedding on self-attention queries and keys, as Wan). Either
            way the condition tokens get exactly the noisy tokens' codes; with RoPE a
            condition token sits at relative offset 0 from the noisy token at its position.
        The rest as in ``byg.backbones.toy.ToyBackboneConfig``.
    """

    frames: int = 8
    image_size: int = 24
    channels: int = 3
    stem_channels: int = 16
    stem_blocks: int = 1
    stem_levels: int = 1
    temporal_patch: int = 2
    patch_size: int = 4
    dim: int = 96
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 2.0
    text_layers: int = 1
    max_text_len: int = 40
    cond_time: Literal["clean", "shared"] = "clean"
    type_init_std: float = 0.5
    skips: bool = True
    pos_embed: Literal["sincos", "rope"] = "sincos"
    vocab: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        for name in (
            "frames",
            "image_size",
            "channels",
            "stem_channels",
            "stem_levels",
            "temporal_patch",
            "patch_size",
            "dim",
            "depth",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("stem_blocks", "text_layers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.frames % self.temporal_patch:
            raise ValueError(
                f"temporal_patch={self.temporal_patch} must divide frames={self.frames}"
            )
        if self.image_size % (self.patch_size * 2 ** (self.stem_levels - 1)):
            raise ValueError(
                f"patch_size={self.patch_size} x 2**(stem_levels-1) must divide "
                f"image_size={self.image_size}"
            )
        if self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"heads must divide dim: dim={self.dim}, heads={self.heads}")
        if self.dim % 6:
            raise ValueError(f"dim must be a multiple of 6 (3D sin-cos), got {self.dim}")
        if self.stem_channels % 8:
            raise ValueError(f"stem_channels must be a multiple of 8, got {self.stem_channels}")
        if self.pos_embed not in ("sincos", "rope"):
            raise ValueError(f"pos_embed must be 'sincos' or 'rope', got {self.pos_embed!r}")
        if self.pos_embed == "rope" and (self.dim // self.heads) % 4:
            raise ValueError(
                f"pos_embed='rope' needs dim/heads divisible by 4, got {self.dim}/{self.heads}"
            )
        if self.max_text_len < 2:
            raise ValueError(f"max_text_len must be >= 2, got {self.max_text_len}")
        if self.cond_time not in ("clean", "shared"):
            raise ValueError(f"cond_time must be 'clean' or 'shared', got {self.cond_time!r}")
        if self.vocab is not None:
            bad = [w for w in self.vocab if split_words(w) != [w]]
            if bad:
                raise ValueError(f"vocab words must be lower-case [a-z0-9]+, got {bad[:5]}")

    def resolved(self) -> ToyVideoBackboneConfig:
        vocab = list(self.vocab) if self.vocab is not None else default_video_vocabulary()
        return dataclasses.replace(self, vocab=vocab)


def sincos_3d(frames: int, grid: int, dim: int) -> Tensor:
    """Fixed 3D sin-cos encoding ``[frames * grid * grid, dim]`` (tokens ordered t, row, col):
    a third of the channels per axis, half sine, half cosine."""
    if dim % 6:
        raise ValueError(f"dim must be a multiple of 6 for 3D sin-cos, got {dim}")
    k = dim // 6
    omega = 1.0 / 10000 ** (torch.arange(k, dtype=torch.float64) / k)
    ts, ys, xs = torch.meshgrid(
        torch.arange(frames, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    out = []
    for pos in (ts.flatten(), ys.flatten(), xs.flatten()):
        ang = pos[:, None] * omega[None, :]
        out += [ang.sin(), ang.cos()]
    return torch.cat(out, 1).float()


def rope_3d(frames: int, grid: int, head_dim: int, theta: float = 100.0) -> tuple[Tensor, Tensor]:
    """Axial 3D rotary tables ``(cos, sin)``, each ``[frames * grid * grid, head_dim]``
    (tokens ordered t, row, col), in the layout of ``byg.backbones.toy.apply_rope``: each
    half of a head rotates in ``head_dim / 4`` angle slots; the first half's slots go to
    the row and the time index, the second half's to the column and the time index."""
    quarter = head_dim // 4
    n_t = quarter // 3
    n_s = quarter - n_t

    def freqs(m: int) -> Tensor:
        return 1.0 / theta ** (torch.arange(m, dtype=torch.float64) / max(m, 1))

    ts, ys, xs = torch.meshgrid(
        torch.arange(frames, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    ts, ys, xs = ts.flatten()[:, None], ys.flatten()[:, None], xs.flatten()[:, None]
    half_a = torch.cat([ys * freqs(n_s), ts * freqs(n_t)], 1)  # (N, quarter)
    half_b = torch.cat([xs * freqs(n_s), ts * freqs(n_t)], 1)
    ang = torch.cat([half_a, half_a, half_b, half_b], 1)  # (N, head_dim)
    return ang.cos().float(), ang.sin().float()


class ToyVideoBackbone(Backbone):
    """Pixel-space flow-matching text-to-video model with condition-clip tokens.

    ``forward(x_t [B,3,F,H,W], t [B], text, cond=None) -> v [B,3,F,H,W]``.
    """

    default_lora_targets = (*BLOCK_LORA_TARGETS, "to_pixels")
    kind = "video"

    def __init__(self, config: ToyVideoBackboneConfig | None = None) -> None:
        super().__init__()
        cfg = (config or ToyVideoBackboneConfig()).resolved()
        self.config = cfg
        self.tokenizer = WordTokenizer(cfg.vocab or [], cfg.max_text_len)
        d, ch, p, pt = cfg.dim, cfg.stem_channels, cfg.patch_size, cfg.temporal_patch
        chs = [ch * 2**level for level in range(cfg.stem_levels)]
        self.grid = cfg.image_size // (p * 2 ** (cfg.stem_levels - 1))
        self.t_tokens = cfg.frames // pt
        self.t_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text_encoder = TextEncoder(
            len(self.tokenizer), cfg.max_text_len, d, cfg.heads, cfg.text_layers
        )
        self.text_pool = nn.Linear(d, d)
        self.stem_in = nn.Conv2d(cfg.channels, ch, 3, padding=1)
        self.stem = nn.ModuleList(ResBlock(ch, d) for _ in range(cfg.stem_blocks))
        self.down = nn.ModuleList(
            nn.Conv2d(chs[i - 1], chs[i], 3, stride=2, padding=1) for i in range(1, len(chs))
        )
        self.down_blocks = nn.ModuleList(
            nn.ModuleList(ResBlock(chs[i], d) for _ in range(cfg.stem_blocks))
            for i in range(1, len(chs))
        )
        self.patch = nn.Conv3d(chs[-1], d, (pt, p, p), stride=(pt, p, p))
        self.register_buffer(
            "pos", sincos_3d(self.t_tokens, self.grid, d), persistent=False
        )  # (N, D): shared by noisy and condition tokens
        rope_cos, rope_sin = rope_3d(self.t_tokens, self.grid, d // cfg.heads)
        self.register_buffer("rope_cos", rope_cos, persistent=False)  # (N, dh)
        self.register_buffer("rope_sin", rope_sin, persistent=False)
        self.type_cond = nn.Parameter(torch.randn(d) * cfg.type_init_std)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.final_adaLN.weight)
        nn.init.zeros_(self.final_adaLN.bias)
        self.to_pixels = nn.Linear(d, pt * p * p * chs[-1])
        self.up = nn.ModuleList(
            UpBlock(chs[i], chs[i - 1], d, cfg.stem_blocks, cfg.skips)
            for i in range(len(chs) - 1, 0, -1)
        )
        head_in = 2 * ch if cfg.skips else ch
        self.head_norm = nn.GroupNorm(8, head_in)
        self.head_conv = nn.Conv2d(head_in, ch, 3, padding=1)
        self.head_out = nn.Conv2d(ch, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)

    # ------------------------------------------------------------------ interface
    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        device = self.pos.device
        return {k: v.to(device) for k, v in self.tokenizer(list(prompts)).items()}

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "config": dataclasses.asdict(self.config)}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def num_tokens(self) -> int:
        """Noisy tokens per clip (the condition clip adds as many)."""
        return self.t_tokens * self.grid * self.grid

    # ------------------------------------------------------------------ pieces
    def _text(self, text: TextEmbeds) -> tuple[Tensor, Tensor, Tensor]:
        if "tokens" not in text or "mask" not in text:
            raise ValueError(
                f"text must hold 'tokens' and 'mask' (encode_text), got {sorted(text)}"
            )
        tokens, mask = text["tokens"], text["mask"].bool()
        keep = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
        tokens, mask = tokens[:, :keep], mask[:, :keep]
        feats = self.text_encoder(tokens, mask)
        w = mask.unsqueeze(-1).to(feats.dtype)
        pooled = (feats * w).sum(1) / w.sum(1).clamp_min(1.0)
        return feats, mask, self.text_pool(pooled)

    def _frames_emb(self, emb: Tensor) -> Tensor:
        return emb.repeat_interleave(self.config.frames, dim=0)  # (B*F, D)

    def patch_tokens(self, x: Tensor, emb: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per-frame stem features (full resolution first, ``[B*F, C_l, H_l, W_l]``) and
        space-time tokens ``[B, N, D]`` WITHOUT positional encoding."""
        b, c, f, h, w = x.shape
        s = self.stem_in(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        e = self._frames_emb(emb)
        for block in self.stem:
            s = block(s, e)
        skips = [s]
        for down, blocks in zip(self.down, self.down_blocks):
            s = down(s)
            for block in blocks:
                s = block(s, e)
            skips.append(s)
        _, ch, hh, ww = s.shape
        s = s.view(b, f, ch, hh, ww).transpose(1, 2)  # (B, C', F, H', W')
        tok = self.patch(s).flatten(2).transpose(1, 2)  # (B, N, D), order (t, row, col)
        return skips, tok

    def forward(
        self, x_t: Tensor, t: Tensor, text: TextEmbeds, cond: Tensor | None = None
    ) -> Tensor:
        """Velocity ``[B, 3, F, H, W]`` (METHOD.md §1 convention ``v = eps - x0``)."""
        self.check_inputs(x_t, t, cond)
        cfg = self.config
        want = (cfg.channels, cfg.frames, cfg.image_size, cfg.image_size)
        if tuple(x_t.shape[1:]) != want:
            raise ValueError(
                f"x_t must be [B, {', '.join(map(str, want))}], got {tuple(x_t.shape)}"
            )
        if cond is not None and cond.shape != x_t.shape:
            raise ValueError(f"cond must match x_t {tuple(x_t.shape)}, got {tuple(cond.shape)}")
        b, n = x_t.shape[0], self.num_tokens
        feats, mask, pooled = self._text(text)
        c_x = self.t_embed(timestep_embedding(t, cfg.dim)) + pooled  # (B, D)
        sincos = cfg.pos_embed == "sincos"
        skips, h = self.patch_tokens(x_t, c_x)
        h = h + self.pos if sincos else h
        rope = None if sincos else (self.rope_cos, self.rope_sin)
        c, groups = c_x[:, None], [n]
        if cond is not None:
            c_y = cond_embedding(self.t_embed, t, pooled, cfg)
            _, h_cond = self.patch_tokens(cond, c_y)
            # the SAME positional codes as the noisy tokens (additive or rotary)
            h_cond = (h_cond + self.pos if sincos else h_cond) + self.type_cond
            h = torch.cat([h, h_cond], 1)  # (B, 2N, D)
            c, groups = torch.stack([c_x, c_y], 1), [n, n]
            if rope is not None:
                rope = (torch.cat([rope[0], rope[0]]), torch.cat([rope[1], rope[1]]))
        for block in self.blocks:
            h = block(h, c, groups, feats, mask, rope)
        h = h[:, :n]
        shift, scale = self.final_adaLN(F.silu(c_x))[:, None].chunk(2, -1)
        h = self.to_pixels(modulate(self.final_norm(h), shift, scale))  # (B, N, pt*p*p*C')
        p, pt, g, tt = cfg.patch_size, cfg.temporal_patch, self.grid, self.t_tokens
        ch = skips[-1].shape[1]
        h = h.view(b, tt, g, g, pt, p, p, ch)
        h = h.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(b * cfg.frames, ch, g * p, g * p)
        e = self._frames_emb(c_x)
        for up, skip in zip(self.up, skips[::-1]):
            h = up(h, skip if cfg.skips else None, e)
        h = torch.cat([h, skips[0]], 1) if cfg.skips else h
        h = self.head_conv(F.silu(self.head_norm(h)))
        v = self.head_out(F.silu(h))  # (B*F, 3, H, W)
        return v.view(b, cfg.frames, cfg.channels, cfg.image_size, cfg.image_size).transpose(1, 2)


# ----------------------------------------------------------------------------- loading


def save_toy_video_backbone(
    model: ToyVideoBackbone, path: str | Path, extra: dict | None = None
) -> Path:
    """``model.safetensors`` + ``config.json`` into folder ``path``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"backbone": model.describe(), **(extra or {})}
    tmp_w, tmp_c = path / "model.safetensors.tmp", path / "config.json.tmp"
    save_file(state, str(tmp_w))
    tmp_c.write_text(json.dumps(meta, indent=1))
    tmp_w.replace(path / "model.safetensors")
    tmp_c.replace(path / "config.json")
    return path


def _config_from_dict(data: dict[str, Any]) -> ToyVideoBackboneConfig:
    from byg.config import from_dict

    return from_dict(ToyVideoBackboneConfig, data, "toy_video_backbone")


def load_toy_video_backbone(path: str | Path) -> ToyVideoBackbone:
    """Load a folder written by ``save_toy_video_backbone`` (strict)."""
    from safetensors.torch import load_file

    path = Path(path)
    weights, meta_file = path / "model.safetensors", path / "config.json"
    for f in (weights, meta_file):
        if not f.exists():
            raise FileNotFoundError(
                f"toy video backbone checkpoint is missing {f}; create one with "
                "`byg pretrain-base --config configs/toy_video.yaml --out DIR`"
            )
    desc = json.loads(meta_file.read_text()).get("backbone", {})
    if desc.get("class") != "ToyVideoBackbone" or "config" not in desc:
        raise ValueError(f"{meta_file} does not describe a ToyVideoBackbone: {desc.get('class')!r}")
    model = ToyVideoBackbone(_config_from_dict(desc["config"]))
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval()


def build(options: dict[str, Any]) -> ToyVideoBackbone:
    """Registry entry: ``{"checkpoint": DIR}`` (a pretrained base), ``{"config": {...}}`` or
    config fields directly (a fresh model). No video base ships: ``{}`` is an error."""
    options = dict(options)
    if "checkpoint" in options:
        ckpt = options.pop("checkpoint")
        if options:
            raise ValueError(
                f"toy_video: 'checkpoint' excludes other options, got {sorted(options)}"
            )
        return load_toy_video_backbone(ckpt)
    if not options:
        raise ValueError(
            "toy_video backbone: give model.options.checkpoint (a base made by "
            "`byg pretrain-base --config configs/toy_video.yaml --out DIR`) or model.options.config"
        )
    if "config" in options:
        cfg = options.pop("config")
        if options:
            raise ValueError(f"toy_video: 'config' excludes other options, got {sorted(options)}")
        return ToyVideoBackbone(_config_from_dict(dict(cfg)))
    return ToyVideoBackbone(_config_from_dict(options))


__all__ = [
    "ToyVideoBackbone",
    "ToyVideoBackboneConfig",
    "sincos_3d",
    "rope_3d",
    "build",
    "save_toy_video_backbone",
    "load_toy_video_backbone",
    "default_video_vocabulary",
]

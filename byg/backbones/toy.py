"""The toy text-to-image backbone: a small pixel-space flow-matching U-Net/DiT hybrid.

Layout (one line per step of ``forward``)::

    x_t [B,3,H,W] --conv stem(t): stem_levels U-Net levels--> skips, s [B,C',H',W']
    s --p x p patch conv--> noisy tokens [B,N,D] + pos2d
    cond [B,3,H,W] --same stem at t=0, same patch conv--> cond tokens [B,N,D] + pos2d + type_cond
    text --word tokens--> text encoder --> [B,L,D] (+ masked mean pooled into the AdaLN vector)
    [noisy ; cond] tokens --depth x (AdaLN-zero self-attn, cross-attn to text, AdaLN-zero MLP)-->
    noisy tokens only --final AdaLN + linear + unpatchify--> [B,C',H',W']
    --up blocks with the noisy skips (coarse to fine)--> conv head --> v [B,3,H,W]

The conv levels give the model translation equivariance (a shape is learned once, not once
per position), which is what makes it learn the toy world in minutes on a CPU; the
transformer in the middle binds words to the object vs the background (per-token
cross-attention) and is where condition tokens meet the noisy ones.

Editing-relevant choices (METHOD.md §2):

* **Condition tokens** come from the *same* stem and patch embedding as the noisy input and
  get the *same* 2D sin-cos positional encoding (a fixed buffer shared by both), plus a
  learned ``type_cond`` vector. They are appended along the token axis in every block and
  the output is sliced back to the noisy tokens. With ``cond=None`` no extra token exists, so
  the model is exactly the text-to-image base.
* **Time for condition tokens** (``cond_time``): ``"clean"`` (default) runs the condition
  image through the stem and the AdaLN modulation at ``t = 0``, i.e. as the clean image it
  is; the base has seen near-clean inputs at small ``t``, so its features for the condition
  are meaningful from the start. ``"shared"`` modulates them with the noisy tokens' ``t``
  (FLUX-Kontext-like shared AdaLN).
* **LoRA** (``default_lora_targets``): every linear of the transformer blocks (self-attn
  ``qkv``/``attn_out``, cross-attn ``cross_q``/``cross_kv``/``cross_out``, MLP ``fc1``/``fc2``)
  and the token-to-pixel ``to_pixels``. The condition path after the (frozen) stem runs
  entirely through these, so LoRA alone can learn to copy: a query at position ``p`` keys on
  the shared positional code at ``p`` plus the condition marker. ``type_cond`` is never
  trained during pretraining (there is no condition then) and ``Editor`` freezes it; it is
  therefore initialised to a fixed random vector (std ``type_init_std``), a constant marker
  that LoRA-adapted ``qkv`` can key on. The condition tokens also differ from the noisy ones
  through their ``t = 0`` modulation.

Text: a word-level tokenizer over ``byg.data.toy.vocabulary()`` (lower-case, punctuation
stripped), ``<bos>`` first (so the empty prompt, the unconditional input for CFG, is one
valid token and attention never sees an all-masked row), ``<unk>`` for unknown words,
``<pad>`` after. The vocabulary is stored in the config, so a checkpoint keeps its tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byg.backbones.base import Backbone, TextEmbeds

SHIPPED_BASE = Path(__file__).resolve().parents[1] / "assets" / "toy_base"
PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
SPECIAL = (PAD, UNK, BOS)
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lower-case words with punctuation stripped (``"A red, big-circle!"`` -> a/red/big/circle)."""
    return _WORD.findall(text.lower())


def default_vocabulary() -> list[str]:
    """Words of the toy world (``byg.data.toy.vocabulary()``), split like prompts are."""
    from byg.data.toy import vocabulary

    words: list[str] = []
    for w in vocabulary():
        words.extend(split_words(w))
    return sorted(set(words))


#: the ``edit_gate`` option's config fields (left out of ``describe()`` while it is off)
GATE_FIELDS: tuple[str, ...] = ("edit_gate", "edit_gate_bias", "edit_gate_t_min")


@dataclass
class ToyBackboneConfig:
    """Architecture of the toy backbone (all sizes validated on construction).

    Attributes:
        image_size: square input resolution ``H = W``.
        channels: image channels.
        stem_channels: width of the full-resolution conv stem and head.
        stem_blocks: residual blocks per stem level.
        stem_levels: resolution levels of the conv stem (U-Net style); level ``l`` has
            ``stem_channels * 2**l`` channels at ``image_size / 2**l``, reached by a stride-2
            conv, and is mirrored by an up block with a skip connection before the head.
        patch_size: stem features -> tokens with a ``p x p`` stride-``p`` conv.
        dim: transformer width (text encoder shares it).
        depth: transformer blocks.
        heads: attention heads (``dim % heads == 0``).
        mlp_ratio: MLP hidden = ``mlp_ratio * dim``.
        text_layers: transformer layers of the text encoder.
        max_text_len: tokens per prompt including ``<bos>``; longer prompts raise.
        cond_time: ``"clean"`` (condition tokens at ``t = 0``) or ``"shared"`` (same ``t``).
        type_init_std: std of the fixed random init of the condition type embedding.
        skips: U-Net skip connections from the noisy input's conv levels into the decoder.
            With ``False`` every detail of the output passes through the transformer tokens,
            as in a latent DiT (FLUX, Wan), so the condition tokens can carry the source to
            the output as fully as the noisy tokens carry ``x_t``; with skips the fine
            detail comes from the noisy input only and an editor has to relearn the decoder.
        pos_embed: ``"sincos"`` (fixed 2D sin-cos added to the tokens) or ``"rope"`` (2D
            axial rotary embedding on self-attention queries and keys, as FLUX and Wan).
            With RoPE a condition token at the same position as a noisy token sits at
            relative offset 0 from it, like the token itself: the copy path is an attention
            pattern the base already uses, which LoRA learns in a few hundred steps.
        prediction: what the network's head outputs. ``"velocity"``: ``v`` itself.
            ``"sample"``: the clean image ``x̂_0``, turned into the velocity
            ``v = (x_t - x̂_0) / max(t, sample_t_min)`` (METHOD.md §1 inverted), so the
            interface and every loss stay in velocity space. In pixel space a small network
            draws a clean image more easily than noise-shaped velocity, and an editor copies
            the source by passing the condition tokens through.
        sample_t_min: the floor on ``t`` in that division (``prediction: sample`` only).
        cond_add: a second way in for the condition: its tokens also pass through
            ``cond_add_proj`` (a zero-initialised linear) and are *added* to the noisy tokens
            at the same grid position, before the first block, beside the token-axis
            concatenation. Zero-initialised, it changes nothing until trained; an editor
            trains it through its LoRA (it is one of ``default_lora_targets``), so copying
            the source no longer depends on attention patterns the base happens to have.
            A base checkpoint saved without it loads with it (``build`` option
            ``cond_add: true``): the projection starts at zero.
        arch: ``"hybrid"`` (the layout of the module docstring: conv levels around a
            token transformer) or ``"unet"``: a conv U-Net whose levels
            ``>= attn_from_level`` follow every residual block with a transformer block
            (self-attention with 2D RoPE, cross-attention to the caption tokens, MLP; the
            same ``DiTBlock`` at the level's width), plus ``depth`` such pairs in the middle.
            ``stem_channels``/``stem_levels``/``stem_blocks`` size the U-Net; ``patch_size``
            and ``skips`` are unused (a U-Net always has its skips). A condition image runs
            through the same U-Net beside ``x_t`` and its tokens are concatenated with the
            noisy ones along the token axis in every attention layer (joint attention, the
            U-Net form of the token concatenation); ``cond_add`` adds its full-resolution
            stem features to the noisy ones through a zero-initialised 1x1 conv.
        cond_add_levels: ``arch: unet`` with ``cond_add``: the condition's features are also
            added at the output of this many encoder levels (finest first), each through its
            own zero-initialised 1x1 conv (``cond_level_add.{l}.cond_add_proj``), so that the
            source reaches the decoder's skips at every resolution, not only through the
            stem. ``0``: the stem only.
        cond_tokens: ``arch: unet``: whether the condition's tokens join the noisy ones in
            attention (token-axis concatenation). ``False`` (with ``cond_add``): the
            condition enters only through the zero-initialised additions, so an editor
            with its LoRA at zero *is* the base under its text, condition or not; the
            condition then runs only through the encoder (its decoder pass is skipped).
        attn_from_level: first U-Net level (0 = full resolution) with attention (``unet``).
        edit_gate: ``arch: unet``, with a condition: an output gate over the source (not in
            the ByG paper; an option of this toy editor). A 3x3 conv on the head's
            features (``edit_gate``, zero weights, bias ``edit_gate_bias``; an editor trains
            it through its LoRA) gives ``g = sigmoid(.)`` per pixel, and the velocity is
            ``g·v_net + (1 − g)·(x_t − y) / max(t, edit_gate_t_min)``: in ``x̂_0`` terms
            ``x̂_0 = y + g·(x̂_0,net − y)``, so where the gate is shut the output is the
            source ``y`` exactly and the network only has to draw what changes. Without a
            condition (the base) the gate is not used.
        edit_gate_bias: the gate's fixed logit where its LoRA adds nothing (``-2``: 0.12).
        edit_gate_t_min: floor on ``t`` in the copy velocity ``(x_t − y) / t``.
        vocab: tokenizer words (without specials); ``None`` = the toy world's vocabulary.
    """

    image_size: int = 32
    channels: int = 3
    stem_channels: int = 32
    stem_blocks: int = 1
    stem_levels: int = 1
    patch_size: int = 2
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    text_layers: int = 2
    max_text_len: int = 32
    cond_time: Literal["clean", "shared"] = "clean"
    type_init_std: float = 0.5
    pos_embed: Literal["sincos", "rope"] = "sincos"
    skips: bool = True
    prediction: Literal["velocity", "sample"] = "velocity"
    sample_t_min: float = 0.05
    cond_add: bool = False
    cond_add_levels: int = 0
    cond_tokens: bool = True
    arch: Literal["hybrid", "unet"] = "hybrid"
    attn_from_level: int = 1
    edit_gate: bool = False
    edit_gate_bias: float = -2.0
    edit_gate_t_min: float = 0.02
    vocab: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "channels",
            "stem_channels",
            "stem_levels",
            "patch_size",
            "dim",
            "depth",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("stem_blocks", "text_layers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"heads must divide dim: dim={self.dim}, heads={self.heads}")
        if self.arch not in ("hybrid", "unet"):
            raise ValueError(f"arch must be 'hybrid' or 'unet', got {self.arch!r}")
        if self.arch == "unet":
            self._check_unet()
        elif self.cond_add_levels or not self.cond_tokens or self.edit_gate:
            raise ValueError("cond_add_levels, cond_tokens: false and edit_gate need arch='unet'")
        elif self.image_size % (self.patch_size * 2 ** (self.stem_levels - 1)):
            raise ValueError(
                f"patch_size={self.patch_size} x 2**(stem_levels-1)="
                f"{2 ** (self.stem_levels - 1)} must divide image_size={self.image_size}"
            )
        if self.stem_channels % 8:
            raise ValueError(f"stem_channels must be a multiple of 8, got {self.stem_channels}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.max_text_len < 2:
            raise ValueError(f"max_text_len must be >= 2, got {self.max_text_len}")
        if self.cond_time not in ("clean", "shared"):
            raise ValueError(f"cond_time must be 'clean' or 'shared', got {self.cond_time!r}")
        if self.pos_embed not in ("sincos", "rope"):
            raise ValueError(f"pos_embed must be 'sincos' or 'rope', got {self.pos_embed!r}")
        if self.pos_embed == "rope" and (self.dim // self.heads) % 4:
            raise ValueError(
                f"pos_embed='rope' needs dim/heads divisible by 4, got {self.dim}/{self.heads}"
            )
        if self.type_init_std < 0:
            raise ValueError(f"type_init_std must be >= 0, got {self.type_init_std}")
        if self.prediction not in ("velocity", "sample"):
            raise ValueError(f"prediction must be 'velocity' or 'sample', got {self.prediction!r}")
        if not 0 < self.sample_t_min < 1:
            raise ValueError(f"sample_t_min must be in (0, 1), got {self.sample_t_min}")
        if not 0 < self.edit_gate_t_min < 1:
            raise ValueError(f"edit_gate_t_min must be in (0, 1), got {self.edit_gate_t_min}")
        if self.vocab is not None:
            bad = [w for w in self.vocab if split_words(w) != [w]]
            if bad:
                raise ValueError(f"vocab words must be lower-case [a-z0-9]+, got {bad[:5]}")
            dup = sorted({w for w in self.vocab if self.vocab.count(w) > 1})
            if dup:
                raise ValueError(f"vocab has duplicate words {dup[:5]}")

    def _check_unet(self) -> None:
        if not 0 <= self.cond_add_levels <= self.stem_levels:
            raise ValueError(
                f"cond_add_levels must be in [0, stem_levels={self.stem_levels}], "
                f"got {self.cond_add_levels}"
            )
        if (self.cond_add_levels or not self.cond_tokens) and not self.cond_add:
            raise ValueError("cond_add_levels > 0 and cond_tokens: false need cond_add: true")
        if self.image_size % 2 ** (self.stem_levels - 1):
            raise ValueError(
                f"arch='unet': 2**(stem_levels-1)={2 ** (self.stem_levels - 1)} must divide "
                f"image_size={self.image_size}"
            )
        if not 0 <= self.attn_from_level < self.stem_levels:
            raise ValueError(
                f"attn_from_level must be in [0, stem_levels={self.stem_levels}), "
                f"got {self.attn_from_level}"
            )
        if self.pos_embed != "rope":
            raise ValueError("arch='unet' positions its attention tokens with pos_embed='rope'")
        for level in range(self.attn_from_level, self.stem_levels):
            width = self.stem_channels * 2**level
            if width % self.heads or (width // self.heads) % 4:
                raise ValueError(
                    f"arch='unet': level {level} has {width} channels; heads={self.heads} must "
                    "divide it into heads of a multiple of 4 channels (2D RoPE)"
                )

    def resolved(self) -> ToyBackboneConfig:
        """A copy with ``vocab`` filled in from the toy world when it is ``None``."""
        if self.vocab is not None:
            return dataclasses.replace(self, vocab=list(self.vocab))
        return dataclasses.replace(self, vocab=default_vocabulary())


# ----------------------------------------------------------------------------- tokenizer


class WordTokenizer:
    """Word-level tokenizer: ``<bos> w1 w2 ... <pad> ...``, unknown words -> ``<unk>``."""

    def __init__(self, words: list[str], max_len: int) -> None:
        self.itos = list(SPECIAL) + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_len = max_len
        self.pad_id, self.unk_id, self.bos_id = (self.stoi[s] for s in SPECIAL)

    def __len__(self) -> int:
        return len(self.itos)

    def __call__(self, prompts: list[str]) -> TextEmbeds:
        """``{"tokens": LongTensor [B, L], "mask": BoolTensor [B, L]}`` with ``L = max_len``."""
        if isinstance(prompts, str):
            raise TypeError("encode a list of prompts, not a single string")
        tokens = torch.full((len(prompts), self.max_len), self.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = [self.bos_id] + [self.stoi.get(w, self.unk_id) for w in split_words(p)]
            if len(ids) > self.max_len:
                raise ValueError(
                    f"prompt {i} has {len(ids) - 1} words, more than max_text_len-1="
                    f"{self.max_len - 1}: {p!r}"
                )
            tokens[i, : len(ids)] = torch.tensor(ids)
        return {"tokens": tokens, "mask": tokens != self.pad_id}

    def decode(self, tokens: Tensor) -> list[str]:
        return [
            " ".join(self.itos[i] for i in row.tolist() if self.itos[i] not in (PAD, BOS))
            for row in tokens
        ]


# ----------------------------------------------------------------------------- layers


def sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2D sin-cos positional encoding ``[grid * grid, dim]`` (row-major tokens)."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 for 2D sin-cos, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    out = []
    for pos in (ys.flatten(), xs.flatten()):
        ang = pos[:, None] * omega[None, :]
        out += [ang.sin(), ang.cos()]
    return torch.cat(out, 1).float()


def rope_2d(grid: int, head_dim: int, theta: float = 100.0) -> tuple[Tensor, Tensor]:
    """Axial 2D rotary tables ``(cos, sin)``, each ``[grid * grid, head_dim]`` (row-major).

    The first half of each head's channels rotates with the row index, the second half with
    the column index (rotate-half pairing within each half).
    """
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    halves = []
    for pos in (ys.flatten(), xs.flatten()):
        ang = pos[:, None] * freqs[None, :]  # (N, quarter)
        halves.append(torch.cat([ang, ang], 1))  # (N, head_dim / 2)
    ang = torch.cat(halves, 1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, heads, N, dh]`` by tables ``[N, dh]`` (rotate-half within each half)."""
    h = x.shape[-1] // 2
    parts = []
    for lo in (0, h):
        a, b = x[..., lo : lo + h // 2], x[..., lo + h // 2 : lo + h]
        parts.append(torch.cat([-b, a], -1))
    rotated = torch.cat(parts, -1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of ``t in [0, 1]`` (scaled by 1000, as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], -1)


def cond_embedding(t_embed: nn.Module, t: Tensor, pooled: Tensor, config) -> Tensor:
    """The condition image's modulation vector: its time (0 under ``cond_time: clean``, else
    the noisy image's ``t``) embedded by ``t_embed``, plus the pooled caption."""
    t_cond = torch.zeros_like(t) if config.cond_time == "clean" else t
    return t_embed(timestep_embedding(t_cond, config.dim)) + pooled


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """Conv residual block with an additive time/text embedding (full resolution)."""

    def __init__(self, ch: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, ch)
        self.norm2 = nn.GroupNorm(8, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        return x + self.conv2(F.silu(self.norm2(h)))


class UpBlock(nn.Module):
    """Decoder level: merge the skip (1x1 conv), residual blocks, upsample x2, conv to ``c_out``."""

    def __init__(self, ch: int, c_out: int, emb_dim: int, blocks: int, skip: bool = True) -> None:
        super().__init__()
        self.merge = nn.Conv2d(2 * ch, ch, 1) if skip else nn.Identity()
        self.blocks = nn.ModuleList(ResBlock(ch, emb_dim) for _ in range(blocks))
        self.up_conv = nn.Conv2d(ch, c_out, 3, padding=1)

    def forward(self, x: Tensor, skip: Tensor | None, emb: Tensor) -> Tensor:
        h = self.merge(x if skip is None else torch.cat([x, skip], 1))
        for block in self.blocks:
            h = block(h, emb)
        return self.up_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class TextLayer(nn.Module):
    """Pre-LN transformer layer over text tokens with a key padding mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.in_proj(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, d_head)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.out_proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.ff(self.norm2(x))


class TextEncoder(nn.Module):
    """Token embedding + learned positions + a few transformer layers -> ``[B, L, dim]``."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, heads: int, layers: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        # positions at the scale of the word embeddings (nn.Embedding draws N(0, 1)): with
        # the usual 0.02 the encoder starts as a bag of words, and "a red circle on blue"
        # reads like "a blue circle on red", so colours bind to object vs background late
        self.pos = nn.Parameter(torch.randn(max_len, dim))
        self.layers = nn.ModuleList(TextLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class DiTBlock(nn.Module):
    """AdaLN-zero self-attention over image tokens, cross-attention to text, AdaLN-zero MLP.

    ``c`` is ``[B, G, dim]``: one conditioning vector per token group (noisy, condition);
    ``groups`` holds the group sizes, so noisy and condition tokens can carry different
    times while the modulation MLP runs once per group, not once per token.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, ctx_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        hidden = int(dim * mlp_ratio)
        ctx = ctx_dim or dim  # width of the text features and of the modulation vector
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(ctx, 2 * dim)
        self.cross_out = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.adaLN = nn.Linear(ctx, 6 * dim)
        nn.init.zeros_(self.adaLN.weight)
        nn.init.zeros_(self.adaLN.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, h, n, dh)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        groups: list[int],
        text: Tensor,
        text_mask: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        b, n, d = x.shape
        mod = self.adaLN(F.silu(c))  # (B, G, 6D)
        if len(groups) > 1:
            mod = torch.repeat_interleave(mod, torch.tensor(groups, device=x.device), dim=1)
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, -1)  # each (B, 1 or T, D)
        q, k, v = self.qkv(modulate(self.norm1(x), sh1, sc1)).view(b, n, 3, d).unbind(2)
        q, k = self._heads(q), self._heads(k)
        if rope is not None:  # rotary tables [n, dh], one row per token (condition included)
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        a = F.scaled_dot_product_attention(q, k, self._heads(v))
        x = x + g1 * self.attn_out(a.transpose(1, 2).reshape(b, n, d))
        kt, vt = self.cross_kv(text).chunk(2, -1)
        q = self._heads(self.cross_q(self.norm2(x)))
        a = F.scaled_dot_product_attention(
            q, self._heads(kt), self._heads(vt), attn_mask=text_mask[:, None, None, :]
        )
        x = x + self.cross_out(a.transpose(1, 2).reshape(b, n, d))
        h = self.fc2(F.gelu(self.fc1(modulate(self.norm3(x), sh2, sc2))))
        return x + g2 * h


def _zero_conv(ch: int) -> nn.Conv2d:
    """A zero-initialised 1x1 conv: a way in for the condition that starts closed."""
    conv = nn.Conv2d(ch, ch, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class _CondAdd(nn.Module):
    """Holds one level's ``cond_add_proj`` (so LoRA's ``cond_add_proj`` target matches it)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.cond_add_proj = _zero_conv(ch)


class UNetLayer(nn.Module):
    """One U-Net layer: a ``ResBlock``, then (``attn``) a ``DiTBlock`` over its pixels as tokens.

    With a condition (``pair``: the batch holds the noisy images then as many condition
    images), the two images' tokens are concatenated along the token axis for the attention
    block, each with its own modulation vector, and split back afterwards; ``rope`` then
    holds the rotary rows of all 2N tokens.
    """

    def __init__(self, ch: int, emb_dim: int, heads: int, mlp_ratio: float, attn: bool) -> None:
        super().__init__()
        self.res = ResBlock(ch, emb_dim)
        self.attn = DiTBlock(ch, heads, mlp_ratio, ctx_dim=emb_dim) if attn else None

    def forward(
        self,
        h: Tensor,
        emb: Tensor,
        pair: bool,
        text: Tensor,
        text_mask: Tensor,
        rope: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        h = self.res(h, emb)
        if self.attn is None:
            return h
        b2, ch, hh, ww = h.shape
        n = hh * ww
        tok = h.flatten(2).transpose(1, 2)  # (b2, N, C)
        if pair:
            b = b2 // 2
            tok = torch.cat([tok[:b], tok[b:]], 1)  # (B, 2N, C)
            c, groups = torch.stack([emb[:b], emb[b:]], 1), [n, n]
        else:
            c, groups = emb[:, None], [n]
        tok = self.attn(tok, c, groups, text, text_mask, rope)
        if pair:
            tok = torch.cat([tok[:, :n], tok[:, n:]], 0)
        return tok.transpose(1, 2).reshape(b2, ch, hh, ww)


#: the linears of a ``DiTBlock`` (self-attention, cross-attention to the caption, MLP)
BLOCK_LORA_TARGETS: tuple[str, ...] = (
    "qkv",
    "attn_out",
    "cross_q",
    "cross_kv",
    "cross_out",
    "fc1",
    "fc2",
)
#: LoRA targets of ``arch: unet``: the attention blocks' linears, and the residual blocks'
#: convolutions, through which a condition added at the stem (``cond_add``) has to pass
#: (with the attention linears alone an editor does not learn to copy the source)
UNET_LORA_TARGETS: tuple[str, ...] = (*BLOCK_LORA_TARGETS, "conv1", "conv2", "cond_add_proj")


# ----------------------------------------------------------------------------- model


class ToyBackbone(Backbone):
    """Pixel-space flow-matching text-to-image model with DiT-style condition tokens.

    ``forward(x_t [B,3,H,W], t [B], text, cond=None) -> v [B,3,H,W]``; ``text`` is the
    ``{"tokens", "mask"}`` dict of ``encode_text``. See the module docstring for the layout.
    """

    default_lora_targets = (*BLOCK_LORA_TARGETS, "to_pixels", "cond_add_proj")
    kind = "image"
    init_may_add_modules = ("edit_gate",)
    init_may_add_fields = GATE_FIELDS

    def __init__(self, config: ToyBackboneConfig | None = None) -> None:
        super().__init__()
        cfg = (config or ToyBackboneConfig()).resolved()
        self.config = cfg
        self.tokenizer = WordTokenizer(cfg.vocab or [], cfg.max_text_len)
        d, ch, p = cfg.dim, cfg.stem_channels, cfg.patch_size
        self.t_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text_encoder = TextEncoder(
            len(self.tokenizer), cfg.max_text_len, d, cfg.heads, cfg.text_layers
        )
        self.text_pool = nn.Linear(d, d)
        self.stem_in = nn.Conv2d(cfg.channels, ch, 3, padding=1)
        if cfg.arch == "unet":
            self._init_unet(cfg)
            self.default_lora_targets = UNET_LORA_TARGETS + (
                ("edit_gate",) if cfg.edit_gate else ()
            )
            return
        chs = [ch * 2**level for level in range(cfg.stem_levels)]
        self.grid = cfg.image_size // (p * 2 ** (cfg.stem_levels - 1))
        self.stem = nn.ModuleList(ResBlock(ch, d) for _ in range(cfg.stem_blocks))
        self.down = nn.ModuleList(
            nn.Conv2d(chs[i - 1], chs[i], 3, stride=2, padding=1) for i in range(1, len(chs))
        )
        self.down_blocks = nn.ModuleList(
            nn.ModuleList(ResBlock(chs[i], d) for _ in range(cfg.stem_blocks))
            for i in range(1, len(chs))
        )
        self.patch = nn.Conv2d(chs[-1], d, p, stride=p)
        self.register_buffer("pos", sincos_2d(self.grid, d), persistent=False)  # (N, D)
        rope_cos, rope_sin = rope_2d(self.grid, d // cfg.heads)
        self.register_buffer("rope_cos", rope_cos, persistent=False)  # (N, dh)
        self.register_buffer("rope_sin", rope_sin, persistent=False)
        self.type_cond = nn.Parameter(torch.randn(d) * cfg.type_init_std)
        if cfg.cond_add:
            self.cond_add_proj = nn.Linear(d, d)
            nn.init.zeros_(self.cond_add_proj.weight)
            nn.init.zeros_(self.cond_add_proj.bias)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.final_adaLN.weight)
        nn.init.zeros_(self.final_adaLN.bias)
        self.to_pixels = nn.Linear(d, p * p * chs[-1])
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

    def _init_unet(self, cfg: ToyBackboneConfig) -> None:
        """The U-Net layout (after the text, time and ``stem_in`` modules both layouts share)."""
        d, ch = cfg.dim, cfg.stem_channels
        chs = [ch * 2**level for level in range(cfg.stem_levels)]
        if cfg.cond_add:
            self.cond_add_proj = _zero_conv(ch)
            self.cond_level_add = nn.ModuleList(
                _CondAdd(chs[level]) for level in range(cfg.cond_add_levels)
            )

        def layers(level: int, n: int) -> nn.ModuleList:
            attn = level >= cfg.attn_from_level
            return nn.ModuleList(
                UNetLayer(chs[level], d, cfg.heads, cfg.mlp_ratio, attn) for _ in range(n)
            )

        levels = range(cfg.stem_levels)
        self.enc = nn.ModuleList(layers(level, cfg.stem_blocks) for level in levels)
        self.down = nn.ModuleList(
            nn.Conv2d(chs[i - 1], chs[i], 3, stride=2, padding=1) for i in range(1, len(chs))
        )
        self.mid = layers(len(chs) - 1, cfg.depth)
        self.merge = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in chs)
        self.dec = nn.ModuleList(layers(level, max(cfg.stem_blocks, 1)) for level in levels)
        self.up_conv = nn.ModuleList(
            nn.Conv2d(chs[i], chs[i - 1], 3, padding=1) for i in range(1, len(chs))
        )
        for level in range(cfg.attn_from_level, cfg.stem_levels):
            cos, sin = rope_2d(cfg.image_size // 2**level, chs[level] // cfg.heads)
            self.register_buffer(f"rope_cos_{level}", cos, persistent=False)
            self.register_buffer(f"rope_sin_{level}", sin, persistent=False)
        self.head_norm = nn.GroupNorm(8, ch)
        self.head_out = nn.Conv2d(ch, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)
        if cfg.edit_gate:
            self.edit_gate = nn.Conv2d(ch, 1, 3, padding=1)
            nn.init.zeros_(self.edit_gate.weight)
            nn.init.constant_(self.edit_gate.bias, cfg.edit_gate_bias)

    def _unet(
        self, x: Tensor, emb: Tensor, pair: bool, feats: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """U-Net over ``x [b2, C, H, W]`` (noisy images, then their conditions when ``pair``).

        Returns the head's output and, with a condition and ``edit_gate``, the gate's logits
        ``[b, 1, H, W]`` for the noisy images (else ``None``).
        """
        cfg = self.config

        joint = pair and cfg.cond_tokens  # condition tokens in the noisy tokens' attention

        def rope(level: int) -> tuple[Tensor, Tensor] | None:
            """The level's rotary tables; with joint tokens, the condition gets the same rows."""
            if level < cfg.attn_from_level:
                return None
            cos, sin = getattr(self, f"rope_cos_{level}"), getattr(self, f"rope_sin_{level}")
            return (torch.cat([cos, cos]), torch.cat([sin, sin])) if joint else (cos, sin)

        ropes = [rope(level) for level in range(cfg.stem_levels)]  # once per forward
        h = self.stem_in(x)
        b = h.shape[0] // 2 if pair else h.shape[0]
        if pair and cfg.cond_add:
            h = torch.cat([h[:b] + self.cond_add_proj(h[b:]), h[b:]], 0)
        if pair and not joint and not cfg.cond_add_levels:
            h, emb = h[:b], emb[:b]  # the condition is in and has nothing more to give
        if pair and not joint and h.shape[0] > b:  # noisy and condition images, each on its own
            feats, mask = torch.cat([feats, feats]), torch.cat([mask, mask])
        skips = []
        for level, layer_list in enumerate(self.enc):
            if level:
                h = self.down[level - 1](h)
            for layer in layer_list:
                h = layer(h, emb, joint, feats[: h.shape[0]], mask[: h.shape[0]], ropes[level])
            if pair and level < cfg.cond_add_levels:
                h = torch.cat([h[:b] + self.cond_level_add[level].cond_add_proj(h[b:]), h[b:]])
                if not joint and level == cfg.cond_add_levels - 1:
                    h, emb = h[:b], emb[:b]
            skips.append(h[:b] if pair and not joint else h)
        feats, mask = feats[: len(emb)], mask[: len(emb)]
        for layer in self.mid:
            h = layer(h, emb, joint, feats, mask, ropes[-1])
        for level in range(len(self.enc) - 1, -1, -1):
            h = self.merge[level](torch.cat([h, skips[level]], 1))
            for layer in self.dec[level]:
                h = layer(h, emb, joint, feats, mask, ropes[level])
            if level:
                h = self.up_conv[level - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = F.silu(self.head_norm(h))
        gate = self.edit_gate(h[:b]) if pair and cfg.edit_gate else None
        return self.head_out(h), gate

    # ------------------------------------------------------------------ interface
    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """``{"tokens": [B, L] long, "mask": [B, L] bool}``; ``""`` is the unconditional input."""
        device = self.t_embed[0].weight.device
        return {k: v.to(device) for k, v in self.tokenizer(list(prompts)).items()}

    def describe(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        if not self.config.edit_gate:  # as before the option existed: old checkpoints match
            for k in GATE_FIELDS:
                config.pop(k)
        return {"class": type(self).__name__, "config": config}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ pieces
    def _text(self, text: TextEmbeds) -> tuple[Tensor, Tensor, Tensor]:
        """Token features ``[B, L, D]``, their mask ``[B, L]`` and the pooled vector ``[B, D]``."""
        if "tokens" not in text or "mask" not in text:
            raise ValueError(
                f"text must hold 'tokens' and 'mask' (encode_text), got {sorted(text)}"
            )
        tokens, mask = text["tokens"], text["mask"].bool()
        if tokens.shape != mask.shape or tokens.ndim != 2:
            raise ValueError(
                f"text tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must be [B, L]"
            )
        # drop trailing all-pad columns: masked keys never contribute, so this is exact
        keep = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
        tokens, mask = tokens[:, :keep], mask[:, :keep]
        feats = self.text_encoder(tokens, mask)
        w = mask.unsqueeze(-1).to(feats.dtype)
        pooled = (feats * w).sum(1) / w.sum(1).clamp_min(1.0)
        return feats, mask, self.text_pool(pooled)

    def _image_tokens(self, x: Tensor, emb: Tensor) -> tuple[list[Tensor], Tensor]:
        """Stem features per level (full resolution first) and positioned tokens ``[B, N, D]``."""
        s = self.stem_in(x)
        for block in self.stem:
            s = block(s, emb)
        skips = [s]
        for down, blocks in zip(self.down, self.down_blocks):
            s = down(s)
            for block in blocks:
                s = block(s, emb)
            skips.append(s)
        tok = self.patch(s).flatten(2).transpose(1, 2)  # (B, N, D)
        return skips, tok if self.config.pos_embed == "rope" else tok + self.pos

    def forward(
        self, x_t: Tensor, t: Tensor, text: TextEmbeds, cond: Tensor | None = None
    ) -> Tensor:
        """Velocity ``[B, 3, H, W]`` (METHOD.md §1 convention ``v = eps - x0``)."""
        self.check_inputs(x_t, t, cond)
        size = self.config.image_size
        if x_t.shape[1:] != (self.config.channels, size, size):
            raise ValueError(
                f"x_t must be [B, {self.config.channels}, {size}, {size}], got {tuple(x_t.shape)}"
            )
        if cond is not None and cond.shape != x_t.shape:
            raise ValueError(f"cond must match x_t {tuple(x_t.shape)}, got {tuple(cond.shape)}")
        b = x_t.shape[0]
        feats, mask, pooled = self._text(text)
        c_x = self.t_embed(timestep_embedding(t, self.config.dim)) + pooled  # (B, D)
        if self.config.arch == "unet":
            if cond is None:
                return self._velocity(self._unet(x_t, c_x, False, feats, mask)[0], x_t, t)
            c_y = cond_embedding(self.t_embed, t, pooled, self.config)
            y = cond.to(x_t.dtype)
            out, gate = self._unet(
                torch.cat([x_t, y], 0), torch.cat([c_x, c_y], 0), True, feats, mask
            )
            v = self._velocity(out[:b], x_t, t)
            if gate is None:
                return v
            g = torch.sigmoid(gate)
            t_div = t.to(v.dtype).clamp_min(self.config.edit_gate_t_min).view(-1, 1, 1, 1)
            return g * v + (1 - g) * (x_t - y) / t_div
        n = self.grid * self.grid
        skips, h = self._image_tokens(x_t, c_x)
        c, groups = c_x[:, None], [n]  # (B, 1, D): one modulation for all noisy tokens
        rope = (self.rope_cos, self.rope_sin) if self.config.pos_embed == "rope" else None
        if cond is not None:
            c_y = cond_embedding(self.t_embed, t, pooled, self.config)
            _, h_cond = self._image_tokens(cond, c_y)
            if self.config.cond_add:  # same grid, same token order: add position by position
                h = h + self.cond_add_proj(h_cond)
            h = torch.cat([h, h_cond + self.type_cond], 1)  # (B, N + M, D)
            c, groups = torch.stack([c_x, c_y], 1), [n, h_cond.shape[1]]  # (B, 2, D)
            if rope is not None:  # the condition tokens get the SAME rotary rows
                rope = (torch.cat([rope[0], rope[0]]), torch.cat([rope[1], rope[1]]))
        for block in self.blocks:
            h = block(h, c, groups, feats, mask, rope)
        h = h[:, :n]  # (B, N, D): noisy tokens only
        shift, scale = self.final_adaLN(F.silu(c_x))[:, None].chunk(2, -1)
        h = self.to_pixels(modulate(self.final_norm(h), shift, scale))  # (B, N, p*p*C)
        p, g, ch = self.config.patch_size, self.grid, skips[-1].shape[1]
        h = h.view(b, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, g * p, g * p)
        for up, skip in zip(self.up, skips[::-1]):  # coarsest level first
            h = up(h, skip if self.config.skips else None, c_x)
        h = torch.cat([h, skips[0]], 1) if self.config.skips else h
        h = self.head_conv(F.silu(self.head_norm(h)))
        return self._velocity(self.head_out(F.silu(h)), x_t, t)

    def _velocity(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.config.prediction == "sample":  # out is x̂_0: v = (x_t - x̂_0) / t
            t_div = t.to(out.dtype).clamp_min(self.config.sample_t_min).view(-1, 1, 1, 1)
            return (x_t - out) / t_div
        return out


# ----------------------------------------------------------------------------- loading


def _config_from_dict(data: dict[str, Any]) -> ToyBackboneConfig:
    from byg.config import from_dict

    return from_dict(ToyBackboneConfig, data, "toy_backbone")


def save_toy_backbone(model: ToyBackbone, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into folder ``path`` atomically (tmp+rename)."""
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


#: config fields an editor may set on a saved base: how the condition enters the model
EDITOR_OPTIONS: tuple[str, ...] = ("cond_add", "cond_add_levels", "cond_tokens", *GATE_FIELDS)
#: editor-only modules a base may lack; they keep their initialisation when it does
_EDITOR_MODULES: tuple[str, ...] = ("cond_add_proj", "edit_gate")


def _editor_only(key: str) -> bool:
    return any(name in key for name in _EDITOR_MODULES)


def toy_checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(model.safetensors, config.json)`` of the saved toy backbone in folder ``path``;
    ``FileNotFoundError`` naming the first one missing."""
    path = Path(path)
    files = (path / "model.safetensors", path / "config.json")
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"toy backbone checkpoint is missing {f}")
    return files


def load_toy_backbone(path: str | Path, **editor_options: Any) -> ToyBackbone:
    """Load a folder written by ``save_toy_backbone`` (strict: every tensor must match).

    ``editor_options`` (``EDITOR_OPTIONS``; ``None`` keeps the saved value) override how
    the condition enters the model. Zero-initialised projections the checkpoint lacks
    (``cond_add_proj``, turned on for a base saved without them) are the only tensors allowed
    to be missing, and they keep their zero initialisation.
    """
    from safetensors.torch import load_file

    weights, meta_file = toy_checkpoint_files(path)
    meta = json.loads(meta_file.read_text())
    desc = meta.get("backbone", {})
    if desc.get("class") != "ToyBackbone" or "config" not in desc:
        raise ValueError(f"{meta_file} does not describe a ToyBackbone: {desc.get('class')!r}")
    saved = _config_from_dict(desc["config"])
    unknown = sorted(set(editor_options) - set(EDITOR_OPTIONS))
    if unknown:
        raise ValueError(f"toy backbone: unknown editor option(s) {unknown}; have {EDITOR_OPTIONS}")
    changes = {k: v for k, v in editor_options.items() if v is not None}
    config = dataclasses.replace(saved, **changes) if changes else saved
    model = ToyBackbone(config)
    wanted = set(model.state_dict())
    state = {
        k: v for k, v in load_file(str(weights)).items() if k in wanted or not _editor_only(k)
    }  # editor modules turned off on load
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config != saved:  # projections the saved layout lacks start at zero
        had = set(ToyBackbone(saved).state_dict())
        missing = [k for k in missing if k in had or not _editor_only(k)]
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval()


def load_toy_base(path: str | Path | None = None, **editor_options: Any) -> ToyBackbone:
    """The pretrained toy base (default: the shipped ``byg/assets/toy_base``)."""
    path = Path(path) if path is not None else SHIPPED_BASE
    if path == SHIPPED_BASE and not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no shipped toy base at {path}; create one with `byg pretrain-base --out {path}`"
        )
    return load_toy_backbone(path, **editor_options)


def build(options: dict[str, Any]) -> ToyBackbone:
    """Registry entry (``byg.backbones.registry``).

    ``options``:
        ``{}``: the shipped pretrained base (``load_toy_base()``);
        ``{"checkpoint": DIR}``: a folder with ``model.safetensors`` + ``config.json``;
        either of these with ``EDITOR_OPTIONS`` (``"cond_add": true``, ``"cond_add_levels"``,
        ``"cond_tokens"``): the same weights with the zero-initialised condition
        projections added or the condition's way in changed, for an editor;
        ``{"config": {...}}`` or ``ToyBackboneConfig`` fields directly: a freshly
        initialised model (for tests and pretraining).
    """
    options = dict(options)
    if "checkpoint" in options or set(options) <= set(EDITOR_OPTIONS):
        ckpt = options.pop("checkpoint", None)
        editor = {k: options.pop(k) for k in EDITOR_OPTIONS if k in options}
        if options:
            raise ValueError(
                f"toy backbone: 'checkpoint' allows only {list(EDITOR_OPTIONS)} beside it, "
                f"got {sorted(options)}"
            )
        for k in ("cond_add", "cond_tokens", "edit_gate"):
            if k in editor and not isinstance(editor[k], bool):
                raise ValueError(f"toy backbone: {k!r} must be true or false, got {editor[k]!r}")
        for k in ("edit_gate_bias", "edit_gate_t_min"):
            if k in editor and (
                isinstance(editor[k], bool) or not isinstance(editor[k], (int, float))
            ):
                raise ValueError(f"toy backbone: {k!r} must be a number, got {editor[k]!r}")
        levels = editor.get("cond_add_levels")
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)):
            raise ValueError(f"toy backbone: 'cond_add_levels' must be an integer, got {levels!r}")
        return load_toy_base(ckpt, **editor)
    if "config" in options:
        cfg = options.pop("config")
        if options:
            raise ValueError(
                f"toy backbone: 'config' excludes other options, got {sorted(options)}"
            )
        return ToyBackbone(_config_from_dict(dict(cfg)))
    return ToyBackbone(_config_from_dict(options))


__all__ = [
    "SHIPPED_BASE",
    "UNET_LORA_TARGETS",
    "ToyBackbone",
    "ToyBackboneConfig",
    "EDITOR_OPTIONS",
    "WordTokenizer",
    "build",
    "load_toy_backbone",
    "load_toy_base",
    "save_toy_backbone",
    "split_words",
]

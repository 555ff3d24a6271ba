"""The backbone interface every model implements (STYLE habit 4).

A backbone is a flow-matching velocity model:

    v = backbone(x_t, t, text, cond=None)

* ``x_t``: noisy latents, ``[B, C, H, W]`` (images) or ``[B, C, F, H, W]`` (video).
* ``t``: ``[B]`` float times in ``[0, 1]`` (METHOD.md §1: 1 is noise).
* ``text``: a ``TextEmbeds`` dict produced by ``encode_text`` (or read from a cache);
  every tensor in it has the batch on dim 0, so dicts concatenate and index per key.
* ``cond``: optional source latents with the same layout as ``x_t``. When given, the
  backbone patchifies them and appends their tokens to the noisy tokens along the token
  axis; the output is sliced back to the noisy tokens. When ``None`` the backbone is the
  plain text-to-image/video model.

A backbone knows nothing of losses, samplers, LoRA or distribution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

TextEmbeds = dict[str, Tensor]


def cat_text(*embeds: TextEmbeds) -> TextEmbeds:
    """Concatenate text embeddings along the batch axis (for one batched model call)."""
    keys = embeds[0].keys()
    for e in embeds[1:]:
        if e.keys() != keys:
            raise ValueError(f"text embeddings disagree on keys: {sorted(keys)} vs {sorted(e)}")
    return {k: torch.cat([e[k] for e in embeds], dim=0) for k in keys}


def index_text(embeds: TextEmbeds, index: Tensor | slice) -> TextEmbeds:
    """Select batch rows of every tensor in ``embeds``."""
    return {k: v[index] for k, v in embeds.items()}


def repeat_text(embeds: TextEmbeds, n: int) -> TextEmbeds:
    """Repeat the whole batch ``n`` times (``[B, ...] -> [n B, ...]``)."""
    return {k: v.repeat(n, *([1] * (v.ndim - 1))) for k, v in embeds.items()}


def text_to(embeds: TextEmbeds, device: torch.device | str) -> TextEmbeds:
    return {k: v.to(device) for k, v in embeds.items()}


class Backbone(nn.Module, ABC):
    """Abstract velocity model. Subclasses set ``default_lora_targets`` and ``kind``."""

    #: regex or names of the linear layers LoRA attaches to by default
    default_lora_targets: tuple[str, ...] = ()
    #: "image" or "video": the layout of the latents
    kind: str = "image"
    #: modules ``train.init_from`` may add to an editor trained without them (their
    #: adapters start at zero), and the ``describe()`` config fields that turn them on
    init_may_add_modules: tuple[str, ...] = ()
    init_may_add_fields: tuple[str, ...] = ()

    @abstractmethod
    def forward(
        self, x_t: Tensor, t: Tensor, text: TextEmbeds, cond: Tensor | None = None
    ) -> Tensor:
        """Velocity ``[same shape as x_t]``."""

    @abstractmethod
    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """Embed captions/instructions; the result goes straight into ``forward``."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able identity of the backbone (saved in checkpoints, checked on load)."""
        return {"class": type(self).__name__}

    @staticmethod
    def check_inputs(x_t: Tensor, t: Tensor, cond: Tensor | None) -> None:
        if t.ndim != 1 or t.shape[0] != x_t.shape[0]:
            raise ValueError(f"t must have shape [B]={x_t.shape[0]}, got {tuple(t.shape)}")
        if cond is not None and cond.shape[:2] != x_t.shape[:2]:
            raise ValueError(
                f"cond must match x_t in batch and channels: {tuple(cond.shape)} vs {tuple(x_t.shape)}"
            )


__all__ = ["Backbone", "TextEmbeds", "cat_text", "index_text", "repeat_text", "text_to"]

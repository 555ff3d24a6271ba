"""Name -> builder for backbones and their cache encoders (explicit, imported lazily).

Each backbone module exposes ``build(options: dict) -> Backbone`` and, when it has a VAE and
text encoders, ``build_cache_encoder(options: dict) -> byg.cache.CacheEncoder``. Heavy
imports (diffusers, transformers) happen only for the backbone that is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from byg.backbones.base import Backbone

BACKBONES = {
    "toy": "byg.backbones.toy",
    "toy_video": "byg.backbones.toy_video",
    "flux": "byg.backbones.flux",
    "wan": "byg.backbones.wan",
}


def _module(name: str):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return importlib.import_module(BACKBONES[name])


def build_backbone(name: str, options: dict[str, Any] | None = None) -> Backbone:
    return _module(name).build(dict(options or {}))


def build_cache_encoder(name: str, options: dict[str, Any] | None = None):
    mod = _module(name)
    if not hasattr(mod, "build_cache_encoder"):
        raise ValueError(f"backbone {name!r} works in pixel space and needs no cache")
    return mod.build_cache_encoder(dict(options or {}))


__all__ = ["BACKBONES", "build_backbone", "build_cache_encoder"]

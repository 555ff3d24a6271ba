"""Precomputed latents and text embeddings, so training holds only the transformer.

A latent backbone (FLUX, Wan) trains on VAE latents and text-encoder outputs that never
change during training. ``build_cache`` computes them once with a ``CacheEncoder`` (the
backbone's VAE + text encoders) and writes safetensors; ``CachedEditDataset`` reads them
back as items the training loop consumes (``collate_cached`` -> ``EditBatch``).

Layout of a cache folder::

    cache.json          format version, model_id, resolution, counts
    rows.jsonl          one line per tuple: media keys, text keys per role, file names
    media/<key>.safetensors   {"latents": [C, h, w] or [C, f, h, w]}
    text/<key>.safetensors    one prompt's TextEmbeds, unbatched (e.g. [L, D] and [P])

* A media key is ``sha256(file, resolution, model_id)``: a source image shared by several
  tuples is encoded once. The pixels' digest is stored beside the latents, so a file whose
  content changed is re-encoded when the cache is rebuilt (never silently reused).
* A text key is ``sha256(prompt, model_id)``: identical prompts (a caption that is the
  source caption of one row and the target caption of another, a repeated instruction) are
  encoded and stored once. All four roles ``c_src``, ``c_tgt``, ``c_fwd``, ``c_rev`` are cached.
* Rebuilding into an existing folder is incremental: finished media and prompts are kept.
* A cache refuses to be read for another ``model_id`` or resolution (``CacheMismatchError``).

This module is backbone-agnostic: latents may be images ``[B, C, H, W]`` or videos
``[B, C, F, H, W]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from byg.backbones.base import TextEmbeds
from byg.objectives.common import ROLES, EditBatch

CACHE_FORMAT = 1
MANIFEST = "cache.json"
ROWS = "rows.jsonl"
#: dataset item key of each text role (METHOD.md §3)
ROLE_KEYS = {"src": "c_src", "tgt": "c_tgt", "fwd": "c_fwd", "rev": "c_rev"}


class CacheMismatchError(ValueError):
    """A cache was built for another model or resolution than the one asking for it."""


@runtime_checkable
class CacheEncoder(Protocol):
    """What ``build_cache`` and ``byg edit`` need from a latent backbone's encoders.

    Attributes:
        model_id: identifies everything that determines the outputs (weights, text length,
            dtype); a cache built with one ``model_id`` is refused by another.
    """

    model_id: str

    def encode_media(self, x: Tensor) -> Tensor:
        """Pixels ``[B, 3, H, W]`` or ``[B, 3, F, H, W]`` in ``[-1, 1]`` -> float32 latents
        ``[B, C, h, w]`` / ``[B, C, f, h, w]`` on ``x``'s device, deterministic (no sampling)."""
        ...

    def decode_media(self, latents: Tensor) -> Tensor:
        """Latents -> float32 pixels in ``[-1, 1]`` (same layout as ``encode_media``'s input)."""
        ...

    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """Prompts -> ``TextEmbeds`` with the batch on dim 0, ready for ``Backbone.forward``."""
        ...


# ----------------------------------------------------------------------------- keys


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:40]


def _resolution(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        res = (resolution, resolution)
    else:
        res = tuple(int(r) for r in resolution)
    if len(res) != 2 or min(res) < 1:
        raise ValueError(
            f"resolution must be a positive int or (height, width), got {resolution!r}"
        )
    return res  # type: ignore[return-value]


def media_key(file: str, resolution: int | Sequence[int], model_id: str) -> str:
    """Key of one encoded file: hash of (file, resolution, model_id)."""
    h, w = _resolution(resolution)
    return _sha("media", file, f"{h}x{w}", model_id)


def text_key(prompt: str, model_id: str) -> str:
    """Key of one encoded prompt: hash of (prompt, model_id)."""
    return _sha("text", prompt, model_id)


def pixel_digest(x: Tensor) -> str:
    """Content hash of a pixel tensor (detects a changed file behind an unchanged name)."""
    x = x.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(x.numpy().tobytes() + str(tuple(x.shape)).encode()).hexdigest()


# ----------------------------------------------------------------------------- files


def _save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Atomic safetensors write (a killed run leaves no half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata)
    os.replace(tmp, path)


def _load(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"cache file {str(path)!r} is missing (rebuild with `byg cache`)")
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


# ----------------------------------------------------------------------------- building


@dataclass
class CacheSummary:
    """What ``build_cache`` did."""

    out_dir: Path
    rows: int
    media: int  # distinct media files in the cache
    media_encoded: int  # of which encoded by this call (the rest were reused)
    prompts: int  # distinct prompts in the cache
    prompts_encoded: int
    model_id: str
    resolution: tuple[int, int]


def _item_files(dataset: Any, item: dict[str, Any]) -> tuple[str, str | None]:
    """The source (and target) file names behind a dataset item, or pixel digests.

    ``EditFolderDataset`` items carry ``index`` into ``dataset.rows`` (``EditRow``); other
    datasets may put ``file_name`` / ``target_file_name`` into the item itself.
    """
    src = item.get("file_name")
    tgt = item.get("target_file_name")
    rows = getattr(dataset, "rows", None)
    if src is None and rows is not None and "index" in item:
        row = rows[int(item["index"])]
        src = getattr(row, "file_name", None)
        tgt = getattr(row, "target_file_name", None)
    if src is None:  # no name: the content is the identity
        src = f"sha1:{pixel_digest(item['x_src'])}"
    if item.get("x_tgt") is not None and tgt is None:
        tgt = f"sha1:{pixel_digest(item['x_tgt'])}"
    return str(src), None if tgt is None else str(tgt)


def _check_item(item: Any, position: int, res: tuple[int, int], name: str) -> None:
    for role, key in ROLE_KEYS.items():
        text = item.get(key)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"dataset item {position} ({name}): {key} (role {role!r}) must be a non-empty "
                f"string, got {text!r}"
            )
    for k in ("x_src", "x_tgt"):
        x = item.get(k)
        if x is None:
            continue
        if not isinstance(x, Tensor) or x.ndim not in (3, 4) or x.shape[0] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"dataset item {position} ({name}): {k} must be [3, H, W] or [3, F, H, W], got {shape}"
            )
        if tuple(x.shape[-2:]) != res:
            raise ValueError(
                f"dataset item {position} ({name}): {k} is {tuple(x.shape[-2:])} pixels, the cache "
                f"resolution is {res}; build the dataset at that resolution"
            )


class _MediaBatcher:
    """Collects pixel tensors to encode in batches and writes one file per key."""

    def __init__(self, encoder: CacheEncoder, media_dir: Path, batch_size: int, meta: dict) -> None:
        self.encoder, self.dir, self.batch_size, self.meta = encoder, media_dir, batch_size, meta
        self.pending: list[tuple[str, str, str, Tensor]] = []  # (key, file, digest, pixels)
        self.queued: set[str] = set()
        self.encoded = 0

    def add(self, key: str, file: str, digest: str, x: Tensor) -> None:
        if key in self.queued:
            return
        self.queued.add(key)
        self.pending.append((key, file, digest, x))
        if len(self.pending) >= self.batch_size:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self.pending:
            return
        # group by shape (videos of different lengths cannot share a batch)
        groups: dict[tuple[int, ...], list[tuple[str, str, str, Tensor]]] = {}
        for entry in self.pending:
            groups.setdefault(tuple(entry[3].shape), []).append(entry)
        for entries in groups.values():
            pixels = torch.stack([e[3] for e in entries])  # (B, 3, [F,] H, W)
            latents = self.encoder.encode_media(pixels)
            if latents.shape[0] != len(entries):
                raise RuntimeError(
                    f"encode_media returned batch {latents.shape[0]} for {len(entries)} inputs"
                )
            for (key, file, digest, _), z in zip(entries, latents):
                meta = {**self.meta, "file": file, "pixel_sha1": digest}
                _save({"latents": z.float()}, self.dir / f"{key}.safetensors", meta)
            self.encoded += len(entries)
        self.pending = []


def build_cache(
    encoder: CacheEncoder,
    dataset: Iterable[dict[str, Any]],
    out_dir: str | Path,
    resolution: int | Sequence[int],
    *,
    batch_size: int = 4,
    text_batch_size: int = 16,
    progress: bool = True,
) -> CacheSummary:
    """Encode every tuple of ``dataset`` into ``out_dir`` (see the module docstring).

    Args:
        encoder: the backbone's ``CacheEncoder`` (VAE + text encoders).
        dataset: indexable or iterable of dicts ``{"x_src": [3, H, W] or [3, F, H, W] in
            [-1, 1], "c_src", "c_tgt", "c_fwd", "c_rev": str, "x_tgt"?: like x_src}``
            (e.g. ``byg.data.tuples.EditFolderDataset``). Items may carry ``file_name`` /
            ``target_file_name``; otherwise ``dataset.rows[item["index"]]`` names the files,
            or else the pixels' hash does.
        out_dir: cache folder (created; an existing cache for the same model_id and
            resolution is extended, one for another is refused).
        resolution: pixel size of every item, ``R`` or ``(H, W)``; checked per item.
        batch_size: media per ``encode_media`` call.
        text_batch_size: prompts per ``encode_text`` call.
        progress: show tqdm bars.

    Returns:
        A ``CacheSummary`` with counts.
    """
    res = _resolution(resolution)
    model_id = encoder.model_id
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"encoder.model_id must be a non-empty string, got {model_id!r}")
    if batch_size < 1 or text_batch_size < 1:
        raise ValueError("batch_size and text_batch_size must be >= 1")
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        _check_manifest(out, model_id, res)  # extending: must be the same model/resolution
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists, is not empty and is not a byg cache; choose another --out")
    media_dir, text_dir = out / "media", out / "text"
    media_dir.mkdir(parents=True, exist_ok=True)
    text_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "model_id": model_id,
        "resolution": list(res),
    }
    if not (out / MANIFEST).exists():  # claim the folder first: an interrupted build can resume
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    meta = {"model_id": model_id, "resolution": f"{res[0]}x{res[1]}"}

    batcher = _MediaBatcher(encoder, media_dir, batch_size, meta)
    rows: list[dict[str, Any]] = []
    prompts: dict[str, str] = {}  # text key -> prompt (dedup over rows and roles)
    total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    items = (dataset[i] for i in range(total)) if total is not None else iter(dataset)  # type: ignore[index]
    for pos, item in enumerate(tqdm(items, total=total, desc="media", disable=not progress)):
        if not isinstance(item, dict) or "x_src" not in item:
            raise ValueError(
                f"dataset item {pos} must be a dict with 'x_src', got {type(item).__name__}"
            )
        src_file, tgt_file = _item_files(dataset, item)
        _check_item(item, pos, res, src_file)
        row: dict[str, Any] = {"file_name": src_file, "text": {}}
        for k, file in (("x_src", src_file), ("x_tgt", tgt_file)):
            x = item.get(k)
            if x is None:
                continue
            key = media_key(file, res, model_id)
            digest = pixel_digest(x)
            path = media_dir / f"{key}.safetensors"
            if not (path.is_file() and _metadata(path).get("pixel_sha1") == digest):
                batcher.add(key, file, digest, x)
            row[k] = key
        if tgt_file is not None and "x_tgt" in row:
            row["target_file_name"] = tgt_file
        for role, k in ROLE_KEYS.items():
            tk = text_key(item[k], model_id)
            prompts[tk] = item[k]
            row["text"][role] = tk
        if "edit_type" in item:
            row["edit_type"] = item["edit_type"]
        rows.append(row)
    batcher.flush()
    if not rows:
        raise ValueError("the dataset is empty: nothing to cache")

    todo = [(k, p) for k, p in prompts.items() if not (text_dir / f"{k}.safetensors").is_file()]
    bar = tqdm(total=len(todo), desc="text", disable=not progress)
    with torch.no_grad():
        for i in range(0, len(todo), text_batch_size):
            chunk = todo[i : i + text_batch_size]
            embeds = encoder.encode_text([p for _, p in chunk])
            for j, (key, prompt) in enumerate(chunk):
                one = {name: t[j] for name, t in embeds.items()}  # unbatched
                _save(one, text_dir / f"{key}.safetensors", {**meta, "prompt": prompt})
            bar.update(len(chunk))
    bar.close()

    tmp = out / f".{ROWS}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out / ROWS)
    n_media = len({r[k] for r in rows for k in ("x_src", "x_tgt") if k in r})
    manifest.update(rows=len(rows), media=n_media, prompts=len(prompts))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return CacheSummary(
        out_dir=out,
        rows=len(rows),
        media=n_media,
        media_encoded=batcher.encoded,
        prompts=len(prompts),
        prompts_encoded=len(todo),
        model_id=model_id,
        resolution=res,
    )


# ----------------------------------------------------------------------------- reading


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """The ``cache.json`` of a cache folder (clear errors for a folder that is not one)."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(cache_dir)!r} is not a byg cache (no {MANIFEST}); build one with `byg cache`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(
            f"{path}: cache format {manifest.get('format')!r}, this byg reads {CACHE_FORMAT}; rebuild it"
        )
    return manifest


def _check_manifest(
    cache_dir: Path, model_id: str | None, resolution: int | Sequence[int] | None
) -> dict[str, Any]:
    manifest = read_manifest(cache_dir)
    if model_id is not None and manifest["model_id"] != model_id:
        raise CacheMismatchError(
            f"cache {str(cache_dir)!r} was built for model {manifest['model_id']!r}, "
            f"but this run uses {model_id!r}; rebuild it with `byg cache` (or point data.path "
            "at the cache built for this model)"
        )
    if resolution is not None and tuple(manifest["resolution"]) != _resolution(resolution):
        raise CacheMismatchError(
            f"cache {str(cache_dir)!r} holds resolution {tuple(manifest['resolution'])}, "
            f"but this run uses {_resolution(resolution)}; rebuild it with `byg cache`"
        )
    return manifest


class CachedEditDataset(torch.utils.data.Dataset):
    """Tuples read from a cache folder written by ``build_cache``.

    Items: ``{"x_src": latents [C, h, w] (or [C, f, h, w]), "text": {role: TextEmbeds
    (unbatched)} for role in src/tgt/fwd/rev, "x_tgt": latents (only when cached),
    "file_name": str, "index": int}``. Batch them with ``collate_cached``.

    Args:
        cache_dir: the folder.
        model_id: when given, refuse a cache built for another model (``CacheMismatchError``).
        resolution: when given, refuse a cache built at another resolution.
        text_cache_size: decoded prompts kept in memory (prompts repeat across rows).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        model_id: str | None = None,
        resolution: int | Sequence[int] | None = None,
        text_cache_size: int = 64,
    ) -> None:
        self.dir = Path(cache_dir)
        self.manifest = _check_manifest(self.dir, model_id, resolution)
        self.model_id: str = self.manifest["model_id"]
        self.resolution: tuple[int, int] = tuple(self.manifest["resolution"])  # type: ignore[assignment]
        rows_path = self.dir / ROWS
        if not rows_path.is_file():
            raise FileNotFoundError(f"{rows_path} is missing: the cache build did not finish")
        self.rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line]
        if not self.rows:
            raise ValueError(f"{rows_path} holds no rows")
        self._text: OrderedDict[str, TextEmbeds] = OrderedDict()
        self._text_cache_size = text_cache_size

    def __len__(self) -> int:
        return len(self.rows)

    def _media(self, key: str, row: int, what: str) -> Tensor:
        try:
            tensors, meta = _load(self.dir / "media" / f"{key}.safetensors")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"row {row} ({self.rows[row]['file_name']}), {what}: {e}"
            ) from e
        if meta.get("model_id") != self.model_id:
            raise CacheMismatchError(
                f"{self.dir}/media/{key}.safetensors belongs to model {meta.get('model_id')!r}, "
                f"the cache to {self.model_id!r}"
            )
        return tensors["latents"]

    def _text_embeds(self, key: str, row: int, role: str) -> TextEmbeds:
        if key in self._text:
            self._text.move_to_end(key)
            return self._text[key]
        try:
            embeds, _ = _load(self.dir / "text" / f"{key}.safetensors")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"row {row} ({self.rows[row]['file_name']}), text role {role!r}: {e}"
            ) from e
        self._text[key] = embeds
        if len(self._text) > self._text_cache_size:
            self._text.popitem(last=False)
        return embeds

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} cached rows")
        row = self.rows[index]
        item: dict[str, Any] = {
            "x_src": self._media(row["x_src"], index, "x_src"),
            "text": {r: self._text_embeds(row["text"][r], index, r) for r in ROLES},
            "file_name": row["file_name"],
            "index": index,
        }
        if "x_tgt" in row:
            item["x_tgt"] = self._media(row["x_tgt"], index, "x_tgt")
        return item


def collate_cached(items: Sequence[dict[str, Any]]) -> EditBatch:
    """Stack cached items into an ``EditBatch`` (``x_tgt`` only when every item has one)."""
    if not items:
        raise ValueError("collate_cached needs at least one item")

    def stack(tensors: list[Tensor], what: str) -> Tensor:
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            names = [it.get("file_name", "?") for it in items]
            raise ValueError(f"cannot batch {what} of different shapes {sorted(shapes)} ({names})")
        return torch.stack(tensors)

    text: dict[str, TextEmbeds] = {}
    for role in ROLES:
        keys = items[0]["text"][role].keys()
        text[role] = {k: stack([it["text"][role][k] for it in items], f"{role}.{k}") for k in keys}
    x_tgt = None
    if all(it.get("x_tgt") is not None for it in items):
        x_tgt = stack([it["x_tgt"] for it in items], "x_tgt")
    return EditBatch(x_src=stack([it["x_src"] for it in items], "x_src"), text=text, x_tgt=x_tgt)


__all__ = [
    "CacheEncoder",
    "CacheMismatchError",
    "CacheSummary",
    "CachedEditDataset",
    "build_cache",
    "collate_cached",
    "media_key",
    "pixel_digest",
    "read_manifest",
    "text_key",
]

"""Benchmarks in GEdit-Bench's published layout, and running an editor over them.

A benchmark is a set of rows with the fields ``task_type, key, instruction,
instruction_language, input_image, Intersection_exist`` (Liu et al. 2025; 11 task types,
English and Chinese instructions). It is read from a local copy:

* a folder (or file) of JSONL / JSON rows whose ``input_image`` is an image path relative
  to the file (the layout ``byg eval longtail`` writes);
* the Hugging Face parquet files (``data/*.parquet``, images stored as bytes), read lazily
  with pyarrow;
* a ``datasets.save_to_disk`` folder.

Edits are written as ``<results>/<method>/fullset/<task_type>/<lang>/<key>.png`` beside a
copy of the source, ``<key>_SRCIMG.png``, as GEdit-Bench's own scripts do, so scoring is a
separate step and external editors' outputs can be dropped into the same tree. Extra row
fields (``source_caption``, ``target_caption``, ``style``, ...) travel with the row.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from byg.eval.viescore import EvalSample, open_rgb

GEDIT_TASK_TYPES = (
    "background_change",
    "color_alter",
    "material_alter",
    "motion_change",
    "ps_human",
    "style_change",
    "subject-add",
    "subject-remove",
    "subject-replace",
    "text_change",
    "tone_transfer",
)
#: row labels of the paper's Table 3
TASK_NAMES = {
    "background_change": "Background change",
    "color_alter": "Color alter",
    "material_alter": "Material alter",
    "motion_change": "Motion change",
    "ps_human": "Human edit",
    "style_change": "Style change",
    "subject-add": "Subject add",
    "subject-remove": "Subject remove",
    "subject-replace": "Subject replace",
    "text_change": "Text change",
    "tone_transfer": "Tone transfer",
    "photo_to_style": "Photorealistic → style",
    "style_to_photo": "Style → photorealistic",
}
REQUIRED_FIELDS = ("task_type", "key", "instruction", "instruction_language", "input_image")
LAYOUT_SUBSET = "fullset"  # GEdit's scripts write every edit under fullset/
SOURCE_SUFFIX = "_SRCIMG"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

EditFn = Callable[[Image.Image, str, dict[str, Any]], Image.Image]
"""``edit(source, instruction, row) -> edited``: the one interface ``eval run`` needs."""


# ----------------------------------------------------------------------------- rows


class _ParquetImages:
    """Lazy image cells of one parquet file: one row group decoded at a time (thread-safe)."""

    def __init__(self, path: Path, column: str) -> None:
        import pyarrow.parquet as pq

        self.path, self.column = path, column
        self.file = pq.ParquetFile(path)
        self._lock = threading.Lock()
        self._cached: tuple[int, list[Any]] | None = None

    def get(self, group: int, index: int) -> Any:
        with self._lock:
            if self._cached is None or self._cached[0] != group:
                col = self.file.read_row_group(group, columns=[self.column]).column(0)
                self._cached = (group, col.to_pylist())
            return self._cached[1][index]


@dataclass
class BenchRow:
    """One benchmark row. ``origin`` names where it came from (``file:line``) for errors.

    The source image is either a file (``image_file``) or read on demand by ``image_loader``
    (parquet bytes, a saved dataset), so loading a benchmark never decodes its images.
    """

    task_type: str
    key: str
    instruction: str
    language: str
    intersection: bool | None
    origin: str
    image_file: Path | None = None
    image_loader: Callable[[], Any] | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.task_type}/{self.language}/{self.key}"

    def load_image(self) -> Image.Image:
        """The source image as RGB."""
        if self.image_file is not None:
            return open_rgb(self.image_file)
        assert self.image_loader is not None
        ref = self.image_loader()
        if isinstance(ref, Image.Image):
            return ref.convert("RGB")
        if isinstance(ref, dict) and ref.get("bytes"):
            try:
                with Image.open(io.BytesIO(ref["bytes"])) as im:
                    return im.convert("RGB")
            except Exception as e:
                raise ValueError(f"{self.origin}: cannot decode the image bytes: {e}") from e
        raise ValueError(f"{self.origin}: the image cell holds no image bytes: {str(ref)[:80]}")

    def as_dict(self) -> dict[str, Any]:
        """The row as the editor sees it (published field names plus extras)."""
        return {
            "task_type": self.task_type,
            "key": self.key,
            "instruction": self.instruction,
            "instruction_language": self.language,
            "Intersection_exist": self.intersection,
            **self.extra,
        }


def _make_row(
    data: Any, origin: str, base_dir: Path, loader: Callable[[], Any] | None = None
) -> BenchRow:
    """Validate one row; ``loader`` reads the image when the row does not hold a path."""
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: a row must be an object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in data or data[k] is None]
    if missing:
        raise ValueError(f"{origin}: missing field(s) {missing}; required: {list(REQUIRED_FIELDS)}")
    for k in ("task_type", "key", "instruction", "instruction_language"):
        if not isinstance(data[k], str) or not data[k].strip():
            raise ValueError(f"{origin}: field {k!r} must be a non-empty string, got {data[k]!r}")
    for k in ("task_type", "key", "instruction_language"):
        if not _SAFE.match(data[k]) or ".." in data[k]:
            raise ValueError(
                f"{origin}: field {k!r}={data[k]!r} cannot be used in a file path "
                "(letters, digits, '_', '-', '.' only)"
            )
    inter = data.get("Intersection_exist")
    if inter is not None and not isinstance(inter, bool):
        raise ValueError(f"{origin}: Intersection_exist must be true/false, got {inter!r}")
    image_file = None
    if loader is None:
        ref = data["input_image"]
        if isinstance(ref, str) and ref.strip():
            image_file = base_dir / ref
        elif isinstance(ref, dict) and ref.get("bytes"):
            loader = lambda ref=ref: ref  # noqa: E731
        elif isinstance(ref, dict) and ref.get("path"):
            image_file = base_dir / ref["path"]
        else:
            raise ValueError(f"{origin}: input_image must be a path or image bytes, got {ref!r}")
    known = set(REQUIRED_FIELDS) | {"Intersection_exist", "input_image_raw"}
    return BenchRow(
        task_type=data["task_type"],
        key=data["key"],
        instruction=data["instruction"],
        language=data["instruction_language"],
        intersection=inter,
        origin=origin,
        image_file=image_file,
        image_loader=loader,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _with_image_field(data: Any, origin: str, image_field: str) -> Any:
    if isinstance(data, dict) and image_field != "input_image":
        if image_field not in data:
            raise ValueError(f"{origin}: no image field {image_field!r}")
        data = {**data, "input_image": data[image_field]}
    return data


def _read_jsonl(path: Path, image_field: str) -> list[BenchRow]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        origin = f"{path}:{i + 1}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{origin}: not valid JSON: {e}") from e
        rows.append(_make_row(_with_image_field(data, origin, image_field), origin, path.parent))
    return rows


def _read_json(path: Path, image_field: str) -> list[BenchRow]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    rows = []
    for i, d in enumerate(data):
        origin = f"{path}[{i}]"
        rows.append(_make_row(_with_image_field(d, origin, image_field), origin, path.parent))
    return rows


def _read_parquet(path: Path, image_field: str) -> list[BenchRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise RuntimeError(f"reading {path} needs pyarrow (pip install pyarrow)") from e
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if image_field not in names:
        raise ValueError(f"{path}: no column {image_field!r}; columns: {names}")
    meta_cols = [c for c in names if c not in (image_field, "input_image", "input_image_raw")]
    images = _ParquetImages(path, image_field)
    rows: list[BenchRow] = []
    for g in range(pf.num_row_groups):
        for j, data in enumerate(pf.read_row_group(g, columns=meta_cols).to_pylist()):
            data["input_image"] = "<parquet>"  # present; the cell itself is read lazily
            rows.append(
                _make_row(
                    data, f"{path}#row{len(rows)}", path.parent, lambda g=g, j=j: images.get(g, j)
                )
            )
    return rows


def _read_saved_dataset(path: Path, image_field: str) -> list[BenchRow]:
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError(f"reading {path} needs the datasets package") from e
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise ValueError(f"{path}: several splits {list(ds)}; point at one split's folder")
    if image_field not in ds.column_names:
        raise ValueError(f"{path}: no column {image_field!r}; columns: {ds.column_names}")
    drop = [
        c
        for c, feat in ds.features.items()
        if isinstance(feat, datasets.Image) or c in (image_field, "input_image")
    ]
    meta = ds.remove_columns(drop)  # iterate metadata without decoding any image
    rows = []
    for i, data in enumerate(meta):
        data = {**data, "input_image": "<dataset>"}
        rows.append(_make_row(data, f"{path}#row{i}", path, lambda i=i: ds[i][image_field]))
    return rows


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _bench_files(root: Path) -> list[Path]:
    if root.is_file():
        if root.suffix not in _READERS:
            raise ValueError(f"{root}: unsupported benchmark file; use .jsonl, .json or .parquet")
        return [root]
    found: dict[str, list[Path]] = {}
    for folder in (root, root / "data"):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.suffix in _READERS and p.is_file():
                    found.setdefault(p.suffix, []).append(p)
    if len(found) > 1:
        raise ValueError(
            f"{root}: found benchmark files of several kinds ({sorted(found)}); "
            "point --bench at one file"
        )
    if not found:
        raise FileNotFoundError(f"{root}: no .jsonl, .json or .parquet benchmark file found")
    return next(iter(found.values()))


def load_benchmark(
    path: str | Path,
    *,
    language: str = "en",
    subset: str = "fullset",
    image_field: str = "input_image",
    task_types: Sequence[str] | None = None,
) -> list[BenchRow]:
    """Read a benchmark from a local copy (see the module docstring for layouts).

    Args:
        path: a benchmark file or folder.
        language: keep rows with this ``instruction_language`` (``"all"``: every row).
        subset: ``"fullset"`` or ``"intersection"`` (rows with ``Intersection_exist``).
        image_field: the column holding the source image.
        task_types: keep only these task types.

    Raises:
        FileNotFoundError: no benchmark there, or a referenced image file is missing.
        ValueError: a malformed row (named by file and line), duplicate ids, or nothing left
            after filtering.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"benchmark {str(root)!r} does not exist")
    if subset not in ("fullset", "intersection"):
        raise ValueError(f"subset must be 'fullset' or 'intersection', got {subset!r}")
    if root.is_dir() and any((root / n).exists() for n in ("state.json", "dataset_dict.json")):
        rows = _read_saved_dataset(root, image_field)
    else:
        rows = []
        for f in _bench_files(root):
            rows += _READERS[f.suffix](f, image_field)
    seen: dict[str, str] = {}
    for r in rows:
        if r.id in seen:
            raise ValueError(f"{r.origin}: duplicate row {r.id!r} (also at {seen[r.id]})")
        seen[r.id] = r.origin
    languages = sorted({r.language for r in rows})
    if language != "all":
        rows = [r for r in rows if r.language == language]
    if subset == "intersection":
        unknown = [r for r in rows if r.intersection is None]
        if unknown:
            raise ValueError(f"{unknown[0].origin}: no Intersection_exist field for --subset")
        rows = [r for r in rows if r.intersection]
    if task_types is not None:
        rows = [r for r in rows if r.task_type in set(task_types)]
    if not rows:
        raise ValueError(
            f"{root}: no rows left for language={language!r}, subset={subset!r}, "
            f"task_types={task_types}; languages present: {languages}"
        )
    for r in rows:
        if r.image_file is not None and not r.image_file.is_file():
            raise FileNotFoundError(f"{r.origin}: input_image {str(r.image_file)!r} does not exist")
    return rows


def check_gedit(rows: Sequence[BenchRow]) -> None:
    """Raise if ``rows`` use task types outside GEdit-Bench's 11."""
    bad = sorted({r.task_type for r in rows} - set(GEDIT_TASK_TYPES))
    if bad:
        first = next(r for r in rows if r.task_type in bad)
        raise ValueError(
            f"{first.origin}: task type(s) {bad} are not GEdit-Bench's; "
            f"expected {list(GEDIT_TASK_TYPES)}"
        )


# ----------------------------------------------------------------------------- layout


def check_method_name(method: str) -> str:
    if not _SAFE.match(method) or ".." in method:
        raise ValueError(f"method name {method!r} must be a plain folder name")
    return method


def output_path(results: str | Path, method: str, row: BenchRow) -> Path:
    """``<results>/<method>/fullset/<task_type>/<lang>/<key>.png``."""
    return (
        Path(results)
        / check_method_name(method)
        / LAYOUT_SUBSET
        / row.task_type
        / row.language
        / f"{row.key}.png"
    )


def source_copy_path(results: str | Path, method: str, row: BenchRow) -> Path:
    """The source copy beside the edit: ``.../<key>_SRCIMG.png``."""
    out = output_path(results, method, row)
    return out.with_name(f"{row.key}{SOURCE_SUFFIX}.png")


def bench_samples(rows: Sequence[BenchRow], results: str | Path, method: str) -> list[EvalSample]:
    """VIEScore samples: each row's source against ``method``'s edit in the layout."""
    samples = []
    for r in rows:
        meta = {
            "key": r.key,
            "instruction_language": r.language,
            "intersection_exist": r.intersection,
        }
        meta.update({k: v for k, v in r.extra.items() if isinstance(v, (str, int, float, bool))})
        samples.append(
            EvalSample(
                id=r.id,
                task_type=r.task_type,
                instruction=r.instruction,
                edited_path=output_path(results, method, r),
                load_source=r.load_image,
                meta=meta,
            )
        )
    return samples


# ----------------------------------------------------------------------------- editors

METHODS = ("byg", "identity", "flowedit", "sdedit")


def identity_edit(image: Image.Image, instruction: str, row: dict[str, Any]) -> Image.Image:
    """The do-nothing editor: returns the source (a floor for SC, a ceiling for PQ)."""
    return image.copy()


def baseline_edit_fn(
    method: str,
    editor: Any,
    encode_text: Callable[[list[str]], dict],
    *,
    resolution: int | None = None,
    encoder: Any = None,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> EditFn:
    """FlowEdit or SDEdit on the frozen base of ``editor`` (METHOD.md §6) as an ``EditFn``.

    Both need captions, not instructions: each row must carry ``target_caption`` (and, for
    FlowEdit, ``source_caption``). Guidance is classifier-free against the empty prompt.

    Args:
        method: ``"flowedit"`` or ``"sdedit"``.
        editor: a ``byg.backbones.editor.Editor`` (its ``base()`` view is used).
        encode_text: prompts -> ``TextEmbeds`` for the backbone.
        resolution: square size the source is resized to before editing (None: as is).
        encoder: VAE-style ``encode_media``/``decode_media`` for latent backbones, or None.
        options: ``FlowEditConfig`` / ``SDEditConfig`` fields (unknown names are errors).
        seed: noise seed, the same for every sample.
    """
    import torch

    from byg.backbones.base import index_text, text_to
    from byg.baselines.flowedit import FlowEditConfig, flowedit
    from byg.baselines.sdedit import SDEditConfig, sdedit
    from byg.config import from_dict
    from byg.guidance import cfg_velocity
    from byg.infer import image_to_tensor, tensor_to_image

    if method not in ("flowedit", "sdedit"):
        raise ValueError(f"baseline must be 'flowedit' or 'sdedit', got {method!r}")
    cfg: Any = from_dict(FlowEditConfig if method == "flowedit" else SDEditConfig, options or {})

    def caption(row: dict[str, Any], name: str) -> str:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{method} needs a {name!r} in every benchmark row; row {row.get('key')!r} "
                f"({row.get('task_type')}) has none"
            )
        return value

    def fn(image: Image.Image, instruction: str, row: dict[str, Any]) -> Image.Image:
        tgt_cap = caption(row, "target_caption")
        prompts = [tgt_cap, ""]
        if method == "flowedit":
            prompts.append(caption(row, "source_caption"))
        x = image_to_tensor(image, resolution)[None].to(device)  # (1, 3, H, W)
        if encoder is not None:
            x = encoder.encode_media(x)
        text = text_to(encode_text(prompts), device)
        tgt, unc = index_text(text, slice(0, 1)), index_text(text, slice(1, 2))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad(), editor.base():
            if method == "flowedit":
                src = index_text(text, slice(2, 3))
                v_src = cfg_velocity(editor, src, unc, cfg.guidance_src)
                v_tgt = cfg_velocity(editor, tgt, unc, cfg.guidance_tgt)
                out = flowedit(v_src, v_tgt, x, cfg, generator=g)
            else:
                out = sdedit(cfg_velocity(editor, tgt, unc, cfg.guidance), x, cfg, generator=g)
            if encoder is not None:
                out = encoder.decode_media(out)
        edited = tensor_to_image(out[0])
        return edited.resize(image.size, Image.Resampling.BICUBIC)

    return fn


def load_editor(
    method: str,
    checkpoint: str | Path | None = None,
    *,
    device: str = "cpu",
    steps: int | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> EditFn:
    """An ``EditFn`` for ``method``.

    * ``identity``: returns the source (no checkpoint).
    * ``byg``: the trained editor in ``checkpoint`` (``byg.infer.load_editor_fn``).
    * ``flowedit`` / ``sdedit``: the frozen base of the model ``checkpoint`` was trained on
      (its LoRA is bypassed), with ``options`` as the baseline's config fields.
    """
    if method == "identity":
        if options:
            raise ValueError(f"identity takes no options, got {sorted(options)}")
        return identity_edit
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if checkpoint is None:
        raise ValueError(f"method {method!r} needs --checkpoint")
    if method == "byg":
        from byg.infer import load_editor_fn

        if options:
            raise ValueError(f"byg takes no --opt options, got {sorted(options)}")
        return load_editor_fn(checkpoint, device=device, steps=steps)
    from byg.infer import EditSession

    session = EditSession(checkpoint, device=device)
    return baseline_edit_fn(
        method,
        session.editor,
        session.encode_text,
        resolution=session.cfg.data.resolution,
        encoder=session.encoder,
        device=device,
        options=options,
        seed=seed,
    )


def _save_atomic(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def run_editor(
    edit: EditFn,
    rows: Sequence[BenchRow],
    results: str | Path,
    method: str,
    *,
    overwrite: bool = False,
    save_source: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Edit every row and write the outputs in the GEdit layout; resumable.

    Rows whose output already exists are skipped unless ``overwrite``. Each file is written
    atomically, so an interrupted run never leaves a half-written edit behind. An
    ``index.jsonl`` in ``<results>/<method>/`` lists every finished row (id, instruction,
    source and edited paths relative to it, extra fields) for the reports and metrics.

    Returns:
        ``{"edited", "skipped", "total", "seconds"}``.
    """
    check_method_name(method)
    edited = skipped = 0
    t0 = time.perf_counter()
    try:
        for r in tqdm(rows, desc=f"edit [{method}]", disable=not progress, unit="image"):
            out = output_path(results, method, r)
            if out.exists() and not overwrite:
                skipped += 1
                continue
            src = r.load_image()
            result = edit(src, r.instruction, r.as_dict())
            if not isinstance(result, Image.Image):
                raise TypeError(
                    f"editor {method!r} returned {type(result).__name__} for row {r.id!r}; "
                    "an EditFn must return a PIL image"
                )
            _save_atomic(result.convert("RGB"), out)
            src_out = source_copy_path(results, method, r)
            if save_source and not src_out.exists():
                _save_atomic(src, src_out)
            edited += 1
    finally:
        write_index(rows, results, method)
    return {
        "edited": edited,
        "skipped": skipped,
        "total": len(rows),
        "seconds": time.perf_counter() - t0,
    }


def write_index(rows: Sequence[BenchRow], results: str | Path, method: str) -> Path:
    """(Re)write ``<results>/<method>/index.jsonl`` for the rows whose edit exists."""
    method_dir = Path(results) / check_method_name(method)
    lines = []
    for r in rows:
        out = output_path(results, method, r)
        if not out.exists():
            continue
        src = source_copy_path(results, method, r)
        src_ref = src if src.exists() else r.image_file
        lines.append(
            {
                "id": r.id,
                "task_type": r.task_type,
                "key": r.key,
                "instruction_language": r.language,
                "instruction": r.instruction,
                "source": os.path.relpath(src_ref, method_dir) if src_ref else None,
                "edited": os.path.relpath(out, method_dir),
                **{k: v for k, v in r.extra.items() if isinstance(v, (str, int, float, bool))},
            }
        )
    method_dir.mkdir(parents=True, exist_ok=True)
    index = method_dir / "index.jsonl"
    tmp = index.with_name(".index.jsonl.tmp")
    tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), "utf-8")
    os.replace(tmp, index)
    return index


__all__ = [
    "GEDIT_TASK_TYPES",
    "TASK_NAMES",
    "EditFn",
    "BenchRow",
    "load_benchmark",
    "check_gedit",
    "output_path",
    "source_copy_path",
    "bench_samples",
    "METHODS",
    "identity_edit",
    "baseline_edit_fn",
    "load_editor",
    "run_editor",
    "write_index",
]

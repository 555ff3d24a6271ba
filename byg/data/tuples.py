"""Unpaired training tuples on disk: one ``metadata.jsonl`` beside the images (METHOD.md §3).

The folder follows the Hugging Face ``imagefolder`` convention, so
``datasets.load_dataset("imagefolder", data_dir=DIR)`` reads it too::

    DIR/
      metadata.jsonl          # one JSON object per line
      cat.jpg                 # file_name (a path relative to DIR, may contain sub-folders)
      targets/cat.png         # optional ground truth (target_file_name), eval / supervised only

Each line holds ``file_name``, ``src_caption``, ``tgt_caption``, ``instruction``,
``reverse_instruction``, ``edit_type`` and optionally ``style`` (the style of a style edit's
result) and ``target_file_name``. Further keys are kept as ``EditRow.extra``.

The rules that make a tuple usable for the ByG objective live here, once, and are used both
by validation and by VLM generation (``byg.data.generate``):

* ``reverse_instruction_problem``: the reverse instruction is self-contained; it never points
  at an "original" state the editor cannot see ("restore", "revert", "undo", "original",
  "back to").
* ``target_caption_problem``: the target caption describes only the edited result: no
  temporal language ("now", "changed to", "became") and no negative phrasing ("without X",
  "no X").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger("byg.data")

METADATA_NAME = "metadata.jsonl"
#: the text fields every row must carry, non-empty
REQUIRED_FIELDS = (
    "file_name",
    "src_caption",
    "tgt_caption",
    "instruction",
    "reverse_instruction",
    "edit_type",
)
OPTIONAL_FIELDS = ("style", "target_file_name")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv")


class DataError(ValueError):
    """A dataset file, row or field is unusable; the message names it."""


# ----------------------------------------------------------------------------- rules

#: (pattern, what it is) pairs; matched case-insensitively on word boundaries
_REVERSE_FORBIDDEN = (
    (r"\brestor\w*", "restore"),
    (r"\brevert\w*", "revert"),
    (r"\bund(o|oes|oing|one)\b", "undo"),
    (r"\boriginal\w*", "original"),
    (r"\bback\s+to\b", "back to"),
)
_TEMPORAL = (
    (r"\bnow\b", "now"),
    (r"\bchanged\s+(to|into)\b", "changed to"),
    (r"\bbec(ame|omes)\b", "became"),
    (r"\bturned\s+into\b", "turned into"),
    (r"\bno\s+longer\b", "no longer"),
    (r"\banymore\b", "anymore"),
    (r"\binstead\s+of\b", "instead of"),
)
_NEGATION = (
    (r"\bwithout\b", "without X"),
    (r"\bno\s+\w", "no X"),
    (r"\bnot\b", "not"),
    (r"\w+n't\b", "n't"),
    (r"\blacking\b", "lacking"),
    (r"\bdevoid\s+of\b", "devoid of"),
)


def _first_match(text: str, patterns: Sequence[tuple[str, str]]) -> str | None:
    for pattern, name in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return name
    return None


def reverse_instruction_problem(text: str) -> str | None:
    """Why ``text`` is not a self-contained reverse instruction, or ``None`` when it is.

    The editor sees only the edited image and the instruction, so a reverse instruction that
    refers to an "original" state has no meaning to it (METHOD.md §3).
    """
    hit = _first_match(text, _REVERSE_FORBIDDEN)
    if hit:
        return f"reverse_instruction refers to an original state ({hit!r}): {text!r}"
    return None


def target_caption_problem(text: str) -> str | None:
    """Why ``text`` is not a plain description of the edited image, or ``None`` when it is.

    The target caption conditions the frozen base model, which knows nothing of an edit: it
    must describe the result only, without temporal language or negations.
    """
    hit = _first_match(text, _TEMPORAL)
    if hit:
        return f"tgt_caption uses temporal language ({hit!r}): {text!r}"
    hit = _first_match(text, _NEGATION)
    if hit:
        return f"tgt_caption uses negative phrasing ({hit!r}): {text!r}"
    return None


def row_problems(
    record: dict[str, Any], allowed_edit_types: Iterable[str] | None = None
) -> list[str]:
    """Every reason ``record`` (one parsed metadata line) is not a usable tuple; ``[]`` if fine.

    Checks: required fields present, strings, non-empty; optional fields strings when given;
    the reverse-instruction and target-caption rules; source and target captions differ;
    ``edit_type`` among ``allowed_edit_types`` when given.
    """
    problems = []
    for name in REQUIRED_FIELDS:
        value = record.get(name)
        if value is None:
            problems.append(f"missing field {name!r}")
        elif not isinstance(value, str):
            problems.append(f"field {name!r} must be a string, got {type(value).__name__}")
        elif not value.strip():
            problems.append(f"field {name!r} is empty")
    for name in OPTIONAL_FIELDS:
        value = record.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"optional field {name!r} must be a non-empty string or null")
    if problems:
        return problems
    for name in ("file_name", "target_file_name"):
        if record.get(name) is not None:
            p = Path(record[name])
            if p.is_absolute() or ".." in p.parts:
                problems.append(f"{name} {record[name]!r} must be a path inside the folder")
    problem = reverse_instruction_problem(record["reverse_instruction"])
    if problem:
        problems.append(problem)
    problem = target_caption_problem(record["tgt_caption"])
    if problem:
        problems.append(problem)
    if record["src_caption"].strip().lower() == record["tgt_caption"].strip().lower():
        problems.append("src_caption and tgt_caption are identical (no edit to learn)")
    if allowed_edit_types is not None:
        allowed = list(allowed_edit_types)
        if record["edit_type"] not in allowed:
            problems.append(f"edit_type {record['edit_type']!r} is not one of {allowed}")
    return problems


# ----------------------------------------------------------------------------- rows


@dataclass
class EditRow:
    """One unpaired tuple ``(x_src, c_src, c_tgt, c_fwd, c_rev)`` plus bookkeeping."""

    file_name: str
    src_caption: str
    tgt_caption: str
    instruction: str
    reverse_instruction: str
    edit_type: str
    style: str | None = None
    target_file_name: str | None = None  # optional ground truth (supervised / eval)
    extra: dict[str, Any] = field(default_factory=dict)  # further metadata columns

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one metadata line; ``None`` optionals and ``extra`` merged in."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        for k, v in self.extra.items():
            if k in out:
                raise DataError(f"extra key {k!r} of {self.file_name!r} shadows a field")
            out[k] = v
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EditRow:
        """Build from a parsed metadata line (assumed checked with ``row_problems``)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        extra = {k: v for k, v in record.items() if k not in known}
        return cls(**{k: v for k, v in record.items() if k in known}, extra=extra)


@dataclass
class BadRow:
    """A metadata line that cannot be used, with the reason."""

    line_no: int  # 1-based line in metadata.jsonl (0: not tied to a line)
    file_name: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_no} ({self.file_name or '?'}): {self.reason}"


def _metadata_path(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"dataset folder {str(data_dir)!r} does not exist")
    path = data_dir / METADATA_NAME
    if not path.is_file():
        raise DataError(f"{str(data_dir)!r} has no {METADATA_NAME}")
    return path


def _bad_rows_message(path: Path, bad: Sequence[BadRow], limit: int = 5) -> str:
    lines = [f"{path}: {len(bad)} bad row(s)"] + [f"  {b}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (run `byg data validate`)")
    return "\n".join(lines)


def read_metadata(
    data_dir: str | Path, *, skip_bad: bool = False
) -> tuple[list[EditRow], list[BadRow]]:
    """Parse and rule-check every line of ``data_dir/metadata.jsonl`` (files are not opened).

    Blank lines are ignored. A line is bad when it is not a JSON object, fails
    ``row_problems``, or repeats an earlier ``file_name``.

    Returns:
        ``(rows, bad)``: the good rows in file order and the bad ones.

    Raises:
        DataError: the folder or file is missing, or (unless ``skip_bad``) any line is bad;
            the message names the line numbers and reasons.
    """
    path = _metadata_path(data_dir)
    rows: list[EditRow] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(BadRow(line_no, None, f"not valid JSON ({e.msg})"))
                continue
            if not isinstance(record, dict):
                bad.append(BadRow(line_no, None, "not a JSON object"))
                continue
            name = record.get("file_name") if isinstance(record.get("file_name"), str) else None
            problems = row_problems(record)
            if not problems and name in seen:
                problems = [f"duplicate file_name (first on line {seen[name]})"]
            if problems:
                bad.append(BadRow(line_no, name, "; ".join(problems)))
                continue
            seen[name] = line_no
            rows.append(EditRow.from_dict(record))
    if bad and not skip_bad:
        raise DataError(_bad_rows_message(path, bad))
    return rows, bad


def write_rows(data_dir: str | Path, rows: Iterable[EditRow], append: bool = True) -> Path:
    """Write ``rows`` to ``data_dir/metadata.jsonl``, one JSON object per line.

    Each line is flushed and fsync'd before the next, so a run killed at any moment leaves at
    most one partial last line (which ``read_metadata`` reports as bad). Appending after such
    a partial line first terminates it, so that the new rows stay intact.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / METADATA_NAME
    needs_newline = False
    if append and path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        if needs_newline:
            f.write("\n")
        for row in rows:
            f.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return path


# ----------------------------------------------------------------------------- media


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _load_video_frames(path: Path, num_frames: int | None) -> list[np.ndarray]:
    try:
        import imageio.v3 as iio
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DataError(f"{path}: reading videos needs `pip install byg[video]`") from e
    frames = []
    try:
        for frame in iio.imiter(path):
            frames.append(np.asarray(frame)[..., :3])
            if num_frames is not None and len(frames) == num_frames:
                break
    except Exception as e:  # imageio raises many types for broken files
        raise DataError(f"{path}: cannot decode video ({e})") from e
    if not frames:
        raise DataError(f"{path}: video has no frames")
    if num_frames is not None and len(frames) < num_frames:
        raise DataError(f"{path}: video has {len(frames)} frames, need {num_frames}")
    return frames


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; ``DataError`` naming the file if that fails."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Scale the shorter side to ``resolution`` (bicubic), then crop the centre square."""
    w, h = image.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 in ``[-1, 1]``."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
    return arr.permute(2, 0, 1).float() / 127.5 - 1.0


def load_media(path: str | Path, resolution: int, num_frames: int | None = None) -> torch.Tensor:
    """An image as ``[3, R, R]`` or a video as ``[3, F, R, R]``, in ``[-1, 1]``.

    Raises:
        DataError: naming the file when it is missing or does not decode.
    """
    path = Path(path)
    if is_video(path):
        if not path.is_file():
            raise DataError(f"{path}: file does not exist")
        frames = _load_video_frames(path, num_frames)
        clip = [to_tensor(resize_center_crop(Image.fromarray(f), resolution)) for f in frames]
        return torch.stack(clip, dim=1)  # (3, F, R, R)
    return to_tensor(resize_center_crop(load_image(path), resolution))


def check_media(path: str | Path) -> None:
    """Raise ``DataError`` naming ``path`` unless it exists and decodes."""
    path = Path(path)
    if is_video(path):
        if not path.is_file():
            raise DataError(f"{path}: file does not exist")
        _load_video_frames(path, 1)
    else:
        load_image(path)


# ----------------------------------------------------------------------------- validation


@dataclass
class ValidationReport:
    """What ``validate_folder`` found."""

    data_dir: str
    counts: dict[str, int]  # good rows per edit type
    bad: list[BadRow]
    n_targets: int = 0  # good rows with a ground-truth target
    n_unlisted: int = 0  # media files in the folder that no row refers to

    @property
    def n_good(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return not self.bad and self.n_good > 0

    def summary(self, max_bad: int = 50) -> str:
        """Human-readable table per edit type and the bad rows with reasons."""
        lines = [f"{self.data_dir}: {self.n_good} good row(s), {len(self.bad)} bad"]
        width = max([len("edit_type")] + [len(k) for k in self.counts])
        lines.append(f"  {'edit_type':<{width}}  rows")
        for k, v in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {k:<{width}}  {v}")
        if self.n_targets:
            lines.append(f"  {self.n_targets} row(s) carry a ground-truth target")
        if self.n_unlisted:
            lines.append(f"  note: {self.n_unlisted} media file(s) in the folder have no row")
        if self.bad:
            lines.append("bad rows:")
            lines += [f"  {b}" for b in self.bad[:max_bad]]
            if len(self.bad) > max_bad:
                lines.append(f"  ... and {len(self.bad) - max_bad} more")
        if self.n_good == 0:
            lines.append("no usable rows")
        return "\n".join(lines)


def validate_folder(
    data_dir: str | Path, *, check_images: bool = True, progress: bool = False
) -> ValidationReport:
    """Check every row of a tuple folder: fields, rules, and (optionally) that files decode.

    Args:
        data_dir: the folder holding ``metadata.jsonl``.
        check_images: fully decode every source (and target) file; otherwise only check that
            the files exist.
        progress: show a tqdm bar over rows.

    Raises:
        DataError: the folder or its ``metadata.jsonl`` is missing.
    """
    data_dir = Path(data_dir)
    rows, bad = read_metadata(data_dir, skip_bad=True)
    line_of = _line_numbers(data_dir)
    counts: Counter[str] = Counter()
    n_targets = 0
    it: Iterable[EditRow] = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc="validate", unit="row")
    for row in it:
        try:
            for name in (row.file_name, row.target_file_name):
                if name is None:
                    continue
                if check_images:
                    check_media(data_dir / name)
                elif not (data_dir / name).is_file():
                    raise DataError(f"{data_dir / name}: file does not exist")
        except DataError as e:
            bad.append(BadRow(line_of.get(row.file_name, 0), row.file_name, str(e)))
            continue
        counts[row.edit_type] += 1
        n_targets += row.target_file_name is not None
    bad.sort(key=lambda b: b.line_no)
    referenced = _referenced_names(data_dir)
    n_unlisted = sum(
        1
        for p in data_dir.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
        and p.relative_to(data_dir).as_posix() not in referenced
    )
    return ValidationReport(str(data_dir), dict(counts), bad, n_targets, n_unlisted)


def _line_numbers(data_dir: Path) -> dict[str, int]:
    """file_name -> first line number, for rows that parse."""
    out: dict[str, int] = {}
    with open(data_dir / METADATA_NAME, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                name = json.loads(line).get("file_name")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(name, str):
                out.setdefault(name, line_no)
    return out


def _referenced_names(data_dir: Path) -> set[str]:
    """Every file_name and target_file_name on a line that parses, good row or not."""
    out: set[str] = set()
    with open(data_dir / METADATA_NAME, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out |= {rec.get(k) for k in ("file_name", "target_file_name")} - {None}
    return out


# ----------------------------------------------------------------------------- dataset


class EditFolderDataset(torch.utils.data.Dataset):
    """Tuples from a ``metadata.jsonl`` folder, as the training loop consumes them.

    Items are dicts: ``x_src`` ``[3, R, R]`` (images) or ``[3, F, R, R]`` (videos) in
    ``[-1, 1]``; ``c_src``, ``c_tgt``, ``c_fwd``, ``c_rev`` and ``edit_type`` strings;
    ``x_tgt`` (same layout as ``x_src``) when the row has a ``target_file_name``; ``index``.

    Construction refuses a folder with bad rows or missing files (``DataError`` listing them)
    unless ``skip_bad``; then they are dropped, counted in ``num_skipped`` and reported with a
    warning. A file that fails to decode later raises ``DataError`` naming it, or with
    ``skip_bad`` is counted and replaced by the next good row.

    Args:
        data_dir: the folder.
        resolution: square side ``R`` after resizing the shorter side and centre-cropping.
        skip_bad: drop bad rows instead of raising.
        num_frames: videos: keep the first ``F`` frames (all when ``None``).
        check_images: decode every file up front (slow for big folders) instead of lazily.
    """

    def __init__(
        self,
        data_dir: str | Path,
        resolution: int = 512,
        *,
        skip_bad: bool = False,
        num_frames: int | None = None,
        check_images: bool = False,
    ) -> None:
        if resolution < 1:
            raise DataError(f"resolution must be positive, got {resolution}")
        self.data_dir = Path(data_dir)
        self.resolution, self.num_frames, self.skip_bad = resolution, num_frames, skip_bad
        if check_images:
            report = validate_folder(self.data_dir, check_images=True)
            bad = report.bad
            rows, _ = read_metadata(self.data_dir, skip_bad=True)
            bad_names = {b.file_name for b in bad}
            rows = [r for r in rows if r.file_name not in bad_names]
        else:
            rows, bad = read_metadata(self.data_dir, skip_bad=True)
            line_of = _line_numbers(self.data_dir)
            kept = []
            for r in rows:
                missing = [
                    n
                    for n in (r.file_name, r.target_file_name)
                    if n and not (self.data_dir / n).is_file()
                ]
                if missing:
                    reason = f"{self.data_dir / missing[0]}: file does not exist"
                    bad.append(BadRow(line_of.get(r.file_name, 0), r.file_name, reason))
                else:
                    kept.append(r)
            rows = kept
            bad.sort(key=lambda b: b.line_no)
        if bad and not skip_bad:
            raise DataError(
                _bad_rows_message(self.data_dir / METADATA_NAME, bad)
                + "\n(fix them, or set data.skip_bad to train on the good rows)"
            )
        if not rows:
            raise DataError(f"{self.data_dir}: no usable rows")
        self.rows = rows
        self.bad_rows: list[BadRow] = list(bad)
        self.num_skipped = len(bad)
        self._bad_index: set[int] = set()  # rows found undecodable while iterating
        if bad:
            log.warning(
                "%s: skipped %d bad row(s) of %d; first: %s",
                self.data_dir,
                len(bad),
                len(bad) + len(rows),
                bad[0],
            )

    def __len__(self) -> int:
        return len(self.rows)

    def _item(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        item: dict[str, Any] = {
            "x_src": load_media(self.data_dir / row.file_name, self.resolution, self.num_frames),
            "c_src": row.src_caption,
            "c_tgt": row.tgt_caption,
            "c_fwd": row.instruction,
            "c_rev": row.reverse_instruction,
            "edit_type": row.edit_type,
            "index": index,
        }
        if row.target_file_name is not None:
            x_tgt = load_media(
                self.data_dir / row.target_file_name, self.resolution, self.num_frames
            )
            if x_tgt.shape != item["x_src"].shape:
                raise DataError(
                    f"{self.data_dir / row.target_file_name}: target shape {tuple(x_tgt.shape)} "
                    f"differs from source {tuple(item['x_src'].shape)}"
                )
            item["x_tgt"] = x_tgt
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} rows")
        if not self.skip_bad:
            return self._item(index)
        for offset in range(len(self.rows)):  # bounded: each row is tried at most once
            i = (index + offset) % len(self.rows)
            if i in self._bad_index:
                continue
            try:
                return self._item(i)
            except DataError as e:
                self._bad_index.add(i)
                self.num_skipped += 1
                self.bad_rows.append(BadRow(0, self.rows[i].file_name, str(e)))
                log.warning("skipping %s (%d skipped so far)", e, self.num_skipped)
        raise DataError(f"{self.data_dir}: no row decodes")

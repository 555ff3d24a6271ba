"""Checkpoints: safetensors for weights, atomic folders, rotation, resume.

A checkpoint is a folder ``step_XXXXXXX/`` under ``<run>/checkpoints/``::

    lora.safetensors     trainable LoRA tensors (peft names)
    ema.safetensors      their moving average (absent when decay = 0)
    optimizer.pt         optimizer + LR-scheduler state (read with weights_only=True)
    state.json           step, objective state, backbone identity (randomness is
                         re-seeded from (seed, step, rank), so no RNG state is needed)
    config.yaml          the resolved run config

It is written under a temporary name (``.tmp_step_*``), every file fsync'd, then renamed:
a process killed mid-save leaves the previous checkpoint intact and no half-written one
that resume could pick up. Old checkpoints are renamed to ``.trash_*`` before they are
deleted, so a kill during rotation cannot leave a partial ``step_*`` folder either;
leftover ``.tmp_*``/``.trash_*`` folders are removed by the next save. Weights are never
pickled.

Fault injection (testing aids, used by ``tests/test_faults.py``; never set them in
production): ``BYG_FAULT_PAUSE_IN_SAVE=N`` makes the save of step ``N`` stop halfway
(weights written to the temporary folder, nothing renamed), write ``<run>/fault_marker``
and sleep, so a test can kill the process inside the save; ``BYG_FAULT_DISK_FULL_IN_SAVE=N``
makes that save fail halfway with ``ENOSPC`` as a full disk would.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

STEP_RE = re.compile(r"^step_(\d{7,})$")
#: files every complete checkpoint has (``ema.safetensors`` only when decay > 0)
REQUIRED_FILES = ("lora.safetensors", "optimizer.pt", "state.json", "config.yaml")
FAULT_PAUSE_IN_SAVE = "BYG_FAULT_PAUSE_IN_SAVE"
FAULT_DISK_FULL_IN_SAVE = "BYG_FAULT_DISK_FULL_IN_SAVE"


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _env_step(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _fault_in_save(run_dir: Path, step: int) -> None:
    """The fault-injection points of a save (see the module docstring)."""
    if _env_step(FAULT_DISK_FULL_IN_SAVE) == step:
        raise OSError(errno.ENOSPC, f"No space left on device ({FAULT_DISK_FULL_IN_SAVE})")
    if _env_step(FAULT_PAUSE_IN_SAVE) == step:
        (run_dir / "fault_marker").write_text(f"paused in save of step {step}\n")
        time.sleep(600)


def _remove_stale(ckpt_root: Path) -> None:
    """Delete ``.tmp_*`` / ``.trash_*`` folders left by a process killed mid-save."""
    for p in ckpt_root.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp_step_") or p.name.startswith(".trash_")):
            shutil.rmtree(p, ignore_errors=True)


def _discard(path: Path) -> None:
    """Remove a checkpoint folder: first an atomic rename out of the ``step_*`` namespace."""
    trash = path.with_name(f".trash_{path.name}_{os.getpid()}_{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    lora: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write ``<run_dir>/checkpoints/step_XXXXXXX`` atomically; keep the newest ``keep``.

    Args:
        lora, ema: tensors (saved with safetensors; ``ema`` may be empty).
        optimizer_state: plain tensors and containers (``torch.save``, read back with
            ``weights_only=True``).
        state: JSON-able run state (``step`` is added).
        config: the resolved run config (YAML).
        keep: checkpoints to keep after this one is complete (0 keeps all).

    Raises:
        OSError: the write failed (e.g. a full disk). Nothing is renamed or rotated then:
            the previous checkpoints are untouched and no partial one is left.
    """
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_stale(ckpt_root)
    final = checkpoint_path(run_dir, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{final.name}_", dir=ckpt_root))
    try:
        save_file({k: v.contiguous().cpu() for k, v in lora.items()}, tmp / "lora.safetensors")
        _fault_in_save(run_dir, step)
        if ema:
            save_file({k: v.contiguous().cpu() for k, v in ema.items()}, tmp / "ema.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step: move the old one aside first, atomically
            _discard(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            _discard(old)
    return final


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where step ``step``'s checkpoint of the run in ``run_dir`` lives."""
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary and partial folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name)]
    found = [p for p in found if all((p / f).is_file() for f in REQUIRED_FILES)]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def resolve_checkpoint(path: str | Path, run_dir: str | Path | None = None) -> Path:
    """``"latest"`` (in ``run_dir``), a run folder (its newest checkpoint) or a checkpoint folder.

    Raises:
        CheckpointError: naming the path, when nothing complete is found there.
    """
    if str(path) == "latest":
        if run_dir is None:
            raise CheckpointError("'latest' needs a run folder")
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(f"no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
        return ckpts[-1]
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint path {str(p)!r} does not exist")
    if STEP_RE.match(p.name) and (p / "lora.safetensors").exists():
        missing = [f for f in REQUIRED_FILES if not (p / f).is_file()]
        if missing:
            raise CheckpointError(f"{str(p)!r} is incomplete: no {', '.join(missing)}")
        return p
    if (p / "lora.safetensors").exists():
        return p
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    raise CheckpointError(
        f"{str(p)!r} is neither a checkpoint folder nor a run folder with checkpoints"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint folder: tensors via safetensors, the rest with ``weights_only=True``.

    Returns:
        ``{"path", "lora", "ema" (or None), "state", "config", "optimizer" (or None)}``.

    Raises:
        CheckpointError: naming the file that is missing or unreadable.
    """
    p = Path(path)
    if not (p / "lora.safetensors").exists():
        raise CheckpointError(f"{str(p)!r} has no lora.safetensors")

    def read(name: str, fn):
        try:
            return fn(p / name)
        except FileNotFoundError as e:
            raise CheckpointError(f"{str(p)!r} has no {name}") from e
        except Exception as e:  # corrupt file: name it rather than fail deep inside a parser
            raise CheckpointError(f"{p / name}: cannot read ({type(e).__name__}: {e})") from e

    out: dict[str, Any] = {
        "path": p,
        "lora": read("lora.safetensors", load_file),
        "ema": (read("ema.safetensors", load_file) if (p / "ema.safetensors").exists() else None),
        "state": read("state.json", lambda f: json.loads(f.read_text())),
        "config": read("config.yaml", lambda f: yaml.safe_load(f.read_text())),
    }
    out["optimizer"] = (
        read("optimizer.pt", lambda f: torch.load(f, weights_only=True, map_location="cpu"))
        if (p / "optimizer.pt").exists()
        else None
    )
    return out


__all__ = [
    "CheckpointError",
    "checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "resolve_checkpoint",
]

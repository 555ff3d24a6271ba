"""Checkpoints: safetensors for weights, atomic folders, rotation, resume.

A checkpoint is a folder ``step_XXXXXXX/`` under ``<run>/checkpoints/``::

    lora.safetensors     trainable LoRA tensors (peft names)
    ema.safetensors      their moving average (absent when decay = 0)
    optimizer.pt         optimizer + LR-scheduler state (read with weights_only=True)
    state.json           step, objective state, backbone identity (randomness is
                         re-seeded from (seed, step, rank), so no RNG state is needed)
    config.yaml          the resolved run config

It is written under a temporary name, every file fsync'd, then renamed: a process killed
mid-save leaves the previous checkpoint intact and no half-written one that resume could
pick up. Weights are never pickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

STEP_RE = re.compile(r"^step_(\d{7,})$")


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
    """Write ``step_XXXXXXX`` atomically; keep the newest ``keep`` (0 keeps all)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:07d}_", dir=ckpt_root))
    try:
        save_file({k: v.contiguous().cpu() for k, v in lora.items()}, tmp / "lora.safetensors")
        if ema:
            save_file({k: v.contiguous().cpu() for k, v in ema.items()}, tmp / "ema.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name)]
    found = [p for p in found if (p / "state.json").exists() and (p / "lora.safetensors").exists()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def resolve_checkpoint(path: str | Path, run_dir: str | Path | None = None) -> Path:
    """``"latest"`` (in ``run_dir``), a run folder (its newest checkpoint) or a checkpoint folder."""
    if str(path) == "latest":
        if run_dir is None:
            raise CheckpointError("'latest' needs a run folder")
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(f"no complete checkpoint under {run_dir}/checkpoints")
        return ckpts[-1]
    p = Path(path)
    if (p / "lora.safetensors").exists():
        return p
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    raise CheckpointError(
        f"{str(p)!r} is neither a checkpoint folder nor a run folder with checkpoints"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint folder: tensors via safetensors, the rest with weights_only=True."""
    p = Path(path)
    if not (p / "lora.safetensors").exists():
        raise CheckpointError(f"{str(p)!r} has no lora.safetensors")
    out: dict[str, Any] = {
        "path": p,
        "lora": load_file(p / "lora.safetensors"),
        "ema": load_file(p / "ema.safetensors") if (p / "ema.safetensors").exists() else None,
        "state": json.loads((p / "state.json").read_text()),
        "config": yaml.safe_load((p / "config.yaml").read_text()),
    }
    opt = p / "optimizer.pt"
    out["optimizer"] = (
        torch.load(opt, weights_only=True, map_location="cpu") if opt.exists() else None
    )
    return out


__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "resolve_checkpoint",
]

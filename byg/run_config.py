"""The one typed config tree of a training run (``byg train --config ...``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byg.config import apply_overrides, from_dict, load_yaml, to_dict
from byg.objectives.byg import ByGConfig
from byg.objectives.supervised import SupervisedConfig

OBJECTIVES = ("byg", "supervised")
DATA_SOURCES = ("toy", "folder", "cache", "toy_video")
#: sources rendered on the fly (no data.path)
RENDERED_SOURCES = ("toy", "toy_video")


@dataclass
class ModelConfig:
    """Which backbone (see ``byg.backbones.registry``) and its own options."""

    backbone: str = "toy"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: float | None = None  # None: alpha = rank (scale 1)
    targets: list[str] | None = None  # None: the backbone's defaults
    dropout: float = 0.0
    # per-target ranks (peft's rank_pattern: module name suffix or regex -> rank), e.g.
    # {cond_add_proj: 96} for a full-rank condition projection; each keeps scale 1 when
    # alpha is None
    rank_pattern: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        bad = {
            k: v
            for k, v in self.rank_pattern.items()
            if isinstance(v, bool) or not isinstance(v, int) or v < 1
        }
        if bad:
            raise ValueError(f"rank_pattern ranks must be integers >= 1, got {bad}")


@dataclass
class DataConfig:
    """Where tuples come from.

    ``toy``: rendered on the fly from the toy world (``toy`` holds ``ToyWorldConfig`` fields);
    ``toy_video``: clips rendered on the fly from the toy video world (``toy`` holds
    ``ToyVideoConfig`` fields besides ``resolution``);
    ``folder``: a metadata.jsonl image folder (``path``); ``cache``: latents and text
    embeddings written by ``byg cache`` (``path``).
    """

    source: str = "toy"
    path: str | None = None
    toy: dict[str, Any] = field(default_factory=dict)
    num_train: int = 200_000  # toy: size of the training pool (indices are seeds)
    resolution: int = 32
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ValueError(f"source must be one of {list(DATA_SOURCES)}, got {self.source!r}")
        if self.source not in RENDERED_SOURCES and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    lr_warmup_steps: int = 0
    # after the linear warm-up: "constant", or "cosine" / "linear" decay from lr to
    # lr * lr_min_ratio at train.steps (as diffusers' get_scheduler names them)
    lr_schedule: str = "constant"
    lr_min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError(f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """The factor on ``cfg.lr`` at optimizer step ``step`` (0-based).

    Linear warm-up over ``lr_warmup_steps`` (step 0 gets ``1 / warm``), then constant or a
    cosine / linear decay that reaches ``lr_min_ratio`` at ``total_steps`` and stays there.
    """
    warm = cfg.lr_warmup_steps
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min((step - warm) / max(total_steps - warm, 1), 1.0)
    shape = (
        0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
    )
    return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * shape


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    ema_decay: float = 0.999
    seed: int = 0
    mixed_precision: str = "no"  # accelerate: "no", "fp16", "bf16"
    log_every: int = 10
    preview_every: int = 200
    eval_every: int = 0  # toy only: oracle metrics on held-out edits every N steps (0: off)
    eval_examples: int = 64
    save_every: int = 500
    keep: int = 3
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    num_threads: int = 0  # torch CPU threads (0: leave torch's default)
    # start from another run's LoRA (and EMA) weights: a run folder or checkpoint folder;
    # fresh optimizer, schedule and step 0 (--resume continues a run instead)
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps >= 0, batch_size >= 1 and grad_accum >= 1 are required")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no/fp16/bf16, got {self.mixed_precision!r}")


@dataclass
class SampleConfig:
    """Inference (METHOD.md §5)."""

    steps: int = 20
    shift: float = 1.0
    sampler: str = "euler"  # "euler" (images) or "unipc" (video)
    use_ema: bool = False  # sample with the EMA LoRA instead of the trained one
    # text guidance away from a negative text, same source (not in METHOD.md; 1 = off):
    # byg edit --guidance-scale / --negative; toy evaluation uses the reverse text as negative
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.sampler not in ("euler", "unipc"):
            raise ValueError(f"sampler must be 'euler' or 'unipc', got {self.sampler!r}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"sample.guidance_scale must be >= 0, got {self.guidance_scale}")


@dataclass
class RunConfig:
    name: str = "run"
    objective: str = "byg"
    byg: ByGConfig = field(default_factory=ByGConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")

    @property
    def ema_decay(self) -> float:
        """``μ``; the ``no_ema`` ablation forces 0 (a stop-gradient copy)."""
        if self.objective == "byg" and self.byg.no_ema:
            return 0.0
        return self.train.ema_decay


def load_run_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """YAML file (optional) + ``key=value`` overrides -> validated ``RunConfig``."""
    data = load_yaml(path) if path else {}
    if data.get("kind") == "video" and "run" in data:  # configs/toy_video.yaml: its `run` section
        data = dict(data["run"])
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)


def run_config_dict(cfg: RunConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    d["optim"]["betas"] = list(d["optim"]["betas"])
    return d


__all__ = ["RunConfig", "load_run_config", "run_config_dict"]

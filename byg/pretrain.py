"""``byg pretrain-base``: pretrain the toy text-to-image base with plain flow matching.

One linear script: build the model, render a pool of toy scenes, train on
``‖B(x_t, t, c) − (ε − x_0)‖²`` (METHOD.md §1 conventions from ``byg.flow``) with AdamW and
an EMA of the weights, save the EMA weights (``model.safetensors`` + ``config.json`` with the
resolved config and seed, written atomically), then measure caption following: sample
scenes from their captions with Euler (+ classifier-free guidance as a closure) and read
them back with the toy oracle, per attribute, into ``eval.json``.

Data: ``data.pool_size`` scenes of ``ToyCaptionDataset`` are rendered once (rendering costs
more than a training step on 2 cores); every time a scene is drawn it gets a freshly drawn
caption phrasing (``caption(scene, rng)`` with a per-(epoch, index) generator), so the text
side never repeats exactly. Captions are replaced by ``""`` with probability
``caption_dropout`` (the unconditional input for CFG).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from byg.backbones.toy import (
    ToyBackbone,
    ToyBackboneConfig,
    load_toy_backbone,
    save_toy_backbone,
)
from byg.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from byg.flow import sample_path, sample_timesteps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "toy_base.yaml"
ATTRIBUTES = ("background", "shape", "colour", "size", "texture", "style", "has_second")
#: seed stream of the evaluation scenes (training draws from ToyCaptionDataset's own stream)
EVAL_STREAM = 9_001


@dataclass
class TimestepConfig:
    """``p(t)`` for training (METHOD.md §1, ``byg.flow.sample_timesteps``)."""

    kind: Literal["uniform", "logit_normal"] = "logit_normal"
    logit_mean: float = 0.0
    logit_scale: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")


@dataclass
class DataConfig:
    """Training scenes: ``pool_size`` renders of ``ToyCaptionDataset(world, pool_size, seed)``."""

    world: dict[str, Any] = field(default_factory=dict)  # ToyWorldConfig fields
    pool_size: int = 20_000
    #: share of prompts that are an instruction whose result is the scene
    #: (``byg.data.toy.instruction_prompt``) instead of its caption
    instruction_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if not 0.0 <= self.instruction_prob <= 1.0:
            raise ValueError(f"instruction_prob must be in [0, 1], got {self.instruction_prob}")


@dataclass
class EvalConfig:
    """Caption following, read back by the toy oracle."""

    num_samples: int = 256
    sample_steps: int = 30
    cfg_scale: float = 2.0  # classifier-free guidance scale (1 = no guidance)
    shift: float = 1.0  # sampling schedule shift (byg.flow.schedule)
    batch_size: int = 64
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0 (0 = skip), got {self.num_samples}")
        for name in ("sample_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")


@dataclass
class PretrainConfig:
    """Everything ``byg pretrain-base`` needs; ``configs/toy_base.yaml`` sets the shipped run."""

    model: ToyBackboneConfig = field(default_factory=ToyBackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * this after warm-up
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    seed: int = 0
    num_threads: int = 2
    log_every: int = 25
    save_every: int = 0  # also write the EMA weights every N steps (0: only at the end)
    init_from: str | None = None  # a base folder (model.safetensors) to continue from

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_threads", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0 (0 = off), got {self.save_every}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


def load_pretrain_config(
    path: str | Path | None = None, overrides: list[str] | None = None, quick: bool = False
) -> PretrainConfig:
    """``configs/toy_base.yaml`` (or ``path``) with ``key=value`` overrides.

    ``quick`` shortens the run for smoke tests and ``byg demo --quick`` (few hundred steps,
    a small pool and evaluation); the result draws shapes but is not the shipped quality.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    data = load_yaml(path) if path.exists() or path != DEFAULT_CONFIG else {}
    if quick:
        apply_overrides(
            data, ["steps=300", "data.pool_size=4000", "eval.num_samples=64", "warmup_steps=30"]
        )
    apply_overrides(data, list(overrides or []))
    return from_dict(PretrainConfig, data)


# ----------------------------------------------------------------------------- helpers


def world_config(cfg: PretrainConfig):
    """The ``ToyWorldConfig`` of the run; its resolution must match the model."""
    from byg.data.toy import ToyWorldConfig

    try:
        world = ToyWorldConfig(**cfg.data.world)
    except TypeError as e:
        raise ConfigError(f"data.world: {e}") from e
    except ValueError as e:
        raise ConfigError(f"data.world: {e}") from e
    if world.resolution != cfg.model.image_size:
        raise ConfigError(
            f"data.world.resolution={world.resolution} differs from model.image_size="
            f"{cfg.model.image_size}"
        )
    return world


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` (multiplier of ``lr``)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)


def render_pool(world, n: int, seed: int, progress: bool = True) -> tuple[Tensor, list]:
    """Render ``n`` training scenes once: uint8 ``[n, 3, H, W]`` and their ``Scene`` specs."""
    from byg.data.toy import ToyCaptionDataset, render

    ds = ToyCaptionDataset(world, n, seed)
    images = torch.empty(n, 3, world.resolution, world.resolution, dtype=torch.uint8)
    scenes = []
    for i in tqdm(range(n), desc="render pool", leave=False, disable=not progress):
        scene, _ = ds.scene(i)
        images[i] = torch.from_numpy(render(scene, world)).permute(2, 0, 1)
        scenes.append(scene)
    return images, scenes


def uint8_to_model(images: Tensor) -> Tensor:
    """uint8 ``[B, 3, H, W]`` -> float ``[-1, 1]`` (the same map as ``byg.data.toy.to_tensor``)."""
    return images.float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def generate(
    model: ToyBackbone,
    prompts: list[str],
    *,
    steps: int,
    cfg_scale: float,
    shift: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> Tensor:
    """Text-to-image samples ``[N, 3, H, W]`` in ``[-1, 1]`` (Euler, CFG closure)."""
    size, ch = model.config.image_size, model.config.channels
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), ch, size, size, generator=gen)
    return sample_prompts_from(model, prompts, noise, steps, cfg_scale, shift, batch_size)


@torch.no_grad()
def sample_prompts_from(
    model: torch.nn.Module,
    prompts: list[str],
    noise: Tensor,
    steps: int,
    cfg_scale: float,
    shift: float,
    batch_size: int,
) -> Tensor:
    """Euler samples from ``noise`` (one row per prompt), CFG against the empty prompt, in
    chunks of ``batch_size``; clamped to ``[-1, 1]``. Shared by the image and video bases."""
    from byg.guidance import cfg_velocity
    from byg.sampling import sample

    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        text, uncond = model.encode_text(chunk), model.encode_text([""] * len(chunk))
        v = cfg_velocity(model, text, uncond, cfg_scale)
        out.append(sample(v, noise[s : s + len(chunk)], num_steps=steps, shift=shift))
    return torch.cat(out).clamp(-1, 1)


def eval_scenes(world, n: int, seed: int) -> tuple[list, list[str]]:
    """``n`` held-out scenes and one caption each (a seed stream no training draw uses)."""
    from byg.data.toy import caption, sample_scene

    scenes, prompts = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, EVAL_STREAM, i])
        scene = sample_scene(rng, world)
        scenes.append(scene)
        prompts.append(caption(scene, rng))
    return scenes, prompts


def sample_prompts(
    model: torch.nn.Module,
    prompts: list[str],
    ecfg: EvalConfig,
    seed: int,
    desc: str,
    progress: bool,
    generator: Callable[..., Tensor] | None = None,
) -> Tensor:
    """``generator`` (default ``generate``; ``generate_video`` for the toy video base) over
    ``prompts`` in chunks of ``ecfg.batch_size``, chunk ``s`` with seed ``seed + s``."""
    generator = generator or generate
    chunks = range(0, len(prompts), ecfg.batch_size)
    return torch.cat(
        [
            generator(
                model,
                prompts[s : s + ecfg.batch_size],
                steps=ecfg.sample_steps,
                cfg_scale=ecfg.cfg_scale,
                shift=ecfg.shift,
                seed=seed + s,
                batch_size=ecfg.batch_size,
            )
            for s in tqdm(chunks, desc=desc, leave=False, disable=not progress)
        ]
    )


def caption_accuracy(
    model: ToyBackbone, world, ecfg: EvalConfig, oracle=None, progress: bool = True
) -> dict[str, Any]:
    """Oracle attribute accuracy of text-to-image samples against their scene specs.

    Returns ``{"accuracy": {attr: float}, "mean": float, "oracle_on_renders": {attr: float},
    "n", "sample_steps", "cfg_scale", "shift", "seed"}``; ``oracle_on_renders`` is the
    oracle read on the true renders of the same scenes (its ceiling on this set).
    """
    from byg.data.toy import render, to_tensor
    from byg.eval.toy_oracle import ToyOracle

    oracle = oracle or ToyOracle.load()
    scenes, prompts = eval_scenes(world, ecfg.num_samples, ecfg.seed)
    reads = oracle.read(sample_prompts(model, prompts, ecfg, ecfg.seed, "eval samples", progress))
    truth = oracle.read(torch.stack([to_tensor(render(sc, world)) for sc in scenes]))
    attrs = [sc.attributes() for sc in scenes]

    def acc(rows: list[dict]) -> dict[str, float]:
        return {k: float(np.mean([r[k] == a[k] for r, a in zip(rows, attrs)])) for k in ATTRIBUTES}

    accuracy = acc(reads)
    return {
        "accuracy": accuracy,
        "mean": float(np.mean(list(accuracy.values()))),
        "oracle_on_renders": acc(truth),
        "n": len(scenes),
        "sample_steps": ecfg.sample_steps,
        "cfg_scale": ecfg.cfg_scale,
        "shift": ecfg.shift,
        "seed": ecfg.seed,
    }


def instruction_accuracy(
    model: ToyBackbone, world, ecfg: EvalConfig, oracle=None, progress: bool = True
) -> dict[str, Any]:
    """How often a text-to-image sample from an instruction prompt shows what it names.

    For ``ecfg.num_samples`` held-out scenes, the prompt is an instruction that ends at the
    scene (``byg.data.toy.instruction_prompt``); the oracle reads the attribute the
    instruction names on the sample. Returns ``{"accuracy": {edit_type: float}, "mean",
    "n"}`` (``mean`` over samples). A base pretrained on captions alone has never seen
    the instruction words; ``data.instruction_prob`` teaches them.
    """
    from byg.data.toy import EDIT_ATTRIBUTE, instruction_prompt
    from byg.eval.toy_oracle import ToyOracle

    oracle = oracle or ToyOracle.load()
    scenes, _ = eval_scenes(world, ecfg.num_samples, ecfg.seed + 1)
    prompts, kinds = [], []
    for i, scene in enumerate(scenes):
        text, kind = instruction_prompt(scene, np.random.default_rng([ecfg.seed, 23, i]), world)
        prompts.append(text)
        kinds.append(kind)
    images = sample_prompts(model, prompts, ecfg, ecfg.seed + 1, "eval instructions", progress)
    reads = oracle.read(images)
    hits: dict[str, list[bool]] = {}
    for read, scene, kind in zip(reads, scenes, kinds):
        attr = EDIT_ATTRIBUTE[kind]
        hits.setdefault(kind, []).append(read[attr] == scene.attributes()[attr])
    every = [h for rows in hits.values() for h in rows]
    return {
        "accuracy": {k: float(np.mean(v)) for k, v in sorted(hits.items())},
        "mean": float(np.mean(every)),
        "n": len(every),
    }


# ----------------------------------------------------------------------------- training


def pretrain_base(cfg: PretrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the toy base, save its EMA weights to ``out_dir``, evaluate caption following.

    Writes ``out_dir/{model.safetensors, config.json, log.jsonl, eval.json}``.

    Returns:
        ``{"accuracy": {attr: float}, "mean": float, ..., "train_seconds", "wall_seconds",
        "params", "out"}`` (the content of ``eval.json``).
    """
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.num_threads)
    world = world_config(cfg)
    torch.manual_seed(cfg.seed)
    model = ToyBackbone(cfg.model).train()
    history: list[dict] = []  # the earlier stages' pretrain configs when continuing a base
    if cfg.init_from:
        start = load_toy_backbone(cfg.init_from)
        # the output's parametrisation may change (``prediction``), nothing else
        same = dataclasses.replace(
            start.config,
            prediction=model.config.prediction,
            sample_t_min=model.config.sample_t_min,
        )
        if same != model.config:
            raise ValueError(
                f"init_from {cfg.init_from!r}: its model config differs from this run's "
                f"({_config_diff(same, model.config)})"
            )
        model.load_state_dict(start.state_dict())
        history = _history(cfg.init_from)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
    pool, scenes = render_pool(world, cfg.data.pool_size, cfg.seed, progress)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(scenes), generator=gen)
    cursor, epoch = 0, 0
    log = (out / "log.jsonl").open("w")
    t_train = time.time()
    bar = tqdm(range(cfg.steps), desc="pretrain-base", disable=not progress)
    for step in bar:
        if cursor + cfg.batch_size > len(order):  # new epoch: new order, new phrasings
            order, cursor, epoch = torch.randperm(len(scenes), generator=gen), 0, epoch + 1
        idx = order[cursor : cursor + cfg.batch_size].tolist()
        cursor += cfg.batch_size
        prompts = [
            _prompt(scenes[i], cfg.seed, epoch, i, world, cfg.data.instruction_prob) for i in idx
        ]
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        x0 = uint8_to_model(pool[idx])  # (B, 3, H, W)
        t = sample_timesteps(
            len(idx),
            kind=cfg.timesteps.kind,
            logit_mean=cfg.timesteps.logit_mean,
            logit_scale=cfg.timesteps.logit_scale,
            shift=cfg.timesteps.shift,
            generator=gen,
        )
        path = sample_path(x0, torch.randn(x0.shape, generator=gen), t)
        v = model(path.x_t, t, model.encode_text(prompts))
        loss = F.mse_loss(v.float(), path.velocity)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretrain-base: loss is {loss.item()} at step {step}")
        opt.step()
        sched.step()
        # EMA warm-up: the average never lags behind more than (step + 1) / (step + 10)
        update_ema(ema, model, min(cfg.ema_decay, (step + 1) / (step + 10)))
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {
                "step": step,
                "loss": round(loss.item(), 5),
                "grad_norm": round(float(gnorm), 4),
                "lr": sched.get_last_lr()[0],
                "seconds": round(time.time() - t_train, 1),
            }
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            snap = to_dict(cfg)
            snap["model"] = dataclasses.asdict(ema.config)
            save_toy_backbone(
                ema,
                out,
                extra={"pretrain": snap, "seed": cfg.seed, "step": step + 1, "history": history},
            )
    log.close()
    train_seconds = time.time() - t_train
    resolved = to_dict(cfg)
    resolved["model"] = dataclasses.asdict(ema.config)  # vocabulary filled in
    save_toy_backbone(ema, out, extra={"pretrain": resolved, "seed": cfg.seed, "history": history})
    result: dict[str, Any] = {}
    if cfg.eval.num_samples > 0:
        result = caption_accuracy(ema, world, cfg.eval, progress=progress)
        result["instruction_following"] = instruction_accuracy(
            ema, world, cfg.eval, progress=progress
        )
    result.update(
        train_seconds=round(train_seconds, 1),
        wall_seconds=round(time.time() - t_start, 1),
        params=ema.num_parameters(),
        steps=cfg.steps,
        total_steps=cfg.steps + sum(int(h.get("steps", 0)) for h in history),
        batch_size=cfg.batch_size,
        out=str(out),
    )
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "eval.json")
    return result


def _history(base_dir: str | Path) -> list[dict]:
    """The pretrain configs that made the base in ``base_dir``, oldest first.

    A base continued with ``init_from`` records the stages before its own in ``config.json``
    (``history``), so a shipped base built in several runs says how to rebuild it.
    """
    meta = json.loads((Path(base_dir) / "config.json").read_text())
    stages = list(meta.get("history", []))
    if isinstance(meta.get("pretrain"), dict):
        stages.append(meta["pretrain"])
    return stages


def _prompt(scene, seed: int, epoch: int, index: int, world, instruction_prob: float) -> str:
    """The scene's caption, or with ``instruction_prob`` an instruction that ends at it."""
    from byg.data.toy import caption, instruction_prompt

    rng = np.random.default_rng([seed, 17, epoch, index])
    if instruction_prob and rng.random() < instruction_prob:
        return instruction_prompt(scene, rng, world)[0]
    return caption(scene, rng)


def _config_diff(a, b) -> str:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k] and k != "vocab")


# ----------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    from byg.demo_video import is_video_config, run_pretrain_cli

    if is_video_config(args.config):  # `kind: video` configs: the toy text-to-video base
        return run_pretrain_cli(args)
    cfg = load_pretrain_config(args.config, args.set, quick=args.quick)
    res = pretrain_base(cfg, args.out)
    acc = res.get("accuracy", {})
    print(json.dumps({"accuracy": acc, "mean": res.get("mean")}, indent=1))
    print(
        f"saved {args.out}/model.safetensors ({res['params']} parameters); "
        f"train {res['train_seconds']:.0f} s, total {res['wall_seconds']:.0f} s"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``byg pretrain-base`` to the main CLI."""
    p = subparsers.add_parser(
        "pretrain-base",
        help="pretrain the toy text-to-image base (flow matching) and measure caption following",
        description=(
            "Train the toy backbone on rendered toy scenes with plain flow matching, save the "
            "EMA weights (model.safetensors + config.json) and write the oracle's per-attribute "
            "caption-following accuracy to eval.json. The demo's base was made with `byg "
            "pretrain-base --out byg/assets/toy_base`; byg/assets/toy_base_attn16 in two stages "
            "(the commands are in configs/toy_base.yaml; its config.json lists both stages' "
            "configs under pretrain and history)."
        ),
    )
    p.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="YAML pretraining config (default: configs/toy_base.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set steps=500 --set model.dim=96 (repeatable)",
    )
    p.add_argument("--out", required=True, help="output folder for the checkpoint and eval.json")
    p.add_argument(
        "--quick", action="store_true", help="a short smoke run (300 steps), not shipped quality"
    )
    p.set_defaults(func=_run)


__all__ = [
    "PretrainConfig",
    "TimestepConfig",
    "DataConfig",
    "EvalConfig",
    "load_pretrain_config",
    "pretrain_base",
    "caption_accuracy",
    "generate",
    "sample_prompts_from",
    "register",
]

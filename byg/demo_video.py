"""The toy video story: a toy text-to-video base, ByG video training, evaluation, ``byg demo-video``.

Everything is driven by one file, ``configs/toy_video.yaml`` (``kind: video``), with three
sections:

* ``base``: the text-to-video base, pretrained with plain flow matching by
  ``byg pretrain-base --config configs/toy_video.yaml --out DIR`` (``pretrain_video_base``):
  a pool of rendered clips, ``‖B(x_t, t, c) − (ε − x_0)‖²`` with logit-normal ``t`` and a
  time shift, AdamW + an EMA of the weights (saved), then caption following measured with
  the image oracle on every frame (``video_caption_accuracy``);
* ``run``: the ByG editor (a ``RunConfig``; ``byg train --config configs/toy_video.yaml``
  reads this section): LoRA on the video base, ``data.source: toy_video``, ``p_id = 0.10``,
  logit-normal timesteps with shift, EMA off (``train.ema_decay: 0``: ``G_ema`` is a
  stop-gradient copy, the paper's video default; set it > 0 to turn the EMA on);
* ``demo``: evaluation sizes and the FlowEdit baseline's settings.

``byg demo-video`` (= ``byg demo --video``) runs the whole story (``run_video_demo``): the
base (pretrained into ``<out>/base``, reused when already there), ByG trained without pairs,
then ``identity`` (output = source), FlowEdit on the video base and ByG scored on held-out
seen and unseen edits (``byg.eval.toy_video_metrics``), with ``report.md``,
``results.json`` and ``samples.gif`` (rows: source | edit | ground truth, per method).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from byg.backbones.toy_video import (
    ToyVideoBackbone,
    ToyVideoBackboneConfig,
    save_toy_video_backbone,
)
from byg.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from byg.flow import sample_path, sample_timesteps
from byg.pretrain import (
    EvalConfig,
    TimestepConfig,
    lr_at,
    sample_prompts,
    sample_prompts_from,
    update_ema,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "toy_video.yaml"
#: attributes the oracle reads per frame and the base is scored on
VIDEO_ATTRIBUTES = ("background", "shape", "colour", "size", "texture", "style")
EVAL_STREAM = 9_002  # seed stream of the base's evaluation clips (no training draw uses it)
DIRECTION_COS = math.cos(math.radians(45))  # motion direction counts as followed within 45°


def is_video_config(path: str | Path | None) -> bool:
    """Whether a YAML file is a toy video config (top-level ``kind: video``)."""
    if path is None or not Path(path).exists():
        return False
    return load_yaml(path).get("kind") == "video"


def load_sections(path: str | Path | None = None) -> dict[str, Any]:
    """The raw ``kind: video`` config (default ``configs/toy_video.yaml``)."""
    data = load_yaml(path or CONFIG)
    if data.get("kind") != "video":
        raise ConfigError(f"{path or CONFIG}: not a toy video config (needs `kind: video`)")
    unknown = sorted(set(data) - {"kind", "base", "run", "demo"})
    if unknown:
        raise ConfigError(f"{path or CONFIG}: unknown sections {unknown}; allowed: base, run, demo")
    return data


# ============================================================================ the base


@dataclass
class VideoPretrainConfig:
    """``base`` section: everything the toy video base's pretraining needs."""

    model: ToyVideoBackboneConfig = field(default_factory=ToyVideoBackboneConfig)
    world: dict[str, Any] = field(default_factory=dict)  # ToyVideoConfig fields
    pool_size: int = 3000
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(shift=2.0))
    eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(num_samples=48, sample_steps=20, shift=2.0)
    )
    steps: int = 800
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    seed: int = 0
    num_threads: int = 1
    log_every: int = 25

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_threads", "log_every", "pool_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")


def load_video_pretrain_config(
    path: str | Path | None = None, overrides: list[str] | None = None, quick: bool = False
) -> VideoPretrainConfig:
    """The ``base`` section of a video config, with ``key=value`` overrides (relative to it)."""
    data = dict(load_sections(path).get("base") or {})
    if quick:
        apply_overrides(
            data,
            ["steps=150", "pool_size=600", "eval.num_samples=16", "warmup_steps=20"],
        )
    apply_overrides(data, list(overrides or []))
    return from_dict(VideoPretrainConfig, data, "base")


def video_world(cfg: VideoPretrainConfig | dict):
    """The ``ToyVideoConfig``; its frames and resolution must match the model."""
    from byg.data.toy_video import ToyVideoConfig

    fields = cfg.world if isinstance(cfg, VideoPretrainConfig) else cfg
    try:
        world = ToyVideoConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"world: {e}") from e
    if isinstance(cfg, VideoPretrainConfig):
        m = cfg.model
        if (world.resolution, world.frames) != (m.image_size, m.frames):
            raise ConfigError(
                f"world (resolution {world.resolution}, frames {world.frames}) differs from the "
                f"model (image_size {m.image_size}, frames {m.frames})"
            )
    return world


def render_video_pool(world, n: int, seed: int, progress: bool = True) -> tuple[Tensor, list]:
    """``n`` training clips rendered once: uint8 ``[n, 3, F, H, W]`` and their ``Clip`` specs."""
    from byg.data.toy_video import ToyVideoCaptionDataset, render_clip

    ds = ToyVideoCaptionDataset(world, n, seed)
    r, f = world.resolution, world.frames
    pool = torch.empty(n, 3, f, r, r, dtype=torch.uint8)
    clips = []
    for i in tqdm(range(n), desc="render clips", leave=False, disable=not progress):
        clip, _ = ds.clip(i)
        pool[i] = torch.from_numpy(render_clip(clip, world)).permute(3, 0, 1, 2)
        clips.append(clip)
    return pool, clips


@torch.no_grad()
def generate_video(
    model: ToyVideoBackbone,
    prompts: list[str],
    *,
    steps: int,
    cfg_scale: float,
    shift: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> Tensor:
    """Text-to-video samples ``[N, 3, F, H, W]`` in ``[-1, 1]`` (Euler, CFG closure)."""
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(
        len(prompts), c.channels, c.frames, c.image_size, c.image_size, generator=gen
    )
    return sample_prompts_from(model, prompts, noise, steps, cfg_scale, shift, batch_size)


def eval_clips(world, n: int, seed: int) -> tuple[list, list[str]]:
    """``n`` held-out clips and one caption each."""
    from byg.data.toy_video import caption_clip, sample_clip

    clips, prompts = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, EVAL_STREAM, i])
        clip = sample_clip(rng, world)
        clips.append(clip)
        prompts.append(caption_clip(clip, rng))
    return clips, prompts


def score_clips(videos: Tensor, clips: list, world, oracle) -> dict[str, Any]:
    """Per-frame oracle accuracy of ``videos [N, 3, F, H, W]`` against the clips' specs, and
    motion direction accuracy (first-to-last centroid displacement within 45° of the
    captioned direction)."""
    from byg.data.toy_video import DIRECTIONS, frame_attributes, frames_of

    reads = oracle.read(frames_of(videos))
    f = world.frames
    hits = {k: [] for k in VIDEO_ATTRIBUTES}
    direction = []
    for i, clip in enumerate(clips):
        rows = reads[i * f : (i + 1) * f]
        for r, a in zip(rows, frame_attributes(clip, world)):
            for k in VIDEO_ATTRIBUTES:
                hits[k].append(r[k] == a[k])
        d = np.array([rows[-1]["x"] - rows[0]["x"], rows[-1]["y"] - rows[0]["y"]])
        want = np.array(DIRECTIONS[clip.motion.direction])
        norm = float(np.linalg.norm(d))
        direction.append(norm > 0 and float(d @ want) / norm >= DIRECTION_COS)
    acc = {k: float(np.mean(v)) for k, v in hits.items()}
    return {
        "per_frame": acc,
        "mean": float(np.mean(list(acc.values()))),
        "motion_direction": float(np.mean(direction)),
    }


def video_caption_accuracy(
    model: ToyVideoBackbone, world, ecfg: EvalConfig, oracle=None, progress: bool = True
) -> dict[str, Any]:
    """Caption following of the base: text-to-video samples read back by the oracle per frame.

    Returns ``{"accuracy": {attr: per-frame accuracy}, "mean", "motion_direction",
    "oracle_on_renders": {...the same on the true renders...}, "n", ...}``.
    """
    from byg.data.toy_video import render_clip, to_video_tensor
    from byg.eval.toy_oracle import ToyOracle

    oracle = oracle or ToyOracle.load()
    clips, prompts = eval_clips(world, ecfg.num_samples, ecfg.seed)
    videos = sample_prompts(
        model, prompts, ecfg, ecfg.seed, "eval clips", progress, generator=generate_video
    )
    got = score_clips(videos, clips, world, oracle)
    truth = score_clips(
        torch.stack([to_video_tensor(render_clip(c, world)) for c in clips]), clips, world, oracle
    )
    return {
        "accuracy": got["per_frame"],
        "mean": got["mean"],
        "motion_direction": got["motion_direction"],
        "oracle_on_renders": {**truth["per_frame"], "motion_direction": truth["motion_direction"]},
        "n": len(clips),
        "sample_steps": ecfg.sample_steps,
        "cfg_scale": ecfg.cfg_scale,
        "shift": ecfg.shift,
        "seed": ecfg.seed,
    }


def pretrain_video_base(
    cfg: VideoPretrainConfig, out_dir: str | Path, progress: bool = True
) -> dict:
    """Train the toy video base, save its EMA weights to ``out_dir``, measure caption following.

    Writes ``out_dir/{model.safetensors, config.json, log.jsonl, eval.json}``; returns the
    content of ``eval.json`` (accuracy, ``train_seconds``, ``wall_seconds``, ``params``...).
    """
    from byg.data.toy_video import caption_clip

    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.num_threads)
    world = video_world(cfg)
    torch.manual_seed(cfg.seed)
    model = ToyVideoBackbone(cfg.model).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))  # type: ignore[arg-type]
    pool, clips = render_video_pool(world, cfg.pool_size, cfg.seed, progress)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, cursor, epoch = torch.randperm(len(clips), generator=gen), 0, 0
    t_train = time.time()
    with (out / "log.jsonl").open("w") as log:
        bar = tqdm(range(cfg.steps), desc="pretrain-base (video)", disable=not progress)
        for step in bar:
            if cursor + cfg.batch_size > len(order):
                order, cursor, epoch = torch.randperm(len(clips), generator=gen), 0, epoch + 1
            idx = order[cursor : cursor + cfg.batch_size].tolist()
            cursor += cfg.batch_size
            prompts = [
                caption_clip(clips[i], np.random.default_rng([cfg.seed, 17, epoch, i])) for i in idx
            ]
            drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
            x0 = pool[idx].float() / 127.5 - 1.0  # (B, 3, F, H, W)
            t = sample_timesteps(
                len(idx),
                kind=cfg.timesteps.kind,
                logit_mean=cfg.timesteps.logit_mean,
                logit_scale=cfg.timesteps.logit_scale,
                shift=cfg.timesteps.shift,
                generator=gen,
            )
            path = sample_path(x0, torch.randn(x0.shape, generator=gen), t)
            loss = F.mse_loss(model(path.x_t, t, model.encode_text(prompts)).float(), path.velocity)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"pretrain-base (video): loss is {loss.item()} at step {step}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            )
            opt.step()
            sched.step()
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
    train_seconds = time.time() - t_train
    resolved = to_dict(cfg)
    resolved["model"] = dataclasses.asdict(ema.config)
    save_toy_video_backbone(ema, out, extra={"pretrain": resolved, "seed": cfg.seed})
    result: dict[str, Any] = {}
    if cfg.eval.num_samples > 0:
        result = video_caption_accuracy(ema, world, cfg.eval, progress=progress)
    result.update(
        train_seconds=round(train_seconds, 1),
        wall_seconds=round(time.time() - t_start, 1),
        params=ema.num_parameters(),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        out=str(out),
    )
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "eval.json")
    return result


def run_pretrain_cli(args: argparse.Namespace) -> int:
    """``byg pretrain-base --config <kind: video config>`` (dispatched from ``byg.pretrain``)."""
    cfg = load_video_pretrain_config(args.config, args.set, quick=args.quick)
    res = pretrain_video_base(cfg, args.out)
    print(json.dumps({k: res.get(k) for k in ("accuracy", "mean", "motion_direction")}, indent=1))
    print(
        f"saved {args.out}/model.safetensors ({res['params']} parameters); "
        f"train {res['train_seconds']:.0f} s, total {res['wall_seconds']:.0f} s"
    )
    return 0


# ============================================================================ the demo

EVAL_SEED = 10_007  # held-out edits: a seed stream training never uses


@dataclass
class FlowEditSettings:
    """FlowEdit on the video base (``byg.baselines.flowedit``; CFG scales per side)."""

    steps: int = 20
    n_max: int = 15
    n_avg: int = 1
    guidance_src: float = 1.5
    guidance_tgt: float = 3.5
    shift: float = 2.0


@dataclass
class DemoSettings:
    """``demo`` section."""

    n_eval: int = 32  # held-out edits per split
    sample_steps: int = 12  # ByG sampling steps at evaluation (Euler)
    gif_rows: int = 4  # edits per split in samples.gif
    flowedit: FlowEditSettings = field(default_factory=FlowEditSettings)

    def __post_init__(self) -> None:
        if self.n_eval < 1 or self.sample_steps < 1 or self.gif_rows < 0:
            raise ValueError("n_eval >= 1, sample_steps >= 1 and gif_rows >= 0 are required")


QUICK = {
    "base": ["steps=150", "pool_size=600", "eval.num_samples=16", "warmup_steps=20"],
    "run": [
        "train.steps=40",
        "byg.warmup_steps=15",
        "byg.warmup_ratio=null",
        "byg.rollout_steps=2",
        "train.save_every=40",
    ],
    "demo": ["n_eval=8", "flowedit.steps=8", "flowedit.n_max=6", "gif_rows=2"],
}


def demo_configs(
    config: str | Path | None = None,
    quick: bool = False,
    overrides: dict[str, list[str]] | None = None,
):
    """``(VideoPretrainConfig, RunConfig, DemoSettings)`` from a ``kind: video`` file, with the
    quick overrides and then ``overrides[section]`` applied."""
    from byg.run_config import RunConfig

    sections = load_sections(config)
    overrides = overrides or {}
    data = {k: copy.deepcopy(sections.get(k) or {}) for k in ("base", "run", "demo")}
    for k in data:
        apply_overrides(data[k], (QUICK[k] if quick else []) + list(overrides.get(k, [])))
    base = from_dict(VideoPretrainConfig, data["base"], "base")
    run = from_dict(RunConfig, data["run"], "run")
    demo = from_dict(DemoSettings, data["demo"], "demo")
    return base, run, demo


def ensure_video_base(out: Path, bcfg: VideoPretrainConfig) -> tuple[Path, dict]:
    """``<out>/base``: reused when a model is already there, else pretrained now."""
    base_dir = out / "base"
    if (base_dir / "model.safetensors").exists():
        ev = base_dir / "eval.json"
        print(f"[demo-video] reusing the base in {base_dir}")
        return base_dir, json.loads(ev.read_text()) if ev.exists() else {}
    print(f"[demo-video] pretraining the toy video base ({bcfg.steps} steps) into {base_dir}")
    return base_dir, pretrain_video_base(bcfg, base_dir)


def flowedit_fn(editor, settings: FlowEditSettings, seed: int = 0):
    """FlowEdit with the frozen base ``B`` (the editor with adapters off): ``fn(x_src, items)``."""
    from byg.baselines.flowedit import FlowEditConfig, flowedit
    from byg.guidance import cfg_velocity

    fcfg = FlowEditConfig(
        steps=settings.steps,
        n_max=settings.n_max,
        n_avg=settings.n_avg,
        guidance_src=settings.guidance_src,
        guidance_tgt=settings.guidance_tgt,
        shift=settings.shift,
    )

    def fn(x_src: Tensor, items: list[dict]) -> Tensor:
        src = editor.encode_text([it["c_src"] for it in items])
        tgt = editor.encode_text([it["c_tgt"] for it in items])
        unc = editor.encode_text([""] * len(items))
        was = editor.training
        editor.eval()
        with editor.base():
            out = flowedit(
                cfg_velocity(editor, src, unc, fcfg.guidance_src),
                cfg_velocity(editor, tgt, unc, fcfg.guidance_tgt),
                x_src,
                fcfg,
                generator=torch.Generator().manual_seed(seed),
            )
        editor.train(was)
        return out

    return fn


def ground_truth_fn(x_src: Tensor, items: list[dict]) -> Tensor:
    """The reference "editor": the ground-truth target clips (never seen by ByG training)."""
    return torch.stack([it["x_tgt"] for it in items]).to(x_src)


def _grid_video(columns: list[Tensor], scale: int = 4) -> Tensor:
    """Clips ``[n, 3, F, H, W]`` per column -> one ``[3, F, n*(H+2)*scale, cols*(W+2)*scale]``
    video (white 1-pixel borders, nearest upscaling)."""
    rows = torch.stack(columns, 1).clamp(-1, 1)  # (n, cols, 3, F, H, W)
    n, c, ch, f, h, w = rows.shape
    pad = torch.ones(n, c, ch, f, h + 2, w + 2)
    pad[..., 1:-1, 1:-1] = rows
    grid = pad.permute(2, 3, 0, 4, 1, 5).reshape(ch, f, n * (h + 2), c * (w + 2))
    return grid.repeat_interleave(scale, -1).repeat_interleave(scale, -2)


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def write_video_report(out: Path, results: dict[str, Any]) -> None:
    base = results["base"]
    acc = base.get("accuracy", {})
    lines = [
        "# byg demo-video: ByG on the toy video world",
        "",
        f"Wall time {results['wall_seconds']:.0f} s (base {'reused' if results['base_reused'] else 'pretrained here'}; "
        f"ByG training {results['train_seconds']:.0f} s, {results['steps']} steps; "
        f"evaluation {results['eval_seconds']:.0f} s). Clips: {results['frames']} frames of "
        f"{results['resolution']}x{results['resolution']}.",
        "",
        f"Identity warm-up: {results['warmup']['steps']} steps; over its last 20 steps the "
        f"identity loss was {_fmt(results['warmup']['loss_id_last20'])} against the base's own "
        f"denoising loss {_fmt(results['warmup']['loss_base_last20'])} at the same (x_src, t, ε) "
        "(a working copy path brings the first well below the second).",
        "",
        "## The text-to-video base: caption following (oracle, per frame)",
        "",
        "| " + " | ".join([*acc, "mean", "motion direction"]) + " |",
        "|" + "---|" * (len(acc) + 2),
        "| "
        + " | ".join(
            [_fmt(v) for v in acc.values()]
            + [_fmt(base.get("mean")), _fmt(base.get("motion_direction"))]
        )
        + " |",
        "",
        f"({base.get('n', '?')} clips sampled from held-out captions; the oracle reads the true "
        f"renders of the same clips at {_fmt(float(np.mean([v for k, v in base.get('oracle_on_renders', {}).items() if k != 'motion_direction'] or [float('nan')])))} mean.)",
        "",
        "## Held-out edits",
        "",
        "Edit success, preservation and both: fraction of frames. PSNR to the ground-truth clip. "
        "Motion error: mean per-frame centroid distance to the source (pixels). Flicker: mean "
        "frame-to-frame change in the source's static background ([0, 1]; 0 for sources and "
        "ground truths).",
        "",
        "| method | split | edit success | preservation | both | PSNR (dB) | motion err (px) | flicker | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results["methods"]:
        for split in ("seen", "unseen"):
            r = results[m][split]["overall"]
            lines.append(
                f"| {m} | {split} | {_fmt(r['edit_success'])} | {_fmt(r['preservation'])} | "
                f"{_fmt(r['success_and_preservation'])} | {_fmt(r['psnr'])} | "
                f"{_fmt(r['motion_err_px'])} | {_fmt(r['flicker'])} | {r['n']} |"
            )
    lines += [
        "",
        "## Per edit type",
        "",
        "| method | split | edit type | edit success | preservation | PSNR | motion err | flicker | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results["methods"]:
        for split in ("seen", "unseen"):
            for et, r in results[m][split]["by_type"].items():
                lines.append(
                    f"| {m} | {split} | {et} | {_fmt(r['edit_success'])} | {_fmt(r['preservation'])} | "
                    f"{_fmt(r['psnr'])} | {_fmt(r['motion_err_px'])} | {_fmt(r['flicker'])} | {r['n']} |"
                )
    lines += [
        "",
        "Seen edits are edits of filled-style clips; unseen edits are edits of outline-style clips, "
        "which no training tuple shows (the toy analogue of out-of-domain inputs).",
        "",
        "Files: `results.json`, `samples.gif` (rows: held-out edits, seen first; columns: "
        "source | ByG | FlowEdit | ground truth), `base/` (the base and its eval.json), `byg/` "
        "(the ByG run: log.jsonl, checkpoints).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def run_video_demo(
    out: str | Path = "runs/demo-video",
    quick: bool = False,
    config: str | Path | None = None,
    overrides: dict[str, list[str]] | None = None,
) -> dict:
    """The whole toy video story; writes report.md, results.json and samples.gif to ``out``."""
    from byg.data.toy_video import ToyVideoConfig, ToyVideoEditDataset
    from byg.eval.toy_oracle import ToyOracle
    from byg.eval.toy_video_metrics import evaluate_video_edits
    from byg.toy_eval import editor_fn, identity_fn, run_method
    from byg.train import train
    from byg.video_io import write_video

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bcfg, cfg, demo = demo_configs(config, quick, overrides)
    torch.set_num_threads(max(1, cfg.train.num_threads or 1))
    base_reused = (out / "base" / "model.safetensors").exists()
    base_dir, base_eval = ensure_video_base(out, bcfg)
    cfg.model.options = {**cfg.model.options, "checkpoint": str(base_dir)}
    print(f"[demo-video] training ByG for {cfg.train.steps} steps (no pairs)")
    t_train = time.time()
    res = train(cfg, out / "byg")
    train_seconds = time.time() - t_train
    editor = res["editor"]

    print("[demo-video] evaluating on held-out edits")
    t_eval = time.time()
    world = ToyVideoConfig(resolution=cfg.data.resolution, **cfg.data.toy)
    oracle = ToyOracle.load()
    sets = {
        s: ToyVideoEditDataset(world, demo.n_eval, seed=EVAL_SEED, split=s)
        for s in ("seen", "unseen")
    }
    methods = {
        "ground_truth": ground_truth_fn,  # the metrics' ceiling (the oracle is not perfect)
        "identity": identity_fn,
        "flowedit": flowedit_fn(editor, demo.flowedit),
        "byg": editor_fn(editor, steps=demo.sample_steps, shift=cfg.sample.shift),
    }
    results: dict[str, Any] = {"methods": list(methods)}
    outputs: dict[str, dict[str, Tensor]] = {}
    for name, fn in methods.items():
        results[name], outputs[name] = {}, {}
        for split, ds in sets.items():
            outs, _ = run_method(fn, ds, batch_size=16)
            m = evaluate_video_edits(outs, [ds.example(i) for i in range(len(ds))], oracle, world)
            results[name][split] = {k: v for k, v in m.items() if k != "per_example"}
            outputs[name][split] = outs
        print(
            f"[demo-video] {name}: "
            + ", ".join(
                f"{s} success {results[name][s]['overall']['edit_success']:.3f} "
                f"preservation {results[name][s]['overall']['preservation']:.3f}"
                for s in sets
            )
        )
    eval_seconds = time.time() - t_eval
    if demo.gif_rows > 0:
        k = min(demo.gif_rows, demo.n_eval)
        cols = []
        for col in ("source", "byg", "flowedit", "ground_truth"):
            parts = []
            for split, ds in sets.items():
                if col == "source":
                    parts.append(torch.stack([ds[i]["x_src"] for i in range(k)]))
                elif col == "ground_truth":
                    parts.append(torch.stack([ds[i]["x_tgt"] for i in range(k)]))
                else:
                    parts.append(outputs[col][split][:k])
            cols.append(torch.cat(parts))
        write_video(out / "samples.gif", _grid_video(cols), fps=4.0)
    warm = [h for h in res["history"] if "loss_base_uncond" in h]
    tail = warm[-20:]
    results["warmup"] = {
        "steps": len(warm),
        "loss_id_last20": float(np.mean([h["loss_id"] for h in tail])) if tail else float("nan"),
        "loss_base_last20": float(np.mean([h["loss_base_uncond"] for h in tail]))
        if tail
        else float("nan"),
    }
    results.update(
        base=base_eval,
        base_reused=base_reused,
        steps=res["steps"],
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        frames=world.frames,
        resolution=world.resolution,
        quick=quick,
        ema_decay=cfg.ema_decay,
        p_id=cfg.byg.p_id,
        wall_seconds=time.time() - t0,
    )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_video_report(out, results)
    print((out / "report.md").read_text())
    return results


def _cmd(args: argparse.Namespace) -> int:
    over = {"base": args.set_base, "run": args.set_run, "demo": args.set_demo}
    if args.steps is not None:
        over["run"] = [*over["run"], f"train.steps={args.steps}"]
    run_video_demo(out=args.out, quick=args.quick, config=args.config, overrides=over)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``byg demo-video``."""
    p = sub.add_parser(
        "demo-video",
        help="the toy video story: text-to-video base, ByG without pairs, FlowEdit, evaluation",
        description=(
            "Pretrain (or reuse <out>/base) the toy text-to-video base, train a ByG video editor "
            "without pairs, evaluate it, FlowEdit on the base and identity on held-out seen and "
            "unseen edits (per-frame oracle, PSNR, motion fidelity, flicker), and write "
            "report.md, results.json and samples.gif. Same as `byg demo --video`."
        ),
    )
    p.add_argument("--out", default="runs/demo-video", help="output folder")
    p.add_argument(
        "--config", default=str(CONFIG), help="kind: video config (configs/toy_video.yaml)"
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--steps", type=int, help="override the number of ByG training steps")
    for name in ("base", "run", "demo"):
        p.add_argument(
            f"--set-{name}",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a field of the config's `{name}` section (repeatable)",
        )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=_cmd)


__all__ = [
    "VideoPretrainConfig",
    "DemoSettings",
    "load_video_pretrain_config",
    "pretrain_video_base",
    "video_caption_accuracy",
    "generate_video",
    "score_clips",
    "run_video_demo",
    "register",
]

"""The training loop: accelerate, AdamW on LoRA, EMA, checkpoints, logs, previews.

One process or many (``accelerate launch byg train ...``): every rank builds the same
editor, draws its own slice of each global batch from a deterministic index stream, and
DDP all-reduces the LoRA gradients. Only rank 0 writes checkpoints, logs and previews.
The EMA is updated from identical weights on every rank, so it stays identical.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor
from tqdm.auto import tqdm

from byg.backbones.editor import Editor
from byg.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from byg.infer import build_editor, edit
from byg.objectives.byg import ByGObjective
from byg.objectives.common import EditBatch
from byg.objectives.supervised import SupervisedObjective
from byg.run_config import RunConfig, run_config_dict

StepHook = Callable[[int, Editor, dict[str, Any]], dict[str, float] | None]


class TrainingError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- data


def build_dataset(cfg: RunConfig, split: str = "train", n: int | None = None):
    """The tuple dataset for ``cfg.data`` (items are dicts, see ``collate_batch``)."""
    d = cfg.data
    if d.source == "toy":
        from byg.data.toy import ToyEditDataset, ToyWorldConfig

        world = ToyWorldConfig(resolution=d.resolution, **d.toy)
        return ToyEditDataset(world, n or d.num_train, seed=cfg.train.seed, split=split)
    if d.source == "folder":
        from byg.data.tuples import EditFolderDataset

        return EditFolderDataset(d.path, resolution=d.resolution, skip_bad=d.skip_bad)
    from byg.cache import CachedEditDataset

    return CachedEditDataset(d.path)


def collate_batch(items: list[dict], editor: Editor, device: torch.device) -> EditBatch:
    """Items with pixel tensors and caption strings, or cached latents + embeddings."""
    if "text" in items[0]:
        from byg.cache import collate_cached

        b = collate_cached(items)
        return EditBatch(
            x_src=b.x_src.to(device),
            text={r: {k: v.to(device) for k, v in e.items()} for r, e in b.text.items()},
            x_tgt=None if b.x_tgt is None else b.x_tgt.to(device),
        )
    roles = {"src": "c_src", "tgt": "c_tgt", "fwd": "c_fwd", "rev": "c_rev"}
    text = {
        r: {k: v.to(device) for k, v in editor.encode_text([it[key] for it in items]).items()}
        for r, key in roles.items()
    }
    x_tgt = None
    if all(it.get("x_tgt") is not None for it in items):
        x_tgt = torch.stack([it["x_tgt"] for it in items]).to(device)
    return EditBatch(
        x_src=torch.stack([it["x_src"] for it in items]).to(device), text=text, x_tgt=x_tgt
    )


class IndexStream:
    """Deterministic sample order: a fresh permutation per epoch, sliced by global position.

    Position ``p`` of the stream is sample ``perm_{p // n}[p % n]``, so any (step, rank,
    micro-batch) maps to fixed samples: resuming needs only the step.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise TrainingError("the training set is empty")
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for p in range(start, start + count):
            epoch = p // self.n
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
            out.append(int(self._perm[p % self.n]))
        return out


# ----------------------------------------------------------------------------- helpers


@dataclass
class StepLog:
    step: int
    kind: str
    terms: dict[str, float]
    lr: float
    seconds: float


def make_objective(cfg: RunConfig):
    return ByGObjective(cfg.byg) if cfg.objective == "byg" else SupervisedObjective(cfg.supervised)


def _write_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def preview_grid(editor: Editor, cfg: RunConfig, items: list[dict], device) -> Tensor:
    batch = collate_batch(items, editor, device)
    was_training = editor.training
    editor.eval()
    out = edit(
        editor,
        batch.x_src,
        batch.text["fwd"],
        steps=cfg.sample.steps,
        shift=cfg.sample.shift,
        sampler=cfg.sample.sampler,
        seed=0,
        use_ema=cfg.sample.use_ema,
    )
    editor.train(was_training)
    cols = [batch.x_src, out] + ([batch.x_tgt] if batch.x_tgt is not None else [])
    rows = torch.stack(cols, dim=1)  # (B, cols, 3, H, W)
    b, c, ch, h, w = rows.shape
    pad = torch.ones(b, c, ch, h + 2, w + 2, device=rows.device)
    pad[..., 1:-1, 1:-1] = rows.clamp(-1, 1)
    return pad.permute(2, 0, 3, 1, 4).reshape(ch, b * (h + 2), c * (w + 2))  # (3, B*H', cols*W')


# ----------------------------------------------------------------------------- main loop


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: str | None = None,
    hooks: list[StepHook] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train an editor as configured; returns a summary dict.

    Args:
        resume: ``"latest"``, a run folder or a checkpoint folder.
        hooks: ``hook(step, editor, logs) -> extra metrics`` called on rank 0 after steps
            where ``train.eval_every`` divides ``step`` (and at the end).
        stop_after: stop (with a checkpoint) after this many steps of this invocation.
    """
    out = Path(out_dir)
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    device = accelerator.device
    is_main = accelerator.is_main_process
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(tc.seed)  # identical LoRA init on every rank
    editor = build_editor(cfg).to(device)
    dataset = build_dataset(cfg)
    objective = make_objective(cfg)
    params = editor.lora_parameters()
    opt = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    warm = max(cfg.optim.lr_warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
    )
    model, opt, sched = accelerator.prepare(editor, opt, sched)

    # Randomness is re-seeded from (seed, step, rank) every step, so a resumed run draws
    # exactly what an uninterrupted one would, and checkpoints need no RNG state. The
    # identity-step coin (py_rng) ignores the rank: every rank takes the same kind of step.
    generator = torch.Generator()
    py_rng = random.Random()
    start = 0
    if resume:
        ckpt = load_checkpoint(resolve_checkpoint(resume, out))
        _check_compatible(ckpt["config"], cfg)
        editor.load_lora_state_dict(ckpt["lora"], ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"]["optimizer"])
        sched.load_state_dict(ckpt["optimizer"]["scheduler"])
        st = ckpt["state"]
        objective.load_state_dict(st["objective"])
        start = st["step"]
        if is_main:
            print(f"resumed from {ckpt['path']} at step {start}")

    stream = IndexStream(len(dataset), tc.seed)
    world, rank, B = accelerator.num_processes, accelerator.process_index, tc.batch_size
    log_path = out / "log.jsonl"
    preview_items = None
    if is_main and tc.preview_every and cfg.data.source != "cache":
        preview_items = [dataset[i] for i in range(min(6, len(dataset)))]
    end = tc.steps if stop_after is None else min(tc.steps, start + stop_after)

    stop_signal = {"sig": None}

    def _on_signal(signum, frame):  # finish the step, save, exit (cluster preemption)
        stop_signal["sig"] = signum

    old_handlers = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            old_handlers[s] = signal.signal(s, _on_signal)
        except ValueError:  # not the main thread
            pass

    saved_at = {"step": start}

    def do_save(step: int) -> None:
        saved_at["step"] = step
        if is_main:
            save_checkpoint(
                out,
                step,
                lora=editor.lora_state_dict(),
                ema=editor.ema_state_dict(),
                optimizer_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                state={
                    "objective": objective.state_dict(),
                    "backbone": editor.backbone.describe(),
                    "lora_rank": cfg.lora.rank,
                },
                config=run_config_dict(cfg),
                keep=tc.keep,
            )
        accelerator.wait_for_everyone()

    bad_in_a_row = 0
    history: list[dict] = []
    bar = tqdm(
        range(start, end),
        initial=start,
        total=tc.steps,
        disable=not (progress and is_main),
        desc=cfg.name,
    )
    t_start = time.time()
    step = start
    for step in bar:
        t0 = time.time()
        generator.manual_seed((tc.seed * 1_000_003 + step) * 1009 + rank)
        py_rng.seed(tc.seed * 1_000_003 + step)
        terms_acc: dict[str, float] = {}
        kind = "full"
        finite = True
        for micro in range(tc.grad_accum):
            pos = ((step * tc.grad_accum + micro) * world + rank) * B
            items = [dataset[i] for i in stream.take(pos, B)]
            batch = collate_batch(items, editor, device)
            sync = accelerator.no_sync(model) if micro < tc.grad_accum - 1 else _null()
            with sync, accelerator.autocast():
                res = objective(editor, batch, step, generator, py_rng, model=model)
            kind = res.kind
            ok = torch.tensor([1.0 if torch.isfinite(res.loss).item() else 0.0], device=device)
            if accelerator.reduce(ok, reduction="sum").item() < world:
                finite = False
                for k, v in res.terms.items():
                    terms_acc[k] = v
                break
            with sync:
                accelerator.backward(res.loss / tc.grad_accum)
            for k, v in res.terms.items():
                terms_acc[k] = terms_acc.get(k, 0.0) + v / tc.grad_accum
        if not finite:
            opt.zero_grad(set_to_none=True)
            bad_in_a_row += 1
            if is_main:
                _write_jsonl(log_path, {"step": step, "skipped": "non-finite loss", **terms_acc})
                bar.write(f"step {step}: non-finite loss {terms_acc}; step skipped")
            if bad_in_a_row >= tc.max_bad_steps:
                raise TrainingError(
                    f"{bad_in_a_row} consecutive non-finite losses (last at step {step}); "
                    f"stopping. The last good checkpoint is in {out / 'checkpoints'}"
                )
            continue
        bad_in_a_row = 0
        gnorm = (
            accelerator.clip_grad_norm_(params, cfg.optim.grad_clip)
            if cfg.optim.grad_clip > 0
            else None
        )
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        editor.update_ema()
        done = step + 1
        if is_main:
            row = {
                "step": done,
                "kind": kind,
                "lr": sched.get_last_lr()[0],
                "sec": time.time() - t0,
                **terms_acc,
            }
            if gnorm is not None:
                row["grad_norm"] = float(gnorm)
            history.append(row)
            if done % tc.log_every == 0 or done == end:
                _write_jsonl(log_path, row)
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in terms_acc.items() if k.startswith("loss")}
                )
            if preview_items and tc.preview_every and (done % tc.preview_every == 0 or done == end):
                from byg.infer import tensor_to_image

                grid = preview_grid(editor, cfg, preview_items, device)
                (out / "previews").mkdir(exist_ok=True)
                tensor_to_image(grid).save(out / "previews" / f"step_{done:07d}.png")
            if hooks and tc.eval_every and (done % tc.eval_every == 0 or done == end):
                extra = {}
                for h in hooks:
                    extra.update(h(done, editor, row) or {})
                if extra:
                    _write_jsonl(out / "eval.jsonl", {"step": done, **extra})
        if tc.save_every and done % tc.save_every == 0:
            do_save(done)
        if stop_signal["sig"] is not None:
            if is_main:
                bar.write(
                    f"signal {stop_signal['sig']} received: saving at step {done} and exiting"
                )
            do_save(done)
            step = done
            break
    else:
        step = end
    if step > saved_at["step"]:
        do_save(step)
    for s, h in old_handlers.items():
        signal.signal(s, h)
    bar.close()
    return {
        "steps": end,
        "wall_seconds": time.time() - t_start,
        "history": history,
        "editor": editor,
        "interrupted": stop_signal["sig"] is not None,
    }


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _check_compatible(saved: dict, cfg: RunConfig) -> None:
    """Refuse a checkpoint from another backbone or LoRA rank, naming the mismatch."""
    pairs = [
        ("model.backbone", saved.get("model", {}).get("backbone"), cfg.model.backbone),
        ("lora.rank", saved.get("lora", {}).get("rank"), cfg.lora.rank),
        ("objective", saved.get("objective"), cfg.objective),
    ]
    for name, a, b in pairs:
        if a != b:
            raise TrainingError(
                f"checkpoint was trained with {name}={a!r}, this run has {name}={b!r}"
            )

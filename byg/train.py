"""The training loop: accelerate, AdamW on LoRA, EMA, checkpoints, logs, previews.

One process or many (``accelerate launch -m byg.cli train ...``): every rank builds the
same editor, draws its own slice of each global batch from a deterministic index stream,
and DDP all-reduces the LoRA gradients (or FSDP shards the base, or DeepSpeed ZeRO-1/2
partitions the optimizer state). Only rank 0 writes checkpoints, logs and previews.
The EMA is updated from identical weights on every rank, so it stays identical. The rules
that make N processes equal one are in ``byg.distributed``.

What survives what:

* **Resume is exact.** Randomness is re-seeded from ``(seed, step, chunk)`` every step and
  the sample order is a function of the stream position, so a checkpoint needs no RNG
  state: stopping at step k and resuming reproduces an uninterrupted run bit for bit.
* **SIGTERM / SIGINT** (what schedulers send before preemption): the current step
  finishes, a checkpoint is written, ``train`` returns with ``interrupted=True`` (the CLI
  exits 0). A second SIGINT aborts at once.
* **SIGKILL, power loss**: saves are atomic (``byg.checkpoint``); ``--resume latest``
  continues from the newest complete checkpoint.
* **NaN / Inf** loss or gradient norm: the step is skipped (no weight, EMA or optimizer
  update) and logged with its loss terms; after ``train.max_bad_steps`` in a row the last
  good state is saved and the run stops with ``TrainingError``.
* **A failed save** (full disk): the run stops with ``TrainingError``; the previous
  checkpoint is untouched.
* **Bad inputs**: missing paths are reported before any model is loaded; bad dataset
  rows stop the run naming them unless ``data.skip_bad`` (then they are counted).

Fault injection (testing aids for ``tests/test_faults.py``; never set them in production):
``BYG_FAULT_NAN_AT_STEP=3,7:1`` turns the loss of step 3 (1-based) into NaN, and of step 7
only in its micro-step 1 (0-based; after micro-step 0's backward, gradient accumulation);
``BYG_FAULT_HANG_AT_STEP=N`` pauses step ``N`` after its backward pass (writing
``<run>/fault_marker``) until a signal arrives or 600 s pass. The save faults are in
``byg.checkpoint``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.scheduler import AcceleratedScheduler
from torch import Tensor
from tqdm.auto import tqdm

from byg.backbones.editor import Editor
from byg.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from byg.distributed import (
    accelerator_kwargs,
    all_reduce_grads,
    check_ranks_agree,
    chunk_seed,
    configure_deepspeed,
    gather_zero_state,
    is_deepspeed,
    is_fsdp,
    reduce_sum,
    step_seed,
)
from byg.infer import build_editor, edit
from byg.objectives.byg import ByGObjective
from byg.objectives.common import EditBatch
from byg.objectives.supervised import SupervisedObjective
from byg.run_config import RunConfig, lr_multiplier, run_config_dict

StepHook = Callable[[int, Editor, dict[str, Any]], dict[str, float] | None]

#: where launchers put the number of processes (torchrun / accelerate, MPI flavours)
WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
FAULT_NAN_AT_STEP = "BYG_FAULT_NAN_AT_STEP"
FAULT_HANG_AT_STEP = "BYG_FAULT_HANG_AT_STEP"


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why and what was kept."""


# ----------------------------------------------------------------------------- data


def build_dataset(cfg: RunConfig, split: str = "train", n: int | None = None):
    """The tuple dataset for ``cfg.data`` (items are dicts, see ``collate_batch``)."""
    d = cfg.data
    if d.source == "toy":
        from byg.data.toy import ToyEditDataset, ToyWorldConfig

        world = ToyWorldConfig(resolution=d.resolution, **d.toy)
        return ToyEditDataset(world, n or d.num_train, seed=cfg.train.seed, split=split)
    if d.source == "toy_video":
        from byg.data.toy_video import ToyVideoConfig, ToyVideoEditDataset

        world = ToyVideoConfig(resolution=d.resolution, **d.toy)
        return ToyVideoEditDataset(world, n or d.num_train, seed=cfg.train.seed, split=split)
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


# ----------------------------------------------------------------------------- checks


def check_paths(cfg: RunConfig) -> None:
    """Report every input path that does not exist, before any model is loaded.

    Checks ``data.path`` (folder and cache sources) and ``model.options`` values written as
    local paths (starting with ``/``, ``./``, ``../`` or ``~``; hub ids are left alone).

    Raises:
        FileNotFoundError: naming each missing path and the field it came from.
    """
    missing = []
    if cfg.data.source != "toy" and cfg.data.path and not Path(cfg.data.path).exists():
        missing.append(f"data.path {cfg.data.path!r}")
    for key, value in cfg.model.options.items():
        local = isinstance(value, str) and value.startswith(("/", "./", "../", "~"))
        if local and not Path(value).expanduser().exists():
            missing.append(f"model.options.{key} {value!r}")
    if cfg.train.init_from and not Path(cfg.train.init_from).expanduser().exists():
        missing.append(f"train.init_from {cfg.train.init_from!r}")
    if missing:
        raise FileNotFoundError("does not exist: " + "; ".join(missing))


def _check_same_backbone(ckpt: dict, editor, ignore: tuple[str, ...] = ()) -> None:
    def strip(desc: dict | None) -> dict | None:
        if desc is None or not ignore:
            return desc
        config = {k: v for k, v in desc.get("config", {}).items() if k not in ignore}
        return {**desc, "config": config}

    saved_backbone = ckpt["state"].get("backbone")
    this_backbone = json.loads(json.dumps(editor.backbone.describe()))
    if saved_backbone is not None and strip(saved_backbone) != strip(this_backbone):
        raise TrainingError(
            f"checkpoint {ckpt['path']} is from backbone {saved_backbone}, this run builds "
            f"{this_backbone}"
        )


def _load_init(init_from: str, cfg: RunConfig, editor) -> Path:
    """``train.init_from``: another run's LoRA and EMA weights, checked like a resume."""
    try:
        path = resolve_checkpoint(str(Path(init_from).expanduser()), Path(init_from))
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise TrainingError(f"train.init_from: {e}") from e
    ckpt = load_checkpoint(path)
    _check_compatible(ckpt["config"], cfg, objective=False)
    backbone = editor.backbone  # what this backbone lets init_from add (toy: edit_gate)
    _check_same_backbone(ckpt, editor, ignore=backbone.init_may_add_fields)
    editor.load_lora_state_dict(ckpt["lora"], ckpt["ema"], new_ok=backbone.init_may_add_modules)
    return path


def _resolve_resume(resume: str | None, out: Path) -> Path | None:
    """The checkpoint to resume from; ``latest`` with none yet starts fresh (with a note)."""
    if not resume:
        return None
    if str(resume) == "latest" and not list_checkpoints(out):
        print(f"--resume latest: no checkpoint in {out / 'checkpoints'} yet; starting at step 0")
        return None
    try:
        return resolve_checkpoint(resume, out)
    except CheckpointError as e:
        raise TrainingError(f"cannot resume: {e}") from e


def _fault_steps(name: str) -> set[int]:
    return set(_fault_micro_steps(name))


def _fault_micro_steps(name: str) -> dict[int, int | None]:
    """``"3,7:1"`` -> ``{3: None, 7: 1}``: step 3 (every micro-step), step 7 micro-step 1."""
    out: dict[int, int | None] = {}
    for v in os.environ.get(name, "").split(","):
        if v.strip():
            step, _, micro = v.partition(":")
            out[int(step)] = int(micro) if micro.strip() else None
    return out


def _hang(out: Path, step: int, stop: dict) -> None:
    """``BYG_FAULT_HANG_AT_STEP``: pause mid-step until a signal (or 600 s)."""
    (out / "fault_marker").write_text(f"hanging in step {step}\n")
    deadline = time.monotonic() + 600
    while stop["sig"] is None and time.monotonic() < deadline:
        time.sleep(0.02)


def _skipped_items(dataset, accelerator: Accelerator) -> list[str]:
    """The bad items the dataset skipped, over all ranks (``data.skip_bad``), described."""
    names = [str(b) for b in getattr(dataset, "bad_rows", [])]  # "line N (file): reason"
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        names = [n for part in gather_object([names]) for n in part]
    return sorted(set(names))


# ----------------------------------------------------------------------------- main loop


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: str | None = None,
    hooks: list[StepHook] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    until_warm: bool = False,
) -> dict[str, Any]:
    """Train an editor as configured; returns a summary dict.

    Args:
        cfg: the run config (``train.batch_size`` is per process and micro-step; the
            global batch is ``batch_size · grad_accum · processes``).
        out_dir: the run folder (checkpoints, ``log.jsonl``, previews).
        resume: ``"latest"`` (starts fresh when there is no checkpoint yet), a run folder
            or a checkpoint folder.
        hooks: ``hook(step, editor, logs) -> extra metrics`` called on rank 0 after steps
            where ``train.eval_every`` divides ``step`` (and at the end).
        progress: show a tqdm bar (rank 0).
        stop_after: stop (with a checkpoint) after this many steps of this invocation.
        until_warm: stop (with a checkpoint) once the objective's identity-only warm-up
            has ended (ByG); a later ``resume`` continues the same run. ``byg demo`` uses it
            to start its identity-only editor from the ByG run's warm-up, which the two
            runs share step for step.

    Returns:
        ``{"steps": last completed step, "wall_seconds", "history": per-step log rows
        (rank 0), "editor", "interrupted": stopped by a signal, "skipped_bad": number of
        bad dataset items skipped}``.

    Raises:
        FileNotFoundError: an input path does not exist (before any model is loaded).
        TrainingError: an incompatible checkpoint, too many non-finite steps, or a save
            that failed; the message names what was kept.
    """
    out = Path(out_dir)
    tc = cfg.train
    # cheap checks first: a typo must not cost a model load
    check_paths(cfg)
    resume_path = _resolve_resume(resume, out)
    ckpt = load_checkpoint(resume_path) if resume_path else None
    if ckpt is not None:
        _check_compatible(ckpt["config"], cfg)
        if ckpt["optimizer"] is None:
            raise TrainingError(
                f"{ckpt['path']} has no optimizer state (optimizer.pt): it can be used for "
                "editing but not resumed"
            )
    dataset = build_dataset(cfg)

    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    launched = max(int(os.environ.get(k, "1")) for k in WORLD_SIZE_ENV)
    # several processes without CUDA: gloo on CPU (DeepSpeed included, see byg.distributed)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, **accelerator_kwargs(launched))
    if accelerator.num_processes != launched:
        raise TrainingError(
            f"launched as {launched} processes but accelerate set up {accelerator.num_processes}"
            "; they would train independently and overwrite each other's checkpoints"
        )
    ds = is_deepspeed(accelerator)  # ZeRO-1/2: optimizer state (and gradients) sharded
    if ds:
        try:
            configure_deepspeed(
                accelerator,
                micro_batch=tc.batch_size,
                grad_accum=tc.grad_accum,
                grad_clip=cfg.optim.grad_clip,
            )
        except ValueError as e:
            raise TrainingError(str(e)) from e
    if ckpt is not None:
        _check_optimizer_layout(ckpt, ds, accelerator.num_processes)
    device = accelerator.device
    is_main = accelerator.is_main_process
    world, rank, B, ga = (
        accelerator.num_processes,
        accelerator.process_index,
        tc.batch_size,
        tc.grad_accum,
    )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(tc.seed)  # identical LoRA init on every rank
    editor = build_editor(cfg)
    if ckpt is None and tc.init_from:  # before prepare: DeepSpeed copies the weights there
        init = _load_init(tc.init_from, cfg, editor)
        if is_main:
            print(f"LoRA and EMA weights from {init} (fresh optimizer, step 0)")
    objective = make_objective(cfg)
    params = editor.lora_parameters()
    fsdp = is_fsdp(accelerator)  # the frozen base sharded; LoRA whole, averaged by hand
    if fsdp:  # FSDP moves the base to the GPU shard by shard; the LoRA modules go whole
        for m in _prepare_fsdp_plugin(accelerator, editor):
            m.to(device)
    else:
        editor.to(device)
    opt = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, cfg.optim, cfg.train.steps)
    )
    model, opt, sched = accelerator.prepare(editor, opt, sched)
    if type(sched) is AcceleratedScheduler:
        # accelerate's wrapper steps the schedule once per process on every call (it
        # assumes a data loader it split); train.steps counts optimizer steps of the global
        # batch, so the LambdaLR itself is stepped, once per applied step (DDP, FSDP, and
        # ZeRO, which is handed a LambdaLR back in this wrapper)
        sched = sched.scheduler
    if fsdp:
        _check_fsdp_lora(editor)
        editor._ema = {  # the EMA follows the LoRA tensors (device, and dtype after upcasts)
            n: editor._ema[n].to(p.device, p.dtype)
            for n, p in editor.lora_named_parameters()
            if n in editor._ema
        }

    G = world * ga * B  # global batch
    start, pos_base = 0, 0
    if ckpt is not None:
        _check_same_backbone(ckpt, editor)
        editor.load_lora_state_dict(ckpt["lora"], ckpt["ema"])
        if ds:  # every rank's partition is in the file; DeepSpeed picks this rank's
            opt.optimizer.load_state_dict(ckpt["optimizer"]["zero"], load_from_fp32_weights=True)
        else:
            opt.load_state_dict(ckpt["optimizer"]["optimizer"])
        sched.load_state_dict(ckpt["optimizer"]["scheduler"])
        st = ckpt["state"]
        objective.load_state_dict(st["objective"])
        start = st["step"]
        pos_base = st.get("samples_seen", start * G)
        if is_main:
            print(f"resumed from {ckpt['path']} at step {start}")
            if st.get("global_batch", G) != G:
                print(
                    f"note: the global batch changed from {st['global_batch']} to {G}; the data "
                    f"stream continues at sample {pos_base}, but this run will differ from one "
                    "with a constant global batch"
                )
    step_base = start

    def positions(step: int, chunk: int) -> list[int]:  # the B stream positions of a chunk
        p = pos_base + (step - step_base) * G + chunk * B
        return stream.take(p, B)

    stream = IndexStream(len(dataset), tc.seed)
    generator = torch.Generator()  # noise: re-seeded per (seed, step, chunk)
    py_rng = random.Random()  # identity-step coin: re-seeded per (seed, step)
    log_path = out / "log.jsonl"
    preview_items = None
    if is_main and tc.preview_every and cfg.data.source != "cache":
        preview_items = [dataset[i] for i in range(min(6, len(dataset)))]
    end = tc.steps if stop_after is None else min(tc.steps, start + stop_after)
    if until_warm and getattr(objective, "warmup_done", True):
        end = start  # the warm-up is over already: nothing to do
    nan_steps = _fault_micro_steps(FAULT_NAN_AT_STEP)
    hang_steps = _fault_steps(FAULT_HANG_AT_STEP)

    stop = {"sig": None}

    def on_signal(signum, frame):  # finish the step, save, exit (cluster preemption)
        if signum == signal.SIGINT and stop["sig"] == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: abort without saving
        if stop["sig"] is None:
            sys.stderr.write(
                f"\nbyg train: signal {signum} received; finishing this step, saving, exiting\n"
            )
        stop["sig"] = signum

    saved_at = {"step": start}

    def do_save(step: int) -> None:
        """Rank 0 writes; every rank learns whether it worked."""
        check_ranks_agree(accelerator, params + list(editor.ema_state_dict().values()), "LoRA")
        # ZeRO: each rank holds a partition of the optimizer state; rank 0 saves them all
        opt_state = {"zero": gather_zero_state(accelerator, opt.optimizer)} if ds else None
        error: BaseException | None = None
        if is_main:
            try:
                save_checkpoint(
                    out,
                    step,
                    lora=editor.lora_state_dict(),
                    ema=editor.ema_state_dict(),
                    optimizer_state={
                        **(opt_state or {"optimizer": opt.state_dict()}),
                        "scheduler": sched.state_dict(),
                    },
                    state={
                        "objective": objective.state_dict(),
                        "backbone": editor.backbone.describe(),
                        "lora_rank": cfg.lora.rank,
                        "samples_seen": pos_base + (step - step_base) * G,
                        "global_batch": G,
                        "world_size": world,
                    },
                    config=run_config_dict(cfg),
                    keep=tc.keep,
                )
            except OSError as e:
                error = e
        if reduce_sum(accelerator, [1.0 if error else 0.0])[0] > 0:
            kept = list_checkpoints(out)
            kept_msg = f"the previous checkpoint {kept[-1]} is intact" if kept else "no earlier one"
            raise TrainingError(
                f"could not write the checkpoint of step {step} in {out / 'checkpoints'}: "
                f"{error or 'failed on rank 0'}; {kept_msg}. Fix the cause (e.g. free disk "
                "space) and rerun with --resume latest"
            ) from error
        saved_at["step"] = step
        accelerator.wait_for_everyone()

    old_handlers = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            old_handlers[s] = signal.signal(s, on_signal)
        except ValueError:  # not the main thread
            pass

    bad_in_a_row, last_good = 0, start
    history: list[dict] = []
    bar = tqdm(
        range(start, end),
        initial=start,
        total=tc.steps,
        disable=not (progress and is_main),
        desc=cfg.name,
    )
    t_start = time.time()
    done = start
    try:
        for step in bar:  # ``step`` counts from 0; the step's number (logs, checkpoints) is n
            n = step + 1
            t0 = time.time()
            state0 = copy.deepcopy(objective.state_dict())
            sums: dict[str, float] = {}
            bad_terms: dict[str, float] = {}
            kind = "full"
            finite = True
            for micro in range(ga):
                chunk = micro * world + rank
                objective.load_state_dict(copy.deepcopy(state0))  # same state for every chunk
                generator.manual_seed(chunk_seed(tc.seed, step, chunk))
                py_rng.seed(step_seed(tc.seed, step))
                items = [dataset[i] for i in positions(step, chunk)]
                if hasattr(objective, "slot"):  # a kept rollout belongs to its micro-step
                    objective.slot = micro
                batch = collate_batch(items, editor, device)
                # gradients are all-reduced on the last micro-step only (DeepSpeed: its own
                # accumulation boundary, set below)
                last = micro == ga - 1
                sync = partial(accelerator.no_sync, model) if not (last or ds) else nullcontext
                with sync(), accelerator.autocast():
                    res = objective(editor, batch, step, generator, py_rng, model=model)
                loss, kind = res.loss, res.kind
                if n in nan_steps and nan_steps[n] in (None, micro):
                    loss = loss * float("nan")
                    res.terms["loss"] = float("nan")
                ok = 1.0 if torch.isfinite(loss).item() else 0.0
                if reduce_sum(accelerator, [ok])[0] < world:
                    finite, bad_terms = False, dict(res.terms)
                    if ds:
                        _poison_deepspeed_window(model, params, micro, ga)
                    break
                # every LoRA tensor joins the graph (with gradient 0 where unused, e.g. the
                # Wan expert no sample of this chunk reached): the same set of gradients on
                # every rank and in every layout, which DDP (find_unused_parameters=False)
                # and the FSDP all-reduce rely on
                loss = loss + 0.0 * sum(p.sum() for p in params)
                if ds:  # DeepSpeed divides by grad_accum itself and reduces at the boundary
                    model.set_gradient_accumulation_boundary(last)
                    model.backward(loss)
                else:
                    with sync():
                        accelerator.backward(loss / ga)
                for k, v in res.terms.items():
                    sums[k] = sums.get(k, 0.0) + v
            objective.load_state_dict(state0)  # the step's bookkeeping is applied once, below
            if n in hang_steps:
                _hang(out, n, stop)

            gnorm = None
            if ds:  # clip, AdamW, scheduler, zero_grad; DeepSpeed skips non-finite gradients
                model.step()
                gnorm = model.get_global_grad_norm()
                gnorm = None if gnorm is None else float(gnorm)
                if model.was_step_applied() != finite:
                    if finite:
                        finite, bad_terms = False, {**sums, "grad_norm": gnorm}
                    else:
                        raise TrainingError(f"step {n}: DeepSpeed applied a non-finite step")
            elif finite:
                if fsdp:
                    all_reduce_grads(accelerator, params)
                if cfg.optim.grad_clip > 0:
                    gnorm = float(accelerator.clip_grad_norm_(params, cfg.optim.grad_clip))
                    if not math.isfinite(gnorm):
                        finite, bad_terms = False, {**sums, "grad_norm": gnorm}
            if finite:  # mean of the terms over every chunk of the global batch
                keys = sorted(sums)
                vals = reduce_sum(accelerator, [sums[k] for k in keys] + [stop["sig"] is not None])
                terms = {k: v / (world * ga) for k, v in zip(keys, vals)}
                stop_now = vals[-1] > 0
            else:
                stop_now = reduce_sum(accelerator, [stop["sig"] is not None])[0] > 0

            if not finite:
                opt.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                if is_main:
                    _write_jsonl(log_path, {"step": n, "skipped": "non-finite", **bad_terms})
                    bar.write(f"step {n}: non-finite loss or gradient {bad_terms}; step skipped")
                if bad_in_a_row >= tc.max_bad_steps:
                    if last_good > saved_at["step"]:
                        do_save(last_good)  # nothing changed since: this IS the last good state
                    raise TrainingError(
                        f"{bad_in_a_row} consecutive non-finite steps (last: step {n}); "
                        f"stopping. The last good state (step {saved_at['step']}) is in "
                        f"{out / 'checkpoints'}"
                    )
            else:
                bad_in_a_row = 0
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                editor.update_ema()
                if not state0.get("warmup_done", True) and "loss_base_uncond" in terms:
                    # warm-up bookkeeping from the whole global batch, identical on every rank
                    objective._update_warmup(step, terms["loss_id"], terms["loss_base_uncond"])
                    terms["warmup"] = 0.0 if objective.warmup_done else 1.0
                last_good = n
                if is_main:
                    row = {
                        "step": n,
                        "kind": kind,
                        "lr": sched.get_last_lr()[0],
                        "sec": time.time() - t0,
                        **terms,
                    }
                    if gnorm is not None:
                        row["grad_norm"] = gnorm
                    history.append(row)
                    _log_and_preview(
                        cfg, out, n, end, row, editor, preview_items, hooks, bar, device
                    )
            done = n
            if not finite and not stop_now:
                continue
            if tc.save_every and n % tc.save_every == 0 and last_good == n:
                do_save(n)
            if stop_now:
                if is_main:
                    bar.write(f"stopping on a signal: saving step {last_good} and exiting")
                break
            if until_warm and getattr(objective, "warmup_done", True):
                break  # saved just below
        if last_good > saved_at["step"]:
            do_save(last_good)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        bar.close()

    skipped = (
        _skipped_items(dataset, accelerator)
        if getattr(dataset, "bad_rows", None) is not None
        else []
    )
    if skipped and is_main:
        print(
            f"data: skipped {len(skipped)} bad item(s) (data.skip_bad=true); first: {skipped[:3]}"
        )
        _write_jsonl(log_path, {"step": done, "skipped_bad": len(skipped), "items": skipped[:100]})
    return {
        "steps": last_good,
        "wall_seconds": time.time() - t_start,
        "history": history,
        "editor": editor,
        "interrupted": stop["sig"] is not None,
        "skipped_bad": len(skipped),
    }


def _log_and_preview(cfg, out, n, end, row, editor, preview_items, hooks, bar, device) -> None:
    """Rank 0 after a good step: log row, preview grid, evaluation hooks."""
    tc = cfg.train
    if n % tc.log_every == 0 or n == end:
        _write_jsonl(out / "log.jsonl", row)
        bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k.startswith("loss")})
    if preview_items and tc.preview_every and (n % tc.preview_every == 0 or n == end):
        from byg.infer import tensor_to_image

        grid = preview_grid(editor, cfg, preview_items, device)
        (out / "previews").mkdir(exist_ok=True)
        tensor_to_image(grid).save(out / "previews" / f"step_{n:07d}.png")
    if hooks and tc.eval_every and (n % tc.eval_every == 0 or n == end):
        extra = {}
        for h in hooks:
            extra.update(h(n, editor, row) or {})
        if extra:
            _write_jsonl(out / "eval.jsonl", {"step": n, **extra})


# ----------------------------------------------------------------------------- FSDP


def _prepare_fsdp_plugin(accelerator: Accelerator, editor: Editor) -> list[torch.nn.Module]:
    """FSDP2 shards the frozen base; the LoRA modules are left whole (see byg.distributed).

    Returns:
        The LoRA modules (FSDP ignores them, so it does not move them to the GPU either).
    """
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) != 2:
        raise TrainingError(
            "FSDP needs fsdp_version: 2 in the accelerate config (FSDP1 wraps the editor in a "
            "new module, which the frozen-base and EMA views cannot see through); see "
            "configs/accelerate/fsdp_flux.yaml"
        )
    lora_modules = [
        m for name, m in editor.named_modules() if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")
    ]
    plugin.ignored_modules = lora_modules
    return lora_modules


def _check_fsdp_lora(editor: Editor) -> None:
    from torch.distributed.tensor import DTensor

    sharded = [n for n, p in editor.lora_named_parameters() if isinstance(p, DTensor)]
    if sharded:
        raise TrainingError(
            f"FSDP sharded LoRA tensors ({sharded[:2]}...); they must stay whole on every rank"
        )


# ----------------------------------------------------------------------------- DeepSpeed


def _poison_deepspeed_window(model, params: list[Tensor], micro: int, ga: int) -> None:
    """Make DeepSpeed drop this step's gradient after a non-finite loss at ``micro``.

    DeepSpeed cannot discard a partly accumulated gradient from outside, but its ``step``
    skips (no AdamW, scheduler or counter update, gradients cleared) when the gradient is
    non-finite. So the rest of the window is run with a NaN gradient on every LoRA tensor.
    """
    for m in range(micro, ga):
        model.set_gradient_accumulation_boundary(m == ga - 1)
        model.backward(float("nan") * sum(p.sum() for p in params))


def _check_optimizer_layout(ckpt: dict, ds: bool, world: int) -> None:
    """A ZeRO checkpoint resumes under DeepSpeed with as many processes, and only so."""
    zero = ckpt["optimizer"].get("zero")
    if ds and zero is None:
        raise TrainingError(
            f"{ckpt['path']} was written without DeepSpeed (whole optimizer state); resume it "
            "the way it was trained (DDP or one process)"
        )
    if not ds and zero is not None:
        raise TrainingError(
            f"{ckpt['path']} was written under DeepSpeed ZeRO (optimizer state in "
            f"{len(zero)} partitions); resume it with the same DeepSpeed config"
        )
    if ds and len(zero) != world:
        raise TrainingError(
            f"{ckpt['path']} holds ZeRO optimizer partitions for {len(zero)} processes, this "
            f"run has {world}; resume with {len(zero)} processes"
        )


def _check_compatible(saved: dict, cfg: RunConfig, *, objective: bool = True) -> None:
    """Refuse a checkpoint from another backbone, LoRA layout or objective, naming it.

    ``objective=False`` (``train.init_from``): weights of a supervised or identity-only run
    may start a ByG run.
    """
    saved = saved or {}
    pairs = [
        ("model.backbone", saved.get("model", {}).get("backbone"), cfg.model.backbone),
        ("lora.rank", saved.get("lora", {}).get("rank"), cfg.lora.rank),
        ("lora.targets", saved.get("lora", {}).get("targets"), cfg.lora.targets),
        ("lora.rank_pattern", saved.get("lora", {}).get("rank_pattern", {}), cfg.lora.rank_pattern),
    ]
    if objective:
        pairs.append(("objective", saved.get("objective"), cfg.objective))
    for name, a, b in pairs:
        if a != b:
            raise TrainingError(
                f"checkpoint was trained with {name}={a!r}, this run has {name}={b!r}"
            )

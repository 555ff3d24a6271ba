"""What the training loop needs from ``torch.distributed``, through accelerate, in one place.

The rules that make N processes train exactly like one (tested in
``tests/test_distributed.py``):

* **Samples.** A step consumes a global batch of ``G = world · grad_accum · B`` samples
  from a deterministic stream. Chunk ``c = micro · world + rank`` of the step takes the
  stream positions ``[p + c·B, p + (c+1)·B)``. With the micro-batch size ``B`` fixed, any
  layout with the same ``world · grad_accum`` sees the same samples in the same chunks.
* **Noise.** The per-step generator is seeded from ``(seed, step, chunk)``: a chunk draws
  the same ``t`` and ``ε`` whichever rank or micro-step computes it. The identity-step coin
  is seeded from ``(seed, step)`` only, so every rank and micro-step takes the same kind of
  step.
* **Gradients.** DDP averages over ranks; each micro-step's loss is divided by
  ``grad_accum``. The sum is the mean over all chunks in every layout.
* **Warm-up bookkeeping.** The objective's running losses are updated once per step from
  the mean over all chunks (all-reduced), never from one rank's share.

FSDP (for backbones too big for one GPU) shards the frozen base; the LoRA tensors are
ignored by FSDP (``fsdp_ignored_modules``), stay whole on every rank, and their gradients
are averaged here (``all_reduce_grads``). That keeps the EMA, checkpoints and the
``editor.base()`` / ``editor.ema()`` views unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor

#: modules FSDP must leave alone: the LoRA adapters (peft names), so they stay whole
LORA_MODULE_REGEX = r".*\.lora_(A|B)(\.default)?"


def step_seed(seed: int, step: int) -> int:
    """Seed of everything that must agree across ranks at ``step`` (the identity coin)."""
    return seed * 1_000_003 + step


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """Seed of the noise of chunk ``chunk = micro · world + rank`` of ``step``."""
    return step_seed(seed, step) * 1009 + chunk


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def deepspeed_requested() -> bool:
    """``accelerate launch --use_deepspeed`` (or a DeepSpeed accelerate config) set this up."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_kwargs(launched: int) -> dict:
    """``Accelerator(...)`` arguments for ``launched`` processes on this machine.

    Without CUDA, several processes run on CPU with gloo. accelerate offers DeepSpeed only
    on accelerators, so on CPU (tests, laptops) the gloo backend is named explicitly and
    accelerate's ``cpu`` switch (which would turn DeepSpeed off) stays down.
    """
    from accelerate.utils import InitProcessGroupKwargs

    handlers: list = [ddp_kwargs()]
    cuda = torch.cuda.is_available()
    if deepspeed_requested():
        if not cuda:
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        return {"kwargs_handlers": handlers, "cpu": False}
    return {"kwargs_handlers": handlers, "cpu": launched > 1 and not cuda}


#: ZeRO stages ``byg train`` runs: 1 and 2 shard optimizer state (and gradients); stage 3
#: would shard the LoRA tensors too, which the EMA and the frozen-base view need whole
DEEPSPEED_STAGES = (1, 2)


def configure_deepspeed(
    accelerator: Accelerator, *, micro_batch: int, grad_accum: int, grad_clip: float
) -> int:
    """Fill the DeepSpeed config from the run config before ``accelerator.prepare``.

    ``byg train`` has no DataLoader for accelerate to read the batch size from, and the
    run config, not the accelerate file, owns batch, accumulation and clipping: they are
    written here so the two cannot disagree. Returns the ZeRO stage.

    Raises:
        ValueError: a ZeRO stage other than 1 or 2, or CPU offload of the optimizer
            (which would need DeepSpeed's compiled CPU Adam).
    """
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    zero = ds.setdefault("zero_optimization", {})
    stage = int(zero.get("stage", plugin.zero_stage or 0))
    if stage not in DEEPSPEED_STAGES:
        raise ValueError(
            f"DeepSpeed ZeRO stage {stage} is not supported by `byg train`; use zero_stage 2 "
            "(configs/accelerate/deepspeed_zero2.yaml), or FSDP for a base that does not fit "
            "one GPU (configs/accelerate/fsdp_flux.yaml): ZeRO-3 would shard the LoRA tensors, "
            "which the EMA and the frozen-base view need whole"
        )
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = float(grad_clip) if grad_clip > 0 else 0.0
    plugin.gradient_accumulation_steps = grad_accum
    return stage


#: keys of a ZeRO optimizer state dict that are Python objects, not data: dropped on save
#: so the file loads with ``torch.load(weights_only=True)`` (DeepSpeed keeps its defaults)
_ZERO_OBJECT_KEYS = ("loss_scaler", "param_slice_mappings")


def zero_state_dict(optimizer) -> dict:
    """This rank's ZeRO optimizer partition as plain data (tensors, numbers, strings)."""
    sd = optimizer.state_dict()
    out = {k: v for k, v in sd.items() if k not in _ZERO_OBJECT_KEYS}
    if "zero_stage" in out:
        out["zero_stage"] = int(out["zero_stage"])
    return out


def gather_zero_state(accelerator: Accelerator, optimizer) -> list[dict] | None:
    """Every rank's ZeRO optimizer partition, in rank order, on rank 0 (None elsewhere)."""
    from accelerate.utils import gather_object

    mine = zero_state_dict(optimizer)
    if accelerator.num_processes == 1:
        return [mine]
    parts = gather_object([mine])
    return parts if accelerator.is_main_process else None


def ddp_kwargs():
    """DDP options for LoRA training (passed to ``Accelerator(kwargs_handlers=...)``).

    ``find_unused_parameters=False`` (stated, though it is the default): every LoRA tensor
    is used by every step kind (identity-only and full), and the search would cost a graph
    walk per step.

    A full ByG step calls the trainable editor twice (forward edit + identity batched,
    then the reverse pass) before one backward. Each LoRA tensor's gradient is accumulated
    by autograd once per backward, so DDP's reducer marks it ready once; no static graph
    is needed, and identity-only steps (one call) mix freely with full steps.
    """
    from accelerate.utils import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(find_unused_parameters=False)


def reduce_sum(accelerator: Accelerator, values: Sequence[float]) -> list[float]:
    """Sum a short float vector over ranks (identity on one process)."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.reduce(t, reduction="sum").tolist()]


def all_reduce_grads(accelerator: Accelerator, params: Sequence[Tensor]) -> None:
    """Average ``.grad`` over ranks in one flat all-reduce (LoRA tensors outside FSDP)."""
    if accelerator.num_processes == 1:
        return
    for p in params:  # the same layout on every rank, even where a tensor got no gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= accelerator.num_processes
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def check_ranks_agree(accelerator: Accelerator, params: Sequence[Tensor], what: str) -> None:
    """Raise if ``params`` differ between ranks (a cheap checksum, gathered).

    Ranks start from the same seed and apply the same averaged gradients, so their LoRA
    and EMA tensors must stay bitwise equal; a mismatch means a bug or a faulty node, and
    a checkpoint from one rank would silently drop the others' state.
    """
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        s = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        for p in params:
            q = p.detach().double()
            s[0] += q.sum()
            s[1] += (q * q).sum()
    all_s = accelerator.gather(s[None]).cpu()  # (world, 2)
    if not torch.equal(all_s, all_s[:1].expand_as(all_s)):
        raise RuntimeError(f"{what} differ between ranks (checksums {all_s.tolist()})")


__all__ = [
    "LORA_MODULE_REGEX",
    "step_seed",
    "chunk_seed",
    "is_fsdp",
    "is_deepspeed",
    "deepspeed_requested",
    "accelerator_kwargs",
    "configure_deepspeed",
    "zero_state_dict",
    "gather_zero_state",
    "DEEPSPEED_STAGES",
    "ddp_kwargs",
    "reduce_sum",
    "all_reduce_grads",
    "check_ranks_agree",
]

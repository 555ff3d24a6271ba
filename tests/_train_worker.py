"""``byg`` CLI with the tiny test backbone registered, for subprocess and multi-process tests.

    python tests/_train_worker.py train --set model.backbone=tiny ...
    accelerate launch --cpu --num_processes 2 tests/_train_worker.py train ...

``install()`` registers ``TinyBackbone`` (from ``conftest``, with a process-independent text
hash) as backbone ``tiny`` and, when
``data.source`` is ``toy``, swaps the dataset for ``PairDataset`` (random tensors, fixed
captions): the same definitions serve the in-process reference runs of the tests.
"""

from __future__ import annotations

import os
import sys
import types
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import TinyBackbone  # noqa: E402

import byg.backbones.registry as registry  # noqa: E402
import byg.train as train_mod  # noqa: E402

MODULE = "byg_test_tiny"


class StableTinyBackbone(TinyBackbone):
    """``TinyBackbone`` with a text hash that is the same in every process.

    ``TinyBackbone.encode_text`` uses Python's ``hash``, which is salted per process
    (``PYTHONHASHSEED``): two ranks would embed the same caption differently.
    """

    def encode_text(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        toks = torch.zeros(len(prompts), 6, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = [zlib.crc32(w.encode()) % (self.vocab - 1) + 1 for w in p.split()][:6]
            toks[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {"tokens": toks}


class PairDataset:
    """40 random 6×6 tuples (sources and targets), deterministic per index."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {
            "x_src": torch.randn(3, 6, 6, generator=g),
            "x_tgt": torch.randn(3, 6, 6, generator=g),
            "c_src": "a red circle",
            "c_tgt": "a blue circle",
            "c_fwd": "make it blue",
            "c_rev": "make it red",
        }


_real_build_dataset = train_mod.build_dataset


def _build_dataset(cfg, split: str = "train", n: int | None = None):
    if cfg.data.source == "toy":
        return PairDataset()
    return _real_build_dataset(cfg, split, n)


def install(monkeypatch=None) -> None:
    """Register the tiny backbone and the toy-source stand-in.

    Args:
        monkeypatch: pytest's fixture, for in-process use (undone after the test);
            ``None`` patches for good (subprocesses).
    """
    mod = types.ModuleType(MODULE)
    mod.build = lambda options: StableTinyBackbone()
    if monkeypatch is None:
        sys.modules[MODULE] = mod
        registry.BACKBONES["tiny"] = MODULE
        train_mod.build_dataset = _build_dataset
        return
    monkeypatch.setitem(sys.modules, MODULE, mod)
    monkeypatch.setitem(registry.BACKBONES, "tiny", MODULE)
    monkeypatch.setattr(train_mod, "build_dataset", _build_dataset)


#: overrides shared by the tests: 8 steps of batch 2 on the tiny backbone, both step kinds
BASE_OVERRIDES = [
    "model.backbone=tiny",
    "train.steps=8",
    "train.batch_size=2",
    "train.num_threads=1",
    "byg.rollout_steps=2",
    "byg.warmup_steps=2",
    "byg.warmup_ratio=null",
    "byg.p_id=0.3",
    "train.save_every=2",
    "train.keep=0",
    "train.preview_every=0",
    "train.log_every=1",
    "lora.rank=2",
    "optim.lr_warmup_steps=2",  # the schedule must advance once per global step on any
    "optim.lr_schedule=cosine",  # number of processes: the weights' equality checks it
    "optim.lr_min_ratio=0.1",
]


def _fsdp_on_cpu() -> None:
    """Turn the gloo run into FSDP2 (accelerate offers FSDP on GPUs only; ``fully_shard``
    itself works on CPU): the sharding, ignored LoRA modules and gradient averaging are the
    real ones, only accelerate's device check is bypassed."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    def make(**kwargs):
        acc = Accelerator(**kwargs)
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="no_wrap", reshard_after_forward=True
        )
        acc.state.distributed_type = DistributedType.FSDP
        return acc

    train_mod.Accelerator = make


if __name__ == "__main__":
    install()
    if os.environ.get("BYG_TEST_FSDP_ON_CPU"):
        _fsdp_on_cpu()
    from byg.cli import main

    sys.exit(main(sys.argv[1:]))

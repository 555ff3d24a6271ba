"""Shared fixtures: a tiny real ``Backbone`` for testing the maths on CPU in milliseconds."""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from byg.backbones.base import Backbone, TextEmbeds


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"byg_benchmark_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: ``--set`` overrides of configs/toy_image.yaml for a tiny fresh toy editor trained two steps
TINY_TRAIN = {
    "model.options.dim": 32,
    "model.options.depth": 1,
    "model.options.heads": 2,
    "model.options.stem_channels": 8,
    "lora.rank": 2,
    "train.batch_size": 2,
    "train.steps": 2,
    "train.eval_every": 0,
    "train.num_threads": 1,
    "byg.rollout_steps": 2,
    "byg.warmup_steps": 1,
    "byg.warmup_ratio": "null",
    "sample.steps": 2,
}
#: the same editor on a tiny U-Net with the condition added at the stem (the demo's layout)
TINY_UNET_TRAIN = {
    **TINY_TRAIN,
    "model.options.arch": "unet",
    "model.options.pos_embed": "rope",
    "model.options.stem_levels": 2,
    "model.options.attn_from_level": 1,
    "model.options.cond_add": "true",
    "lora.rank_pattern": "{}",
}


class TinyBackbone(Backbone):
    """A minimal image velocity model: per-pixel MLP over (x, cond, time, text).

    Not a stand-in for any claimed model: it exists so that objective tests can count calls,
    follow gradients and check identities with exact arithmetic.
    """

    default_lora_targets = ("proj_in", "proj_cond", "proj_out")

    def __init__(self, channels: int = 3, hidden: int = 16, vocab: int = 32) -> None:
        super().__init__()
        self.vocab = vocab
        self.proj_in = nn.Linear(channels, hidden)
        self.proj_cond = nn.Linear(channels, hidden)
        self.proj_out = nn.Linear(hidden, channels)
        self.text = nn.Embedding(vocab, hidden)
        self.time = nn.Linear(1, hidden)
        self.calls = 0

    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        # crc32, not hash(): str hashes change per process (PYTHONHASHSEED), and a run whose
        # captions happened to collide made the base's caption shift zero (a flaky test)
        ids = [
            [zlib.crc32(w.encode()) % (self.vocab - 1) + 1 for w in p.split()][:6] for p in prompts
        ]
        toks = torch.zeros(len(prompts), 6, dtype=torch.long)
        for i, row in enumerate(ids):
            toks[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {"tokens": toks}

    def forward(self, x_t, t, text, cond=None):
        self.check_inputs(x_t, t, cond)
        self.calls += 1
        h = self.proj_in(x_t.movedim(1, -1))  # (B, H, W, hidden)
        if cond is not None:
            h = h + self.proj_cond(cond.movedim(1, -1))
        emb = self.text(text["tokens"]).mean(1) + self.time(t[:, None].to(x_t.dtype))  # (B, hidden)
        h = torch.tanh(h + emb[:, None, None, :])
        return self.proj_out(h).movedim(-1, 1)


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    torch.manual_seed(0)
    return TinyBackbone()

"""Supervised editing, the paper's Eq. 1 (METHOD.md §6), for when pairs exist.

``x_t = (1 − t) x_tgt + t ε``;  ``L = ‖G_θ(x_t, t, x_src, c_fwd) − (ε − x_tgt)‖²``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from byg.backbones.editor import Editor
from byg.flow import sample_path
from byg.objectives import losses
from byg.objectives.common import EditBatch, LossOutput, Timer, TimeSampling, no_timer, randn_like


@dataclass
class SupervisedConfig:
    time: TimeSampling = field(default_factory=TimeSampling)


class SupervisedObjective:
    def __init__(self, cfg: SupervisedConfig) -> None:
        self.cfg = cfg

    def __call__(
        self,
        editor: Editor,
        batch: EditBatch,
        step: int,
        generator: torch.Generator,
        rng: random.Random,
        timer: Timer = no_timer,
        model: torch.nn.Module | None = None,
    ) -> LossOutput:
        model = editor if model is None else model
        if batch.x_tgt is None:
            raise ValueError(
                "the supervised objective needs ground-truth targets (x_tgt) in the batch"
            )
        t = self.cfg.time.sample(batch.size, generator, batch.x_src.device)
        eps = randn_like(batch.x_tgt, generator)
        path = sample_path(batch.x_tgt, eps, t)
        with timer("forward_edit"):
            v = model(path.x_t, t, batch.text["fwd"], batch.x_src)
        loss = losses.mse(v, path.velocity).mean()
        return LossOutput(
            loss=loss, terms={"loss": loss.item(), "loss_sup": loss.item()}, kind="supervised"
        )

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


__all__ = ["SupervisedConfig", "SupervisedObjective"]

"""The editor ``G_θ``: a backbone plus LoRA, with the frozen base and the EMA inside it.

METHOD.md §2: one copy of backbone weights in memory.

* ``editor(x_t, t, text, cond)`` is ``G_θ`` (LoRA active, trainable).
* ``with editor.base():`` runs ``B``: the same module with adapters disabled. Callers pass
  ``cond=None`` for the text-to-image base.
* ``with editor.ema():`` runs ``G_ema``: the LoRA tensors are swapped for their moving
  average for the duration of the block (no second backbone, no second adapter). With
  ``decay = 0`` the EMA *is* the current weights, so no swap happens (the paper's video
  default: a stop-gradient copy).

LoRA is injected with peft (``inject_adapter_in_model``), so the adapter tensors follow
peft's naming and export to diffusers' LoRA format.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype
from torch import Tensor, nn

from byg.backbones.base import Backbone, TextEmbeds

ADAPTER = "default"


def requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class Editor(nn.Module):
    """``G_θ`` = backbone + LoRA (peft), with base and EMA views.

    Args:
        backbone: any ``Backbone``; its own weights are frozen here.
        rank, alpha: LoRA rank and scale numerator (scale = alpha / rank).
        targets: module names (exact suffixes) or a regex for LoRA; defaults to the
            backbone's ``default_lora_targets``.
        ema_decay: ``μ`` of METHOD.md §2 (0 = stop-gradient copy of current weights).
        init_lora: peft's ``init_lora_weights`` (True: B = 0, so G starts as B + cond).
        rank_pattern: per-target ranks (peft's ``rank_pattern``); with ``alpha=None`` each
            such target also keeps scale 1 (its alpha is its rank).
    """

    def __init__(
        self,
        backbone: Backbone,
        rank: int = 16,
        alpha: float | None = None,
        targets: Sequence[str] | str | None = None,
        ema_decay: float = 0.999,
        dropout: float = 0.0,
        init_lora: bool | str = True,
        rank_pattern: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        targets = targets if targets else list(backbone.default_lora_targets)
        if not targets:
            raise ValueError(f"{type(backbone).__name__} names no LoRA targets; pass targets=")
        requires_grad(backbone, False)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha if alpha is not None else rank,
            target_modules=targets if isinstance(targets, str) else list(targets),
            lora_dropout=dropout,
            init_lora_weights=init_lora,
            rank_pattern=dict(rank_pattern or {}),
            alpha_pattern=dict(rank_pattern or {}) if alpha is None else {},
        )
        self.lora_config = config
        self.backbone = inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
        # LoRA tensors stay float32 even on a bf16/fp16 base: AdamW on bf16 weights stalls
        cast_adapter_dtype(self.backbone, ADAPTER, autocast_adapter_dtype=True)
        self.ema_decay = ema_decay
        self.ema_active = False  # True inside ``with editor.ema()`` (for tests and logging)
        names = [n for n, p in self.backbone.named_parameters() if "lora_" in n]
        if not names:
            raise ValueError(
                f"LoRA targets {targets} matched no module of {type(backbone).__name__}"
            )
        for n, p in self.backbone.named_parameters():
            p.requires_grad_("lora_" in n)
        self._ema: dict[str, Tensor] = (
            {n: p.detach().clone() for n, p in self.lora_named_parameters()}
            if ema_decay > 0
            else {}
        )

    def _apply(self, fn, recurse=True):  # keep EMA tensors on the module's device/dtype
        super()._apply(fn, recurse)
        self._ema = {n: fn(t) for n, t in self._ema.items()}
        return self

    # ------------------------------------------------------------------ forward views
    def forward(
        self, x_t: Tensor, t: Tensor, text: TextEmbeds, cond: Tensor | None = None
    ) -> Tensor:
        return self.backbone(x_t, t, text, cond)

    @torch.no_grad()
    def ema_forward(
        self, x_t: Tensor, t: Tensor, text: TextEmbeds, cond: Tensor | None = None
    ) -> Tensor:
        """``G_ema``'s velocity without touching the trained tensors: the EMA weights enter
        through ``torch.func.functional_call``, so this is safe between a trainable forward
        pass and its backward (``ema()`` copies in place and is not). The current weights
        when the decay is 0."""
        if not self._ema:
            return self(x_t, t, text, cond)
        params = {f"backbone.{n}": v for n, v in self._ema.items()}
        return torch.func.functional_call(self, params, (x_t, t, text, cond))

    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        return self.backbone.encode_text(prompts)

    def _tuner_layers(self) -> Iterator[BaseTunerLayer]:
        for m in self.backbone.modules():
            if isinstance(m, BaseTunerLayer):
                yield m

    @contextmanager
    def base(self) -> Iterator[None]:
        """Run the frozen base ``B``: every LoRA layer bypassed for the block."""
        layers = list(self._tuner_layers())
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
            # peft's enable_adapters(True) re-marks the active adapter trainable; keep that
            for p in self.lora_parameters():
                p.requires_grad_(True)

    @contextmanager
    def ema(self) -> Iterator[None]:
        """Run ``G_ema``: LoRA tensors swapped for their EMA (no-op when decay is 0)."""
        self.ema_active = True
        if not self._ema:
            try:
                yield
            finally:
                self.ema_active = False
            return
        params = dict(self.lora_named_parameters())
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                p.copy_(self._ema[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])
            self.ema_active = False

    # ------------------------------------------------------------------ LoRA state
    def lora_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for n, p in self.backbone.named_parameters():
            if "lora_" in n:
                yield n, p

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.lora_named_parameters()]

    def lora_state_dict(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.lora_named_parameters()}

    def ema_state_dict(self) -> dict[str, Tensor]:
        return {n: t.clone() for n, t in self._ema.items()}

    @torch.no_grad()
    def load_lora_state_dict(
        self,
        state: dict[str, Tensor],
        ema: dict[str, Tensor] | None = None,
        *,
        new_ok: tuple[str, ...] = (),
    ) -> None:
        """Load LoRA (and optionally EMA) tensors; refuses mismatched names or shapes.

        ``new_ok``: module names whose adapters may be missing from ``state`` (a module the
        saved editor did not have, e.g. an ``edit_gate`` added to a trained editor); they
        keep their initialisation (LoRA B at zero: no change until trained).
        """
        params = dict(self.lora_named_parameters())
        fresh = {n for n in set(params) - set(state) if any(f"{m}.lora_" in n for m in new_ok)}
        state = {**state, **{n: params[n].detach().clone() for n in fresh}}
        if ema is not None:
            ema = {**ema, **{n: state[n] for n in fresh}}
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise ValueError(
                f"LoRA state does not match this editor: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
            )
        for n, p in params.items():
            if state[n].shape != p.shape:
                raise ValueError(
                    f"LoRA tensor {n} has shape {tuple(state[n].shape)}, editor expects {tuple(p.shape)} "
                    "(different rank or backbone?)"
                )
            p.copy_(state[n])
        if ema is not None and self._ema:
            for n in params:
                self._ema[n].copy_(ema[n])
        elif self._ema:
            for n, p in params.items():
                self._ema[n].copy_(p)

    @torch.no_grad()
    def update_ema(self) -> None:
        """``θ_ema <- μ θ_ema + (1 - μ) θ`` on the LoRA tensors only."""
        if not self._ema:
            return
        for n, p in self.lora_named_parameters():
            self._ema[n].lerp_(p.detach(), 1.0 - self.ema_decay)

    def num_lora_parameters(self) -> int:
        return sum(p.numel() for p in self.lora_parameters())


__all__ = ["Editor", "requires_grad", "ADAPTER"]

"""ByG: one training step of "Bootstrap Your Generator" (METHOD.md §4, the paper's Algorithm 1).

Read top to bottom, ``ByGObjective.full_step`` is Algorithm 1:

1. draw ``t ~ p(t)``, ``ε``;
2. bootstrap (no grad): ``G_ema`` integrates from ``ε`` at ``t = 1`` with ``k`` Euler steps
   down to ``t`` (giving ``x_t``) and continues to 0 (giving ``x_clean``): ONE trajectory;
3. forward edit ``v_f = G_θ(x_t, t, x_src, c_fwd)``;
4. prior: the frozen base's caption-induced shift ``Δ = B(x_t, t, c_tgt) − B(x_t, t, c_src)``
   gives direction (cosine) and a magnitude anchor (MSE to ``u_tgt``);
5. cycle: the reverse pass is conditioned on ``x̃`` whose value is the clean rollout and
   whose gradient flows through the one-step edit ``x̂_edit = x_t − t v_f``;
6. identity: the source with the reverse instruction must reproduce the source;
7. weighted sum.

Choices METHOD.md leaves open, each a config field:

* ``direction_reference``: ``"base"`` uses ``u_src`` (METHOD.md default B); ``"editor"``
  uses ``sg(G_θ(x_t, t, x_src, c_rev))`` (option C), one more no-grad editor call per
  direction; ``"editor_ema"`` is option C from the EMA weights; ``"source_path"`` (not in
  the paper) reads the base as FlowEdit does, ``Δ = B(x_t, t, c_tgt) − B(s_t, t, c_src)`` with
  ``s_t`` the source noised by the rollout's own ``ε``, against the source path's exact
  velocity ``ε − x_src`` (no editor call). Under the delta form its target is
  ``x̂_0 = x_src + x̂_0^B(x_t, c_tgt) − x̂_0^B(s_t, c_src)``: what the base cannot see of the
  source cancels between the two paths.
* ``bootstrap_state``: the forward edit at the rollout's state (``"trajectory"``, as written)
  or at ``(1 − t)·x_clean + t·ε`` (``"renoised"``, not in the paper: the straight path to the
  rollout's clean edit on its own ``ε``, FlowEdit's coupling with ``s_t``).
* ``editor_reference_t_min``: with option C, samples at or below this ``t`` use ``u_src``
  instead (option C's reference answers the source, and at small ``t`` the base's shift
  vanishes on any ``x_t``, so there the delta form asks for the source even where ``x_t``
  already shows the edit). With ``source_path`` the same: at small ``t`` its target
  ``x_src + x̂_0^B(x_t) − x̂_0^B(s_t)`` is close to ``x_clean`` whatever the rollout drew (a
  ghost of the old object included), and the base's own denoising there is not.
  ``editor_reference_t_max`` is the same above: samples past it use ``u_src`` (under
  ``source_path``, the anchor to ``x̂_0^B(x_t, c_tgt)`` where the source path's target is a
  half-made edit, the source plus the base's blurred difference).
* ``prior_read_t_max`` (``source_path`` with ``renoised``, not in the paper): samples above
  it take the base's readings at this lower time on the same straight paths, turned back
  into velocities at their own ``(x_t, t)``; the target ``x_src + x̂_0^B − x̂_0^B`` is then
  the rollout's edit corrected where the base reads sharply, not the source plus the base's
  blurred large-``t`` difference (a half-made edit, item 27 of docs/demo_findings.md).
* ``prior_weighting``: ``"velocity"`` (as written) or ``"x0"``, each sample's prior times
  ``t²``: the squared terms (anchor, delta form) become the same terms on ``x̂_0``, so the
  few smallest ``t``, where the base's ``x̂_0`` is least precise, no longer carry most of the
  prior's gradient (the scale-free cosine is only reweighted).
* ``identity_in_full_steps``: ``L_id`` enters every step (METHOD.md as written) when True;
  identity-only steps always use ``L_id`` alone, unweighted.
* The warm-up ends at ``warmup_steps`` only once the copy path works: the running
  identity loss must fall below ``warmup_ratio`` × the base's own denoising loss at the
  same ``(x_src, t, ε)`` (caption ``c_src``, no condition image). ``warmup_max_steps``
  caps the wait (a warning is logged when it is hit).
* ``rollout_clean_steps``: Euler steps from ``t`` to 0 for ``x_clean`` (default = ``k``).
* ``mse_reduction``: ``"mean"`` reads ``‖·‖²`` as a per-element mean, ``"sum"`` as the squared
  norm over all ``D`` latent elements. The cosine term's gradient does not shrink with ``D``,
  so under ``"mean"`` it dominates the anchor, cycle and identity terms by about ``D`` (on
  the toy world the first full step's gradient was ~150× an identity step's, and the copy
  path learned in the warm-up was lost within 100 steps). Logged terms stay means.
* The reverse prior uses the time ``t'`` and noise ``ε'`` of the cycle's noised source.

Cost option (changes the method, measured by ``byg bench quality`` / ``speed``):

* ``rollout_reuse`` = R > 1, amortised bootstrapping: a full step that computes a rollout
  keeps it, with its batch, ``t`` and ``ε``, and the next R − 1 full steps train on that
  same ``(x_src, c, x_t, x_clean)`` (fresh ``t'``, ``ε'`` for the cycle) instead of their
  own batch, skipping the rollout. Kept per ``slot`` (the micro-step of gradient
  accumulation; ranks keep their own). Not saved in checkpoints: a resumed run starts a
  new group, so resume is exact only with R = 1.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
from torch import Tensor

from byg.backbones.base import cat_text
from byg.backbones.editor import Editor
from byg.flow import interpolate, predict_x0, schedule, truncated_schedule, velocity_target
from byg.objectives import losses
from byg.objectives.common import EditBatch, LossOutput, Timer, TimeSampling, no_timer, randn_like
from byg.sampling import euler_sample

REFERENCES = ("base", "editor", "editor_ema", "source_path")


@dataclass
class ByGConfig:
    """Weights, schedule and ablation switches of METHOD.md §4 (defaults from the paper)."""

    # bootstrap rollout
    rollout_steps: int = 10  # k: Euler steps from t = 1 down to t
    rollout_clean_steps: int | None = None  # steps from t to 0 (None: same as k)
    rollout_shift: float = 1.0
    # amortised bootstrapping: one rollout (with its batch, t and ε) serves R consecutive full
    # steps; the cycle's t', ε' are fresh every step. 1 = METHOD.md as written
    rollout_reuse: int = 1
    # loss weights
    alpha: float = 0.1
    lambda_prior: float = 1.0
    lambda_cyc: float = 1.0
    lambda_id: float = 0.2
    prior_reverse: bool = True
    # "base" (u_src), "editor" (option C: sg of the current editor under the other text),
    # "editor_ema" (option C from G_ema's weights: a reference that lags the weights being
    # trained, as a target network does, instead of moving with every update) or
    # "source_path" (FlowEdit's coupling, not in the paper: u_src from the base at the noised
    # source s_t = (1 − t)·x_src + t·ε on the rollout's own ε, the reference the source
    # path's exact velocity ε − x_src; in reverse the same with the edit x_clean noised by ε')
    direction_reference: str = "base"
    # where the forward edit is trained: "trajectory" (x_t is the rollout's state at t, METHOD.md)
    # or "renoised" (x_t = (1 − t)·x_clean + t·ε: the rollout's clean edit noised again by the
    # rollout's own ε, the straight path to x_clean; with source_path the base then reads the
    # edit's and the source's paths at FlowEdit's coupling, x_t − s_t = (1 − t)(x_clean − x_src);
    # not in the paper)
    bootstrap_state: str = "trajectory"
    # "editor", "editor_ema" or "source_path" only for samples with t (t') above this; at or
    # below it the reference is the base's u_src (with the delta form: the anchor to u_tgt, the
    # base's own denoising of x_t, which keeps an edit the rollout has made instead of pulling
    # back to the source, and, under source_path, cleans up what the rollout left half-drawn,
    # where the source path's reference makes any x_clean its own small-t target)
    editor_reference_t_min: float = 0.0
    # ... and only for samples at or below this one: above it the reference is u_src too
    # (under source_path with the delta form: the anchor to the base's own reading of x_t
    # under c_tgt, in place of the source plus a blurred difference, a half-made edit at
    # large t; docs/demo_findings.md item 27)
    editor_reference_t_max: float = 1.0
    # under source_path with bootstrap_state renoised: the base's four readings are taken at
    # min(t, this) on the same two straight paths (x_clean's and x_src's, same noise), and
    # their clean predictions are turned back into velocities at the sample's own (state, t).
    # Above it the forward target is x_src + x̂_0^B(x_clean's path) − x̂_0^B(x_src's path)
    # read at this less noisy time: the edit placed where the rollout put it and sharper
    # than the base's reading at large t, whose blurred difference leaves the old object's
    # outline in the target (docs/demo_findings.md item 28; not in the paper). 1 = off
    prior_read_t_max: float = 1.0
    # the directional term: "cosine" (METHOD.md: 1 − cos(v − ref, Δ)) or "delta"
    # (‖(v − ref) − Δ‖², the shift with its size; with ref = u_src it equals the anchor)
    direction_form: str = "cosine"
    direction_scale: float = 1.0  # "delta" only: the target shift is this × Δ (like guidance)
    # the prior (forward at t, reverse at t') counts only for samples at or below this time;
    # above it cycle and identity alone shape the editor (FlowEdit edits only below n_max)
    prior_t_max: float = 1.0
    # "velocity": the prior as METHOD.md writes it, on velocities; "x0": each sample's prior
    # times t² (t'² in reverse): the squared terms on the one-step clean predictions
    # x̂_0 = x_t − t·v (the cosine is only reweighted). A velocity error at small t is the
    # x̂_0 error over t, so the velocity form weighs small t by 1/t², where the base's x̂_0
    # is least precise
    prior_weighting: str = "velocity"
    identity_in_full_steps: bool = True
    # "mean": ‖·‖² is the per-element mean; "sum": the squared norm over all D latent
    # elements (METHOD.md §4 literally). The directional term's gradient is O(1/‖v − ref‖)
    # whatever D is, so with "mean" it outweighs cycle and identity by about D.
    mse_reduction: str = "mean"
    # schedule of identity-only steps
    warmup_steps: int = 200
    warmup_ratio: float | None = 0.5  # None: the warm-up is a step count only
    warmup_max_steps: int = 2000
    p_id: float = 0.15
    time: TimeSampling = field(default_factory=TimeSampling)
    # ablations: each changes exactly one thing
    no_gradient_routing: bool = False
    # the cycle's condition is x_clean with no gradient at all (not in the paper): the cycle
    # then trains only the reverse edit, and the forward edit is shaped by the prior and the
    # identity alone; it asks whether the routed gradient teaches the forward edit to leave
    # traces of the source that make the way back easier (ghosts)
    cycle_detach: bool = False
    no_cycle: bool = False
    no_directional: bool = False
    no_regularization: bool = False
    no_bootstrap: bool = False
    no_identity_steps: bool = False
    no_ema: bool = False  # read by the trainer: the editor's EMA decay becomes 0

    def __post_init__(self) -> None:
        if self.rollout_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1, got {self.rollout_steps}")
        if self.cycle_detach and self.no_gradient_routing:
            raise ValueError(
                "cycle_detach and no_gradient_routing both set the cycle's condition; pick one"
            )
        if self.rollout_reuse < 1:
            raise ValueError(f"rollout_reuse must be >= 1, got {self.rollout_reuse}")
        if self.rollout_clean_steps is not None and self.rollout_clean_steps < 1:
            raise ValueError(f"rollout_clean_steps must be >= 1, got {self.rollout_clean_steps}")
        if not 0.0 <= self.p_id <= 1.0:
            raise ValueError(f"p_id must be in [0, 1], got {self.p_id}")
        if self.mse_reduction not in ("mean", "sum"):
            raise ValueError(f"mse_reduction must be 'mean' or 'sum', got {self.mse_reduction!r}")
        if self.direction_form not in ("cosine", "delta"):
            raise ValueError(
                f"direction_form must be 'cosine' or 'delta', got {self.direction_form!r}"
            )
        if self.prior_weighting not in ("velocity", "x0"):
            raise ValueError(
                f"prior_weighting must be 'velocity' or 'x0', got {self.prior_weighting!r}"
            )
        if not 0.0 < self.prior_t_max <= 1.0:
            raise ValueError(f"prior_t_max must be in (0, 1], got {self.prior_t_max}")
        if self.direction_scale <= 0:
            raise ValueError(f"direction_scale must be > 0, got {self.direction_scale}")
        if self.direction_scale != 1.0 and self.direction_form != "delta":
            raise ValueError(
                "direction_scale sizes the delta form's shift; the cosine form ignores it "
                f"(got direction_scale={self.direction_scale} with direction_form="
                f"{self.direction_form!r})"
            )
        if self.bootstrap_state not in ("trajectory", "renoised"):
            raise ValueError(
                f"bootstrap_state must be 'trajectory' or 'renoised', got {self.bootstrap_state!r}"
            )
        if self.direction_reference not in REFERENCES:
            raise ValueError(
                f"direction_reference must be one of {', '.join(map(repr, REFERENCES))}, got "
                f"{self.direction_reference!r}"
            )
        if not 0.0 <= self.editor_reference_t_min < 1.0:
            raise ValueError(
                f"editor_reference_t_min must be in [0, 1), got {self.editor_reference_t_min}"
            )
        if not self.editor_reference_t_min < self.editor_reference_t_max <= 1.0:
            raise ValueError(
                "editor_reference_t_max must be in (editor_reference_t_min, 1], got "
                f"{self.editor_reference_t_max} (editor_reference_t_min "
                f"{self.editor_reference_t_min})"
            )
        if not 0.0 < self.prior_read_t_max <= 1.0:
            raise ValueError(f"prior_read_t_max must be in (0, 1], got {self.prior_read_t_max}")
        if self.prior_read_t_max < 1.0 and (
            self.direction_reference != "source_path"
            or self.bootstrap_state != "renoised"
            or self.no_bootstrap
        ):
            raise ValueError(
                "prior_read_t_max reads the base lower on the straight paths of x_clean and "
                "x_src; it needs direction_reference: source_path and bootstrap_state: "
                f"renoised without no_bootstrap (got {self.direction_reference!r}, "
                f"{self.bootstrap_state!r}, no_bootstrap={self.no_bootstrap})"
            )
        banded = self.editor_reference_t_min > 0 or self.editor_reference_t_max < 1.0
        if banded and self.direction_reference == "base":
            raise ValueError(
                "editor_reference_t_min / _t_max choose where the editor's or the source "
                "path's reference applies; they need direction_reference: editor, editor_ema "
                f"or source_path (got {self.direction_reference!r})"
            )
        for name in ("alpha", "lambda_prior", "lambda_cyc", "lambda_id"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.warmup_max_steps < self.warmup_steps:
            raise ValueError(
                f"need 0 <= warmup_steps <= warmup_max_steps, got {self.warmup_steps}, "
                f"{self.warmup_max_steps}"
            )

    # the effective values after ablation switches --------------------------------
    @property
    def eff_alpha(self) -> float:
        return 0.0 if self.no_regularization else self.alpha

    @property
    def eff_lambda_cyc(self) -> float:
        return 0.0 if self.no_cycle else self.lambda_cyc

    @property
    def eff_p_id(self) -> float:
        return 0.0 if self.no_identity_steps else self.p_id

    @property
    def eff_warmup_steps(self) -> int:
        return 0 if self.no_identity_steps else self.warmup_steps

    @property
    def editor_reference(self) -> bool:
        """Option C of METHOD.md §4, from the current or the EMA weights."""
        return self.direction_reference in ("editor", "editor_ema")

    @property
    def clean_steps(self) -> int:
        return self.rollout_clean_steps or self.rollout_steps


class ByGObjective:
    """Stateful only in its warm-up bookkeeping (saved in checkpoints via ``state_dict``)."""

    def __init__(self, cfg: ByGConfig) -> None:
        self.cfg = cfg
        self.warmup_done = cfg.eff_warmup_steps == 0
        self.id_loss_avg: float | None = None
        self.base_loss_avg: float | None = None
        self.slot = 0  # which kept rollout a full step may reuse (set per micro-step)
        self._kept: dict[int, dict] = {}  # slot -> rollout kept for reuse (rollout_reuse > 1)
        self.rollouts = 0  # rollouts computed (for tests and benchmarks)

    # ------------------------------------------------------------------ schedule
    def is_identity_step(self, step: int, rng: random.Random) -> bool:
        """Identity-only during warm-up, then with probability ``p_id`` (METHOD.md §4.8)."""
        if not self.warmup_done:
            return True
        return rng.random() < self.cfg.eff_p_id

    def _update_warmup(self, step: int, id_loss: float, base_loss: float) -> None:
        beta = 0.9
        self.id_loss_avg = (
            id_loss if self.id_loss_avg is None else beta * self.id_loss_avg + (1 - beta) * id_loss
        )
        self.base_loss_avg = (
            base_loss
            if self.base_loss_avg is None
            else beta * self.base_loss_avg + (1 - beta) * base_loss
        )
        if step + 1 < self.cfg.eff_warmup_steps:
            return
        ratio_ok = self.cfg.warmup_ratio is None or (
            self.id_loss_avg < self.cfg.warmup_ratio * self.base_loss_avg
        )
        if ratio_ok or step + 1 >= self.cfg.warmup_max_steps:
            self.warmup_done = True

    def state_dict(self) -> dict:
        return {
            "warmup_done": self.warmup_done,
            "id_loss_avg": self.id_loss_avg,
            "base_loss_avg": self.base_loss_avg,
        }

    def load_state_dict(self, state: dict) -> None:
        self.warmup_done = bool(state["warmup_done"])
        self.id_loss_avg = state["id_loss_avg"]
        self.base_loss_avg = state["base_loss_avg"]

    # ------------------------------------------------------------------ entry point
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
        """One step's loss. ``model`` is the (possibly DDP-wrapped) editor for grad passes."""
        model = editor if model is None else model
        if self.is_identity_step(step, rng):
            return self.identity_step(editor, batch, step, generator, timer, model)
        return self.full_step(editor, batch, generator, timer, model)

    # ------------------------------------------------------------------ identity-only
    def identity_step(
        self, editor, batch, step, generator, timer=no_timer, model=None
    ) -> LossOutput:
        """``L_id`` alone; no rollout. During warm-up also measures the base's loss."""
        model = editor if model is None else model
        x_src = batch.x_src
        t = self.cfg.time.sample(batch.size, generator, x_src.device)
        eps = randn_like(x_src, generator)
        s_t = interpolate(x_src, eps, t)
        target = velocity_target(x_src, eps)
        with timer("identity"):
            v_id = model(s_t, t, batch.text["rev"], x_src)
            l_id = losses.mse(v_id, target).mean()
        terms = {"loss_id": l_id.item()}  # logged as the per-element mean in both readings
        if not self.warmup_done:
            with timer("base_queries"), torch.no_grad(), editor.base():
                l_base = losses.mse(editor(s_t, t, batch.text["src"], None), target).mean()
            terms["loss_base_uncond"] = l_base.item()
            self._update_warmup(step, terms["loss_id"], terms["loss_base_uncond"])
            terms["warmup"] = 0.0 if self.warmup_done else 1.0
        return LossOutput(loss=l_id * self.sq_scale(x_src), terms=terms, kind="identity")

    def sq_scale(self, x: Tensor) -> float:
        """Factor turning a per-element mean into ``‖·‖²`` (1 under ``mse_reduction='mean'``)."""
        return float(x[0].numel()) if self.cfg.mse_reduction == "sum" else 1.0

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(
        self, editor: Editor, batch: EditBatch, t: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``G_ema`` from ``ε`` at 1 down to ``t`` (→ ``x_t``), then on to 0 (→ ``x_clean``).

        One trajectory; ``rollout_steps + clean_steps`` EMA calls in total.
        """
        cfg = self.cfg
        text, x_src = batch.text["fwd"], batch.x_src

        def velocity(x: Tensor, tt: Tensor) -> Tensor:
            return editor(x, tt, text, x_src)

        with editor.ema():
            grid_hi = truncated_schedule(cfg.rollout_steps, t, shift=cfg.rollout_shift)  # [B, k+1]
            x_t = euler_sample(velocity, eps, grid_hi)
            grid_lo = (
                t[:, None] * schedule(cfg.clean_steps, shift=cfg.rollout_shift).to(t.device)[None]
            )
            x_clean = euler_sample(velocity, x_t, grid_lo)
        return x_t, x_clean

    def _reference(self, ref_editor: Tensor, u_src: Tensor, t: Tensor) -> Tensor:
        """Option C's (or source_path's) reference for ``t`` in ``(editor_reference_t_min,
        editor_reference_t_max]``, ``u_src`` outside."""
        t_min, t_max = self.cfg.editor_reference_t_min, self.cfg.editor_reference_t_max
        if t_min <= 0 and t_max >= 1:
            return ref_editor
        inside = ((t > t_min) & (t <= t_max)).view(-1, *([1] * (ref_editor.ndim - 1)))
        return torch.where(inside, ref_editor, u_src)

    def _velocity_from_reading(
        self, x: Tensor, t: Tensor, x_read: Tensor, t_read: Tensor, u_read: Tensor
    ) -> Tensor:
        """The base's reading ``u_read`` at ``(x_read, t_read)``, a lower point of ``x``'s
        straight path, as the velocity at ``(x, t)`` that predicts the same clean image:
        ``(x − x̂_0)/t`` with ``x̂_0 = x_read − t_read·u_read``; ``u_read`` itself where
        ``t_read = t`` (``prior_read_t_max``)."""
        x0 = predict_x0(x_read.float(), t_read, u_read)
        moved = (t > t_read).view(-1, *([1] * (x.ndim - 1)))
        tb = t.float().clamp(min=1e-12).view(-1, *([1] * (x.ndim - 1)))
        return torch.where(moved, (x.float() - x0) / tb, u_read)

    def prior_loss(
        self,
        v: Tensor,
        u_src: Tensor,
        u_tgt: Tensor,
        reference: Tensor | None,
        x: Tensor,
        t: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``losses.prior`` under this config (α, form, scale, ``no_directional``; ``x`` sets
        the ``sum`` scale), per sample: ``total`` times ``_prior_weight(t)`` (``prior_t_max``,
        ``prior_weighting``), ``l_dir`` and ``l_mse`` unweighted (as logged)."""
        cfg = self.cfg
        total, l_dir, l_mse = losses.prior(
            v,
            u_src,
            u_tgt,
            alpha=cfg.eff_alpha,
            use_directional=not cfg.no_directional,
            reference=reference,
            mse_scale=self.sq_scale(x),
            form=cfg.direction_form,
            delta_scale=cfg.direction_scale,
        )
        return total * self._prior_weight(t), l_dir, l_mse

    def _prior_weight(self, t: Tensor) -> Tensor:
        """Per-sample factor on the prior: 0 above ``prior_t_max``; ``t²`` under
        ``prior_weighting: x0`` (the squared terms on ``x̂_0 = x_t − t·v``); else 1."""
        w = (t <= self.cfg.prior_t_max).float()
        return w * t.float() ** 2 if self.cfg.prior_weighting == "x0" else w

    # ------------------------------------------------------------------ Algorithm 1
    def full_step(self, editor, batch, generator, timer=no_timer, model=None) -> LossOutput:
        cfg = self.cfg
        model = editor if model is None else model
        x_src, text = batch.x_src, batch.text
        n = batch.size

        # 1. times and noise
        t = cfg.time.sample(n, generator, x_src.device)
        eps = randn_like(x_src, generator)
        t_r = cfg.time.sample(n, generator, x_src.device)  # t' of the cycle
        eps_r = randn_like(x_src, generator)

        # 2. bootstrap: one trajectory gives x_t and x_clean (or a kept one, R > 1)
        kept = self._kept.get(self.slot)
        if kept is not None and kept["uses"] < cfg.rollout_reuse:
            kept["uses"] += 1
            batch, t, eps, x_t, x_clean = (kept[k] for k in ("batch", "t", "eps", "x_t", "x_clean"))
            x_src, text = batch.x_src, batch.text
        else:
            with timer("rollout"):
                x_t, x_clean = self.rollout(editor, batch, t, eps)
            self.rollouts += 1
            if cfg.rollout_reuse > 1:
                self._kept[self.slot] = dict(
                    batch=batch, t=t, eps=eps, x_t=x_t, x_clean=x_clean, uses=1
                )
        s_tr = interpolate(x_src, eps_r, t_r)  # noised source for the reverse pass
        s_t = interpolate(x_src, eps, t)  # noised source on the rollout's ε (identity pass)
        if cfg.no_bootstrap:  # the ablation overrides bootstrap_state
            x_t = s_t
        elif cfg.bootstrap_state == "renoised":
            x_t = interpolate(x_clean, eps, t)

        # where the base reads the "source" caption: at x_t (s_t') as METHOD.md writes it, or
        # under source_path on the source's own path s_t (on the edit's path in reverse)
        source_path = cfg.direction_reference == "source_path"
        x_src_state = s_t if source_path else x_t
        x_src_state_r = interpolate(x_clean, eps_r, t_r) if source_path else s_tr

        # 4 (inputs). frozen base, all four queries in one batched call:
        #   [x_t | c_tgt], [x_t | c_src], [s_t' | c_src], [s_t' | c_tgt]
        #   (source_path: [x_t | c_tgt], [s_t | c_src], [s_t' | c_src], [x̃_t' | c_tgt])
        states = [x_t, x_src_state, s_tr, x_src_state_r]
        times = [t, t, t_r, t_r]
        texts = [text["tgt"], text["src"], text["src"], text["tgt"]]
        m = 4 if cfg.prior_reverse else 2
        read_states, read_times = states, times
        if cfg.prior_read_t_max < 1.0:  # the same paths, read at min(t, prior_read_t_max)
            ends = [(x_clean, eps), (x_src, eps), (x_src, eps_r), (x_clean, eps_r)][:m]
            read_times = [tt.clamp(max=cfg.prior_read_t_max) for tt in times[:m]]
            read_states = [interpolate(e, z, tt) for (e, z), tt in zip(ends, read_times)]
        with timer("base_queries"), torch.no_grad(), editor.base():
            u = editor(
                torch.cat(read_states[:m]), torch.cat(read_times[:m]), cat_text(*texts[:m]), None
            ).float()
        u = list(u.chunk(m))
        if cfg.prior_read_t_max < 1.0:
            u = [
                self._velocity_from_reading(*args)
                for args in zip(states, times, read_states, read_times, u)
            ]
        u_tgt, u_src, u_tgt_r, u_src_r = u if m == 4 else (*u, None, None)

        # 3 + 6. forward edit and identity pass share one trainable call
        with timer("forward_edit"):
            v = model(
                torch.cat([x_t, s_t]),
                torch.cat([t, t]),
                cat_text(text["fwd"], text["rev"]),
                torch.cat([x_src, x_src]),
            )
            v_f, v_id = v.chunk(2)

        ref_f = ref_r = None
        if source_path:  # the exact velocities of the source's path and (reverse) the edit's
            ref_f = self._reference(velocity_target(x_src, eps).float(), u_src, t)
            ref_r = (
                self._reference(velocity_target(x_clean, eps_r).float(), u_src_r, t_r)
                if cfg.prior_reverse
                else None
            )
        reference_model = editor.ema_forward if cfg.direction_reference == "editor_ema" else editor
        if cfg.editor_reference:
            with timer("reference"), torch.no_grad():
                ref_f = reference_model(x_t, t, text["rev"], x_src).float()
                ref_f = self._reference(ref_f, u_src, t)

        # 4. prior, forward
        prior_f, dir_f, mse_f = self.prior_loss(v_f, u_src, u_tgt, ref_f, x_src, t)

        # 5. cycle with gradient routing
        with timer("reverse"):
            x_hat = predict_x0(x_t, t, v_f)
            if cfg.cycle_detach:
                x_cond = x_clean.detach()
            else:
                x_cond = losses.route_gradient(x_hat, x_clean, enabled=not cfg.no_gradient_routing)
            v_r = model(s_tr, t_r, text["rev"], x_cond)
            l_cyc = losses.mse(v_r, velocity_target(x_src, eps_r))
            if cfg.prior_reverse:
                if cfg.editor_reference:
                    with torch.no_grad():
                        ref_r = reference_model(s_tr, t_r, text["fwd"], x_cond.detach()).float()
                        ref_r = self._reference(ref_r, u_src_r, t_r)
                prior_r, dir_r, mse_r = self.prior_loss(v_r, u_src_r, u_tgt_r, ref_r, x_src, t_r)
            else:
                prior_r = dir_r = mse_r = torch.zeros_like(l_cyc)

        # 6. identity
        l_id = losses.mse(v_id, velocity_target(x_src, eps))
        w_id = cfg.lambda_id if cfg.identity_in_full_steps else 0.0

        # 7. total: per-sample, then batch mean
        k = self.sq_scale(x_src)
        total = cfg.lambda_prior * (prior_f + prior_r) + k * (
            cfg.eff_lambda_cyc * l_cyc + w_id * l_id
        )
        loss = total.mean()
        terms = {
            "loss": loss.item(),
            "prior_fwd": prior_f.mean().item(),
            "prior_rev": prior_r.mean().item(),
            "dir_fwd": dir_f.mean().item(),
            "mse_fwd": mse_f.mean().item(),
            "dir_rev": dir_r.mean().item(),
            "mse_rev": mse_r.mean().item(),
            "loss_cyc": l_cyc.mean().item(),
            "loss_id": l_id.mean().item(),
        }
        if not math.isfinite(terms["loss"]):
            terms["nonfinite"] = 1.0
        return LossOutput(loss=loss, terms=terms, kind="full")


__all__ = ["ByGConfig", "ByGObjective"]

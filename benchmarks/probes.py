"""Diagnostic probes behind the README's findings on the toy world (not part of CI).

    python benchmarks/probes.py prior [--run RUN]         # the base's instruction signal Δ
    python benchmarks/probes.py grads  --run runs/demo/identity_only [--byg FIELD=VALUE ...]
    python benchmarks/probes.py rollout --run runs/bench_quality/byg__seed0__<fp>
    python benchmarks/probes.py samples --png base_samples.png [--base DIR]
    python benchmarks/probes.py words [--base DIR]         # does the base listen to each word?
    python benchmarks/probes.py trajectory [--base DIR] --png trajectory.png
    python benchmarks/probes.py denoise [--base DIR]       # does the base keep what x_t shows?
    python benchmarks/probes.py editor --run RUN           # is the editor better than the base?
    python benchmarks/probes.py prompts [--base DIR]       # does the base read instructions?
    python benchmarks/probes.py texture [--base DIR]       # where does the base miss texture?
    python benchmarks/probes.py follow --run RUN           # does the editor keep what x_t shows?
    python benchmarks/probes.py handoff --run RUN          # editor above t, base below: edits?
    python benchmarks/probes.py score --run RUN --n 200    # a checkpoint on held-out edits
    python benchmarks/probes.py edits --run RUN --edit-type size --png size.png   # look at them
    python benchmarks/probes.py routing [--run RUN]        # which way do prior and cycle push?
    python benchmarks/probes.py gate --run RUN             # where is an edit_gate editor's gate open?

* ``prior``: for held-out seen edits, the frozen base's caption-induced shift
  ``Δ = B(x_t, c_tgt) − B(x_t, c_src)`` at the noised source ``x_t = (1 − t) x_src + t ε``:
  the share of ``‖Δ‖²`` inside the pixels the true edit changes, that region's share of the
  image, and ``cos(Δ, −(x_tgt − x_src))`` (the velocity change of the true edit), per edit
  type and ``t``. High share and cosine = the base knows what this edit changes. With
  ``--run``, at that run's bootstrap states ``x_t`` (its EMA rollout) instead.
* ``grads``: gradient norm on the LoRA weights of each ByG term alone (directional, anchor,
  cycle, identity) for one batch of 16 training tuples, with a run's weights and config
  (``--byg FIELD=VALUE``, repeatable, changes that config's ``byg`` fields first).
* ``samples``: the base's own samples (no guidance at 20 and 100 Euler steps, CFG 2.0 at
  30) for the source captions of 8 held-out colour edits, beside the true renders, as a
  PNG grid (``--png``, default ``base_samples.png``).
* ``words``: for 64 held-out scenes and each attribute, the scene with that attribute set to
  another value, both captioned with the same phrasing, and the true renders of both noised
  with the same ``ε`` (the original's ``x_t``): the base's one-step prediction
  ``x̂_0 = x_t − t·B(x_t, t, c)`` under the two captions, and the ratio
  ``‖x̂_0(c') − x̂_0(c)‖ / ‖render(s') − render(s)‖``: 1 = the word moves the prediction
  as much as it changes the image, 0 = the base ignores the word. Per attribute and ``t``.
* ``trajectory``: the one-step prediction ``x̂_0 = x − t·v`` every 3rd step of a 30-step
  CFG-2.0 Euler sampling from pure noise, for three captions that differ in the shape word
  only (a PNG grid, one row per caption): where along ``t`` the layout is decided.
* ``denoise``: for ``--n`` held-out scenes, the true render noised to ``t`` (0.5, 0.7, 0.9) and
  denoised by the base with its own caption (Euler, 30 steps over ``[t, 0]``, no guidance):
  the oracle's accuracy per attribute on the result. Where the noised render still shows an
  attribute clearly, a base that has learnt the world keeps it; one that has not redraws it
  from the noise.
* ``editor``: for ``--n`` held-out seen edits, the velocity loss of a run's editor
  ``G(x_t, t, x_src, c_fwd)`` on the TRUE target's path ``x_t = (1 − t) x_tgt + t ε`` beside
  the frozen base's ``B(x_t, t, c_tgt)`` on the same ``x_t`` (the caption of the target, no
  source), per band of ``t``, with the run's trained (not EMA) LoRA weights. The editor sees
  the source and the instruction, so a working one is below the base in every band. Then
  its edits (``sample.steps`` Euler steps, EMA weights, as in the training evaluation): edit
  success, preservation, and how many outputs read each attribute other than the edited
  one differently from the source, or moved the object.
* ``prompts``: for ``--n`` training tuples, the base's velocity loss on the TRUE target's path
  under four prompts: the target's caption, the source's caption, the forward instruction
  (what an editor with its LoRA at zero is given) and the empty prompt, per ``t``; then the
  base's instruction following (``byg.pretrain.instruction_accuracy``: samples from
  instruction prompts, the named attribute read by the oracle; ``--samples``, CFG 2.0). A base
  that has never seen the instruction words does worse under the instruction than with no
  prompt at all.
* ``texture``: the caption-following evaluation of ``byg pretrain-base`` (256 held-out
  captions, the oracle on the samples), split for texture by the scene's texture, style and
  size, with the confusion of true against read texture; then texture accuracy again with
  other sampling settings (60 steps; CFG 4.0; no guidance) to tell the sampler from the model.
* ``follow``: for ``--n`` held-out seen edits, the one-step clean prediction
  ``x̂_0 = x_t − t·v`` of the editor ``G(x_t, t, x_src, c_fwd)`` and of the base
  ``B(x_t, t, c_tgt)``, from ``x_t`` on the TRUE target's path and on the source's path (same
  ``ε``), as the median of ``‖x̂_0 − x_tgt‖² / ‖x_src − x_tgt‖²``: 0 = the prediction is the
  edit, 1 = it is the source. On the target's path a model that keeps what ``x_t`` shows is
  near 0 at small ``t``; on the source's path one that edits moves away from 1.
* ``handoff``: the run's editor samples (20 Euler steps, trained weights, as the training
  evaluation) from ``t = 1`` down to ``τ``, then the frozen base under ``c_tgt`` finishes from
  ``τ`` to 0; beside it SDEdit from the same ``τ`` (the noised source instead of the editor's
  state) and the editor alone: edit success / preservation per ``τ``. Where handing off
  raises edit success above the editor alone, the editor's last steps undo edits its first
  steps (or the base) would make.
* ``score``: a checkpoint's editor (trained weights, ``--ema``: its EMA weights;
  ``sample.steps`` Euler steps at ``sample.shift``, the training evaluation and the demo's,
  or ``--sample-steps`` / ``--shift``) on ``--n`` held-out
  seen and ``--n`` unseen edits (the
  demo's evaluation set, ``byg.toy_eval.eval_dataset``): edit success, preservation, both,
  PSNR, and per edit type on the seen split with what broke preservation there (which
  other attributes read differently, the object moved, its silhouette changed).
* ``edits``: the first 16 held-out seen edits of ``--edit-type`` in ``score``'s set (of its
  first ``--n``), as a PNG grid (``--png``): source | the checkpoint's edit | ground truth,
  one row per edit, with each row's forward text and whether the oracle read success and
  preservation.
* ``editpath``: the same 16 edits sampled as ``score`` samples them, with the editor's
  one-step prediction ``x̂_0 = x − t·v`` every 4th Euler step beside the source, the edit and
  the ground truth (a PNG grid, ``--png``): at which ``t`` the edit's layout is decided.
* ``target``: what the ``source_path`` prior asks for. For ``--n`` held-out seen edits, its
  clean target ``x_src + x̂_0^B(x_t, c_tgt) − x̂_0^B(s_t, c_src)`` with ``x_t`` on the TRUE
  edit's path and ``s_t`` on the source's (the same ``ε``), at ``t`` = 0.9 ... 0.1, read by
  the oracle as if it were an edit (edit success / preservation, all edits and
  ``--edit-type``), with the base's one-step ``x̂_0`` and with ``--base-steps`` Euler steps of
  the base from ``t``; a PNG of six of them (``--png``).
* ``rollout``: how far the bootstrap rollout's ``x_t`` sits from the source's noising path,
  relative to the true edit's path, and ``‖x_clean − x_src‖ / ‖x_tgt − x_src‖``.
* ``routing``: for ``--n`` held-out seen edits at the run's own bootstrap states (its EMA
  rollout to ``t``), the per-sample gradients of the forward prior (weighted as in training)
  and of the cycle (reaching ``v_f`` through the straight-through routing) on the forward
  velocity ``v_f``; gradient descent moves ``x̂_edit = x_t − t·v_f`` along ``+∂L/∂v_f``, so
  its cosine with the true edit ``x_tgt − x_src`` says whether a term pushes toward the edit
  or back to the source. Last, the editor's instruction response at the same ``x_t``,
  ``G(c_fwd) − G(c_rev)``, against the base's caption shift ``Δ``: its size ratio and cosine.
  ``--byg FIELD=VALUE`` as for ``grads``; without ``--run``, the demo config's untrained
  editor (its LoRA at zero) on the shipped base.
* ``gate``: for a run whose editor has the toy backbone's ``edit_gate`` (output
  ``x̂_0 = y + g·(x̂_0,net − y)``), the gate ``g`` at the run's bootstrap states ``x_t``
  under the forward instruction, averaged inside and outside the pixels the true edit
  changes, per ``t``; then, for one batch of ``--n`` of those edits through the training
  step, the summed gradient of each ByG term alone on the gate's logits of the forward
  edit, inside and outside the edit (negative: gradient descent opens the gate there).

Each prints a Markdown table; ``--out FILE`` appends it there as well.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from byg.config import ConfigError, apply_overrides, from_dict, to_dict
from byg.data.toy import ToyEditDataset, ToyWorldConfig
from byg.flow import sample_path
from byg.infer import build_editor, load_editor
from byg.objectives import losses
from byg.objectives.byg import ByGConfig, ByGObjective
from byg.run_config import load_run_config
from byg.toy_eval import eval_dataset
from byg.train import build_dataset, collate_batch


def _editor(run: str | None):
    """``(cfg, editor)``: a run's trained editor, or the demo config's untrained one."""
    if run is None:
        cfg = load_run_config("configs/toy_image.yaml")
        return cfg, build_editor(cfg)
    editor, cfg = load_editor(run)
    return cfg, editor


@torch.no_grad()
def probe_prior(args) -> list[str]:
    cfg, ed = _editor(args.run)
    ed.eval()
    ds = eval_dataset(ToyWorldConfig(resolution=cfg.data.resolution), "seen", args.n, seed=777)
    items = [ds[i] for i in range(len(ds))]
    types = [ds.example(i).edit_type for i in range(len(ds))]
    x_src = torch.stack([it["x_src"] for it in items])
    x_tgt = torch.stack([it["x_tgt"] for it in items])
    region = ((x_tgt - x_src).abs().amax(1, keepdim=True) > 0.05).float().expand_as(x_src)
    eps = torch.randn(x_src.shape, generator=torch.Generator().manual_seed(0))
    t_src = ed.encode_text([it["c_src"] for it in items])
    t_tgt = ed.encode_text([it["c_tgt"] for it in items])
    rows = collections.defaultdict(list)
    if args.run:
        batch = collate_batch(items, ed, torch.device("cpu"))
    for t in (0.3, 0.6, 0.9):
        tt = torch.full((len(items),), t)
        if args.run:  # the run's own bootstrap states
            x_t, _ = ByGObjective(cfg.byg).rollout(ed, batch, tt, eps)
        else:
            x_t = (1 - t) * x_src + t * eps
        with ed.base():
            d = ed(x_t, tt, t_tgt, None) - ed(x_t, tt, t_src, None)
        share = (d**2 * region).flatten(1).sum(1) / (d**2).flatten(1).sum(1)
        cos = F.cosine_similarity(d.flatten(1), -(x_tgt - x_src).flatten(1), dim=1)
        area = region.flatten(1).mean(1)
        for i, ty in enumerate(types):
            rows[ty].append((t, share[i].item(), area[i].item(), cos[i].item()))
    at = f"the bootstrap states x_t of `{args.run}`" if args.run else "the noised source"
    out = [
        f"Base's caption-induced shift Δ at {at} ({args.n} held-out seen edits; "
        "share of ‖Δ‖² in the edited pixels at t = 0.3 / 0.6 / 0.9):",
        "",
        "| edit type | n | edited pixels | share of ‖Δ‖² there | cos(Δ, true change) |",
        "|---|---|---|---|---|",
    ]
    for ty in sorted(rows):
        r = rows[ty]

        def col(j, r=r):
            return " / ".join(
                f"{statistics.fmean(x[j] for x in r if x[0] == t):.2f}" for t in (0.3, 0.6, 0.9)
            )

        n = len(r) // 3
        area = statistics.fmean(x[2] for x in r)
        out.append(f"| {ty} | {n} | {area:.2f} | {col(1)} | {col(3)} |")
    return out


def _byg_config(args, cfg) -> ByGConfig:
    """The run's ``byg`` section with ``--byg FIELD=VALUE`` applied (parsed and checked as
    ``byg train --set byg.FIELD=VALUE`` is)."""
    if not args.byg:
        return cfg.byg
    try:
        return from_dict(ByGConfig, apply_overrides(to_dict(cfg.byg), args.byg))
    except ConfigError as e:
        raise SystemExit(f"--byg wants FIELD=VALUE with a ByGConfig field: {e}") from e


def _changed(args, byg: ByGConfig) -> dict:
    return {k: getattr(byg, k) for k in (item.split("=", 1)[0] for item in args.byg or [])}


def probe_grads(args) -> list[str]:
    cfg, ed = _editor(args.run)
    ds = build_dataset(cfg)
    params = ed.lora_parameters()
    batch = collate_batch([ds[i] for i in range(16)], ed, torch.device("cpu"))
    variants = {
        "directional": dict(alpha=0.0, lambda_cyc=0.0, lambda_id=0.0),
        "anchor (α·MSE)": dict(no_directional=True, lambda_cyc=0.0, lambda_id=0.0),
        "cycle": dict(lambda_prior=0.0, lambda_id=0.0),
        "identity (λ_id)": dict(lambda_prior=0.0, lambda_cyc=0.0),
        "all": dict(),
    }
    out = [
        f"Gradient norm on the LoRA weights, one batch of 16, weights of `{args.run}`, "
        f"mse_reduction `{cfg.byg.mse_reduction}`, reference `{cfg.byg.direction_reference}`:",
        "",
        "| term | loss | gradient norm |",
        "|---|---|---|",
    ]
    byg = _byg_config(args, cfg)
    if args.byg:
        out[0] = out[0][:-1] + f", with {_changed(args, byg)}:"
    for name, v in variants.items():
        c = dataclasses.replace(byg, identity_in_full_steps=True, **v)
        for p in params:
            p.grad = None
        res = ByGObjective(c).full_step(ed, batch, torch.Generator().manual_seed(0))
        res.loss.backward()
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None))
        out.append(f"| {name} | {res.loss.item():.3f} | {norm.item():.3f} |")
    return out


@torch.no_grad()
def probe_rollout(args) -> list[str]:
    cfg, ed = _editor(args.run)
    ed.eval()
    ds = eval_dataset(ToyWorldConfig(resolution=cfg.data.resolution), "seen", args.n, seed=555)
    b = collate_batch([ds[i] for i in range(len(ds))], ed, torch.device("cpu"))
    obj, g = ByGObjective(cfg.byg), torch.Generator().manual_seed(0)

    def norm(x):
        return x.flatten(1).norm(dim=1)

    out = [
        f"Bootstrap rollout of `{args.run}` ({args.n} held-out seen edits; medians):",
        "",
        "| t | ‖x_t(rollout) − x_t(source path)‖ / ‖x_t(true edit) − x_t(source path)‖ "
        "| ‖x_clean − x_src‖ / ‖x_tgt − x_src‖ |",
        "|---|---|---|",
    ]
    for t in (0.3, 0.6, 0.9):
        tt = torch.full((b.size,), t)
        eps = torch.randn(b.x_src.shape, generator=g)
        x_t, x_clean = obj.rollout(ed, b, tt, eps)
        src = (1 - t) * b.x_src + t * eps
        tgt = (1 - t) * b.x_tgt + t * eps
        r1 = (norm(x_t - src) / norm(tgt - src)).median().item()
        r2 = (norm(x_clean - b.x_src) / norm(b.x_tgt - b.x_src)).median().item()
        out.append(f"| {t} | {r1:.2f} | {r2:.2f} |")
    return out


def _base(args):
    """The toy base of ``--base`` (default: the shipped one), in eval mode."""
    from byg.backbones.toy import SHIPPED_BASE, load_toy_backbone

    return load_toy_backbone(args.base or SHIPPED_BASE).eval()


def _save_grid(rows: torch.Tensor, png: Path) -> None:
    """``rows [R, C, 3, H, W]`` in ``[-1, 1]`` as an R x C image grid, 4x nearest upscaled."""
    from byg.infer import tensor_to_image

    n, c, ch, h, w = rows.shape
    grid = tensor_to_image(rows.permute(2, 0, 3, 1, 4).reshape(ch, n * h, c * w))
    grid.resize((c * w * 4, n * h * 4), 0).save(png)


@torch.no_grad()
def probe_samples(args) -> list[str]:
    from byg.pretrain import generate

    base = _base(args)
    ds = eval_dataset(ToyWorldConfig(resolution=base.config.image_size), "seen", 200, seed=777)
    idx = [i for i in range(len(ds)) if ds.example(i).edit_type == "colour"][:8]
    caps = [ds[i]["c_src"] for i in idx]
    settings = ((1.0, 20), (1.0, 100), (2.0, 30))  # (CFG scale, Euler steps)
    cols = [generate(base, caps, steps=n, cfg_scale=g, seed=0) for g, n in settings]
    cols.append(torch.stack([ds[i]["x_src"] for i in idx]).clamp(-1, 1))
    _save_grid(torch.stack(cols, 1), args.png)  # (captions, columns, 3, H, W)
    return [
        f"Wrote `{args.png}`: the base's samples for {len(caps)} captions, columns "
        "no guidance / 20 steps, no guidance / 100 steps, CFG 2.0 / 30 steps, true render.",
    ]


@torch.no_grad()
def probe_trajectory(args) -> list[str]:
    from byg.guidance import cfg_velocity

    base = _base(args)
    shapes = ("circle", "cross", "square")
    caps = [f"a large solid red {s} on blue in filled style" for s in shapes]
    v = cfg_velocity(base, base.encode_text(caps), base.encode_text([""] * len(caps)), 2.0)
    size = base.config.image_size
    x = torch.randn(len(caps), 3, size, size, generator=torch.Generator().manual_seed(0))
    ts, snaps = torch.linspace(1, 0, 31), []
    for i in range(30):
        t = float(ts[i])
        vel = v(x, torch.full((len(caps),), t))
        if i % 3 == 0:
            snaps.append((x - t * vel).clamp(-1, 1))
        x = x + (ts[i + 1] - t) * vel
    snaps.append(x.clamp(-1, 1))
    _save_grid(torch.stack(snaps, 1), args.png)  # (captions, snapshots, 3, H, W)
    return [
        f"Wrote `{args.png}`: x̂_0 at t = 1.0, 0.9, ..., 0.1 and the final sample (columns) "
        f"for {', '.join(repr(c) for c in caps)} (rows)."
    ]


@torch.no_grad()
def probe_words(args) -> list[str]:
    import numpy as np

    from byg.data import toy

    base = _base(args)
    world = ToyWorldConfig(resolution=base.config.image_size)
    rng = np.random.default_rng(777)
    scenes = [toy.sample_scene(rng, world) for _ in range(64)]
    values = {
        "shape": toy.SHAPES,
        "colour": toy.COLOURS,
        "size": toy.SIZES,
        "texture": toy.TEXTURES,
        "background": toy.BACKGROUNDS,
    }
    ts = (0.9, 0.6, 0.3)
    out = [
        f"Base `{args.base or 'shipped'}`: how far swapping one caption word moves the base's "
        f"one-step prediction, relative to the true change of the render (64 scenes).",
        "",
        "| attribute | " + " | ".join(f"t = {t}" for t in ts) + " |",
        "|---|" + "---|" * len(ts),
    ]
    for attr, vals in values.items():
        src, alt = [], []
        for sc in scenes:
            others = [v for v in vals if v != getattr(sc, attr)]
            try:  # the world's own checks (object colour != background, ...) apply
                new = dataclasses.replace(sc, **{attr: others[int(rng.integers(len(others)))]})
            except ValueError:
                continue
            src.append(sc)
            alt.append(new)
        x0 = torch.stack([toy.to_tensor(toy.render(sc, world)) for sc in src])
        x1 = torch.stack([toy.to_tensor(toy.render(sc, world)) for sc in alt])
        phrasing = np.random.default_rng(1)
        caps = []
        for a, b in zip(src, alt):
            state = phrasing.bit_generator.state  # same phrasing for both captions
            ca = toy.caption(a, phrasing)
            phrasing.bit_generator.state = state
            caps.append((ca, toy.caption(b, phrasing)))
        c_a = base.encode_text([c for c, _ in caps])
        c_b = base.encode_text([c for _, c in caps])
        true = (x1 - x0).flatten(1).norm(dim=1)
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        row = []
        for t in ts:
            x_t = (1 - t) * x0 + t * eps
            tt = torch.full((len(src),), t)
            pa = x_t - t * base(x_t, tt, c_a)
            pb = x_t - t * base(x_t, tt, c_b)
            ratio = (pb - pa).flatten(1).norm(dim=1) / true.clamp_min(1e-6)
            row.append(f"{ratio.median().item():.2f}")
        out.append(f"| {attr} | " + " | ".join(row) + " |")
    out.append("")
    out.append("(median over scenes of ‖x̂_0(c') − x̂_0(c)‖ / ‖render(s') − render(s)‖)")
    return out


@torch.no_grad()
def probe_denoise(args) -> list[str]:
    import numpy as np

    from byg.data import toy
    from byg.eval.toy_oracle import ToyOracle
    from byg.pretrain import ATTRIBUTES
    from byg.sampling import sample

    base = _base(args)
    world = ToyWorldConfig(resolution=base.config.image_size)
    rng = np.random.default_rng(778)
    scenes = [toy.sample_scene(rng, world) for _ in range(args.n)]
    caps = base.encode_text([toy.caption(sc, rng) for sc in scenes])
    x0 = torch.stack([toy.to_tensor(toy.render(sc, world)) for sc in scenes])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    oracle, truth = ToyOracle.load(), [sc.attributes() for sc in scenes]
    ts = (0.5, 0.7, 0.9)
    out = [
        f"Base `{args.base or 'shipped'}`: oracle accuracy after denoising the true render "
        f"from t ({args.n} scenes, own caption, 30 Euler steps, no guidance).",
        "",
        "| t | " + " | ".join(ATTRIBUTES) + " |",
        "|---|" + "---|" * len(ATTRIBUTES),
    ]
    for t in ts:
        x = sample(lambda x, tt: base(x, tt, caps), (1 - t) * x0 + t * eps, 30, t_start=t)
        reads = oracle.read(x.clamp(-1, 1))
        acc = [np.mean([r[a] == s[a] for r, s in zip(reads, truth)]) for a in ATTRIBUTES]
        out.append(f"| {t} | " + " | ".join(f"{v:.2f}" for v in acc) + " |")
    return out


@torch.no_grad()
def probe_editor(args) -> list[str]:
    from byg.eval.toy_metrics import CATEGORICAL, evaluate_edits
    from byg.eval.toy_oracle import ToyOracle
    from byg.toy_eval import editor_fn, run_method

    cfg, ed = _editor(args.run)
    ed.eval()
    world = ToyWorldConfig(resolution=cfg.data.resolution)
    ds = eval_dataset(world, "seen", args.n)
    b = collate_batch([ds[i] for i in range(len(ds))], ed, torch.device("cpu"))
    x_src, x_tgt, c_fwd, c_tgt = b.x_src, b.x_tgt, b.text["fwd"], b.text["tgt"]
    g = torch.Generator().manual_seed(0)
    out = [
        f"Editor `{args.run}` ({args.n} held-out seen edits): velocity loss (per-element mean) "
        "on the true target's path.",
        "",
        "| t | editor G(x_t, x_src, c_fwd) | base B(x_t, c_tgt) |",
        "|---|---|---|",
    ]
    for lo in (0.0, 0.2, 0.4, 0.6, 0.8):
        t = lo + 0.2 * torch.rand(b.size, generator=g)
        path = sample_path(x_tgt, torch.randn(x_tgt.shape, generator=g), t)
        le = F.mse_loss(ed(path.x_t, t, c_fwd, x_src), path.velocity).item()
        with ed.base():
            lb = F.mse_loss(ed(path.x_t, t, c_tgt, None), path.velocity).item()
        out.append(f"| {lo:.1f}-{lo + 0.2:.1f} | {le:.4f} | {lb:.4f} |")
    outs, _ = run_method(editor_fn(ed, steps=cfg.sample.steps, use_ema=True), ds)
    examples = [ds.example(i) for i in range(len(ds))]
    res = evaluate_edits(outs, examples, ToyOracle.load(), world)
    changed = collections.Counter(a for r in res["per_example"] for a in r["changed"])
    moved = sum(r["centroid_err_px"] > 2.0 for r in res["per_example"])
    ov = res["overall"]
    out += [
        "",
        f"Its {cfg.sample.steps}-step edits: edit success {ov['edit_success']:.2f}, "
        f"preservation {ov['preservation']:.2f}, PSNR {ov['psnr']:.1f} dB; outputs (of {args.n}) "
        "reading another attribute differently from the source, and with the object moved:",
        "",
        "| " + " | ".join(CATEGORICAL) + " | moved |",
        "|" + "---|" * (len(CATEGORICAL) + 1),
        "| " + " | ".join(str(changed.get(a, 0)) for a in CATEGORICAL) + f" | {moved} |",
    ]
    return out


@torch.no_grad()
def probe_prompts(args) -> list[str]:
    from byg.pretrain import EvalConfig, instruction_accuracy

    base = _base(args)
    n = args.n
    ds = ToyEditDataset(ToyWorldConfig(resolution=base.config.image_size), n, seed=5)
    items = [ds[i] for i in range(n)]
    x_tgt = torch.stack([it["x_tgt"] for it in items])
    prompts = {
        "target caption": [it["c_tgt"] for it in items],
        "source caption": [it["c_src"] for it in items],
        "instruction": [it["c_fwd"] for it in items],
        "empty": [""] * n,
    }
    texts = {k: base.encode_text(v) for k, v in prompts.items()}
    eps = torch.randn(x_tgt.shape, generator=torch.Generator().manual_seed(0))
    out = [
        f"Base `{args.base or 'shipped'}`: velocity loss (per-element mean) on the true target's "
        f"path of {n} training tuples, by prompt.",
        "",
        "| t | " + " | ".join(prompts) + " |",
        "|" + "---|" * (len(prompts) + 1),
    ]
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        tt = torch.full((n,), t)
        path = sample_path(x_tgt, eps, tt)
        losses = [((base(path.x_t, tt, texts[k]) - path.velocity) ** 2).mean() for k in prompts]
        out.append(f"| {t} | " + " | ".join(f"{v.item():.4f}" for v in losses) + " |")
    res = instruction_accuracy(base, ds.cfg, EvalConfig(num_samples=args.samples), progress=False)
    kinds = sorted(res["accuracy"])
    out += [
        "",
        f"Instruction following ({res['n']} samples from instruction prompts, CFG 2.0, 30 "
        "steps; the named attribute read by the oracle):",
        "",
        "| " + " | ".join(kinds) + " | mean |",
        "|" + "---|" * (len(kinds) + 1),
        "| " + " | ".join(f"{res['accuracy'][k]:.2f}" for k in kinds) + f" | {res['mean']:.3f} |",
    ]
    return out


def probe_texture(args) -> list[str]:
    from byg.eval.toy_oracle import ToyOracle
    from byg.pretrain import EvalConfig, eval_scenes, sample_prompts

    base = _base(args)
    world = ToyWorldConfig(resolution=base.config.image_size)
    ecfg = EvalConfig()  # configs/toy_base.yaml's evaluation: 256 samples, 30 steps, CFG 2.0
    scenes, prompts = eval_scenes(world, ecfg.num_samples, ecfg.seed)
    attrs = [sc.attributes() for sc in scenes]
    oracle = ToyOracle.load()

    def reads(**kw) -> list[dict]:
        e = dataclasses.replace(ecfg, **kw)
        with torch.no_grad():
            return oracle.read(sample_prompts(base, prompts, e, e.seed, "texture", False))

    def acc(rows: list[dict]) -> float:
        return statistics.mean(r["texture"] == a["texture"] for r, a in zip(rows, attrs))

    rows = reads()
    out = [
        f"Base `{args.base or 'shipped'}`: texture read by the oracle on {len(rows)} caption "
        f"samples ({ecfg.sample_steps} Euler steps, CFG {ecfg.cfg_scale}): {acc(rows):.3f}.",
        "",
        "| split by | value: accuracy (n) |",
        "|---|---|",
    ]
    for key in ("texture", "style", "size"):
        groups: dict[str, list[bool]] = collections.defaultdict(list)
        for r, a in zip(rows, attrs):
            groups[a[key]].append(r["texture"] == a["texture"])
        cells = ", ".join(
            f"{k}: {statistics.mean(v):.2f} ({len(v)})" for k, v in sorted(groups.items())
        )
        out.append(f"| {key} | {cells} |")
    conf = collections.Counter((a["texture"], r["texture"]) for r, a in zip(rows, attrs))
    out.append(
        "| true → read | "
        + ", ".join(f"{t} → {r}: {n}" for (t, r), n in sorted(conf.items()))
        + " |"
    )
    out += ["", "| sampling | texture accuracy |", "|---|---|"]
    out.append(f"| {ecfg.sample_steps} steps, CFG {ecfg.cfg_scale} | {acc(rows):.3f} |")
    for label, kw in (
        ("60 steps, CFG 2.0", {"sample_steps": 60}),
        ("30 steps, CFG 4.0", {"cfg_scale": 4.0}),
        ("30 steps, no guidance", {"cfg_scale": 1.0}),
    ):
        out.append(f"| {label} | {acc(reads(**kw)):.3f} |")
    return out


def _editor_and_edits(args):
    """``(cfg, editor in eval mode, --n held-out seen edits)`` for the editor probes."""
    cfg, ed = _editor(args.run)
    ed.eval()
    world = ToyWorldConfig(resolution=cfg.data.resolution, **cfg.data.toy)
    return cfg, ed, eval_dataset(world, "seen", args.n)


@torch.no_grad()
def probe_follow(args) -> list[str]:
    cfg, ed, ds = _editor_and_edits(args)
    b = collate_batch([ds[i] for i in range(len(ds))], ed, torch.device("cpu"))
    eps = torch.randn(b.x_src.shape, generator=torch.Generator().manual_seed(0))
    den = (b.x_src - b.x_tgt).flatten(1).pow(2).sum(1)
    out = [
        f"Editor `{args.run}` ({args.n} held-out seen edits): median "
        "‖x̂_0 − x_tgt‖² / ‖x_src − x_tgt‖² of the one-step prediction (0 = the edit, "
        "1 = the source).",
        "",
        "| t | editor, target's path | base, target's path | editor, source's path "
        "| base, source's path |",
        "|---|---|---|---|---|",
    ]
    for t in (0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        tt = torch.full((b.size,), t)
        cells = []
        for start in (b.x_tgt, b.x_src):
            x_t = (1 - t) * start + t * eps
            v_ed = ed(x_t, tt, b.text["fwd"], b.x_src)
            with ed.base():
                v_base = ed(x_t, tt, b.text["tgt"], None)
            for v in (v_ed, v_base):
                r = (x_t - t * v - b.x_tgt).flatten(1).pow(2).sum(1) / den
                cells.append(f"{r.median().item():.2f}")
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return out


@torch.no_grad()
def probe_handoff(args) -> list[str]:
    from byg.baselines.sdedit import SDEditConfig
    from byg.baselines.sdedit import sdedit as run_sdedit
    from byg.eval.toy_oracle import ToyOracle
    from byg.flow import schedule
    from byg.sampling import euler_sample
    from byg.toy_eval import evaluate

    cfg, ed, ds = _editor_and_edits(args)
    oracle = ToyOracle.load()
    grid = schedule(cfg.sample.steps)

    def method(tau: float, sdedit: bool = False):
        def fn(x_src, items):
            fwd = ed.encode_text([it["c_fwd"] for it in items])
            tgt = ed.encode_text([it["c_tgt"] for it in items])
            gen = torch.Generator().manual_seed(0)

            def base_tgt(z, t):
                with ed.base():
                    return ed(z, t, tgt, None)

            if sdedit:  # the library's SDEdit, on the same grid below τ
                return run_sdedit(
                    base_tgt, x_src, SDEditConfig(strength=tau, steps=cfg.sample.steps), gen
                )
            cut = torch.tensor([tau], dtype=grid.dtype)  # τ itself ends one part, starts the other
            hi = torch.cat([grid[grid > tau + 1e-6], cut])
            lo = torch.cat([cut, grid[grid < tau - 1e-6]])
            x = euler_sample(
                lambda z, t: ed(z, t, fwd, x_src), torch.randn(x_src.shape, generator=gen), hi
            )
            return euler_sample(base_tgt, x, lo) if len(lo) > 1 else x

        return fn

    def cell(fn) -> str:
        m = evaluate(fn, ds, oracle)["overall"]
        return f"{m['edit_success']:.3f} / {m['preservation']:.3f} ({m['psnr']:.1f} dB)"

    out = [
        f"Editor `{args.run}` ({args.n} held-out seen edits, {cfg.sample.steps} Euler steps): "
        "edit success / preservation (PSNR to the true target).",
        "",
        f"Editor alone: {cell(method(0.0))}",
        "",
        "| τ | editor down to τ, then the base under c_tgt | SDEdit from τ |",
        "|---|---|---|",
    ]
    for tau in (0.5, 0.3, 0.15):
        out.append(f"| {tau} | {cell(method(tau))} | {cell(method(tau, sdedit=True))} |")
    return out


@torch.no_grad()
def probe_score(args) -> list[str]:
    from byg.eval.toy_metrics import CENTROID_TOL_PX, IOU_THRESHOLD, preservation_breaks
    from byg.eval.toy_oracle import ToyOracle
    from byg.toy_eval import editor_fn, evaluate

    cfg, ed = _editor(args.run)
    world = ToyWorldConfig(resolution=cfg.data.resolution, **cfg.data.toy)
    steps = args.sample_steps or cfg.sample.steps
    shift = cfg.sample.shift if args.shift is None else args.shift
    oracle = ToyOracle.load()
    fn = editor_fn(
        ed,
        steps=steps,
        shift=shift,
        use_ema=args.ema,
        guidance_scale=args.guidance_scale,
        negative=args.negative,
    )
    guided = (
        f", text guidance {args.guidance_scale:g} from {args.negative or 'the empty text'}"
        if args.guidance_scale != 1.0
        else ""
    )
    out = [
        f"Editor `{args.run}`{' (EMA weights)' if args.ema else ''} ({args.n} held-out edits "
        f"per split, {steps} Euler steps, shift {shift:g}{guided}"
        "): edit success / preservation [success∧preservation], PSNR to the true target; "
        "per seen type, what broke preservation: outputs reading another attribute "
        f"differently from the source, the object moved more than {CENTROID_TOL_PX} px, its "
        f"silhouette's IoU with the source's under {IOU_THRESHOLD}.",
        "",
        "| split or seen type | edit success / preservation [both] | PSNR (dB) | what else changed |",
        "|---|---|---|---|",
    ]

    def row(name: str, m: dict, records: list[dict] | None = None) -> str:
        cell = ""
        if records is not None:
            broke = preservation_breaks(records)
            cell = ", ".join(f"{k} {v}" for k, v in broke.most_common()) or "none"
            cell += f" (of {len(records)})"
        return (
            f"| {name} | {m['edit_success']:.3f} / {m['preservation']:.3f} "
            f"[{m['success_and_preservation']:.3f}] | {m['psnr']:.1f} | {cell} |"
        )

    for split in ("seen", "unseen"):
        m = evaluate(fn, eval_dataset(world, split, args.n), oracle)
        out.append(row(split, m["overall"]))
        if split == "seen":
            for k, v in sorted(m["by_type"].items()):
                records = [r for r in m["per_example"] if r["edit_type"] == k]
                out.append(row(f"seen {k}", v, records))
    return out


@torch.no_grad()
def probe_edits(args) -> list[str]:
    from byg.eval.toy_metrics import evaluate_edits
    from byg.eval.toy_oracle import ToyOracle
    from byg.toy_eval import editor_fn

    cfg, ed = _editor(args.run)
    world = ToyWorldConfig(resolution=cfg.data.resolution, **cfg.data.toy)
    ds = eval_dataset(world, "seen", args.n)
    idx = _typed_edits(args, ds)
    items = [ds[i] for i in idx]
    x_src = torch.stack([it["x_src"] for it in items])
    out = editor_fn(ed, steps=cfg.sample.steps, shift=cfg.sample.shift)(x_src, items).clamp(-1, 1)
    x_tgt = torch.stack([it["x_tgt"] for it in items]).clamp(-1, 1)
    _save_grid(torch.stack([x_src.clamp(-1, 1), out, x_tgt], 1), args.png)
    recs = evaluate_edits(out, [ds.example(i) for i in idx], ToyOracle.load())["per_example"]
    lines = [
        f"Wrote `{args.png}`: {len(idx)} held-out seen {args.edit_type} edits of `{args.run}` "
        "(columns: source | edit | ground truth).",
        "",
        "| row | forward text | success | preservation |",
        "|---|---|---|---|",
    ]
    for k, (it, r) in enumerate(zip(items, recs)):
        lines.append(f"| {k} | {it['c_fwd']} | {r['edit_success']:g} | {r['preservation']:g} |")
    return lines


def _typed_edits(args, ds, k: int = 16) -> list[int]:
    """Indices of the first ``k`` edits of ``--edit-type`` in ``ds`` (an error if none)."""
    idx = [i for i in range(len(ds)) if ds.example(i).edit_type == args.edit_type][:k]
    if not idx:
        raise SystemExit(f"no {args.edit_type!r} edits among the first {args.n} seen edits")
    return idx


@torch.no_grad()
def probe_editpath(args) -> list[str]:
    from byg.flow import schedule

    cfg, ed, ds = _editor_and_edits(args)
    items = [ds[i] for i in _typed_edits(args, ds)]
    n = len(items)
    x_src = torch.stack([it["x_src"] for it in items])
    text = ed.encode_text([it["c_fwd"] for it in items])
    grid = schedule(cfg.sample.steps, shift=cfg.sample.shift)
    x = torch.randn(x_src.shape, generator=torch.Generator().manual_seed(0))
    cols, shown = [x_src.clamp(-1, 1)], []
    for i in range(len(grid) - 1):
        t = float(grid[i])
        v = ed(x, torch.full((n,), t), text, x_src)
        if i % 4 == 0:
            cols.append((x - t * v).clamp(-1, 1))
            shown.append(f"{t:.2f}")
        x = x + (float(grid[i + 1]) - t) * v
    cols += [x.clamp(-1, 1), torch.stack([it["x_tgt"] for it in items]).clamp(-1, 1)]
    _save_grid(torch.stack(cols, 1), args.png)
    return [
        f"Wrote `{args.png}`: {n} held-out seen {args.edit_type} edits of `{args.run}` "
        f"({cfg.sample.steps} Euler steps, as `score`), columns: source | the editor's "
        f"x̂_0 at t = {', '.join(shown)} | its edit | ground truth.",
        "",
        "| row | forward text |",
        "|---|---|",
        *(f"| {k} | {it['c_fwd']} |" for k, it in enumerate(items)),
    ]


@torch.no_grad()
def probe_target(args) -> list[str]:
    from byg.eval.toy_metrics import evaluate_edits
    from byg.eval.toy_oracle import ToyOracle
    from byg.flow import interpolate, schedule
    from byg.sampling import euler_sample

    cfg, ed, ds = _editor_and_edits(args)
    items = [ds[i] for i in range(len(ds))]
    n, k = len(items), args.base_steps
    examples = [ds.example(i) for i in range(n)]
    x_src = torch.stack([it["x_src"] for it in items])
    x_tgt = torch.stack([it["x_tgt"] for it in items])
    t_tgt = ed.encode_text([it["c_tgt"] for it in items])
    t_src = ed.encode_text([it["c_src"] for it in items])
    eps = torch.randn(x_src.shape, generator=torch.Generator().manual_seed(0))
    oracle = ToyOracle.load()
    shown = _typed_edits(args, ds, k=6)

    def base_x0(x: torch.Tensor, t: float, text: dict, steps: int) -> torch.Tensor:
        def f(z, s):
            with ed.base():
                return ed(z, s, text, None)

        if steps == 1:
            return x - t * f(x, torch.full((n,), t))
        return euler_sample(f, x, t * schedule(steps))

    out = [
        f"The `source_path` prior's clean target `x_src + x̂_0^B(x_t, c_tgt) − x̂_0^B(s_t, "
        f"c_src)` with `x_t` on the TRUE edit's path and `s_t` on the source's (the same ε), "
        f"for {n} held-out seen edits (`{args.run}`'s base and world), read by the oracle as "
        f"if it were an edit: edit success / preservation, all edits and {args.edit_type} "
        f"edits; `x̂_0^B` one-step, or {k} Euler steps of the base from `t` (PNG "
        f"`{args.png}`: source | one-step, {k}-step at each t | ground truth).",
        "",
        f"| t | one-step, all | one-step, {args.edit_type} | {k}-step, all "
        f"| {k}-step, {args.edit_type} |",
        "|---|---|---|---|---|",
    ]
    cols = [x_src[shown].clamp(-1, 1)]
    for t in (0.9, 0.7, 0.5, 0.3, 0.1):
        tt = torch.tensor(t)
        x_t, s_t = interpolate(x_tgt, eps, tt), interpolate(x_src, eps, tt)
        cells = []
        for steps in (1, k):
            target = x_src + base_x0(x_t, t, t_tgt, steps) - base_x0(s_t, t, t_src, steps)
            target = target.clamp(-1, 1)
            cols.append(target[shown])
            m = evaluate_edits(target, examples, oracle)
            typed = m["by_type"][args.edit_type]  # present: ``shown`` holds some
            cells += [
                f"{m['overall']['edit_success']:.3f} / {m['overall']['preservation']:.3f}",
                f"{typed['edit_success']:.3f} / {typed['preservation']:.3f}",
            ]
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    cols.append(x_tgt[shown].clamp(-1, 1))
    _save_grid(torch.stack(cols, 1), args.png)
    ref = evaluate_edits(x_tgt.clamp(-1, 1), examples, oracle)["overall"]
    out += [
        "",
        f"The true targets themselves: {ref['edit_success']:.3f} / {ref['preservation']:.3f}.",
    ]
    return out


def probe_routing(args) -> list[str]:
    from torch import Tensor

    from byg.flow import interpolate, predict_x0, velocity_target

    cfg, ed, ds = _editor_and_edits(args)
    b = collate_batch([ds[i] for i in range(len(ds))], ed, torch.device("cpu"))
    c = _byg_config(args, cfg)
    if c.direction_reference not in ("base", "editor") or c.bootstrap_state != "trajectory":
        # the probe rebuilds the prior's inputs at the rollout's state with METHOD.md's
        # references; it would silently measure another loss than the run trained with
        raise SystemExit(
            "routing measures direction_reference base or editor at bootstrap_state "
            f"trajectory; this run has {c.direction_reference!r} at {c.bootstrap_state!r}"
        )
    obj, g = ByGObjective(c), torch.Generator().manual_seed(0)
    k = obj.sq_scale(b.x_src)
    edit = (b.x_tgt - b.x_src).flatten(1)

    def cos(a: Tensor, d: Tensor) -> float:
        return F.cosine_similarity(a.flatten(1), d, dim=1).median().item()

    out = [
        f"Editor `{args.run or 'untrained, configs/toy_image.yaml'}` ({args.n} held-out seen edits"
        + (f"; {_changed(args, c)}" if args.byg else "")
        + "): per-sample gradients of the prior "
        "(forward, as weighted in training) and of the cycle (through the routing) on the "
        "forward velocity `v_f`. Gradient descent moves `x̂_edit = x_t − t·v_f` along "
        "`+∂L/∂v_f`; columns give that direction's cosine with the true edit `x_tgt − x_src` "
        "and with `x_src − x_clean` (back to the source), and the norms; then how much the "
        "editor's velocity at the same `x_t` changes between the forward and the reverse "
        "instruction, against the base's caption shift `Δ = B(c_tgt) − B(c_src)` (medians).",
        "",
        "| t | prior: cos with edit | cycle: cos with edit | cycle: cos with x_src − x_clean "
        "| cos(prior, cycle) | ‖∂prior‖ | ‖∂cycle‖ | ‖G(c_fwd) − G(c_rev)‖ / ‖Δ‖ "
        "| cos(G(c_fwd) − G(c_rev), Δ) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        tt = torch.full((b.size,), t)
        eps = torch.randn(b.x_src.shape, generator=g)
        eps_r = torch.randn(b.x_src.shape, generator=g)
        t_r = c.time.sample(b.size, g, b.x_src.device)
        with torch.no_grad():
            x_t, x_clean = obj.rollout(ed, b, tt, eps)
            with ed.base():
                u_tgt = ed(x_t, tt, b.text["tgt"], None).float()
                u_src = ed(x_t, tt, b.text["src"], None).float()
            v_rev = ed(x_t, tt, b.text["rev"], b.x_src).float()
            ref = obj._reference(v_rev, u_src, tt) if c.direction_reference == "editor" else None
            v0 = ed(x_t, tt, b.text["fwd"], b.x_src).float()
            heard, delta = (v0 - v_rev).flatten(1), (u_tgt - u_src).flatten(1)
        grads = []
        for term in ("prior", "cycle"):
            v_f = v0.clone().requires_grad_(True)
            if term == "prior":
                loss = c.lambda_prior * obj.prior_loss(v_f, u_src, u_tgt, ref, b.x_src, tt)[0]
            else:
                x_cond = losses.route_gradient(
                    predict_x0(x_t, tt, v_f), x_clean, enabled=not c.no_gradient_routing
                )
                v_r = ed(interpolate(b.x_src, eps_r, t_r), t_r, b.text["rev"], x_cond)
                loss = k * c.eff_lambda_cyc * losses.mse(v_r, velocity_target(b.x_src, eps_r))
            (grad,) = torch.autograd.grad(loss.sum(), v_f)
            grads.append(grad)
        gp, gc = grads
        back = (b.x_src - x_clean).flatten(1)
        out.append(
            f"| {t} | {cos(gp, edit):+.2f} | {cos(gc, edit):+.2f} | {cos(gc, back):+.2f} "
            f"| {cos(gp, gc.flatten(1)):+.2f} | {gp.flatten(1).norm(dim=1).median().item():.3g} "
            f"| {gc.flatten(1).norm(dim=1).median().item():.3g} "
            f"| {(heard.norm(dim=1) / delta.norm(dim=1)).median().item():.2f} "
            f"| {cos(heard, delta):+.2f} |"
        )
    return out


def probe_gate(args) -> list[str]:
    cfg, ed, ds = _editor_and_edits(args)
    gates = [m for n, m in ed.backbone.named_modules() if n.split(".")[-1] == "edit_gate"]
    if not gates:
        raise SystemExit(f"{args.run}: the editor has no edit_gate (model.options.edit_gate)")
    b = collate_batch([ds[i] for i in range(len(ds))], ed, torch.device("cpu"))
    inside = ((b.x_src - b.x_tgt).abs().amax(1, keepdim=True) > 0.05).float()
    outside = 1 - inside
    logits: list[torch.Tensor] = []
    hook = gates[0].register_forward_hook(lambda m, i, o: logits.append(o))
    obj, g = ByGObjective(cfg.byg), torch.Generator().manual_seed(0)
    out = [
        f"Editor `{args.run}` ({args.n} held-out seen edits): the gate `g` of the forward edit "
        "at the run's bootstrap states, mean inside and outside the pixels the true edit "
        "changes.",
        "",
        "| t | g inside the edit | g outside |",
        "|---|---|---|",
    ]
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        tt = torch.full((b.size,), t)
        with torch.no_grad():
            x_t, _ = obj.rollout(ed, b, tt, torch.randn(b.x_src.shape, generator=g))
            logits.clear()
            ed(x_t, tt, b.text["fwd"], b.x_src)
            gate = torch.sigmoid(logits[-1])
        gin = (gate * inside).sum() / inside.sum()
        gout = (gate * outside).sum() / outside.sum()
        out.append(f"| {t} | {gin.item():.3f} | {gout.item():.3f} |")
    out += [
        "",
        "Summed gradient of each term on the forward edit's gate logits, one training step "
        "on these edits (negative: descent opens the gate):",
        "",
        "| term | inside the edit | outside |",
        "|---|---|---|",
    ]
    variants = {
        "directional": dict(alpha=0.0, lambda_cyc=0.0, lambda_id=0.0),
        "anchor (α·MSE)": dict(no_directional=True, lambda_cyc=0.0, lambda_id=0.0),
        "cycle": dict(lambda_prior=0.0, lambda_id=0.0),
        "all": dict(),
    }
    for name, v in variants.items():
        c = dataclasses.replace(cfg.byg, identity_in_full_steps=True, **v)
        logits.clear()
        res = ByGObjective(c).full_step(ed, b, torch.Generator().manual_seed(0))
        # the first call with grad: the forward edit, batched with the identity pass after it
        fwd = next(x for x in logits if x.requires_grad)
        (grad,) = torch.autograd.grad(res.loss, fwd, allow_unused=True)
        grad = torch.zeros_like(fwd[: b.size]) if grad is None else grad[: b.size]
        out.append(
            f"| {name} | {(grad * inside).sum().item():+.3f} | {(grad * outside).sum().item():+.3f} |"
        )
    hook.remove()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "probe",
        choices=[
            "prior",
            "grads",
            "rollout",
            "samples",
            "words",
            "trajectory",
            "denoise",
            "editor",
            "prompts",
            "texture",
            "follow",
            "handoff",
            "score",
            "edits",
            "editpath",
            "target",
            "routing",
            "gate",
        ],
    )
    p.add_argument(
        "--run",
        help="run folder or checkpoint (grads, rollout, editor, follow, handoff, score, routing, gate)",
    )
    p.add_argument(
        "--n",
        type=int,
        default=160,
        help="held-out edits (prior, rollout, editor, follow, handoff, score, routing) or scenes (denoise)",
    )
    p.add_argument(
        "--byg",
        action="append",
        metavar="FIELD=VALUE",
        help="change a ByG config field (grads, routing)",
    )
    p.add_argument(
        "--edit-type", default="size", help="which seen edits to show (edits, editpath, target)"
    )
    p.add_argument(
        "--base-steps", type=int, default=4, help="the base's Euler steps from t (target)"
    )
    p.add_argument("--samples", type=int, default=256, help="instruction-prompt samples (prompts)")
    p.add_argument("--ema", action="store_true", help="sample with the EMA weights (score)")
    p.add_argument(
        "--sample-steps", type=int, help="Euler steps (score; default: the run's sample.steps)"
    )
    p.add_argument(
        "--shift", type=float, help="schedule shift (score; default: the run's sample.shift)"
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="text guidance away from --negative (score; 1 = off, not in the paper)",
    )
    p.add_argument(
        "--negative",
        default="c_rev",
        choices=["c_rev", "c_src", ""],
        help="negative text for --guidance-scale: the reverse text, the source caption or empty",
    )
    p.add_argument("--out", type=Path, help="append the table to this Markdown file")
    p.add_argument(
        "--base",
        type=Path,
        help="toy base folder (samples, words, trajectory, denoise, prompts, texture; default: shipped)",
    )
    p.add_argument(
        "--png", type=Path, default=Path("base_samples.png"), help="PNG (samples, trajectory)"
    )
    args = p.parse_args(argv)
    needs_run = (
        *("grads", "rollout", "editor", "follow", "handoff", "score", "edits", "editpath"),
        *("target", "gate"),
    )
    if args.probe in needs_run and not args.run:
        p.error(f"{args.probe} needs --run")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    probes = {
        "prior": probe_prior,
        "grads": probe_grads,
        "rollout": probe_rollout,
        "samples": probe_samples,
        "words": probe_words,
        "trajectory": probe_trajectory,
        "denoise": probe_denoise,
        "editor": probe_editor,
        "prompts": probe_prompts,
        "texture": probe_texture,
        "follow": probe_follow,
        "handoff": probe_handoff,
        "score": probe_score,
        "edits": probe_edits,
        "editpath": probe_editpath,
        "target": probe_target,
        "routing": probe_routing,
        "gate": probe_gate,
    }
    lines = probes[args.probe](args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(
                f"`python benchmarks/probes.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n{text}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

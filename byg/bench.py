"""``byg bench speed``: the cost of a ByG step against a supervised step, side by side.

Both objectives train the same editor (same backbone, LoRA, batch and resolution) in one
process, alternating step by step after a warm-up, so machine noise hits both alike. A
per-phase breakdown comes from the objectives' ``timer`` hook, and a cost model predicts the
ByG/supervised ratio from separately timed kinds of model call (timed in the same loop):

    full ByG step ≈ (k + k_clean + n_ref)·F(B) + F(4B) + FB(2B) + FB(B) + opt
    reuse step    ≈ n_ref·F(B) + F(4B) + FB(2B) + FB(B) + opt     (rollout kept, R > 1)
    identity step ≈ F(B) [warm-up only] + FB(B) + opt
    supervised    ≈ FB(B) + opt

with ``F(n)`` a no-grad call at batch ``n``, ``FB(n)`` a trainable forward+backward and
``n_ref`` the no-grad reference calls of option C. The ByG settings are those of
``configs/toy_image.yaml``. Also measured: the cost options (rollout steps k, rollout reuse
R; their quality comes from ``byg bench quality --methods cost``) and the per-edit inference
cost of ByG, FlowEdit and SDEdit.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import shlex
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from byg.objectives.byg import ByGConfig, ByGObjective
from byg.objectives.common import EditBatch
from byg.objectives.supervised import SupervisedConfig, SupervisedObjective


class PhaseTimer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.totals[name] += time.perf_counter() - t0


def _batch(editor, n: int, res: int, seed: int) -> EditBatch:
    g = torch.Generator().manual_seed(seed)
    prompts = {
        "src": "a red circle",
        "tgt": "a blue circle",
        "fwd": "make the circle blue",
        "rev": "make the circle red",
    }
    text = {k: editor.encode_text([v] * n) for k, v in prompts.items()}
    x = torch.randn(n, 3, res, res, generator=g)
    return EditBatch(
        x_src=x.tanh(), text=text, x_tgt=torch.randn(n, 3, res, res, generator=g).tanh()
    )


def _timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: rollouts timed beside the configured one: (k steps to t, steps from t to 0; None = the
#: config's). The issue's k sweep, and the cheapest rollout (2 + 1).
K_SWEEP: tuple[tuple[int, int | None], ...] = ((4, None), (6, None), (10, None), (2, 1))
#: rollout reuse R reported (amortised bootstrapping)
R_SWEEP = (1, 2, 4)


def _n_reference(cfg: ByGConfig) -> int:
    """No-grad editor calls for the directional reference (option C): forward, and reverse."""
    if not cfg.editor_reference:
        return 0
    return 2 if cfg.prior_reverse else 1


def measure_speed(
    editor,
    *,
    batch: int,
    res: int,
    byg_cfg: ByGConfig,
    steps: int = 6,
    warmup: int = 2,
    variants: dict[str, tuple[Any, ByGConfig]] | None = None,
) -> dict:
    """Median seconds per step of each kind, per-phase totals, call costs and the cost model.

    Every kind of step (full ByG, identity-only, supervised, a full step that reuses a kept
    rollout, full steps with other rollout lengths k) and every kind of model call of the
    cost model is timed in the same alternating loop, so machine drift hits all alike.
    ``variants`` (name -> another editor, e.g. other ``model.options``, and its ByG
    settings) have their full ByG and supervised steps timed in that same loop too
    (``result["variants"]``).
    """
    opt = torch.optim.AdamW(editor.lora_parameters(), lr=1e-4)
    lora = list(editor.lora_parameters())
    b = _batch(editor, batch, res, 0)
    byg = ByGObjective(byg_cfg)
    others = {
        name: (
            ed,
            torch.optim.AdamW(ed.lora_parameters(), lr=1e-4),
            _batch(ed, batch, res, 0),
            ByGObjective(ed_cfg),
        )
        for name, (ed, ed_cfg) in (variants or {}).items()
    }
    reuse = ByGObjective(dataclasses.replace(byg_cfg, rollout_reuse=10**9))  # always reuses
    k0, c0 = byg_cfg.rollout_steps, byg_cfg.clean_steps
    # the sweep's rollouts configured as `byg bench quality` trains them: an unset clean
    # length keeps the config's own (which follows k when the config leaves it unset)
    k_objs = {}
    for k, c in K_SWEEP:
        o = ByGObjective(
            dataclasses.replace(
                byg_cfg,
                rollout_steps=k,
                rollout_clean_steps=byg_cfg.rollout_clean_steps if c is None else c,
            )
        )
        if (k, o.cfg.clean_steps) != (k0, c0):
            k_objs[_kind(k, c)] = o
    for o in (byg, reuse, *k_objs.values(), *(v[3] for v in others.values())):
        o.warmup_done = True  # steady state: no warm-up probes
    sup = SupervisedObjective(SupervisedConfig())
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)

    def update(out, ed, ed_opt) -> tuple[float, float]:
        """Backward, optimiser and EMA: (seconds of the backward, seconds of the rest)."""
        t0 = time.perf_counter()
        out.loss.backward()
        t_back = time.perf_counter() - t0
        t0 = time.perf_counter()
        ed_opt.step()
        ed_opt.zero_grad(set_to_none=True)
        ed.update_ema()
        return t_back, time.perf_counter() - t0

    def step(kind: str, timer=None):
        if kind.startswith("variant/"):
            name, what = kind.split("/", 1)[1].rsplit("/", 1)
            ed, ed_opt, ed_b, ed_byg = others[name]
            if what == "full":
                return update(ed_byg.full_step(ed, ed_b, g), ed, ed_opt)
            return update(sup(ed, ed_b, 0, g, rng), ed, ed_opt)
        kw = {"timer": timer} if timer is not None else {}
        if kind == "full":
            out = byg.full_step(editor, b, g, **kw)
        elif kind == "full_reuse":
            out = reuse.full_step(editor, b, g, **kw)
        elif kind.startswith("full_k"):
            out = k_objs[kind].full_step(editor, b, g, **kw)
        elif kind == "identity":
            out = byg.identity_step(editor, b, 10**6, g, **kw)
        else:
            out = sup(editor, b, 0, g, rng, **kw)
        return update(out, editor, opt)

    # the kinds of model call of the cost model
    t = torch.full((batch,), 0.5)

    def rep(x, n):
        return x.repeat(n, *[1] * (x.ndim - 1))

    def f(n):
        x, tt = rep(b.x_src, n), t.repeat(n)
        txt = {kk: rep(v, n) for kk, v in b.text["fwd"].items()}

        def call():
            with torch.no_grad():
                editor(x, tt, txt, x)

        return call

    def fb(n):
        x, tt = rep(b.x_src, n), t.repeat(n)
        txt = {kk: rep(v, n) for kk, v in b.text["fwd"].items()}

        def call():
            editor(x, tt, txt, x).float().pow(2).mean().backward()
            for p in lora:
                p.grad = None

        return call

    def f_base(n):
        x, tt = rep(b.x_src, n), t.repeat(n)
        txt = {kk: rep(v, n) for kk, v in b.text["src"].items()}

        def call():
            with torch.no_grad(), editor.base():
                editor(x, tt, txt, None)

        return call

    calls = {"F(B)": f(1), "F_base(4B)": f_base(4), "FB(2B)": fb(2), "FB(B)": fb(1)}
    kinds = ["full", "identity", "supervised", "full_reuse", *k_objs]
    kinds += [f"variant/{name}/{what}" for name in others for what in ("full", "supervised")]
    reuse.full_step(editor, b, g)  # keep one rollout for the reuse steps
    for _ in range(warmup):
        for k in kinds:
            step(k)
        for c in calls.values():
            c()
    secs: dict[str, list[float]] = {k: [] for k in kinds}
    call_secs: dict[str, list[float]] = {c: [] for c in calls}
    phases = {k: PhaseTimer() for k in kinds}
    for _ in range(steps):  # alternate so drift affects every kind alike
        for k in kinds:
            t0 = time.perf_counter()
            t_back, t_opt = step(k, phases[k])
            secs[k].append(time.perf_counter() - t0)
            phases[k].totals["backward"] += t_back
            phases[k].totals["optimizer_ema"] += t_opt
        for c, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            call_secs[c].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in secs.items()}
    base_kinds = [k for k in kinds if not k.startswith("variant/")]
    per_phase = {k: {p: v / steps for p, v in phases[k].totals.items()} for k in base_kinds}
    cost = {c: statistics.median(v) for c, v in call_secs.items()}

    t_opt = statistics.median([per_phase[k]["optimizer_ema"] for k in base_kinds])
    n_ref = _n_reference(byg_cfg)
    rest = cost["F_base(4B)"] + cost["FB(2B)"] + cost["FB(B)"] + t_opt

    def pred_full(k: int, clean: int) -> float:
        return (k + clean + n_ref) * cost["F(B)"] + rest

    pred_sup = cost["FB(B)"] + t_opt
    pred_reuse = n_ref * cost["F(B)"] + rest
    p_id = byg_cfg.eff_p_id

    def mean_step(full: float) -> float:  # the schedule's mean after warm-up
        return (1 - p_id) * full + p_id * med["identity"]

    # cost options: seconds per full step on average, and the schedule mean
    rollouts = [("full", k0, c0)]
    rollouts += [(kind, o.cfg.rollout_steps, o.cfg.clean_steps) for kind, o in k_objs.items()]
    options = []
    for kind, k, c in sorted(rollouts, key=lambda r: r[1:]):
        for r in R_SWEEP if kind == "full" else (1,):
            full = (med[kind] + (r - 1) * med["full_reuse"]) / r
            pred = (pred_full(k, c) + (r - 1) * pred_reuse) / r
            options.append(
                {
                    "name": _option_name(kind, r),
                    "k": k,
                    "clean_steps": c,
                    "R": r,
                    "full_step_seconds": full,
                    "predicted_full_step_seconds": pred,
                    "mean_step_seconds": mean_step(full),
                    "saving_vs_default": 1 - mean_step(full) / mean_step(med["full"]),
                }
            )
    return {
        "batch": batch,
        "resolution": res,
        "rollout_steps": k0,
        "clean_steps": c0,
        "direction_reference": byg_cfg.direction_reference,
        "p_id": p_id,
        "seconds_per_step": {k: med[k] for k in ("full", "identity", "supervised")},
        "seconds_per_step_options": {k: med[k] for k in base_kinds[3:]},
        "variants": {
            name: {
                "seconds_per_step": {w: med[f"variant/{name}/{w}"] for w in ("full", "supervised")},
                "full_vs_default_full": med[f"variant/{name}/full"] / med["full"],
                "supervised_vs_default_supervised": med[f"variant/{name}/supervised"]
                / med["supervised"],
                "ratio_full_vs_supervised": med[f"variant/{name}/full"]
                / med[f"variant/{name}/supervised"],
            }
            for name in others
        },
        "expected_byg_step": mean_step(med["full"]),
        "ratio_full_vs_supervised": med["full"] / med["supervised"],
        "ratio_expected_vs_supervised": mean_step(med["full"]) / med["supervised"],
        "model_calls_per_full_step": {
            "ema_no_grad": k0 + c0,
            "reference_no_grad": n_ref,
            "base_no_grad_batched": 1,
            "trainable": 2,
        },
        "per_phase_seconds": per_phase,
        "call_costs": cost,
        "predicted_seconds": {
            "full": pred_full(k0, c0),
            "supervised": pred_sup,
            "reuse": pred_reuse,
        },
        "predicted_ratio_full_vs_supervised": pred_full(k0, c0) / pred_sup,
        "prediction_error": (med["full"] / med["supervised"]) / (pred_full(k0, c0) / pred_sup) - 1,
        "options": options,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _kind(k: int, clean: int | None) -> str:
    return f"full_k{k}" if clean is None else f"full_k{k}c{clean}"


def _option_name(kind: str, r: int) -> str:
    """The ``byg bench quality`` method that trains this option (``byg`` for the default):
    ``full`` -> ``byg`` / ``byg-reuse{r}``, ``full_k4`` -> ``byg-k4``, ``full_k2c1`` -> ``byg-k2c1``."""
    if kind == "full":
        return "byg" if r == 1 else f"byg-reuse{r}"
    return "byg-" + kind.removeprefix("full_")


def measure_inference(
    editor,
    base,
    *,
    batch: int,
    res: int,
    sample_steps: int,
    flowedit_params: dict,
    sdedit_params: dict,
    reps: int = 3,
) -> dict:
    """Per-edit cost of ByG (the trained editor's Euler loop) vs FlowEdit and SDEdit on the
    base: model calls, images evaluated per edited image, and seconds per image."""
    from byg.bench_quality import baseline_fn
    from byg.infer import edit

    b = _batch(editor, batch, res, 1)
    items = [
        {"c_src": "a red circle", "c_tgt": "a blue circle", "c_fwd": "make the circle blue"}
    ] * batch
    runs = {
        "byg": (
            editor.backbone,
            lambda: edit(editor, b.x_src, b.text["fwd"], steps=sample_steps, seed=0),
            {"steps": sample_steps},
        ),
        "flowedit": (
            base,
            lambda fn=baseline_fn("flowedit", base, flowedit_params, 0): fn(b.x_src, items),
            flowedit_params,
        ),
        "sdedit": (
            base,
            lambda fn=baseline_fn("sdedit", base, sdedit_params, 0): fn(b.x_src, items),
            sdedit_params,
        ),
    }
    out = {}
    for name, (module, fn, params) in runs.items():
        log: list[int] = []
        hook = module.register_forward_pre_hook(lambda m, a, log=log: log.append(a[0].shape[0]))
        with torch.no_grad():
            fn()  # warm-up, and the count
            n_calls, rows = len(log), sum(log)
            sec = _timed(fn, reps)
        hook.remove()
        out[name] = {
            "params": params,
            "model_calls": n_calls,
            "evaluations_per_image": rows / batch,
            "seconds_per_image": sec / batch,
        }
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tradeoff_rows(res: dict, quality: dict | None) -> list[dict]:
    """Each cost option's step saving beside its quality change (from ``quality.json``)."""
    rows = []
    q = (quality or {}).get("methods", {})
    ref = q.get("byg", {}).get("summary", {}).get("overall")
    for o in res["options"]:
        row = dict(o)
        mine = q.get(o["name"], {}).get("summary", {}).get("overall")
        if ref and mine and o["name"] != "byg":
            row["d_success"] = mine["edit_success"]["mean"] - ref["edit_success"]["mean"]
            row["d_preservation"] = mine["preservation"]["mean"] - ref["preservation"]["mean"]
            row["n_seeds"] = mine["edit_success"].get("n_seeds", 1)
            row["meets_target"] = (
                o["saving_vs_default"] >= 0.30
                and row["d_success"] >= -0.03
                and row["d_preservation"] >= -0.03
            )
        rows.append(row)
    return rows


def write_speed_report(res: dict, out: Path, quality: dict | None = None) -> None:
    """``speed.json`` and ``speed.md``; ``quality`` (a ``quality.json``) adds the quality
    side of the cost options' trade-off."""
    out.mkdir(parents=True, exist_ok=True)
    res = {**res, "tradeoff": _tradeoff_rows(res, quality)}
    (out / "speed.json").write_text(json.dumps(res, indent=1))
    s = res["seconds_per_step"]
    pred = res.get("predicted_seconds", {})
    lines = [
        "# ByG step cost vs supervised (byg bench speed)",
        "",
        f"Batch {res['batch']}, {res['resolution']}×{res['resolution']}, k = "
        f"{res['rollout_steps']} + {res['clean_steps']} rollout steps, directional reference "
        f"{res.get('direction_reference', 'base')}, p_id = {res['p_id']}. Every kind of step "
        "and of model call below was timed in one alternating loop.",
        "",
        "| step | seconds (median) | cost model |",
        "|---|---|---|",
        f"| full ByG | {s['full']:.4f} | {pred.get('full', float('nan')):.4f} |",
        f"| identity-only | {s['identity']:.4f} | |",
        f"| supervised (Eq. 1) | {s['supervised']:.4f} | {pred.get('supervised', float('nan')):.4f} |",
        f"| ByG, schedule mean | {res['expected_byg_step']:.4f} | |",
        "",
        f"Ratio full ByG / supervised: **{res['ratio_full_vs_supervised']:.2f}** measured, "
        f"{res['predicted_ratio_full_vs_supervised']:.2f} predicted by the cost model "
        f"({100 * res['prediction_error']:+.0f}%); schedule mean / supervised "
        f"{res['ratio_expected_vs_supervised']:.2f}. The paper reports 3.0 on FLUX.1-dev with "
        "H100s (2.9 s vs 0.97 s).",
        "",
        "Cost model: full ≈ (k + k_clean + n_ref)·F(B) + F_base(4B) + FB(2B) + FB(B) + opt; "
        "supervised ≈ FB(B) + opt (F: no-grad call, FB: trainable forward + backward, "
        f"n_ref = {res['model_calls_per_full_step'].get('reference_no_grad', 0)} reference "
        "calls of option C).",
        "",
        "| phase of a full step | seconds |",
        "|---|---|",
    ]
    lines += [f"| {p} | {v:.4f} |" for p, v in res["per_phase_seconds"]["full"].items()]
    lines += ["", "| call | seconds |", "|---|---|"] + [
        f"| {k} | {v:.4f} |" for k, v in res["call_costs"].items()
    ]
    if res.get("options"):
        lines += [
            "",
            "## Cost options (change the method; quality from `byg bench quality`)",
            "",
            "R = full steps served by one rollout (amortised bootstrapping); k+c = rollout "
            "steps to t, then from t to 0 for x_clean. Step seconds are per full step on "
            "average (a reuse step skips the rollout); "
            "the saving is on the schedule's mean step (identity-only steps included). Quality "
            "Δ = overall edit success / preservation minus full ByG's, means over seeds. "
            "Target: saving ≥ 30% with neither Δ below −0.03.",
            "",
            "| option | method | full step (s) | cost model (s) | saving | Δ success | "
            "Δ preservation | target met? |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for o in res["tradeoff"]:
            has_q = "d_success" in o
            lines.append(
                f"| k={o['k']}+{o.get('clean_steps', '?')}, R={o['R']} | {o['name']} | "
                f"{o['full_step_seconds']:.3f} | "
                f"{o['predicted_full_step_seconds']:.3f} | {100 * o['saving_vs_default']:.0f}% | "
                + (
                    f"{o['d_success']:+.3f} | {o['d_preservation']:+.3f} | "
                    f"{'yes' if o['meets_target'] else 'no'} |"
                    if has_q
                    else ("– | – | (reference) |" if o["name"] == "byg" else "– | – | not run |")
                )
            )
    if res.get("variants"):
        lines += [
            "",
            "## Editor variants (timed in the same loop)",
            "",
            f"The default editor is the run config's{' (' + res['settings'] + ')' if res.get('settings') else ''}; "
            "each variant adds its overrides to it.",
            "",
            "| variant | full ByG (s) | supervised (s) | full / default full | "
            "supervised / default supervised | full / supervised |",
            "|---|---|---|---|---|---|",
            f"| default | {s['full']:.4f} | {s['supervised']:.4f} | 1.00 | 1.00 | "
            f"{res['ratio_full_vs_supervised']:.2f} |",
        ]
        for name, v in res["variants"].items():
            vs = v["seconds_per_step"]
            lines.append(
                f"| `{name}` | {vs['full']:.4f} | {vs['supervised']:.4f} | "
                f"{v['full_vs_default_full']:.2f} | {v['supervised_vs_default_supervised']:.2f} | "
                f"{v['ratio_full_vs_supervised']:.2f} |"
            )
    inf = res.get("inference")
    if inf:
        lines += [
            "",
            "## Per-edit inference cost",
            "",
            "| method | settings | model calls | evaluations per image | seconds per image |",
            "|---|---|---|---|---|",
        ]
        for m, r in inf.items():
            lines.append(
                f"| {m} | {r['params']} | {r['model_calls']} | {r['evaluations_per_image']:.0f} "
                f"| {r['seconds_per_image']:.4f} |"
            )
        lines += [
            "",
            "A ByG evaluation carries the source tokens beside the noisy ones (twice the "
            "sequence); FlowEdit and SDEdit evaluate the base with classifier-free guidance "
            "(conditional and unconditional rows in one batched call).",
        ]
    lines += ["", f"Peak RSS {res['peak_rss_mb']:.0f} MB."]
    for key, label in (("command", "Command"), ("machine", "Machine"), ("model", "Model")):
        if res.get(key):
            lines.append(f"{label}: `{res[key]}`." if key == "command" else f"{label}: {res[key]}.")
    (out / "speed.md").write_text("\n".join(lines) + "\n")


def _tuned(out: Path, method: str, default: dict) -> tuple[dict, str]:
    """FlowEdit/SDEdit settings chosen by ``byg bench quality`` (its tuning cache), if any."""
    path = out / "quality_cache" / f"{method}__tuning.json"
    try:
        return json.loads(path.read_text())["best"], f"tuned ({path})"
    except (OSError, KeyError, json.JSONDecodeError):
        return default, "defaults (no tuning cache)"


def cmd_speed(args: argparse.Namespace) -> int:
    import os
    import platform
    import sys

    from byg.backbones.editor import Editor
    from byg.backbones.registry import build_backbone
    from byg.backbones.toy import EDITOR_OPTIONS
    from byg.bench_quality import QualitySettings, bench_config
    from byg.infer import build_editor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # configs/toy_image.yaml: the ByG settings and the editor the demo trains with
    run_cfg = bench_config(overrides=args.set)
    byg_cfg = run_cfg.byg
    if args.k is not None:
        byg_cfg = dataclasses.replace(byg_cfg, rollout_steps=args.k)
    batch = args.batch or run_cfg.train.batch_size

    def make_editor(cfg) -> Editor:
        cfg = copy.deepcopy(cfg)
        if args.rank:
            cfg.lora.rank = args.rank
        if not args.shipped_base:  # a fresh default model, with the config's editor options
            opts = cfg.model.options
            cfg.model.options = {"config": {k: opts[k] for k in EDITOR_OPTIONS if k in opts}}
        return build_editor(cfg)

    editor = make_editor(run_cfg)
    variants = {}
    for spec in args.compare:
        cfg = bench_config(overrides=[*args.set, *shlex.split(spec)])
        variants[spec] = (make_editor(cfg), cfg.byg)
    res = measure_speed(
        editor, batch=batch, res=32, byg_cfg=byg_cfg, steps=args.steps, variants=variants
    )
    res["settings"] = " ".join(args.set)
    ckpt = run_cfg.model.options.get("checkpoint")
    options = ({"checkpoint": ckpt} if ckpt else {}) if args.shipped_base else {"config": {}}
    out = Path(args.out)
    qs = QualitySettings()
    fe, fe_src = _tuned(out, "flowedit", qs.flowedit_start)
    sd, sd_src = _tuned(out, "sdedit", {**qs.sdedit_start, "steps": qs.sdedit_steps})
    base = build_backbone("toy", options).eval()
    res["inference"] = measure_inference(
        editor,
        base,
        batch=batch,
        res=32,
        sample_steps=run_cfg.sample.steps,
        flowedit_params=fe,
        sdedit_params=sd,
    )
    res["inference_settings"] = {"flowedit": fe_src, "sdedit": sd_src}
    res["machine"] = (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU core(s), "
        f"{torch.get_num_threads()} torch thread(s), no GPU used, torch {torch.__version__}"
    )
    res["command"] = "byg " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "byg bench speed"
    res["model"] = "shipped toy base" if args.shipped_base else "fresh default ToyBackboneConfig"
    quality = None
    if (out / "quality.json").exists():
        quality = json.loads((out / "quality.json").read_text())
    write_speed_report(res, out, quality)
    print((out / "speed.md").read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmarks (quality of editors on the toy world, speed of a ByG step)"
    )
    bs = p.add_subparsers(dest="bench", metavar="BENCH")
    s = bs.add_parser(
        "speed",
        help="seconds per ByG step vs a supervised step, per phase, with a cost model",
        description=__doc__.split("\n\n", 1)[1].strip()
        + "\n\nRecorded run: byg bench speed --shipped-base --steps 24 --out benchmarks/results "
        "--compare 'model.options.cond_tokens=false model.options.cond_add_levels=4'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--out", default="benchmarks/results", help="folder for speed.json and speed.md")
    s.add_argument("--batch", type=int, default=None, help="default: the config's (8)")
    s.add_argument(
        "--k", type=int, default=None, help="rollout steps to t (default: the config's, 6)"
    )
    s.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the config's)")
    s.add_argument("--steps", type=int, default=6, help="timed steps of each kind")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument(
        "--shipped-base",
        action="store_true",
        help="use the shipped toy base instead of a fresh one",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of configs/toy_image.yaml for the timed editor and ByG settings "
        "(repeatable), e.g. --set model.options.cond_add_levels=4",
    )
    s.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="also time the full ByG and supervised steps of an editor with these extra "
        "overrides, in the same alternating loop (repeatable; one variant per flag), e.g. "
        "--compare 'model.options.cond_tokens=false model.options.cond_add_levels=4'",
    )
    s.set_defaults(func=cmd_speed)
    from byg import bench_quality

    bench_quality.register(bs)

"""``byg bench quality``: every editor of the toy world against the same oracle, seeds apart.

Protocol (docs/bench_quality.md has the long form):

* **base**: the shipped toy base (``byg/assets/toy_base``) or ``--base DIR``; every method
  edits with, or is trained on top of, this one base.
* **settings**: ``configs/toy_image.yaml`` (the demo's ByG defaults) plus ``--steps`` and
  ``--set``; every trained method uses the same steps, batch, LoRA and optimiser.
* **test scenes**: ``toy_eval.eval_dataset(world, split, n_eval)`` (seed ``EVAL_SEED``) for
  the ``seen`` and ``unseen`` splits: the same scenes for every method and seed.
* **validation scenes** (``VAL_SEED``, a different seed stream): only for tuning FlowEdit's
  and SDEdit's parameters, by coordinate descent over small grids, maximising the geometric
  mean of edit success and preservation. The test scenes are never looked at while tuning.
* **seeds**: a trained method's seed is ``train.seed`` (LoRA init, data order, noise) and its
  sampling noise; a zero-shot method's seed is its noise. Tuning runs once, with the first
  seed's noise, and its choice is used for every seed.
* **methods** (``METHODS``): ``byg``; ``supervised-seen`` (Eq. 1, ground-truth pairs of the
  training split, which holds seen edits only); ``supervised-all`` (Eq. 1, pairs of every
  edit: the training world with nothing held out); ``flowedit``; ``sdedit``; ``identity``;
  ``identity-only``; the seven ablations of METHOD.md §4 (each the ByG config with one
  switch on).

Each (method, seed) result is cached as ``<out>/quality_cache/<method>__seed<k>.json``
together with a fingerprint of everything it depends on (config, base weights, test-set
sizes); a rerun skips entries whose fingerprint matches and redoes the others. Training runs
(checkpoints) live in ``--work`` (default ``runs/bench_quality``) in a folder named by the
fingerprint, and an interrupted training resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from byg.config import apply_overrides, from_dict, load_yaml
from byg.run_config import RunConfig, run_config_dict

# ----------------------------------------------------------------------------- names

ABLATIONS: tuple[str, ...] = (
    "no_gradient_routing",
    "no_cycle",
    "no_directional",
    "no_regularization",
    "no_bootstrap",
    "no_identity_steps",
    "no_ema",
)
#: cost options of ``byg bench speed`` (issue: amortised bootstrapping R, rollout steps k),
#: each the ByG config with these fields changed; not in ``all``, ask with ``--methods cost``
COST_OPTIONS: dict[str, dict[str, int]] = {
    "byg-reuse2": {"rollout_reuse": 2},
    "byg-reuse4": {"rollout_reuse": 4},
    "byg-k4": {"rollout_steps": 4},
    "byg-k10": {"rollout_steps": 10},
    # the cheapest rollout: 2 steps to t, then x_clean in one Euler step from t
    "byg-k2c1": {"rollout_steps": 2, "rollout_clean_steps": 1},
}
TRAINED: tuple[str, ...] = (
    "byg",
    "supervised-seen",
    "supervised-all",
    "identity-only",
    *ABLATIONS,
    *COST_OPTIONS,
)
ZERO_SHOT: tuple[str, ...] = ("identity", "flowedit", "sdedit")
METHODS: tuple[str, ...] = (
    "byg",
    "supervised-seen",
    "supervised-all",
    "flowedit",
    "sdedit",
    "identity",
    "identity-only",
    *ABLATIONS,
)
#: every name ``--methods`` accepts, in report order
ALL_NAMES: tuple[str, ...] = (*METHODS, *COST_OPTIONS)
#: names accepted by ``--methods`` besides the methods themselves
GROUPS: dict[str, tuple[str, ...]] = {
    "all": METHODS,
    "ablations": ABLATIONS,
    "cost": tuple(COST_OPTIONS),
    "baselines": ("supervised-seen", "supervised-all", "flowedit", "sdedit", "identity"),
}
SPLITS = ("overall", "seen", "unseen")
METRICS = ("edit_success", "preservation", "gm", "success_and_preservation", "psnr")

#: bump when a change to this module changes results, so that old cache entries are redone
CACHE_VERSION = 1
VAL_SEED = 30_011  # validation scenes for tuning: neither EVAL_SEED (test) nor a train seed
#: the world of supervised-all's training pairs: nothing held out
ALL_EDITS_WORLD = {"unseen_colours": [], "unseen_textures": [], "unseen_edit_types": []}

#: the paper's ablation (GEdit-Bench, VIEScore 0-10): (edit success, preservation)
PAPER_ABLATION: dict[str, tuple[float, float] | None] = {
    "full": (8.32, 7.62),
    "no_gradient_routing": (8.92, 7.18),
    "no_cycle": (8.98, 7.23),
    "no_directional": (8.40, 7.23),
    "no_regularization": (0.63, 9.77),
    "no_bootstrap": (5.52, 7.05),
    "no_identity_steps": (8.41, 7.45),
    "no_ema": None,  # not in the paper's table
}
NOTES_FILE = "quality_notes.md"  # hand-written findings on the ablation rows, next to quality.md
PAPER_TOL = 0.1  # VIEScore points (of 10): smaller paper differences count as "≈"
OURS_TOL = 0.01  # rate (of 1): smaller mean differences count as "≈"

# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass
class QualitySettings:
    """What a run evaluates; everything here enters the cache fingerprints."""

    n_eval: int = 200  # test edits per split (seen, unseen)
    n_val: int = 48  # validation edits per split, for tuning FlowEdit/SDEdit
    eval_batch: int = 64
    flowedit_grid: dict[str, list] = dataclasses.field(
        default_factory=lambda: {
            "steps": [20, 28],
            "n_max_frac": [0.5, 0.7, 0.85],  # n_max = round(frac * steps)
            "n_avg": [1, 2],
            "guidance": [[1.0, 1.0], [1.5, 3.5], [1.5, 5.5], [2.5, 7.5]],  # (src, tgt)
        }
    )
    flowedit_start: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "steps": 28,
            "n_max_frac": 0.85,
            "n_avg": 1,
            "guidance": [1.5, 5.5],
        }
    )
    sdedit_grid: dict[str, list] = dataclasses.field(
        default_factory=lambda: {
            "strength": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "guidance": [1.0, 3.0, 5.0],
        }
    )
    sdedit_start: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"strength": 0.6, "guidance": 3.0}
    )
    sdedit_steps: int = 20

    @classmethod
    def quick(cls) -> QualitySettings:
        return cls(
            n_eval=8,
            n_val=4,
            flowedit_grid={"n_max_frac": [0.5, 0.85], "guidance": [[1.0, 1.0], [1.5, 3.5]]},
            flowedit_start={"steps": 6, "n_max_frac": 0.85, "n_avg": 1, "guidance": [1.5, 3.5]},
            sdedit_grid={"strength": [0.4, 0.7]},
            sdedit_start={"strength": 0.6, "guidance": 3.0},
            sdedit_steps=6,
        )


#: ``--quick`` overrides of the ByG run config: a smoke test, not a measurement
QUICK_OVERRIDES = [
    "train.steps=6",
    "byg.warmup_steps=2",
    "byg.warmup_ratio=null",
    "byg.rollout_steps=2",
    "train.batch_size=4",
    "sample.steps=4",
]


def _config_path() -> Path:
    from byg.demo import CONFIG

    return CONFIG


def bench_config(
    *,
    quick: bool = False,
    steps: int | None = None,
    base: Path | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The ByG run config every trained method starts from: configs/toy_image.yaml (the
    demo's defaults), then ``--quick``, ``--steps`` and ``--set`` overrides."""
    path = _config_path()
    data = load_yaml(path) if path.exists() else {}
    over = list(QUICK_OVERRIDES if quick else [])
    if steps is not None:
        over.append(f"train.steps={steps}")
    over += list(overrides)
    # the bench evaluates at the end only, and keeps previews out of the way
    over += ["train.eval_every=0", "train.preview_every=0"]
    apply_overrides(data, over)
    cfg = from_dict(RunConfig, data)
    if cfg.objective != "byg":
        raise ValueError(f"the bench's base config must be a ByG config, got {cfg.objective!r}")
    if base is not None:
        cfg.model.options = {"checkpoint": str(Path(base).resolve())}
    return cfg


def method_config(method: str, cfg: RunConfig) -> RunConfig:
    """The run config of a trained method: ``cfg`` (ByG) with exactly what the method changes."""
    from byg.demo import identity_only_config

    if method == "byg":
        return dataclasses.replace(cfg, name="byg")
    if method in ABLATIONS:
        return dataclasses.replace(
            cfg, name=method, byg=dataclasses.replace(cfg.byg, **{method: True})
        )
    if method in COST_OPTIONS:
        return dataclasses.replace(
            cfg, name=method, byg=dataclasses.replace(cfg.byg, **COST_OPTIONS[method])
        )
    if method == "identity-only":
        return dataclasses.replace(identity_only_config(cfg), name="identity-only")
    if method == "supervised-seen":  # the train split holds seen edits only
        return dataclasses.replace(cfg, name=method, objective="supervised")
    if method == "supervised-all":
        data = dataclasses.replace(cfg.data, toy={**cfg.data.toy, **ALL_EDITS_WORLD})
        return dataclasses.replace(cfg, name=method, objective="supervised", data=data)
    raise ValueError(f"{method!r} is not a trained method; trained: {list(TRAINED)}")


def parse_methods(spec: str | Sequence[str] | None) -> list[str]:
    """``"byg,flowedit"`` (or a list) -> method names in ``METHODS`` order; groups expand.

    Raises:
        ValueError: naming every unknown method and listing the known ones.
    """
    if spec is None:
        return list(METHODS)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("--methods is empty; known: " + ", ".join(METHODS))
    wanted: set[str] = set()
    unknown = []
    for n in names:
        if n in GROUPS:
            wanted.update(GROUPS[n])
        elif n in ALL_NAMES:
            wanted.add(n)
        else:
            unknown.append(n)
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(ALL_NAMES)} "
            f"(groups: {', '.join(GROUPS)})"
        )
    return [m for m in ALL_NAMES if m in wanted]


# ----------------------------------------------------------------------------- data


def toy_world(cfg: RunConfig):
    from byg.data.toy import ToyWorldConfig

    return ToyWorldConfig(resolution=cfg.data.resolution, **cfg.data.toy)


def held_out_sets(world, n: int) -> dict:
    from byg.toy_eval import eval_dataset

    return {s: eval_dataset(world, s, n) for s in ("seen", "unseen")}


def validation_sets(world, n: int) -> dict:
    from byg.toy_eval import eval_dataset

    return {s: eval_dataset(world, s, n, seed=VAL_SEED) for s in ("seen", "unseen")}


# ----------------------------------------------------------------------------- metrics


def geometric_mean(success: float, preservation: float) -> float:
    return math.sqrt(max(success, 0.0) * max(preservation, 0.0))


def _with_gm(m: dict) -> dict:
    out = {k: m[k] for k in ("edit_success", "preservation", "psnr", "n") if k in m}
    out["success_and_preservation"] = m.get("success_and_preservation", float("nan"))
    out["gm"] = geometric_mean(m["edit_success"], m["preservation"])
    return out


def evaluate_method(fn, sets: dict, oracle, batch_size: int = 64) -> dict:
    """Oracle metrics on the seen and unseen sets: overall (pooled), per split, per type."""
    from byg.eval.toy_metrics import summarize
    from byg.toy_eval import evaluate

    res: dict[str, Any] = {"by_type": {}}
    records: list[dict] = []
    for split, ds in sets.items():
        m = evaluate(fn, ds, oracle, batch_size=batch_size)
        res[split] = _with_gm({**m["overall"], "n": m["n"]})
        res["by_type"][split] = {t: _with_gm(v) for t, v in m["by_type"].items()}
        records += m["per_example"]
    res["overall"] = _with_gm({**summarize(records)["overall"], "n": len(records)})
    return res


def spread(values: list[float]) -> dict:
    """Mean, sample std (0 for one value), min and max over seeds (nan-free values only)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n_seeds": len(vals),
    }


def summarize_seeds(per_seed: dict[str, dict]) -> dict:
    """``{seed: evaluate_method(...)}`` -> ``{split: {metric: spread}}`` and ``by_type``."""
    seeds = list(per_seed.values())
    out: dict[str, Any] = {}
    for split in SPLITS:
        out[split] = {m: spread([r[split].get(m, float("nan")) for r in seeds]) for m in METRICS}
    out["by_type"] = {}
    for split in ("seen", "unseen"):
        types = sorted({t for r in seeds for t in r["by_type"].get(split, {})})
        out["by_type"][split] = {
            t: {
                m: spread([r["by_type"][split][t].get(m, float("nan")) for r in seeds])
                for m in METRICS
            }
            for t in types
        }
    return out


# ----------------------------------------------------------------------------- ablations


def paper_direction(full: float, ablated: float, tol: float = PAPER_TOL) -> str:
    d = ablated - full
    return "≈" if abs(d) < tol else ("↑" if d > 0 else "↓")


def our_direction(full: Sequence[float], ablated: Sequence[float], tol: float = OURS_TOL) -> str:
    """Direction of ``ablated − full``, paired by seed: ↑/↓ only when every seed agrees and
    the mean difference is at least ``tol``; otherwise ≈ (within seed noise)."""
    diffs = [a - f for f, a in zip(full, ablated)]
    if not diffs:
        return "?"
    mean = statistics.fmean(diffs)
    if abs(mean) < tol:
        return "≈"
    if all(d > 0 for d in diffs):
        return "↑"
    if all(d < 0 for d in diffs):
        return "↓"
    return "≈"


def agreement(paper: str, ours: str) -> str:
    """``yes`` same direction; ``no`` opposite; ``unclear`` when exactly one side is ≈ (or a
    side is missing)."""
    if "?" in (paper, ours):
        return "unclear"
    if paper == ours:
        return "yes"
    if "≈" in (paper, ours):
        return "unclear"
    return "no"


def ablation_rows(per_seed: dict[str, dict[str, dict]], split: str = "overall") -> list[dict]:
    """One row per (ablation, metric) with the paper's direction beside ours.

    Args:
        per_seed: ``{method: {seed: evaluate_method result}}``; needs ``byg``.
    """
    rows = []
    full = per_seed.get("byg")
    if not full:
        return rows
    for abl in ABLATIONS:
        if abl not in per_seed:
            continue
        seeds = [s for s in full if s in per_seed[abl]]
        paper = PAPER_ABLATION.get(abl)
        for i, metric in enumerate(("edit_success", "preservation")):
            f = [full[s][split][metric] for s in seeds]
            a = [per_seed[abl][s][split][metric] for s in seeds]
            p_dir = "?" if paper is None else paper_direction(PAPER_ABLATION["full"][i], paper[i])
            o_dir = our_direction(f, a)
            rows.append(
                {
                    "ablation": abl,
                    "metric": metric,
                    "paper_full": PAPER_ABLATION["full"][i],
                    "paper_ablated": None if paper is None else paper[i],
                    "paper_direction": p_dir,
                    "ours_full": statistics.fmean(f) if f else float("nan"),
                    "ours_ablated": statistics.fmean(a) if a else float("nan"),
                    "ours_diffs": [x - y for x, y in zip(a, f)],
                    "ours_direction": o_dir,
                    "agree": "not in paper" if paper is None else agreement(p_dir, o_dir),
                }
            )
    return rows


def target_checks(per_seed: dict[str, dict[str, dict]]) -> list[dict]:
    """The issue's targets, each with the means, per-seed differences and a verdict."""
    checks = []

    def check(name, a, b, split, metric):
        if a not in per_seed or b not in per_seed:
            return
        seeds = [s for s in per_seed[a] if s in per_seed[b]]
        va = [per_seed[a][s][split][metric] for s in seeds]
        vb = [per_seed[b][s][split][metric] for s in seeds]
        diffs = [x - y for x, y in zip(va, vb)]
        checks.append(
            {
                "target": name,
                "split": split,
                "metric": metric,
                "a": a,
                "b": b,
                "a_mean": statistics.fmean(va),
                "b_mean": statistics.fmean(vb),
                "diffs": diffs,
                "met": statistics.fmean(diffs) > 0,
                "every_seed": all(d > 0 for d in diffs),
            }
        )

    for other in ("flowedit", "sdedit", "identity"):
        check(f"byg beats {other} on gm(success, preservation)", "byg", other, "overall", "gm")
    check(
        "byg beats supervised-seen on unseen edit success",
        "byg",
        "supervised-seen",
        "unseen",
        "edit_success",
    )
    # supplementary, stricter: edit success alone rewards garbled outputs that happen to
    # read as the target value (a blob reads as an added object, noise as a texture)
    check(
        "(supplementary) byg beats supervised-seen on unseen success∧preservation",
        "byg",
        "supervised-seen",
        "unseen",
        "success_and_preservation",
    )
    return checks


# ----------------------------------------------------------------------------- methods


#: config fields added after ``CACHE_VERSION`` 1 with the value that leaves results as they
#: were: left out of fingerprints at that value, so older cache entries stay valid
NEUTRAL_FIELDS: dict[tuple[str, str], Any] = {
    ("byg", "rollout_reuse"): 1,
    ("train", "init_from"): None,
    ("lora", "rank_pattern"): {},
}


def _without_neutral(run_config: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in run_config.items()}
    for (section, name), neutral in NEUTRAL_FIELDS.items():
        if out.get(section, {}).get(name, neutral) == neutral:
            out.get(section, {}).pop(name, None)
    return out


def _world_fields(world) -> dict:
    """The world's fields for a fingerprint; ``texture_anchor`` only when not ``object``
    (it came later, and ``object`` is how worlds were drawn before it)."""
    fields = dataclasses.asdict(world)
    if fields.get("texture_anchor") == "object":
        fields.pop("texture_anchor")
    return fields


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_identity(cfg: RunConfig) -> str:
    """Hash of the base weights the config points at (the shipped ones when none is named)."""
    from byg.backbones.toy import SHIPPED_BASE

    d = Path(cfg.model.options.get("checkpoint", SHIPPED_BASE))
    f = d / "model.safetensors"
    if not f.exists():
        raise FileNotFoundError(
            f"no toy base at {d} (model.safetensors); pass --base DIR or create one with "
            f"`byg pretrain-base --out {d}`"
        )
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _frozen_base(cfg: RunConfig):
    from byg.backbones.registry import build_backbone

    base = build_backbone(cfg.model.backbone, cfg.model.options)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def baseline_fn(method: str, base, params: dict, seed: int) -> Callable:
    """FlowEdit / SDEdit on the frozen base with captions (not instructions), classifier-free
    guidance against the empty prompt, noise from ``seed``."""
    from byg.baselines.flowedit import FlowEditConfig, flowedit
    from byg.baselines.sdedit import SDEditConfig, sdedit
    from byg.guidance import cfg_velocity

    if method == "flowedit":
        steps = int(params["steps"])
        fcfg = FlowEditConfig(
            steps=steps,
            n_max=max(1, min(steps, round(params["n_max_frac"] * steps))),
            n_avg=int(params["n_avg"]),
            guidance_src=float(params["guidance"][0]),
            guidance_tgt=float(params["guidance"][1]),
        )
    elif method == "sdedit":
        scfg = SDEditConfig(
            strength=float(params["strength"]),
            steps=int(params["steps"]),
            guidance=float(params["guidance"]),
        )
    else:
        raise ValueError(f"baseline must be 'flowedit' or 'sdedit', got {method!r}")

    @torch.no_grad()
    def fn(x_src, items):
        n = len(items)
        tgt = base.encode_text([it["c_tgt"] for it in items])
        unc = base.encode_text([""] * n)
        g = torch.Generator().manual_seed(seed)
        if method == "flowedit":
            src = base.encode_text([it["c_src"] for it in items])
            v_src = cfg_velocity(base, src, unc, fcfg.guidance_src)
            v_tgt = cfg_velocity(base, tgt, unc, fcfg.guidance_tgt)
            return flowedit(v_src, v_tgt, x_src, fcfg, generator=g)
        return sdedit(cfg_velocity(base, tgt, unc, scfg.guidance), x_src, scfg, generator=g)

    return fn


def tune_baseline(
    method: str,
    base,
    val_sets: dict,
    oracle,
    settings: QualitySettings,
    seed: int,
    log: Callable[[str], None] = print,
) -> dict:
    """Coordinate descent over the method's grid on the VALIDATION sets: one pass over the
    parameters in grid order, each set to its best value given the others; the score is the
    geometric mean of edit success and preservation over both validation splits."""
    if method == "flowedit":
        grid, start = settings.flowedit_grid, dict(settings.flowedit_start)
    else:
        grid = settings.sdedit_grid
        start = {**settings.sdedit_start, "steps": settings.sdedit_steps}
    tried: dict[str, dict] = {}

    def score(params: dict) -> float:
        key = json.dumps(params, sort_keys=True)
        if key not in tried:
            t0 = time.time()
            r = evaluate_method(
                baseline_fn(method, base, params, seed),
                val_sets,
                oracle,
                settings.eval_batch,
            )
            tried[key] = {
                "params": dict(params),
                "gm": r["overall"]["gm"],
                "edit_success": r["overall"]["edit_success"],
                "preservation": r["overall"]["preservation"],
                "seconds": time.time() - t0,
            }
            log(
                f"  tune {method} {params}: gm {r['overall']['gm']:.3f} (success "
                f"{r['overall']['edit_success']:.3f}, preservation {r['overall']['preservation']:.3f})"
            )
        return tried[key]["gm"]

    best = dict(start)
    best_score = score(best)
    for name, values in grid.items():
        for v in values:
            cand = {**best, name: v}
            s = score(cand)
            if s > best_score:
                best, best_score = cand, s
    return {"best": best, "val_gm": best_score, "tried": list(tried.values()), "seed": seed}


# ----------------------------------------------------------------------------- runner


@dataclasses.dataclass
class Job:
    method: str
    seed: int
    fingerprint: str
    cache: Path

    @property
    def key(self) -> str:
        return f"{self.method}__seed{self.seed}"


class QualityBench:
    """Plans, runs (or reuses) and reports every (method, seed) of a quality benchmark."""

    def __init__(
        self,
        out: Path,
        *,
        methods: Sequence[str],
        seeds: Sequence[int],
        cfg: RunConfig,
        settings: QualitySettings,
        work: Path,
        quick: bool = False,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.out, self.work = Path(out), Path(work)
        self.methods, self.seeds = list(methods), list(seeds)
        if not self.seeds:
            raise ValueError("--seeds is empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds has duplicates: {self.seeds}")
        self.cfg, self.settings, self.quick, self.progress = cfg, settings, quick, progress
        self.cache_dir = self.out / "quality_cache"
        self.base_hash = base_identity(cfg)
        self.world = toy_world(cfg)
        self._log = log
        self.trained_now: list[str] = []  # jobs computed (not read from cache) this run
        self._oracle = self._base = self._test = self._val = None

    # -- lazy heavy pieces
    def log(self, msg: str) -> None:
        (self._log or tqdm.write)(msg)

    @property
    def oracle(self):
        if self._oracle is None:
            from byg.eval.toy_oracle import ToyOracle

            self._oracle = ToyOracle.load()
        return self._oracle

    @property
    def base(self):
        if self._base is None:
            self._base = _frozen_base(self.cfg)
        return self._base

    @property
    def test(self) -> dict:
        if self._test is None:
            self._test = held_out_sets(self.world, self.settings.n_eval)
        return self._test

    @property
    def val(self) -> dict:
        if self._val is None:
            self._val = validation_sets(self.world, self.settings.n_val)
        return self._val

    # -- fingerprints
    def _common(self) -> dict:
        return {
            "base": self.base_hash,
            "world": _world_fields(self.world),
            "n_eval": self.settings.n_eval,
            "eval_batch": self.settings.eval_batch,
            "version": CACHE_VERSION,
        }

    def method_spec(self, method: str) -> dict:
        if method in TRAINED:
            return {
                "run_config": _without_neutral(run_config_dict(method_config(method, self.cfg)))
            }
        if method in ("flowedit", "sdedit"):
            s = self.settings
            grid = s.flowedit_grid if method == "flowedit" else s.sdedit_grid
            start = s.flowedit_start if method == "flowedit" else s.sdedit_start
            extra = {} if method == "flowedit" else {"steps": s.sdedit_steps}
            return {
                "grid": grid,
                "start": start,
                **extra,
                "n_val": s.n_val,
                "val_seed": VAL_SEED,
                "tune_seed": self.seeds[0],
            }
        return {}

    def jobs(self) -> list[Job]:
        out = []
        for m in self.methods:
            spec = {**self._common(), "method": m, **self.method_spec(m)}
            for s in self.seeds:
                fp = _fingerprint({**spec, "seed": s})
                out.append(Job(m, s, fp, self.cache_dir / f"{m}__seed{s}.json"))
        return out

    @staticmethod
    def cached(job: Job) -> dict | None:
        if not job.cache.exists():
            return None
        try:
            data = json.loads(job.cache.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if data.get("fingerprint") == job.fingerprint else None

    # -- one job
    def _tuning(self, method: str) -> dict:
        spec = self.method_spec(method)
        fp = _fingerprint({**self._common(), "method": method, **spec})
        path = self.cache_dir / f"{method}__tuning.json"
        if path.exists():
            try:
                data = json.loads(path.read_text())
                if data.get("fingerprint") == fp:
                    return data
            except (OSError, json.JSONDecodeError):
                pass
        self.log(f"[quality] tuning {method} on the validation split (seed {VAL_SEED})")
        t0 = time.time()
        res = tune_baseline(
            method, self.base, self.val, self.oracle, self.settings, spec["tune_seed"], self.log
        )
        res.update(fingerprint=fp, wall_seconds=time.time() - t0)
        _write_json(path, res)
        self.log(f"[quality] {method}: chosen {res['best']} (validation gm {res['val_gm']:.3f})")
        return res

    def run_job(self, job: Job) -> dict:
        from byg.toy_eval import editor_fn, identity_fn

        t0 = time.time()
        rec: dict[str, Any] = {"method": job.method, "seed": job.seed}
        if job.method in TRAINED:
            from byg.train import train

            cfg = method_config(job.method, self.cfg)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=job.seed))
            run_dir = self.work / f"{job.key}__{job.fingerprint[:8]}"
            self.log(
                f"[quality] training {job.method} (seed {job.seed}, {cfg.train.steps} steps) "
                f"in {run_dir}"
            )
            from byg.checkpoint import list_checkpoints

            resume = "latest" if list_checkpoints(run_dir) else None
            res = train(cfg, run_dir, resume=resume, progress=self.progress)
            if res["interrupted"]:
                raise KeyboardInterrupt
            rec["train_seconds"] = res["wall_seconds"]
            rec["steps"] = res["steps"]
            rec["resumed"] = resume is not None
            rec.update(_step_kinds(res["history"]))
            s = cfg.sample
            fn = editor_fn(
                res["editor"], steps=s.steps, shift=s.shift, use_ema=s.use_ema, seed=job.seed
            )
            rec["run_dir"] = str(run_dir)
        elif job.method == "identity":
            fn = identity_fn
        else:
            tuning = self._tuning(job.method)
            params = tuning["best"]
            rec["params"] = params
            rec["tuning_seconds"] = tuning["wall_seconds"]
            fn = baseline_fn(job.method, self.base, params, job.seed)
        t1 = time.time()
        rec["metrics"] = evaluate_method(fn, self.test, self.oracle, self.settings.eval_batch)
        rec["eval_seconds"] = time.time() - t1
        rec["wall_seconds"] = time.time() - t0
        rec["fingerprint"] = job.fingerprint
        _write_json(job.cache, rec)
        return rec

    # -- everything
    def run(self) -> dict[str, dict[int, dict]]:
        jobs = self.jobs()
        todo = [j for j in jobs if self.cached(j) is None]
        self.log(
            f"[quality] {len(self.methods)} method(s) x {len(self.seeds)} seed(s) = {len(jobs)} "
            f"job(s); {len(jobs) - len(todo)} cached in {self.cache_dir}, {len(todo)} to run"
        )
        records: dict[str, dict[int, dict]] = {m: {} for m in self.methods}
        bar = tqdm(jobs, desc="bench quality", disable=not self.progress, unit="job")
        for job in bar:
            bar.set_postfix_str(job.key)
            rec = self.cached(job)
            if rec is None:
                rec = self.run_job(job)
                self.trained_now.append(job.key)
                m = rec["metrics"]
                self.log(
                    f"[quality] {job.method} seed {job.seed}: "
                    + " | ".join(
                        f"{sp} success {m[sp]['edit_success']:.3f} preservation "
                        f"{m[sp]['preservation']:.3f} PSNR {m[sp]['psnr']:.1f}"
                        for sp in ("seen", "unseen")
                    )
                    + f" ({rec['wall_seconds']:.0f} s)"
                )
            records[job.method][job.seed] = rec
        bar.close()
        return records


def _step_kinds(history: list[dict]) -> dict:
    """How many steps of each kind (identity / full / supervised) this invocation trained,
    and the first full ByG step (the end of the warm-up); None when there was none."""
    counts: dict[str, int] = {}
    for row in history:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    first_full = next((row["step"] for row in history if row["kind"] == "full"), None)
    return {"step_kinds": counts, "first_full_step": first_full}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# ----------------------------------------------------------------------------- report


def build_results(
    records: dict[str, dict[int, dict]],
    *,
    cfg: RunConfig,
    settings: QualitySettings,
    seeds: Sequence[int],
    command: str,
    wall_seconds: float,
    quick: bool,
    base: str,
) -> dict:
    per_seed = {m: {str(s): r["metrics"] for s, r in recs.items()} for m, recs in records.items()}
    methods = {}
    for m, recs in records.items():
        methods[m] = {
            "summary": summarize_seeds(per_seed[m]),
            "seeds": {
                str(s): {k: v for k, v in r.items() if k != "fingerprint"} for s, r in recs.items()
            },
            "compute_seconds": sum(r.get("wall_seconds", 0.0) for r in recs.values()),
        }
    tuning = {
        m: {"params": next(iter(records[m].values())).get("params")}
        for m in ("flowedit", "sdedit")
        if records.get(m)
    }
    compute = sum(v["compute_seconds"] for v in methods.values())
    return {
        "command": command,
        "wall_seconds": wall_seconds,
        "compute_seconds": compute,
        "quick": quick,
        "seeds": list(seeds),
        "steps": cfg.train.steps,
        "base": base,
        "n_eval_per_split": settings.n_eval,
        "n_val_per_split": settings.n_val,
        "val_seed": VAL_SEED,
        "byg_config": run_config_dict(cfg),
        "methods": methods,
        "tuning": tuning,
        "targets": target_checks(per_seed),
        "ablations": ablation_rows(per_seed),
        "paper_ablation": PAPER_ABLATION,
    }


def _ms(s: dict, digits: int = 3) -> str:
    """``mean ± std [min, max]`` (just the mean for one seed)."""
    if s is None or math.isnan(s.get("mean", float("nan"))):
        return "–"
    f = f"{{:.{digits}f}}"
    if s.get("n_seeds", 1) <= 1:
        return f.format(s["mean"])
    return (
        f"{f.format(s['mean'])} ± {f.format(s['std'])} [{f.format(s['min'])}, {f.format(s['max'])}]"
    )


def write_markdown(res: dict, path: Path) -> None:
    methods = res["methods"]
    order = [m for m in ALL_NAMES if m in methods]
    lines = [
        "# byg bench quality: toy-world editors against the oracle",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Wall time of this invocation {res['wall_seconds']:.0f} s; compute of every "
        f"(method, seed) in the tables {res['compute_seconds']:.0f} s (training + tuning + "
        f"evaluation, cached entries included). Seeds {res['seeds']}; {res['steps']} training "
        f"steps per trained method; {res['n_eval_per_split']} test edits per split (seen, "
        f"unseen; `EVAL_SEED` scenes), FlowEdit/SDEdit tuned on {res['n_val_per_split']} "
        f"validation edits per split (seed {res['val_seed']}). Base: {res['base']}."
        + (" **QUICK SMOKE RUN: the numbers mean nothing.**" if res["quick"] else ""),
        "",
        "Cells: mean ± std [min, max] over seeds. gm = √(edit success × preservation); "
        "success∧pres. = the fraction of edits that both succeed and preserve.",
        "",
    ]
    for split in SPLITS:
        title = {
            "overall": "Overall (seen and unseen pooled)",
            "seen": "Seen edits",
            "unseen": "Unseen edits",
        }
        lines += [
            f"## {title[split]}",
            "",
            "| method | edit success | preservation | gm | success∧pres. | PSNR to GT (dB) |",
            "|---|---|---|---|---|---|",
        ]
        for m in order:
            s = methods[m]["summary"][split]
            lines.append(
                f"| {m} | {_ms(s['edit_success'])} | {_ms(s['preservation'])} | {_ms(s['gm'])} "
                f"| {_ms(s['success_and_preservation'])} | {_ms(s['psnr'], 1)} |"
            )
        lines.append("")
    lines += [
        "## Per edit type (means over seeds: edit success / preservation)",
        "",
    ]
    for split in ("seen", "unseen"):
        types = sorted({t for m in order for t in methods[m]["summary"]["by_type"][split]})
        if not types:
            continue
        lines += [
            f"### {split}",
            "",
            "| method | " + " | ".join(types) + " |",
            "|---|" + "---|" * len(types),
        ]
        for m in order:
            bt = methods[m]["summary"]["by_type"][split]
            cells = []
            for t in types:
                if t in bt:
                    cells.append(
                        f"{bt[t]['edit_success']['mean']:.2f} / {bt[t]['preservation']['mean']:.2f}"
                    )
                else:
                    cells.append("–")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if res["targets"]:
        lines += [
            "## Targets",
            "",
            "| target | ours (a vs b, means) | per-seed differences | met? |",
            "|---|---|---|---|",
        ]
        for t in res["targets"]:
            diffs = ", ".join(f"{d:+.3f}" for d in t["diffs"])
            verdict = "yes" if t["met"] else "**no**"
            if t["met"] and not t["every_seed"]:
                verdict += " (not on every seed)"
            lines.append(
                f"| {t['target']} ({t['split']} {t['metric']}) | {t['a_mean']:.3f} vs "
                f"{t['b_mean']:.3f} | {diffs} | {verdict} |"
            )
        lines.append("")
    if res["ablations"]:
        lines += [
            "## Ablations: the paper's directions beside ours",
            "",
            "Direction of (ablation − full ByG). Paper: GEdit-Bench VIEScore (0-10), full ByG "
            f"8.32 / 7.62; a difference under {PAPER_TOL} point is ≈. Ours: overall oracle "
            f"rates; ↑/↓ only when every seed moves that way and the mean moves by at least "
            f"{OURS_TOL}; else ≈. agree: yes = same direction, no = opposite, unclear = one "
            "side ≈. A `no` is first a suspected bug (see docs/bench_quality.md).",
            "",
            "| ablation | metric | paper (full → ablated) | paper | ours (full → ablated) | per-seed Δ | ours | agree? |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["ablations"]:
            paper = (
                "not reported"
                if r["paper_ablated"] is None
                else f"{r['paper_full']:.2f} → {r['paper_ablated']:.2f}"
            )
            diffs = ", ".join(f"{d:+.3f}" for d in r["ours_diffs"])
            agree = f"**{r['agree']}**" if r["agree"] == "no" else r["agree"]
            lines.append(
                f"| {r['ablation']} | {r['metric'].replace('_', ' ')} | {paper} | "
                f"{r['paper_direction']} | {r['ours_full']:.3f} → {r['ours_ablated']:.3f} | "
                f"{diffs} | {r['ours_direction']} | {agree} |"
            )
        lines.append("")
        notes = path.parent / NOTES_FILE
        if notes.exists():  # what was found when investigating the rows (written by hand)
            lines += [f"### What we found (from `{NOTES_FILE}`)", "", notes.read_text().strip(), ""]
    if res["tuning"]:
        lines += ["## Tuned zero-shot baselines (validation split)", ""]
        for m, t in res["tuning"].items():
            lines.append(f"- {m}: {t['params']}")
        lines.append("")
    lines += [
        "## Cost per (method, seed)",
        "",
        "| method | seconds (mean over seeds) | of which training | of which evaluation "
        "| steps by kind (per seed) | first full ByG step (per seed) |",
        "|---|---|---|---|---|---|",
    ]
    for m in order:
        seeds = list(methods[m]["seeds"].values())
        tot = statistics.fmean(r.get("wall_seconds", 0.0) for r in seeds)
        tr = statistics.fmean(r.get("train_seconds", 0.0) for r in seeds)
        ev = statistics.fmean(r.get("eval_seconds", 0.0) for r in seeds)
        kinds = "; ".join(
            ", ".join(f"{k} {v}" for k, v in sorted(r["step_kinds"].items()))
            for r in seeds
            if r.get("step_kinds")
        )
        first = ", ".join(
            str(r.get("first_full_step") or "none") for r in seeds if "step_kinds" in r
        )
        lines.append(
            f"| {m} | {tot:.0f} | {tr:.0f} | {ev:.0f} | {kinds or '–'} | "
            f"{first if m in TRAINED and not m.startswith('supervised') else '–'} |"
        )
    lines += [
        "",
        "Files: `quality.json` (every number above, per seed), `quality.png` (edit success vs "
        "preservation, one point per method), `quality_cache/` (one JSON per method and seed).",
    ]
    path.write_text("\n".join(lines) + "\n")


def plot_quality(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = res["methods"]
    order = [m for m in ALL_NAMES if m in methods]
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 5.8))
    main_colours = plt.get_cmap("tab10")
    abl_colours = plt.get_cmap("Dark2")
    handles = {}
    for ax, split in zip(axes, ("overall", "unseen")):
        g = np.linspace(0.001, 1, 200)
        for level in (0.2, 0.4, 0.6, 0.8):  # iso-gm curves: success * preservation = level²
            y = level**2 / g
            ax.plot(g[y <= 1.05], y[y <= 1.05], color="0.85", lw=0.8, zorder=0)
            ax.text(level, level, f"gm {level}", color="0.6", fontsize=7)
        for m in order:
            s = methods[m]["summary"][split]
            x, y = s["edit_success"], s["preservation"]
            if math.isnan(x["mean"]):
                continue
            if m in ABLATIONS:
                colour, marker = abl_colours(ABLATIONS.index(m) % 8), "s"
            elif m in COST_OPTIONS:
                colour, marker = "0.45", "^"
            else:
                k = [n for n in METHODS if n not in ABLATIONS].index(m)
                colour, marker = main_colours(k % 10), "*" if m == "byg" else "o"
            h = ax.errorbar(
                x["mean"],
                y["mean"],
                xerr=[[x["mean"] - x["min"]], [x["max"] - x["mean"]]],
                yerr=[[y["mean"] - y["min"]], [y["max"] - y["mean"]]],
                fmt=marker,
                ms=14 if m == "byg" else 7,
                color=colour,
                capsize=2,
                zorder=3 if m == "byg" else 2,
            )
            handles[m] = h
            ax.annotate(
                m, (x["mean"], y["mean"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("edit success")
        ax.set_ylabel("preservation")
        ax.set_title(f"{split} edits (bars: min-max over seeds)")
        ax.grid(alpha=0.3)
    fig.legend(
        [handles[m] for m in order if m in handles],
        [m for m in order if m in handles],
        loc="center right",
        fontsize=8,
    )
    title = "byg bench quality: one point per method (mean over seeds)"
    if res["quick"]:
        title += " - QUICK SMOKE RUN: numbers mean nothing"
    fig.suptitle(title, color="red" if res["quick"] else "black")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry


def run_quality(
    out: str | Path,
    *,
    methods: str | Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1),
    steps: int | None = None,
    quick: bool = False,
    base: str | Path | None = None,
    work: str | Path = "runs/bench_quality",
    overrides: Sequence[str] = (),
    settings: QualitySettings | None = None,
    n_eval: int | None = None,
    n_val: int | None = None,
    command: str = "",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run (or reuse) every (method, seed) and write quality.json, quality.md, quality.png.

    Returns the ``quality.json`` dict plus ``"computed"``: the jobs run (not cached) now.
    """
    t0 = time.time()
    method_list = parse_methods(methods)  # a typo must not cost a model load
    out = Path(out)
    cfg = bench_config(
        quick=quick, steps=steps, base=Path(base) if base else None, overrides=overrides
    )
    torch.set_num_threads(max(1, cfg.train.num_threads or 1))
    settings = settings or (QualitySettings.quick() if quick else QualitySettings())
    if n_eval is not None:
        settings = dataclasses.replace(settings, n_eval=n_eval)
    if n_val is not None:
        settings = dataclasses.replace(settings, n_val=n_val)
    bench = QualityBench(
        out,
        methods=method_list,
        seeds=seeds,
        cfg=cfg,
        settings=settings,
        work=Path(work),
        quick=quick,
        progress=progress,
        log=log,
    )
    records = bench.run()
    res = build_results(
        records,
        cfg=cfg,
        settings=settings,
        seeds=seeds,
        command=command or f"byg bench quality --out {out}",
        wall_seconds=time.time() - t0,
        quick=quick,
        base=str(base) if base else "shipped (byg/assets/toy_base)",
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "quality.json", res)
    write_markdown(res, out / "quality.md")
    plot_quality(res, out / "quality.png")
    res["computed"] = bench.trained_now
    return res


def _command_line(args: argparse.Namespace) -> str:
    parts = ["byg bench quality", f"--out {args.out}"]
    if args.methods:
        parts.append(f"--methods {args.methods}")
    if args.seeds != "0,1":
        parts.append(f"--seeds {args.seeds}")
    if args.steps is not None:
        parts.append(f"--steps {args.steps}")
    if args.quick:
        parts.append("--quick")
    if args.base:
        parts.append(f"--base {args.base}")
    if args.n_eval is not None:
        parts.append(f"--n-eval {args.n_eval}")
    if args.n_val is not None:
        parts.append(f"--n-val {args.n_val}")
    if args.work != "runs/bench_quality":
        parts.append(f"--work {args.work}")
    parts += [f"--set {s}" for s in args.set or []]
    return " ".join(parts)


def cmd_quality(args: argparse.Namespace) -> int:
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
    torch.set_num_threads(1)
    res = run_quality(
        args.out,
        methods=args.methods,
        seeds=seeds,
        steps=args.steps,
        quick=args.quick,
        base=args.base,
        work=args.work,
        overrides=args.set or [],
        n_eval=args.n_eval,
        n_val=args.n_val,
        command=_command_line(args),
        progress=not args.no_progress,
    )
    print((Path(args.out) / "quality.md").read_text())
    print(
        f"[quality] wrote {Path(args.out) / 'quality.json'}, quality.md, quality.png; "
        f"computed now: {len(res['computed'])} job(s)"
    )
    return 0


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Adds ``quality`` to the ``byg bench`` subcommands (called from ``byg.bench``)."""
    q = bench_sub.add_parser(
        "quality",
        help="edit success / preservation / PSNR of ByG, baselines and ablations on the toy world",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument(
        "--out", default="benchmarks/results", help="folder for quality.{json,md,png} and the cache"
    )
    q.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset (default: all = the first 14): {', '.join(ALL_NAMES)}; groups: "
        f"{', '.join(GROUPS)}",
    )
    q.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    q.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    q.add_argument("--quick", action="store_true", help="tiny smoke run: few steps, few examples")
    q.add_argument(
        "--base", default=None, help="toy base folder (default: the shipped byg/assets/toy_base)"
    )
    q.add_argument("--n-eval", type=int, default=None, help="test edits per split (default 200)")
    q.add_argument(
        "--n-val", type=int, default=None, help="validation edits per split for tuning (default 48)"
    )
    q.add_argument(
        "--work", default="runs/bench_quality", help="folder for the training runs' checkpoints"
    )
    q.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of configs/toy_image.yaml for every trained method (repeatable)",
    )
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quality)


__all__ = [
    "ABLATIONS",
    "ALL_NAMES",
    "COST_OPTIONS",
    "METHODS",
    "PAPER_ABLATION",
    "QualitySettings",
    "QualityBench",
    "VAL_SEED",
    "ablation_rows",
    "agreement",
    "bench_config",
    "method_config",
    "our_direction",
    "paper_direction",
    "parse_methods",
    "run_quality",
    "target_checks",
    "validation_sets",
    "held_out_sets",
]

"""``byg demo``: the whole ByG story on the toy world, measured against ground truth.

1. the toy text-to-image base (shipped, or pretrained here), with its caption accuracy;
2. a ByG editor trained WITHOUT pairs (configs/toy_image.yaml), evaluated during training;
3. an ``identity-only`` editor (the identity loss alone, same steps): what copying gives;
   its first steps are the ByG run's identity-only warm-up, trained once and shared;
4. ``identity`` (output = source): the floor every editor must beat on edit success;
5. all evaluated on held-out seen and unseen edits; report.md, results.json, a sample
   grid and loss curves written to the output folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from byg.checkpoint import checkpoint_path
from byg.config import apply_overrides, from_dict, load_yaml
from byg.infer import tensor_to_image
from byg.run_config import RunConfig
from byg.toy_eval import editor_fn, eval_dataset, evaluate, identity_fn, oracle_hook

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "toy_image.yaml"


def demo_config(
    quick: bool,
    steps: int | None,
    base_dir: Path | None,
    config: Path | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The demo's ByG run: ``config`` (default configs/toy_image.yaml), the demo's schedule
    (``quick``: a smoke run), then ``overrides`` (``--set``), then ``steps`` and ``base_dir``."""
    path = Path(config) if config is not None else CONFIG
    if config is not None and not path.exists():
        raise FileNotFoundError(f"byg demo: no config file {path}")
    data = load_yaml(path) if path.exists() else {}
    over = []
    if quick:
        over += [
            "byg.warmup_ratio=null",  # a smoke run: the warm-up is a step count only
            "train.steps=120",
            "byg.warmup_steps=40",
            "train.eval_every=40",
            "train.eval_examples=24",
            "train.preview_every=40",
            "byg.rollout_steps=4",
            "train.save_every=60",
        ]
    else:  # held-out metrics every 200 steps, not the config's 100: each costs ~20 s here
        over.append("train.eval_every=200")
    over += list(overrides)
    if steps is not None:
        over.append(f"train.steps={steps}")
    apply_overrides(data, over)
    cfg = from_dict(RunConfig, data)
    if base_dir is not None:
        cfg.model.options = {**cfg.model.options, "checkpoint": str(base_dir)}
    return cfg


def identity_only_config(cfg: RunConfig) -> RunConfig:
    """Same editor, steps and optimiser; every step is an identity-only step.

    A deep copy: changing the result (the demo turns its evaluations off) leaves ``cfg`` as is.
    """
    byg = dataclasses.replace(cfg.byg, p_id=1.0, warmup_ratio=None, no_identity_steps=False)
    return copy.deepcopy(dataclasses.replace(cfg, name=cfg.name + "_identity_only", byg=byg))


def ensure_base(
    out: Path, quick: bool, pretrain: bool, num_threads: int = 1, base: Path | None = None
) -> tuple[Path | None, dict]:
    """``base`` if given, else the shipped base unless asked to pretrain (or none is shipped)."""
    from byg.backbones.toy import SHIPPED_BASE, toy_checkpoint_files
    from byg.pretrain import load_pretrain_config, pretrain_base

    def measured(folder: Path) -> dict:  # the base's eval.json, if it has one
        ev = folder / "eval.json"
        return json.loads(ev.read_text()) if ev.exists() else {}

    if base is not None:
        toy_checkpoint_files(base)  # fail before any work if it is not a saved base
        return base, measured(base)
    if not pretrain and (SHIPPED_BASE / "model.safetensors").exists():
        return None, measured(SHIPPED_BASE)
    base_dir = out / "base"
    if (base_dir / "model.safetensors").exists():  # cached from an earlier demo run
        return base_dir, measured(base_dir)
    pcfg = load_pretrain_config(quick=quick, overrides=[f"num_threads={num_threads}"])
    res = pretrain_base(pcfg, base_dir)
    return base_dir, res


def _fmt(x: float) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def write_report(out: Path, results: dict[str, Any]) -> None:
    lines = ["# byg demo: ByG on the toy world", ""]
    lines += [
        f"Wall time {results['wall_seconds']:.0f} s. Base caption accuracy (oracle, mean over "
        f"attributes; nan = not measured for this base): {results['base_oracle_accuracy']:.3f}. ByG steps: {results['steps']}.",
        "",
        _setup_line(results),
        "",
        _warmup_line(results),
        "",
        f"The identity-only editor is the ByG run up to step "
        f"{results.get('identity_only_shared_steps', 0)} (the warm-up, trained once), continued "
        f"with identity-only steps to step {results['steps']}.",
        "",
        "## Held-out edits",
        "",
        "| method | split | edit success | preservation | PSNR to GT (dB) | n |",
        "|---|---|---|---|---|---|",
    ]
    for m in ("identity", "identity-only", "byg"):
        for split in ("seen", "unseen"):
            r = results[m][split]
            lines.append(
                f"| {m} | {split} | {_fmt(r['edit_success'])} | {_fmt(r['preservation'])} | {_fmt(r['psnr'])} | {r.get('n', '')} |"
            )
    lines += [
        "",
        "## ByG per edit type",
        "",
        "| split | edit type | edit success | preservation | PSNR |",
        "|---|---|---|---|---|",
    ]
    for split in ("seen", "unseen"):
        for et, r in sorted(results["byg_by_type"][split].items()):
            lines.append(
                f"| {split} | {et} | {_fmt(r['edit_success'])} | {_fmt(r['preservation'])} | {_fmt(r['psnr'])} |"
            )
    if results.get("curve"):
        lines += [
            "",
            "## During training (seen edits, small held-out set)",
            "",
            "| step | edit success | preservation | PSNR |",
            "|---|---|---|---|",
        ]
        for row in results["curve"]:
            lines.append(
                f"| {row['step']} | {_fmt(row['edit_success'])} | {_fmt(row['preservation'])} | {_fmt(row['psnr'])} |"
            )
    lines += [
        "",
        "Files: `results.json`, `samples.png` (rows: source | ByG | identity-only | ground truth), `curves.png`.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _setup_line(results: dict[str, Any]) -> str:
    """Which config, overrides, base and edit texts the run used (older results: none)."""
    if "config" not in results:
        return ""
    over = " ".join(f"`--set {o}`" for o in results.get("overrides", [])) or "none"
    text = {
        "edit": 'instructions ("make the circle blue")',
        "caption": "the target's caption (reverse: the source's), `data.toy.instructions: caption`",
    }.get(results.get("edit_text", "edit"), str(results.get("edit_text")))
    return (
        f"Config `{results['config']}`, overrides {over}; base `{results.get('base')}`. "
        f"The editor's text for an edit: {text}."
    )


def _warmup_line(results: dict[str, Any]) -> str:
    end = results.get("warmup_end_step")
    lid, lb = results.get("warmup_last_loss_id"), results.get("warmup_last_loss_base")
    copy = (
        f" Last warm-up step: identity loss {lid:.4f} vs the base's own denoising loss "
        f"{lb:.4f} (ratio {lid / lb:.2f}; below 1 = the editor uses the source)."
        if lid is not None and lb
        else ""
    )
    if end is None:
        return "The identity-only warm-up never ended: no ByG step ran." + copy
    return f"Identity-only warm-up ended by step {end} (first logged ByG step)." + copy


def plot_curves(out: Path, history: list[dict], curve: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = ["loss_id", "loss_cyc", "prior_fwd", "prior_rev", "loss_base_uncond"]
    for k in keys:
        pts = [(h["step"], h[k]) for h in history if k in h]
        if pts:
            xs, ys = zip(*pts)
            axes[0].plot(xs, ys, label=k, lw=0.8)
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].set_title("loss terms")
    if curve:
        for k in ("edit_success", "preservation"):
            axes[1].plot([c["step"] for c in curve], [c[k] for c in curve], marker="o", label=k)
        axes[1].set_ylim(0, 1.02)
        axes[1].legend()
        axes[1].set_xlabel("step")
        axes[1].set_title("held-out seen edits")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def sample_grid(fns: list, dataset, n: int = 8):
    items = [dataset[i] for i in range(n)]
    x_src = torch.stack([it["x_src"] for it in items])
    cols = (
        [x_src]
        + [fn(x_src, items).clamp(-1, 1) for fn in fns]
        + [torch.stack([it["x_tgt"] for it in items])]
    )
    rows = torch.stack(cols, 1)  # (n, cols, 3, H, W)
    b, c, ch, h, w = rows.shape
    pad = torch.ones(b, c, ch, h + 2, w + 2)
    pad[..., 1:-1, 1:-1] = rows
    return tensor_to_image(pad.permute(2, 0, 3, 1, 4).reshape(ch, b * (h + 2), c * (w + 2)))


def run_demo(
    out: Path,
    quick: bool = False,
    pretrain: bool = False,
    steps: int | None = None,
    base: Path | None = None,
    config: Path | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    from byg.data.toy import ToyWorldConfig
    from byg.eval.toy_oracle import ToyOracle
    from byg.train import train

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    first = demo_config(quick, steps, None, config, overrides)
    threads = first.train.num_threads or 1
    if base is None and not pretrain and first.model.options.get("checkpoint"):
        base = Path(first.model.options["checkpoint"])  # the config names its base ...
        if not base.is_absolute() and not base.exists() and (REPO / base).exists():
            base = REPO / base  # ... relative to the repository (a shipped base), run elsewhere
    base_dir, base_eval = ensure_base(out, quick, pretrain, threads, base)
    cfg = demo_config(quick, steps, base_dir, config, overrides)
    torch.set_num_threads(max(1, cfg.train.num_threads or torch.get_num_threads()))
    world = ToyWorldConfig(resolution=cfg.data.resolution, **cfg.data.toy)
    oracle = ToyOracle.load()
    n_eval = 48 if quick else 200
    sets = {s: eval_dataset(world, s, n_eval) for s in ("seen", "unseen")}
    curve: list[dict] = []
    hook = oracle_hook(cfg, curve=curve, oracle=oracle)

    # The ByG run starts with identity-only steps, exactly those of the identity-only
    # editor (same seed, data, noise and optimiser): train that warm-up once, then let
    # both runs continue from its checkpoint.
    print(f"[demo] ByG run ({cfg.train.steps} steps, no pairs), part 1: identity-only warm-up")
    for run in ("byg", "identity_only"):  # an earlier demo's runs here: start afresh
        if (out / run).exists():
            print(f"[demo] replacing the earlier run in {out / run}")
            shutil.rmtree(out / run)
    warm = train(cfg, out / "byg", hooks=[hook], until_warm=True)
    fork = str(checkpoint_path(out / "byg", warm["steps"])) if warm["steps"] else None
    print(
        f"[demo] identity-only editor: continues the shared warm-up from step {warm['steps']}"
        f" to {cfg.train.steps}"
    )
    id_cfg = identity_only_config(cfg)
    id_cfg.train.eval_every = 0
    (out / "identity_only").mkdir(parents=True, exist_ok=True)
    if fork:
        shutil.copyfile(out / "byg" / "log.jsonl", out / "identity_only" / "log.jsonl")
    res_id = train(id_cfg, out / "identity_only", resume=fork)
    print(f"[demo] ByG run, part 2: ByG steps from step {warm['steps']}")
    res = train(cfg, out / "byg", resume=fork, hooks=[hook])
    res["history"] = warm["history"] + res["history"]
    byg_editor = res["editor"]

    print("[demo] evaluating on held-out edits")
    methods = {
        "identity": identity_fn,
        "identity-only": editor_fn(
            res_id["editor"], steps=cfg.sample.steps, guidance_scale=cfg.sample.guidance_scale
        ),
        "byg": editor_fn(
            byg_editor, steps=cfg.sample.steps, guidance_scale=cfg.sample.guidance_scale
        ),
    }
    results: dict[str, Any] = {}
    by_type: dict[str, Any] = {}
    for name, fn in methods.items():
        results[name] = {}
        for split, ds in sets.items():
            m = evaluate(fn, ds, oracle)
            results[name][split] = {**m["overall"], "n": m["n"]}
            if name == "byg":
                by_type[split] = m["by_type"]
    acc = base_eval.get("accuracy") if isinstance(base_eval.get("accuracy"), dict) else {}
    accs = [v for v in acc.values() if isinstance(v, (int, float))]
    results["byg_by_type"] = by_type
    results["base_oracle_accuracy"] = float(sum(accs) / len(accs)) if accs else float("nan")
    results["base_oracle_accuracy_per_attribute"] = acc if isinstance(acc, dict) else {}
    results["curve"] = curve
    results["warmup_end_step"] = next(
        (h["step"] for h in res["history"] if h.get("kind") == "full"), None
    )
    id_rows = [h for h in res["history"] if "loss_base_uncond" in h]
    if id_rows:  # the copy path at the end of the warm-up: L_id vs the base's own loss
        last = id_rows[-1]
        results["warmup_last_loss_id"] = last["loss_id"]
        results["warmup_last_loss_base"] = last["loss_base_uncond"]
    results["steps"] = cfg.train.steps
    results["config"] = str(config) if config is not None else str(CONFIG.relative_to(REPO))
    results["overrides"] = list(overrides)
    results["base"] = str(base_dir) if base_dir is not None else "byg/assets/toy_base (shipped)"
    results["edit_text"] = world.instructions
    results["identity_only_shared_steps"] = warm["steps"]
    results["quick"] = quick
    results["wall_seconds"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    sample_grid([methods["byg"], methods["identity-only"]], sets["seen"]).save(out / "samples.png")
    plot_curves(out, res["history"], curve)
    write_report(out, results)
    print((out / "report.md").read_text())
    return results


__all__ = ["run_demo", "demo_config", "identity_only_config"]

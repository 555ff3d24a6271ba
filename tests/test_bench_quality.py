"""``byg bench quality`` on a tiny base: the runner, the cache, names, ablation logic, splits."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from byg import bench_quality as bq
from byg.backbones.toy import ToyBackbone, ToyBackboneConfig, save_toy_backbone
from byg.cli import main
from byg.config import to_dict

TINY_SET = ["lora.rank=2", "train.batch_size=2", "train.steps=2", "sample.steps=2"]


def tiny_settings() -> bq.QualitySettings:
    return bq.QualitySettings(
        n_eval=3,
        n_val=2,
        flowedit_grid={"n_max_frac": [0.5]},
        flowedit_start={"steps": 2, "n_max_frac": 1.0, "n_avg": 1, "guidance": [1.0, 1.0]},
        sdedit_grid={"strength": [0.5]},
        sdedit_start={"strength": 0.8, "guidance": 1.0},
        sdedit_steps=2,
    )


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ToyBackboneConfig(dim=32, depth=1, heads=2, stem_channels=8, patch_size=4, text_layers=1)
    return save_toy_backbone(ToyBackbone(cfg), tmp_path_factory.mktemp("base"))


def _run(out, base, methods, **kw):
    return bq.run_quality(
        out,
        methods=methods,
        seeds=(0, 1),
        quick=True,
        base=base,
        work=out / "work",
        overrides=TINY_SET,
        settings=tiny_settings(),
        progress=False,
        log=lambda m: None,
        **kw,
    )


def test_runner_end_to_end_then_resume_reuses_the_cache(tiny_base, tmp_path):
    out = tmp_path / "res"
    res = _run(out, tiny_base, "byg,no_cycle,sdedit,identity")
    assert sorted(res["computed"]) == sorted(
        f"{m}__seed{s}" for m in ("byg", "no_cycle", "sdedit", "identity") for s in (0, 1)
    )
    data = json.loads((out / "quality.json").read_text())
    for key in ("command", "wall_seconds", "methods", "targets", "ablations", "tuning", "seeds"):
        assert key in data
    assert data["seeds"] == [0, 1]
    summ = data["methods"]["byg"]["summary"]
    for split in ("overall", "seen", "unseen"):
        for metric in ("edit_success", "preservation", "gm", "psnr"):
            s = summ[split][metric]
            assert s["min"] <= s["mean"] <= s["max"] and s["n_seeds"] == 2
    assert set(summ["by_type"]) == {"seen", "unseen"} and summ["by_type"]["unseen"]
    n = data["methods"]["byg"]["seeds"]["0"]["metrics"]
    assert n["seen"]["n"] == 3 and n["unseen"]["n"] == 3 and n["overall"]["n"] == 6
    # identity: output = source; its preservation is perfect and seeds agree exactly
    ident = data["methods"]["identity"]["summary"]["overall"]
    assert ident["preservation"]["mean"] == 1.0 and ident["edit_success"]["std"] == 0.0
    assert data["methods"]["byg"]["seeds"]["1"]["steps"] == 2
    assert data["tuning"]["sdedit"]["params"]["strength"] in (0.5, 0.8)
    assert [r["ablation"] for r in data["ablations"]] == ["no_cycle", "no_cycle"]
    assert {t["b"] for t in data["targets"]} == {"sdedit", "identity"}
    md = (out / "quality.md").read_text()
    for heading in ("## Overall", "## Seen edits", "## Unseen edits", "## Per edit type"):
        assert heading in md
    assert "| no_cycle | edit success | 8.32 → 8.98 | ↑ |" in md
    assert "byg bench quality" in md
    assert (out / "quality.png").stat().st_size > 10_000

    assert "What we found" not in md
    # hand-written findings next to quality.md are carried into it
    (out / "quality_notes.md").write_text("- no_cycle: checked, agrees.\n")

    # a second run with one more method: the old entries come from the cache, untouched
    cache = out / "quality_cache" / "byg__seed0.json"
    before = (cache.stat().st_mtime_ns, cache.read_text())
    res2 = _run(out, tiny_base, "byg,no_cycle,sdedit,identity,identity-only")
    assert sorted(res2["computed"]) == ["identity-only__seed0", "identity-only__seed1"]
    assert (cache.stat().st_mtime_ns, cache.read_text()) == before
    assert "- no_cycle: checked, agrees." in (out / "quality.md").read_text()
    data2 = json.loads((out / "quality.json").read_text())
    assert data2["methods"]["byg"]["seeds"] == data["methods"]["byg"]["seeds"]
    # and a changed setting invalidates exactly the entries it affects
    res3 = _run(out, tiny_base, "identity", n_eval=4)
    assert sorted(res3["computed"]) == ["identity__seed0", "identity__seed1"]


def test_cli_quick_run_and_unknown_method(tiny_base, tmp_path, capsys):
    assert main(["bench", "quality", "--out", str(tmp_path), "--methods", "byg,flowedt"]) == 1
    err = capsys.readouterr().err
    assert "unknown method(s) 'flowedt'" in err and "flowedit" in err
    with pytest.raises(ValueError, match="unknown method"):
        bq.parse_methods(["byg", "nope"])
    assert bq.parse_methods("ablations,byg") == ["byg", *bq.ABLATIONS]
    assert bq.parse_methods(None) == list(bq.METHODS) and len(bq.METHODS) == 14
    args = ["bench", "quality", "--out", str(tmp_path), "--quick", "--base", str(tiny_base)]
    args += ["--methods", "identity", "--seeds", "3,4", "--n-eval", "2", "--no-progress"]
    args += ["--work", str(tmp_path / "w")]
    assert main(args) == 0
    data = json.loads((tmp_path / "quality.json").read_text())
    assert list(data["methods"]) == ["identity"] and data["seeds"] == [3, 4]
    assert "--seeds 3,4" in data["command"] and "--quick" in data["command"]


def test_each_method_changes_exactly_what_it_should(tiny_base):
    cfg = bq.bench_config(base=tiny_base)
    ref = to_dict(cfg)

    def diff(a, b, prefix=""):
        keys = set(a) | set(b)
        out = []
        for k in sorted(keys):
            va, vb = a.get(k), b.get(k)
            if isinstance(va, dict) and isinstance(vb, dict) and k != "toy":
                out += diff(va, vb, f"{prefix}{k}.")
            elif va != vb:
                out.append(f"{prefix}{k}")
        return out

    for abl in bq.ABLATIONS:
        assert diff(ref, to_dict(bq.method_config(abl, cfg))) == ["byg." + abl, "name"]
    assert diff(ref, to_dict(bq.method_config("supervised-seen", cfg))) == ["name", "objective"]
    assert diff(ref, to_dict(bq.method_config("supervised-all", cfg))) == [
        "data.toy",
        "name",
        "objective",
    ]
    assert bq.method_config("no_ema", cfg).ema_decay == 0.0
    assert bq.method_config("identity-only", cfg).byg.p_id == 1.0
    for m in bq.TRAINED:  # same steps, batch, LoRA and optimiser for every trained method
        c = bq.method_config(m, cfg)
        assert (c.train, c.lora, c.optim) == (cfg.train, cfg.lora, cfg.optim)
    # supervised-all trains on unseen edits too; supervised-seen's split has none
    from byg.data.toy import ToyEditDataset

    all_cfg = bq.method_config("supervised-all", cfg)
    world_all = bq.toy_world(all_cfg)
    kinds = {ToyEditDataset(world_all, 300, seed=0).example(i).edit_type for i in range(300)}
    assert "style" in kinds
    world = bq.toy_world(cfg)
    kinds_seen = {ToyEditDataset(world, 300, seed=0).example(i).edit_type for i in range(300)}
    assert "style" not in kinds_seen


def test_ablation_directions_and_agreement_on_hand_made_numbers():
    assert bq.paper_direction(8.32, 8.92) == "↑"
    assert bq.paper_direction(7.62, 7.05) == "↓"
    assert bq.paper_direction(8.32, 8.40) == "≈"  # +0.08 < 0.1
    assert bq.our_direction([0.5, 0.6], [0.7, 0.8]) == "↑"
    assert bq.our_direction([0.5, 0.6], [0.3, 0.59]) == "↓"
    assert bq.our_direction([0.5, 0.6], [0.7, 0.55]) == "≈"  # seeds disagree
    assert bq.our_direction([0.5, 0.6], [0.505, 0.6]) == "≈"  # below OURS_TOL
    assert bq.agreement("↑", "↑") == "yes"
    assert bq.agreement("↑", "↓") == "no"
    assert bq.agreement("≈", "↓") == "unclear" and bq.agreement("?", "↓") == "unclear"

    def m(es, p):
        return {"overall": {"edit_success": es, "preservation": p}}

    per_seed = {
        "byg": {"0": m(0.6, 0.8), "1": m(0.7, 0.7)},
        # paper: success ↑ preservation ↓; ours: success ↑ on both seeds, preservation ↑
        "no_cycle": {"0": m(0.7, 0.9), "1": m(0.8, 0.8)},
        # paper: success ↓ preservation ↓; ours: success ↓, preservation mixed
        "no_bootstrap": {"0": m(0.2, 0.85), "1": m(0.3, 0.6)},
        "no_ema": {"0": m(0.6, 0.8), "1": m(0.7, 0.7)},  # not in the paper
    }
    rows = {(r["ablation"], r["metric"]): r for r in bq.ablation_rows(per_seed)}
    assert rows[("no_cycle", "edit_success")]["agree"] == "yes"
    assert rows[("no_cycle", "preservation")]["agree"] == "no"
    assert rows[("no_bootstrap", "edit_success")]["agree"] == "yes"
    assert rows[("no_bootstrap", "preservation")]["ours_direction"] == "≈"
    assert rows[("no_bootstrap", "preservation")]["agree"] == "unclear"
    assert rows[("no_ema", "edit_success")]["agree"] == "not in paper"
    assert rows[("no_cycle", "edit_success")]["ours_diffs"] == pytest.approx([0.1, 0.1])

    def t(es, p, ues):
        return {
            "overall": {"gm": (es * p) ** 0.5},
            "unseen": {"edit_success": ues, "success_and_preservation": ues / 2},
        }

    checks = bq.target_checks(
        {
            "byg": {"0": t(0.6, 0.8, 0.5), "1": t(0.6, 0.8, 0.4)},
            "flowedit": {"0": t(0.3, 0.8, 0.3), "1": t(0.7, 0.9, 0.3)},
            "supervised-seen": {"0": t(0.9, 0.9, 0.45), "1": t(0.9, 0.9, 0.45)},
        }
    )
    by = {(c["b"], c["metric"]): c for c in checks}
    assert set(by) == {
        ("flowedit", "gm"),
        ("supervised-seen", "edit_success"),
        ("supervised-seen", "success_and_preservation"),
    }
    by = {b: c for (b, metric), c in by.items() if metric != "success_and_preservation"}
    assert by["flowedit"]["met"] and not by["flowedit"]["every_seed"]
    assert not by["supervised-seen"]["met"]  # mean 0.45 vs 0.45: not beaten


def test_validation_split_is_disjoint_from_the_test_split():
    from byg.data.toy import ToyWorldConfig
    from byg.toy_eval import EVAL_SEED

    assert bq.VAL_SEED != EVAL_SEED
    world = ToyWorldConfig()
    val, test = bq.validation_sets(world, 200), bq.held_out_sets(world, 200)
    for split in ("seen", "unseen"):
        assert val[split].split == test[split].split == split
        v = {dataclasses.astuple(val[split].example(i).src) for i in range(200)}
        te = {dataclasses.astuple(test[split].example(i).src) for i in range(200)}
        assert len(v) == 200 and len(te) == 200 and not v & te


def test_bad_seeds_are_refused(tiny_base, tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        bq.run_quality(
            tmp_path, methods="identity", seeds=(0, 0), quick=True, base=tiny_base, progress=False
        )

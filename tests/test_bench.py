"""The speed benchmark's code on a tiny setting (not its numbers)."""

import json

import torch

from byg.backbones.editor import Editor
from byg.bench import measure_inference, measure_speed, write_speed_report
from byg.objectives.byg import ByGConfig


def test_measure_speed_reports_every_part(tiny_backbone, tmp_path):
    editor = Editor(tiny_backbone, rank=2, ema_decay=0.9)
    cfg = ByGConfig(rollout_steps=2, rollout_clean_steps=1, direction_reference="editor")
    res = measure_speed(editor, batch=2, res=4, byg_cfg=cfg, steps=1, warmup=0)
    assert set(res["seconds_per_step"]) == {"full", "identity", "supervised"}
    assert set(res["seconds_per_step_options"]) == {"full_reuse", "full_k4", "full_k6", "full_k10"}
    assert all(v > 0 for v in res["seconds_per_step"].values())
    calls = res["model_calls_per_full_step"]
    assert calls["ema_no_grad"] == 3 and calls["reference_no_grad"] == 2
    assert {"rollout", "base_queries", "forward_edit", "reverse", "backward"} <= set(
        res["per_phase_seconds"]["full"]
    )
    assert "rollout" not in res["per_phase_seconds"]["identity"]  # identity steps skip it
    assert "rollout" not in res["per_phase_seconds"]["full_reuse"]  # a kept rollout is reused
    assert res["predicted_ratio_full_vs_supervised"] > 1
    # options: the default, R = 2 and 4 on it, and the other k; reuse saves on the default
    names = [o["name"] for o in res["options"]]
    assert sorted(names) == sorted(
        ["byg", "byg-reuse2", "byg-reuse4", "byg-k4", "byg-k6", "byg-k10"]
    )
    by = {o["name"]: o for o in res["options"]}
    assert by["byg"]["saving_vs_default"] == 0
    assert (
        by["byg-reuse4"]["predicted_full_step_seconds"] < by["byg"]["predicted_full_step_seconds"]
    )
    # the trade-off takes quality deltas from a quality.json
    quality = {
        "methods": {
            "byg": {
                "summary": {
                    "overall": {"edit_success": {"mean": 0.5}, "preservation": {"mean": 0.5}}
                }
            },
            "byg-reuse2": {
                "summary": {
                    "overall": {
                        "edit_success": {"mean": 0.48},
                        "preservation": {"mean": 0.6, "n_seeds": 2},
                    }
                }
            },
        }
    }
    write_speed_report(res, tmp_path, quality)
    md = (tmp_path / "speed.md").read_text()
    assert "Ratio full ByG / supervised" in md and "Cost options" in md
    rows = {r["name"]: r for r in json.loads((tmp_path / "speed.json").read_text())["tradeoff"]}
    assert abs(rows["byg-reuse2"]["d_success"] + 0.02) < 1e-9
    assert "d_success" not in rows["byg-k4"]  # not trained: no quality claim
    assert torch.isfinite(torch.tensor(res["prediction_error"]))
    # with the demo's 6 + 4 rollout, the sweep adds 4 + 4, 10 + 4 and the 2 + 1 rollout
    cfg6 = ByGConfig(rollout_steps=6, rollout_clean_steps=4, direction_reference="editor")
    res6 = measure_speed(editor, batch=2, res=4, byg_cfg=cfg6, steps=1, warmup=0)
    assert set(res6["seconds_per_step_options"]) == {
        "full_reuse",
        "full_k4",
        "full_k10",
        "full_k2c1",
    }
    by6 = {o["name"]: o for o in res6["options"]}
    assert set(by6) == {"byg", "byg-reuse2", "byg-reuse4", "byg-k4", "byg-k10", "byg-k2c1"}
    assert (by6["byg-k2c1"]["k"], by6["byg-k2c1"]["clean_steps"]) == (2, 1)
    assert by6["byg-k4"]["clean_steps"] == 4
    k2, k6 = by6["byg-k2c1"], by6["byg"]
    assert k2["predicted_full_step_seconds"] < k6["predicted_full_step_seconds"]
    # a config that leaves the clean length unset: the swept k keep following k, as the
    # `byg-k4` / `byg-k10` methods of `byg bench quality` train them
    cfg_follow = ByGConfig(rollout_steps=6, direction_reference="editor")
    by_f = {
        o["name"]: o
        for o in measure_speed(editor, batch=2, res=4, byg_cfg=cfg_follow, steps=1, warmup=0)[
            "options"
        ]
    }
    assert {n: (o["k"], o["clean_steps"]) for n, o in by_f.items() if n.startswith("byg-k")} == {
        "byg-k4": (4, 4),
        "byg-k10": (10, 10),
        "byg-k2c1": (2, 1),
    }
    assert by_f["byg"]["clean_steps"] == 6


def test_measure_inference_counts_model_calls(tiny_backbone):
    from conftest import TinyBackbone

    editor = Editor(tiny_backbone, rank=2, ema_decay=0.9)
    base = TinyBackbone().eval()
    fe = {"steps": 4, "n_max_frac": 0.5, "n_avg": 2, "guidance": [1.5, 3.5]}
    sd = {"strength": 0.5, "steps": 4, "guidance": 3.0}
    res = measure_inference(
        editor, base, batch=2, res=4, sample_steps=5, flowedit_params=fe, sdedit_params=sd, reps=1
    )
    assert res["byg"]["model_calls"] == 5 and res["byg"]["evaluations_per_image"] == 5
    # FlowEdit: n_max = 2 steps x n_avg 2 draws x (source, target) velocities, each CFG-batched
    assert res["flowedit"]["model_calls"] == 8 and res["flowedit"]["evaluations_per_image"] == 16
    # SDEdit: strength 0.5 of 4 steps = 2 steps, CFG-batched
    assert res["sdedit"]["model_calls"] == 2 and res["sdedit"]["evaluations_per_image"] == 4
    assert all(r["seconds_per_image"] > 0 for r in res.values())


def test_measure_speed_times_editor_variants_in_the_same_loop(tiny_backbone, tmp_path):
    from conftest import TinyBackbone

    editor = Editor(tiny_backbone, rank=2, ema_decay=0.9)
    other = Editor(TinyBackbone(hidden=32), rank=2, ema_decay=0.9)
    cfg = ByGConfig(rollout_steps=2, rollout_clean_steps=1)
    cfg_other = ByGConfig(rollout_steps=1, rollout_clean_steps=1)
    res = measure_speed(
        editor,
        batch=2,
        res=4,
        byg_cfg=cfg,
        steps=2,
        warmup=0,
        variants={"wide": (other, cfg_other)},
    )
    v = res["variants"]["wide"]
    assert set(v["seconds_per_step"]) == {"full", "supervised"}
    assert all(x > 0 for x in v["seconds_per_step"].values())
    s = res["seconds_per_step"]
    assert abs(v["full_vs_default_full"] - v["seconds_per_step"]["full"] / s["full"]) < 1e-12
    # the variant's steps are not mixed into the default's per-phase table
    assert not any(k.startswith("variant/") for k in res["per_phase_seconds"])
    # the variant's own editor was trained: its LoRA moved from zero
    assert any(p.abs().sum() > 0 for n, p in other.named_parameters() if "lora_B" in n)
    write_speed_report(res, tmp_path)
    assert "| `wide` |" in (tmp_path / "speed.md").read_text()

"""The speed benchmark's code on a tiny setting (not its numbers)."""

import torch

from byg.backbones.editor import Editor
from byg.bench import measure_speed, write_speed_report
from byg.objectives.byg import ByGConfig


def test_measure_speed_reports_every_part(tiny_backbone, tmp_path):
    editor = Editor(tiny_backbone, rank=2, ema_decay=0.9)
    tiny_backbone.calls = 0
    res = measure_speed(
        editor, batch=2, res=4, byg_cfg=ByGConfig(rollout_steps=2), steps=1, warmup=0
    )
    assert set(res["seconds_per_step"]) == {"full", "identity", "supervised"}
    assert all(v > 0 for v in res["seconds_per_step"].values())
    assert res["model_calls_per_full_step"]["ema_no_grad"] == 4
    assert {"rollout", "base_queries", "forward_edit", "reverse", "backward"} <= set(
        res["per_phase_seconds"]["full"]
    )
    assert "rollout" not in res["per_phase_seconds"]["identity"]  # identity steps skip it
    assert res["predicted_ratio_full_vs_supervised"] > 1
    write_speed_report(res, tmp_path)
    assert "Ratio full ByG / supervised" in (tmp_path / "speed.md").read_text()
    assert torch.isfinite(torch.tensor(res["prediction_error"]))

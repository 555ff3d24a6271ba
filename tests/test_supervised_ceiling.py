"""benchmarks/supervised_ceiling.py: full fine-tuning on pairs, scored as the demo scores."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_benchmark
from safetensors.torch import load_file


def _load():
    return load_benchmark("supervised_ceiling")


def test_trains_every_weight_and_logs_scores(tmp_path):
    mod = _load()
    out = tmp_path / "ceiling.jsonl"
    argv = ["--steps", "2", "--eval-every", "1", "--n", "6", "--ema", "0.5", "--out", str(out)]
    assert mod.main([*argv, "--option", "cond_add=true", "--option", "cond_add_levels=2"]) == 0
    header, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert header["options"] == {"cond_add": True, "cond_add_levels": 2}
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["edit_success"] <= 1.0 and 0.0 <= r["preservation"] <= 1.0
        assert all(len(v) == 2 and 0 <= min(v) <= max(v) <= 1 for v in r["by_type"].values())
        # every failure has at least one reason, and a reason is counted once per output
        failed = round((1 - r["preservation"]) * 6)
        reasons = r["why_not_preserved"]
        assert (failed == 0) == (not reasons)
        assert all(0 < n <= failed for n in reasons.values())
        assert set(r["ema"]) >= {"edit_success", "preservation", "psnr"}
    weights = load_file(out.with_suffix(".safetensors"))
    ema = load_file(out.with_suffix(".ema.safetensors"))
    assert ema.keys() == weights.keys()
    # decay 0.5 over two steps: the EMA lags the trained weights
    assert any(not torch.equal(ema[k], weights[k]) for k in weights)
    # every weight was trained: the base's own tensors are saved beside the condition's
    assert header["trained_parameters"] == sum(v.numel() for v in weights.values())
    assert any(k.startswith("cond_level_add.1") for k in weights)

    # --steps 0 scores saved weights: the same numbers as the run's last evaluation
    again = tmp_path / "again.jsonl"
    opts = ["--option", "cond_add=true", "--option", "cond_add_levels=2"]
    init = ["--init", str(out.with_suffix(".safetensors"))]
    assert mod.main(["--steps", "0", "--n", "6", "--out", str(again), *opts, *init]) == 0
    _, row = [json.loads(line) for line in again.read_text().splitlines()]
    assert row["step"] == 0 and row["loss"] is None
    for key in ("edit_success", "preservation", "psnr", "by_type", "why_not_preserved"):
        assert row[key] == rows[-1][key]

    # weights saved with other editor options are refused before anything runs
    with pytest.raises(SystemExit):
        mod.main(["--steps", "0", "--out", str(again), *init])  # no cond_add_levels


def test_bad_arguments_are_refused(tmp_path):
    mod = _load()
    out = str(tmp_path / "x.jsonl")
    with pytest.raises(SystemExit):
        mod.main(["--option", "cond_add", "--out", out])  # no value
    with pytest.raises(SystemExit):
        mod.main(["--steps", "0", "--out", out])  # nothing to score

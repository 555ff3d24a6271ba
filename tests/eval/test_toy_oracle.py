"""The toy oracle reads renders correctly; toy edit metrics score ground truth and no-ops right."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from byg.data.toy import EDIT_TYPES, Scene, ToyWorldConfig, render, sample_edit, to_tensor
from byg.eval.toy_metrics import (
    PSNR_CAP,
    calibrate_iou,
    evaluate_edits,
    iou,
    preservation_breaks,
    psnr,
    summarize,
)
from byg.eval.toy_metrics import (
    main as metrics_main,
)
from byg.eval.toy_oracle import (
    ATTRIBUTES,
    OracleTrainConfig,
    ToyOracle,
    analyse,
    oracle_accuracy,
    train_oracle,
)

CFG = ToyWorldConfig()


@pytest.fixture(scope="module")
def oracle() -> ToyOracle:
    torch.manual_seed(0)
    return ToyOracle.load()


@pytest.fixture(scope="module")
def examples():
    """Edits of every type, seen and unseen (fixed draws)."""
    rng = np.random.default_rng(123)
    exs = [sample_edit(rng, CFG, "train") for _ in range(40)]
    exs += [sample_edit(rng, CFG, "unseen") for _ in range(24)]
    assert {e.edit_type for e in exs} == set(EDIT_TYPES)
    return exs


def _render(scenes) -> torch.Tensor:
    return torch.stack([to_tensor(render(s, CFG)) for s in scenes])


def test_oracle_accuracy_on_clean_renders(oracle):
    acc = oracle_accuracy(oracle, n=300, seed=99)
    assert set(acc) == {*ATTRIBUTES[:7], "position"}
    for k, v in acc.items():
        assert v >= 0.98, f"{k}: {v:.3f}"


def test_oracle_tolerates_mild_noise(oracle):
    acc = oracle_accuracy(oracle, n=150, seed=7, noise=0.04)
    for k, v in acc.items():
        assert v >= 0.95, f"{k} under noise: {v:.3f}"


def test_read_returns_every_attribute_and_checks_shape(oracle):
    s = Scene("white", "cross", "red", "large", "dotted", "outline", 0.45, 0.55)
    (r,) = oracle.read(_render([s]))
    assert set(r) == set(ATTRIBUTES)
    assert {k: r[k] for k in ATTRIBUTES[:7]} == {k: s.attributes()[k] for k in ATTRIBUTES[:7]}
    assert abs(r["x"] - 0.45) < 1 / 32 and abs(r["y"] - 0.55) < 1 / 32
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        oracle.read(torch.zeros(3, 32, 32))


def test_outline_marks_are_not_second_objects_and_silhouette_is_filled():
    s = Scene("blue", "circle", "yellow", "large", "dotted", "outline", 0.5, 0.5)
    a = analyse(_render([s, dataclasses.replace(s, style="filled")]))
    assert not a.has_second.any()
    assert iou(a.silhouette[:1], a.silhouette[1:]).item() > 0.95
    area = torch.pi * (0.31 * 32) ** 2
    assert abs(a.area[0].item() - area) / area < 0.1


def test_ground_truth_outputs_score_perfectly(oracle, examples):
    gt = _render([e.tgt for e in examples])
    m = evaluate_edits(gt, examples, oracle)
    assert m["n"] == len(examples)
    assert m["overall"]["edit_success"] == 1.0
    assert m["overall"]["preservation"] == 1.0
    assert m["overall"]["psnr"] == PSNR_CAP
    assert set(m["by_type"]) == set(EDIT_TYPES)
    assert set(m["by_split"]) == {"seen", "unseen"}
    assert all(v["edit_success"] == 1.0 for v in m["by_type"].values())


def test_source_outputs_fail_every_edit_but_preserve(oracle, examples):
    src = _render([e.src for e in examples])
    m = evaluate_edits(src, examples, oracle)
    # every sampled edit changes its attribute, so no edit is trivially satisfied
    assert m["overall"]["edit_success"] == 0.0
    assert m["overall"]["preservation"] == 1.0
    assert m["overall"]["psnr"] < 40
    assert m["overall"]["success_and_preservation"] == 0.0


def test_wrong_object_fails_preservation(oracle, examples):
    # moving the object by 4 px or changing its texture breaks preservation of colour edits
    colour_edits = [e for e in examples if e.edit_type == "colour"][:3]
    assert colour_edits
    moved = [
        dataclasses.replace(e.tgt, x=e.tgt.x + (4 / 32 if e.tgt.x < 0.5 else -4 / 32))
        for e in colour_edits
    ]
    m = evaluate_edits(_render(moved), colour_edits, oracle)
    assert m["overall"]["edit_success"] == 1.0 and m["overall"]["preservation"] == 0.0
    assert preservation_breaks(m["per_example"])["moved"] == len(colour_edits)
    textured = [
        dataclasses.replace(e.tgt, texture="striped" if e.tgt.texture != "striped" else "solid")
        for e in colour_edits
    ]
    m = evaluate_edits(_render(textured), colour_edits, oracle)
    assert m["overall"]["preservation"] == 0.0
    assert all("texture" in r["changed"] for r in m["per_example"])
    breaks = preservation_breaks(m["per_example"])
    assert breaks["texture"] == len(colour_edits) and breaks["moved"] == 0
    # outputs that preserve give no reasons
    assert not preservation_breaks(
        evaluate_edits(_render([e.src for e in colour_edits]), colour_edits, oracle)["per_example"]
    )


def test_summarize_combines_batches(oracle, examples):
    gt = _render([e.tgt for e in examples])
    whole = evaluate_edits(gt, examples, oracle)
    a = evaluate_edits(gt[:20], examples[:20], oracle)
    b = evaluate_edits(gt[20:], examples[20:], oracle)
    merged = summarize(a["per_example"] + b["per_example"])
    assert merged["overall"] == whole["overall"] and merged["by_type"] == whole["by_type"]
    with pytest.raises(ValueError, match="len\\(examples\\)"):
        evaluate_edits(gt[:3], examples[:4], oracle)


def test_psnr_and_iou_helpers():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1] += 0.2  # mse 0.04 in [-1, 1] units -> 10 log10(4 / 0.04) = 20 dB
    p = psnr(x, y)
    assert p[0] == PSNR_CAP and torch.isclose(p[1], torch.tensor(20.0))
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :2], b[0, 1:3] = True, True
    assert iou(a, b).item() == pytest.approx(4 / 12)


def test_iou_threshold_evidence(capsys):
    cal = calibrate_iou(n=30)
    assert cal["shift_1px"]["min"] >= 0.6  # jitter accepted
    assert cal["size_step"]["max"] < 0.7
    assert metrics_main(["calibrate-iou", "--n", "2"]) == 0
    assert "shift_2px" in capsys.readouterr().out


def test_train_save_load_round_trip(tmp_path):
    cfg = OracleTrainConfig(n_train=64, epochs=1, batch_size=32)
    path = tmp_path / "oracle.safetensors"
    trained = train_oracle(cfg, out=path, progress=False)
    loaded = ToyOracle.load(path)
    assert loaded.meta["n_train"] == 64
    x = _render([e.src for e in [sample_edit(np.random.default_rng(0), CFG, "seen")]])
    assert trained.read(x) == loaded.read(x)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ToyOracle.load(tmp_path / "nowhere.safetensors")

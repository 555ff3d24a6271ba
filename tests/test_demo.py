"""``byg demo`` report pieces that state what happened to the copy path."""

from __future__ import annotations

import dataclasses

from byg.demo import _warmup_line, demo_config, identity_only_config


def test_warmup_line_states_the_end_and_the_copy_ratio():
    line = _warmup_line(
        {"warmup_end_step": 429, "warmup_last_loss_id": 0.072, "warmup_last_loss_base": 0.1}
    )
    assert "ended by step 429" in line and "ratio 0.72" in line
    never = _warmup_line(
        {"warmup_end_step": None, "warmup_last_loss_id": 0.2, "warmup_last_loss_base": 0.1}
    )
    assert "never ended" in never and "ratio 2.00" in never
    assert _warmup_line({"warmup_end_step": 5}).endswith("(first logged ByG step).")


def test_demo_configs_use_the_shipped_settings_and_identity_only_differs_only_in_schedule():
    cfg = demo_config(quick=False, steps=None, base_dir=None)
    assert cfg.objective == "byg" and cfg.byg.mse_reduction == "sum"
    assert cfg.byg.direction_reference == "editor"
    quick = demo_config(quick=True, steps=None, base_dir=None)
    assert quick.train.steps < cfg.train.steps
    ido = identity_only_config(cfg)
    assert ido.byg.p_id == 1.0 and ido.train == cfg.train and ido.lora == cfg.lora
    changed = {
        f.name
        for f in dataclasses.fields(cfg.byg)
        if getattr(cfg.byg, f.name) != getattr(ido.byg, f.name)
    }
    assert changed <= {"p_id", "warmup_ratio", "no_identity_steps"}
    ido.train.eval_every = 0  # what the demo does: the ByG run must keep its evaluations
    assert cfg.train.eval_every == 200 and ido.model.options is not cfg.model.options


def test_report_states_the_shared_warmup_and_every_method(tmp_path):
    from byg.demo import write_report

    m = {"edit_success": 0.5, "preservation": 0.75, "psnr": 20.0, "n": 4}
    results = {
        "wall_seconds": 12.0,
        "base_oracle_accuracy": 0.9,
        "steps": 800,
        "warmup_end_step": 461,
        "identity_only_shared_steps": 460,
        **{k: {"seen": m, "unseen": m} for k in ("identity", "identity-only", "byg")},
        "byg_by_type": {"seen": {"colour": m}, "unseen": {"style": m}},
        "curve": [{"step": 100, "edit_success": 0.1, "preservation": 0.9, "psnr": 19.0}],
    }
    write_report(tmp_path, results)
    text = (tmp_path / "report.md").read_text()
    assert "the ByG run up to step 460" in text and "to step 800" in text
    assert text.count("| 0.500 | 0.750 |") == 8  # 3 methods x 2 splits + 2 edit types
    assert "| 100 | 0.100 | 0.900 |" in text


def test_demo_base_flag_uses_a_saved_base_and_refuses_a_folder_without_one(tmp_path):
    """``byg demo --base DIR`` starts from that base (its eval.json read for the report); a
    folder without a saved base is an error naming the missing file; ``--base`` with
    ``--pretrain-base`` is refused before any work."""
    import pytest
    import torch

    from byg.backbones.toy import SHIPPED_BASE, load_toy_backbone
    from byg.cli import main
    from byg.demo import ensure_base

    attn16 = SHIPPED_BASE.parent / "toy_base_attn16"
    base_dir, ev = ensure_base(tmp_path, quick=True, pretrain=False, base=attn16)
    assert base_dir == attn16 and min(ev["accuracy"].values()) >= 0.9
    assert demo_config(True, None, base_dir).model.options["checkpoint"] == str(attn16)
    model = load_toy_backbone(attn16)  # loads with this code and has attention at 16x16
    assert model.config.attn_from_level == 1
    v = model(torch.zeros(1, 3, 32, 32), torch.tensor([0.5]), model.encode_text(["a red circle"]))
    assert v.shape == (1, 3, 32, 32) and torch.isfinite(v).all()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ensure_base(tmp_path, quick=True, pretrain=False, base=tmp_path / "nothing")
    with pytest.raises(SystemExit, match="not both"):
        main(["demo", "--base", str(attn16), "--pretrain-base", "--out", str(tmp_path / "d")])


def test_demo_config_file_and_overrides_reach_the_byg_run(tmp_path):
    """``byg demo --config YAML --set k=v``: the file replaces configs/toy_image.yaml, the
    overrides come after the demo's schedule, a mistyped field or a missing file is an error
    naming it, and the report states the config, overrides and the editor's text."""
    import pytest

    from byg.cli import main
    from byg.demo import _setup_line

    cfg_file = tmp_path / "caption.yaml"
    cfg_file.write_text(
        "objective: byg\nmodel:\n  backbone: toy\n  options: {checkpoint: somewhere}\n"
        "data:\n  source: toy\n  toy: {instructions: caption}\nbyg:\n  lambda_id: 0.7\n"
    )
    cfg = demo_config(False, None, None, config=cfg_file, overrides=["byg.lambda_cyc=2.5"])
    assert cfg.data.toy["instructions"] == "caption" and cfg.byg.lambda_id == 0.7
    assert cfg.byg.lambda_cyc == 2.5 and cfg.train.eval_every == 200  # the demo's schedule
    assert cfg.model.options["checkpoint"] == "somewhere"
    # the command line wins over the demo's schedule and the file
    assert demo_config(False, None, None, overrides=["train.eval_every=50"]).train.eval_every == 50
    with pytest.raises(ValueError, match="lambda_cyx"):
        demo_config(False, None, None, overrides=["byg.lambda_cyx=1"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        demo_config(False, None, None, config=tmp_path / "nope.yaml")
    line = _setup_line(
        {
            "config": str(cfg_file),
            "overrides": ["byg.lambda_cyc=2.5"],
            "base": "b",
            "edit_text": "caption",
        }
    )
    assert "`--set byg.lambda_cyc=2.5`" in line and "the target's caption" in line
    assert _setup_line({}) == ""  # results of an older demo: no line
    with pytest.raises(SystemExit, match="image-demo options"):
        main(["demo", "--video", "--set", "byg.lambda_id=1", "--out", str(tmp_path / "v")])

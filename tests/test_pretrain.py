"""``byg pretrain-base``: a few-step run writes a loadable base; configs fail loudly."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from byg.backbones.registry import build_backbone
from byg.backbones.toy import load_toy_backbone
from byg.config import ConfigError
from byg.pretrain import (
    ATTRIBUTES,
    EvalConfig,
    caption_accuracy,
    load_pretrain_config,
    lr_at,
    pretrain_base,
    register,
    world_config,
)

pytest.importorskip("byg.data.toy")

TINY = [
    "steps=3",
    "batch_size=4",
    "warmup_steps=1",
    "log_every=1",
    "data.pool_size=8",
    "data.world={resolution: 16}",
    "model.image_size=16",
    "model.stem_channels=8",
    "model.patch_size=4",
    "model.dim=32",
    "model.depth=1",
    "model.heads=2",
    "model.text_layers=1",
    "eval.num_samples=0",
    "num_threads=1",
]


def test_three_step_run_writes_a_loadable_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = load_pretrain_config(overrides=TINY)
    res = pretrain_base(cfg, tmp_path / "base", progress=False)
    out = tmp_path / "base"
    for name in ("model.safetensors", "config.json", "log.jsonl", "eval.json"):
        assert (out / name).exists(), name
    assert not list(out.glob("*.tmp"))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    meta = json.loads((out / "config.json").read_text())
    assert meta["seed"] == cfg.seed and meta["pretrain"]["steps"] == 3
    assert meta["pretrain"]["model"]["vocab"]  # the tokenizer travels with the weights
    assert json.loads((out / "eval.json").read_text())["params"] == res["params"]

    a = load_toy_backbone(out)
    b = build_backbone("toy", {"checkpoint": str(out)})
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    cond = torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([0.3, 0.9])
    text = a.encode_text(["a red circle on a blue background", ""])
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, text, cond), b(x, t, text, cond), rtol=0, atol=0)
        # training moved the weights away from the zero-initialised output head
        assert a(x, t, text).abs().max() > 0


def test_same_seed_same_weights(tmp_path):
    cfg = load_pretrain_config(overrides=TINY + ["steps=2"])
    pretrain_base(cfg, tmp_path / "a", progress=False)
    pretrain_base(cfg, tmp_path / "b", progress=False)
    a, b = load_toy_backbone(tmp_path / "a"), load_toy_backbone(tmp_path / "b")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_caption_accuracy_reports_every_attribute():
    from byg.eval.toy_oracle import OracleCNN, ToyOracle

    torch.manual_seed(0)
    cfg = load_pretrain_config(overrides=TINY)
    model = build_backbone("toy", {"config": __import__("dataclasses").asdict(cfg.model)})
    oracle = ToyOracle(OracleCNN(), resolution=16)  # untrained CNN: analytic reads still hold
    ecfg = EvalConfig(num_samples=4, sample_steps=2, cfg_scale=2.0, batch_size=2)
    res = caption_accuracy(model, world_config(cfg), ecfg, oracle=oracle, progress=False)
    assert set(res["accuracy"]) == set(ATTRIBUTES) == set(res["oracle_on_renders"])
    assert all(0.0 <= v <= 1.0 for v in res["accuracy"].values())
    assert res["oracle_on_renders"]["background"] == 1.0  # analytic read of true renders
    assert res["n"] == 4 and res["cfg_scale"] == 2.0


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="stepz"):
        load_pretrain_config(overrides=["stepz=3"])
    with pytest.raises(ConfigError, match="caption_dropout"):
        load_pretrain_config(overrides=["caption_dropout=1.5"])
    with pytest.raises(ConfigError, match="model.heads|heads must divide"):
        load_pretrain_config(overrides=["model.heads=5"])
    with pytest.raises(ConfigError, match="timesteps.kind"):
        load_pretrain_config(overrides=["timesteps.kind=cosine"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrain_config(tmp_path / "missing.yaml")
    cfg = load_pretrain_config(overrides=["data.world={resolution: 16}"])
    with pytest.raises(ConfigError, match="data.world.resolution=16.*model.image_size=32"):
        world_config(cfg)
    cfg = load_pretrain_config(overrides=["data.world={colours: 3}"])
    with pytest.raises(ConfigError, match="data.world"):
        world_config(cfg)


def test_lr_schedule_warms_up_then_decays():
    cfg = load_pretrain_config(overrides=["steps=100", "warmup_steps=10", "min_lr_ratio=0.1"])
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_cli_registers_pretrain_base(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["pretrain-base", "--out", str(tmp_path / "cli"), *sum([["--set", s] for s in TINY], [])]
    )
    assert args.func(args) == 0
    assert (tmp_path / "cli" / "model.safetensors").exists()


def test_save_every_writes_snapshots_before_the_end(tmp_path, monkeypatch):
    """save_every=1 on a 3-step run: snapshots after steps 1 and 2, then the final save."""
    import byg.pretrain as pretrain_mod

    calls = []
    real = pretrain_mod.save_toy_backbone

    def spy(model, path, extra=None):
        calls.append((extra or {}).get("step"))
        return real(model, path, extra)

    monkeypatch.setattr(pretrain_mod, "save_toy_backbone", spy)
    cfg = load_pretrain_config(overrides=TINY + ["save_every=1"])
    pretrain_base(cfg, tmp_path / "base", progress=False)
    assert calls == [1, 2, None]  # the final save carries no snapshot step
    assert "step" not in json.loads((tmp_path / "base" / "config.json").read_text())
    with pytest.raises(ConfigError, match="save_every"):
        load_pretrain_config(overrides=["save_every=-1"])


def test_init_from_continues_from_a_base_and_instruction_prompts_are_counted(tmp_path):
    """``init_from`` starts from a saved base's weights (one step at a tiny lr moves them
    only a little); a model config that differs from the saved one is an error naming the
    field; ``data.instruction_prob`` turns that share of prompts into instructions."""
    import numpy as np

    from byg.data.toy import ToyWorldConfig, sample_scene
    from byg.pretrain import _prompt

    cfg = load_pretrain_config(overrides=TINY + ["steps=2"])
    pretrain_base(cfg, tmp_path / "a", progress=False)
    more = TINY + ["steps=1", "lr=1e-9", "warmup_steps=0", f"init_from={tmp_path / 'a'}"]
    pretrain_base(load_pretrain_config(overrides=more), tmp_path / "b", progress=False)
    fresh = TINY + ["steps=1", "lr=1e-9", "warmup_steps=0", "seed=1"]
    pretrain_base(load_pretrain_config(overrides=fresh), tmp_path / "c", progress=False)
    a, b, c = (load_toy_backbone(tmp_path / n).state_dict() for n in "abc")
    gap_b = max((a[k] - b[k]).abs().max().item() for k in a)
    gap_c = max((a[k] - c[k]).abs().max().item() for k in a)
    assert gap_b < 1e-3 < gap_c  # continued from a, not from a fresh init
    # b records the stage it continued (a's pretrain config) and counts both stages' steps
    meta_a, meta_b = (json.loads((tmp_path / n / "config.json").read_text()) for n in "ab")
    assert meta_a["history"] == [] and meta_b["history"] == [meta_a["pretrain"]]
    assert meta_b["pretrain"]["init_from"] == str(tmp_path / "a")
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["total_steps"] == 3
    bad = load_pretrain_config(overrides=more + ["model.dim=64"])
    with pytest.raises(ValueError, match="init_from.*dim: 32 vs 64"):
        pretrain_base(bad, tmp_path / "d", progress=False)

    world = ToyWorldConfig()
    scene = sample_scene(np.random.default_rng(0), world)
    for p, lo, hi in ((0.0, 0, 0), (0.3, 50, 130), (1.0, 300, 300)):
        prompts = [_prompt(scene, 0, 0, i, world, p) for i in range(300)]
        n = sum(q.split()[0] not in ("a", "an") for q in prompts)  # captions start so
        assert lo <= n <= hi, (p, n)
    with pytest.raises(ValueError, match="instruction_prob"):
        load_pretrain_config(overrides=TINY + ["data.instruction_prob=1.5"])

"""The training loop on a tiny backbone: resume is exact, NaNs are skipped, saves are atomic."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from conftest import TINY_UNET_TRAIN, TinyBackbone

import byg.backbones.registry as registry
import byg.train as train_mod
from byg.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from byg.config import ConfigError
from byg.run_config import load_run_config


class PairDataset:
    def __len__(self):
        return 40

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "x_src": torch.randn(3, 6, 6, generator=g),
            "x_tgt": torch.randn(3, 6, 6, generator=g),
            "c_src": "a red circle",
            "c_tgt": "a blue circle",
            "c_fwd": "make it blue",
            "c_rev": "make it red",
        }


@pytest.fixture
def tiny_run(monkeypatch):
    mod = types.ModuleType("byg_test_tiny")
    mod.build = lambda options: TinyBackbone()
    monkeypatch.setitem(sys.modules, "byg_test_tiny", mod)
    monkeypatch.setitem(registry.BACKBONES, "tiny", "byg_test_tiny")
    monkeypatch.setattr(
        train_mod, "build_dataset", lambda cfg, split="train", n=None: PairDataset()
    )

    def make(*overrides):
        base = [
            "model.backbone=tiny",
            "train.steps=8",
            "train.batch_size=2",
            "byg.rollout_steps=2",
            "byg.warmup_steps=2",
            "byg.warmup_ratio=null",
            "train.save_every=4",
            "train.preview_every=0",
            "lora.rank=2",
        ]
        return load_run_config(None, base + list(overrides))

    return make


def test_resume_is_exact(tiny_run, tmp_path):
    cfg = tiny_run()
    train_mod.train(cfg, tmp_path / "a", stop_after=5, progress=False)
    resumed = train_mod.train(cfg, tmp_path / "a", resume="latest", progress=False)
    straight = train_mod.train(cfg, tmp_path / "b", progress=False)
    a, b = resumed["editor"].lora_state_dict(), straight["editor"].lora_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ea, eb = resumed["editor"].ema_state_dict(), straight["editor"].ema_state_dict()
    for k in ea:
        assert torch.equal(ea[k], eb[k]), k
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "a")[-1])
    assert ckpt["state"]["step"] == 8 and ckpt["config"]["model"]["backbone"] == "tiny"


def _same_weights(a, b) -> None:
    for get in ("lora_state_dict", "ema_state_dict"):
        wa, wb = getattr(a["editor"], get)(), getattr(b["editor"], get)()
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (get, k)


def test_until_warm_forks_the_identity_only_run_from_the_byg_warmup(tiny_run, tmp_path):
    """What ``byg demo`` relies on: ByG's warm-up is the identity-only run's first steps.

    The ratio test never passes here, so the ByG warm-up runs to ``warmup_max_steps`` (5),
    past the identity-only run's own warm-up (3 steps, then identity steps by coin).
    """
    from byg.checkpoint import checkpoint_path
    from byg.demo import identity_only_config

    cfg = tiny_run("byg.warmup_steps=3", "byg.warmup_ratio=0.0", "byg.warmup_max_steps=5")
    warm = train_mod.train(cfg, tmp_path / "byg", until_warm=True, progress=False)
    assert warm["steps"] == 5 and all(h["kind"] == "identity" for h in warm["history"])
    fork = str(checkpoint_path(tmp_path / "byg", 5))
    assert [p.name for p in list_checkpoints(tmp_path / "byg")] == ["step_0000004", "step_0000005"]
    id_cfg = identity_only_config(cfg)
    forked = train_mod.train(id_cfg, tmp_path / "id", resume=fork, progress=False)
    straight = train_mod.train(id_cfg, tmp_path / "id_straight", progress=False)
    _same_weights(forked, straight)
    byg = train_mod.train(cfg, tmp_path / "byg", resume=fork, progress=False)
    assert [h["kind"] for h in byg["history"]].count("full") > 0
    _same_weights(byg, train_mod.train(cfg, tmp_path / "byg_straight", progress=False))
    # a run already past its warm-up has nothing to do
    again = train_mod.train(cfg, tmp_path / "byg", resume="latest", until_warm=True, progress=False)
    assert again["steps"] == 8 and again["history"] == []


def test_resume_refuses_other_rank(tiny_run, tmp_path):
    train_mod.train(tiny_run(), tmp_path, stop_after=4, progress=False)
    with pytest.raises(train_mod.TrainingError, match="lora.rank"):
        train_mod.train(tiny_run("lora.rank=3"), tmp_path, resume="latest", progress=False)


def test_nan_loss_skips_then_stops(tiny_run, tmp_path, monkeypatch):
    cfg = tiny_run("train.max_bad_steps=3", "train.save_every=2")
    real = train_mod.ByGObjective.__call__
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] > 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train_mod.ByGObjective, "__call__", poisoned)
    with pytest.raises(train_mod.TrainingError, match="3 consecutive non-finite"):
        train_mod.train(cfg, tmp_path, progress=False)
    ckpts = list_checkpoints(tmp_path)
    assert [c.name for c in ckpts] == ["step_0000002"]  # the last good state survives
    log = (tmp_path / "log.jsonl").read_text()
    assert log.count("non-finite") == 3


def test_supervised_objective_trains(tiny_run, tmp_path):
    res = train_mod.train(tiny_run("objective=supervised"), tmp_path, progress=False)
    assert res["steps"] == 8 and all(h["kind"] == "supervised" for h in res["history"])


def test_init_from_starts_from_another_runs_weights(tiny_run, tmp_path):
    sup = train_mod.train(tiny_run("objective=supervised"), tmp_path / "sup", progress=False)
    weights = sup["editor"].lora_state_dict()
    # step 0 of the new run: the LoRA equals the supervised run's, optimizer fresh
    cfg = tiny_run(f"train.init_from={tmp_path / 'sup'}", "train.steps=0")
    res = train_mod.train(cfg, tmp_path / "byg", progress=False)
    got = res["editor"].lora_state_dict()
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    for k in weights:
        assert torch.equal(got[k], weights[k]), k
    # and it trains on from there as a ByG run
    res = train_mod.train(
        tiny_run(f"train.init_from={tmp_path / 'sup'}"), tmp_path / "b2", progress=False
    )
    assert res["steps"] == 8
    with pytest.raises(train_mod.TrainingError, match="lora.rank"):
        train_mod.train(
            tiny_run(f"train.init_from={tmp_path / 'sup'}", "lora.rank=3"),
            tmp_path / "c",
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="train.init_from"):
        train_mod.train(
            tiny_run(f"train.init_from={tmp_path / 'nope'}"), tmp_path / "d", progress=False
        )


def test_lora_rank_pattern_reaches_the_editor_and_is_checked_on_init(tiny_run, tmp_path):
    cfg = tiny_run("objective=supervised", "lora.rank_pattern.proj_cond=5")
    res = train_mod.train(cfg, tmp_path / "a", progress=False)
    shapes = {n: tuple(p.shape) for n, p in res["editor"].lora_named_parameters()}
    assert shapes["proj_cond.lora_A.default.weight"] == (5, 3)
    assert shapes["proj_in.lora_A.default.weight"] == (2, 3)  # lora.rank elsewhere
    with pytest.raises(train_mod.TrainingError, match="lora.rank_pattern"):
        train_mod.train(
            tiny_run(f"train.init_from={tmp_path / 'a'}"), tmp_path / "b", progress=False
        )
    for bad in ("0", "true", "x"):
        with pytest.raises((ConfigError, ValueError), match="rank_pattern"):
            tiny_run(f"lora.rank_pattern.proj_cond={bad}")


def test_save_is_atomic(tmp_path, monkeypatch):
    lora = {"a.lora_A.weight": torch.ones(2, 2)}
    save_checkpoint(tmp_path, 1, lora=lora, ema={}, optimizer_state={}, state={}, config={})
    import byg.checkpoint as ck

    def boom(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, lora=lora, ema={}, optimizer_state={}, state={}, config={})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000001"]  # no half-written checkpoint, the previous one intact
    assert torch.equal(
        load_checkpoint(tmp_path / "checkpoints" / "step_0000001")["lora"]["a.lora_A.weight"],
        lora["a.lora_A.weight"],
    )


def test_keep_rotation(tmp_path):
    for s in range(1, 6):
        save_checkpoint(
            tmp_path,
            s,
            lora={"x": torch.zeros(1)},
            ema={},
            optimizer_state={},
            state={},
            config={},
            keep=2,
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000004", "step_0000005"]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"'byg.alpah'.*did you mean 'alpha'"):
        load_run_config(None, ["byg.alpah=0.3"])
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        load_run_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got 'fast'"):
        load_run_config(None, ["optim.lr=fast"])
    # YAML 1.1 reads 1e-3 (no dot) as a string; a float field still takes it
    assert load_run_config(None, ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="objective must be one of"):
        load_run_config(None, ["objective=magic"])
    with pytest.raises(ConfigError, match="data.path is required"):
        load_run_config(None, ["data.source=folder"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config("/nonexistent.yaml")


def test_init_from_may_add_an_edit_gate_to_a_trained_toy_editor(tmp_path):
    """``train.init_from`` with ``model.options.edit_gate`` turned on: the saved adapters load
    unchanged, the gate's adapter starts at zero; any other backbone change is refused."""
    unet = [f"{k}={v}" for k, v in {**TINY_UNET_TRAIN, "train.preview_every": 0}.items()]
    cfg = load_run_config("configs/toy_image.yaml", unet)  # two steps
    first = train_mod.train(cfg, tmp_path / "a", progress=False)["editor"].lora_state_dict()
    gated = [*unet, "model.options.edit_gate=true", f"train.init_from={tmp_path / 'a'}"]
    res = train_mod.train(
        load_run_config("configs/toy_image.yaml", [*gated, "train.steps=0"]),
        tmp_path / "b",
        progress=False,
    )
    got = res["editor"].lora_state_dict()
    new = sorted(set(got) - set(first))
    assert new and all("edit_gate.lora_" in k for k in new)
    assert all(not got[k].any() for k in new if "lora_B" in k)
    for k in first:
        assert torch.equal(got[k], first[k]), k
    with pytest.raises(train_mod.TrainingError, match="backbone"):
        bad = [*gated, "model.options.stem_channels=16", "train.steps=0"]
        train_mod.train(
            load_run_config("configs/toy_image.yaml", bad), tmp_path / "c", progress=False
        )


def test_lr_schedule_shapes_and_validation():
    from byg.run_config import OptimConfig, lr_multiplier

    const = OptimConfig(lr_warmup_steps=4)
    assert [lr_multiplier(s, const, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = OptimConfig(lr_warmup_steps=10, lr_schedule="cosine", lr_min_ratio=0.1)
    assert lr_multiplier(9, cos, 110) == 1.0 and lr_multiplier(10, cos, 110) == 1.0
    assert lr_multiplier(60, cos, 110) == pytest.approx(0.55)  # half-way: the mean of 1 and 0.1
    assert lr_multiplier(110, cos, 110) == pytest.approx(0.1)
    assert lr_multiplier(500, cos, 110) == pytest.approx(0.1)  # stays at the floor after
    lin = OptimConfig(lr_schedule="linear")
    assert lr_multiplier(25, lin, 100) == pytest.approx(0.75)
    assert lr_multiplier(100, lin, 100) == 0.0
    vals = [lr_multiplier(s, cos, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone decay
    for bad, msg in (
        ({"lr_schedule": "cosin"}, "lr_schedule"),
        ({"lr_min_ratio": 1.5}, "lr_min_ratio"),
        ({"lr_warmup_steps": -1}, "lr_warmup_steps"),
    ):
        with pytest.raises(ValueError, match=msg):
            OptimConfig(**bad)


def test_logged_lr_follows_the_schedule(tiny_run, tmp_path):
    from byg.run_config import lr_multiplier

    cfg = tiny_run("optim.lr=1e-3", "optim.lr_schedule=linear", "train.log_every=1")
    res = train_mod.train(cfg, tmp_path / "run", progress=False)
    lrs = [h["lr"] for h in res["history"]]
    # the lr logged at step n is the one the next step will use (after sched.step())
    want = [1e-3 * lr_multiplier(n, cfg.optim, cfg.train.steps) for n in range(1, len(lrs) + 1)]
    assert len(lrs) == cfg.train.steps and lrs == pytest.approx(want) and lrs[-1] == 0.0

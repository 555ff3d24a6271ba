"""Two CPU processes (gloo, launched with ``accelerate launch``) train exactly like one.

The tiny backbone trains for 8 steps with both step kinds (identity-only steps call the
editor once, full ByG steps twice before one backward); step 6 is made NaN and must be
skipped on every rank. 2 processes × batch 2 must give
the LoRA and EMA weights of 1 process × batch 2 × grad_accum 2 (the same global batch,
chunk for chunk; ``byg.distributed`` has the rules), and a checkpoint written by 2
processes must resume on 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_worker import BASE_OVERRIDES, install

import byg.train as train_mod
from byg.checkpoint import list_checkpoints, load_checkpoint
from byg.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
NAN_STEP = "6"  # a full ByG step whose loss is made NaN on every rank: skipped everywhere
WORKER = str(ROOT / "tests" / "_train_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=str(k))


#: ``accelerate launch`` with 2 CPU processes; the launcher-specific flags go after it
ACCELERATE = [
    "accelerate.commands.launch",
    "--num_processes=2",
    "--num_machines=1",
    "--mixed_precision=no",
    "--dynamo_backend=no",
]


def _launch(
    out: Path,
    launcher: list[str],
    overrides: list[str],
    env: dict[str, str],
    *,
    extra: tuple[str, ...] = (),
    timeout: int = 300,
) -> None:
    """``python -m <launcher> WORKER train`` into ``out``; fails the test with its output."""
    if launcher[0] == "accelerate.commands.launch":
        launcher = [*launcher, f"--main_process_port={_free_port()}"]
    cmd = [sys.executable, "-m", *launcher, WORKER, "train", f"--out={out}"]
    cmd += [f"--set={o}" for o in overrides] + list(extra)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    r = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo); the run folder."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    _launch(out, ACCELERATE + ["--multi_gpu"], BASE_OVERRIDES, {"BYG_FAULT_NAN_AT_STEP": NAN_STEP})
    return out


def test_two_processes_equal_one_with_grad_accum(ddp_run, tmp_path, monkeypatch):
    install(monkeypatch)
    monkeypatch.setenv("BYG_FAULT_NAN_AT_STEP", NAN_STEP)
    torch.manual_seed(0)
    ref = train_mod.train(
        load_run_config(None, BASE_OVERRIDES + ["train.grad_accum=2"]),
        tmp_path / "one",
        progress=False,
    )
    ckpts = list_checkpoints(ddp_run)
    assert [c.name for c in ckpts] == [f"step_{s:07d}" for s in (2, 4, 8)]  # 6 was skipped
    final = load_checkpoint(ckpts[-1])
    assert final["state"]["world_size"] == 2 and final["state"]["global_batch"] == 4
    assert final["state"]["samples_seen"] == 32
    _assert_same(final["lora"], ref["editor"].lora_state_dict())
    _assert_same(final["ema"], ref["editor"].ema_state_dict())
    ref_state = load_checkpoint(list_checkpoints(tmp_path / "one")[-1])["state"]
    assert final["state"]["objective"] == ref_state["objective"]  # warm-up bookkeeping too

    # only rank 0 logs; logged terms are global means, equal to the one-process run's
    rows = [json.loads(line) for line in (ddp_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    skipped = [r for r in rows if "skipped" in r]
    assert [r["step"] for r in skipped] == [int(NAN_STEP)]
    rows = [r for r in rows if "skipped" not in r]
    assert {r["kind"] for r in rows} == {"identity", "full"}  # both step kinds under DDP
    assert [r["kind"] for r in rows] == [h["kind"] for h in ref["history"]]
    for r, h in zip(rows, ref["history"]):
        assert r["loss_id"] == pytest.approx(h["loss_id"], rel=1e-6)
        assert r["lr"] == h["lr"]  # one schedule step per global step, as on one process
    assert len({r["lr"] for r in rows}) > 3  # warm-up and cosine decay: the lr does move


def test_checkpoint_from_two_processes_resumes_on_one(ddp_run, tmp_path, monkeypatch):
    """Elastic resume: step 4 of the 2-process run, continued by 1 process with grad_accum 2."""
    install(monkeypatch)
    monkeypatch.setenv("BYG_FAULT_NAN_AT_STEP", NAN_STEP)
    step4 = ddp_run / "checkpoints" / "step_0000004"
    cfg = load_run_config(None, BASE_OVERRIDES + ["train.grad_accum=2"])
    res = train_mod.train(cfg, tmp_path / "elastic", resume=str(step4), progress=False)
    assert res["steps"] == 8 and [h["step"] for h in res["history"]] == [5, 7, 8]
    final = load_checkpoint(list_checkpoints(ddp_run)[-1])
    _assert_same(final["lora"], res["editor"].lora_state_dict())
    _assert_same(final["ema"], res["editor"].ema_state_dict())


@pytest.mark.slow  # a second 2-process launch (~15-30 s on 2 cores); run with -m slow
def test_fsdp_shards_the_base_and_matches_ddp(ddp_run, tmp_path):
    """FSDP2 with the LoRA modules left whole gives the DDP weights.

    accelerate offers FSDP on GPUs only, so the worker flips accelerate's device check
    (``BYG_TEST_FSDP_ON_CPU``); ``fully_shard``, the gloo collectives and the train loop's
    FSDP path are the real ones. Without the loop's LoRA gradient averaging the ranks
    drift apart and the save-time check refuses to write.
    """
    out = tmp_path / "fsdp"
    _launch(
        out,
        ["torch.distributed.run", "--standalone", "--nproc_per_node=2"],
        BASE_OVERRIDES,
        {"BYG_TEST_FSDP_ON_CPU": "1", "BYG_FAULT_NAN_AT_STEP": NAN_STEP},
    )
    got = load_checkpoint(list_checkpoints(out)[-1])
    want = load_checkpoint(list_checkpoints(ddp_run)[-1])
    _assert_same(got["lora"], want["lora"])
    _assert_same(got["ema"], want["ema"])


# ----------------------------------------------------------------------------- DeepSpeed

ZERO_OVERRIDES = ["train.batch_size=1", "train.grad_accum=2"]
ZERO_NAN = "6:1"  # NaN in micro-step 1 of step 6: after micro-step 0's backward


def _zero2_launch(out: Path, *extra: str) -> None:
    """``accelerate launch --use_deepspeed --zero_stage 2`` with 2 CPU processes (gloo)."""
    # the first DeepSpeed launch on a machine compiles its CPU shared-memory op (~1 min)
    _launch(
        out,
        ACCELERATE + ["--use_deepspeed", "--zero_stage=2"],
        BASE_OVERRIDES + ZERO_OVERRIDES,
        {"BYG_FAULT_NAN_AT_STEP": ZERO_NAN},
        extra=extra,
        timeout=600,
    )


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2") / "run"
    _zero2_launch(out)
    return out


def test_deepspeed_zero2_equals_one_process(zero2_run, tmp_path, monkeypatch):
    """ZeRO-2 over 2 processes × batch 1 × grad_accum 2 = 1 process × batch 1 × grad_accum 4.

    Step 6 turns NaN in its second micro-step, after DeepSpeed has accumulated the first:
    the step must still leave no trace (weights, AdamW moments, scheduler).
    """
    install(monkeypatch)
    monkeypatch.setenv("BYG_FAULT_NAN_AT_STEP", NAN_STEP)
    ref = train_mod.train(
        load_run_config(None, BASE_OVERRIDES + ["train.batch_size=1", "train.grad_accum=4"]),
        tmp_path / "one",
        progress=False,
    )
    ckpts = list_checkpoints(zero2_run)
    assert [c.name for c in ckpts] == [f"step_{s:07d}" for s in (2, 4, 8)]  # 6 was skipped
    final = load_checkpoint(ckpts[-1])
    assert final["state"]["world_size"] == 2 and final["state"]["global_batch"] == 4
    # the ZeRO optimizer state is saved as one partition per rank, as plain data
    zero = final["optimizer"]["zero"]
    assert len(zero) == 2 and all(z["zero_stage"] == 2 for z in zero)
    _assert_same(final["lora"], ref["editor"].lora_state_dict(), atol=1e-5)
    _assert_same(final["ema"], ref["editor"].ema_state_dict(), atol=1e-5)
    rows = [json.loads(line) for line in (zero2_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "skipped" in r] == [6]
    good = [r for r in rows if "skipped" not in r]
    assert [r["kind"] for r in good] == [h["kind"] for h in ref["history"]]
    assert [r["lr"] for r in good] == [h["lr"] for h in ref["history"]]  # scheduler in step


def test_deepspeed_zero2_resume_is_exact(zero2_run, tmp_path):
    """Resumed from step 4 (every rank loads its optimizer partition), the run ends where
    the uninterrupted one did."""
    out = tmp_path / "resumed"
    _zero2_launch(out, f"--resume={zero2_run / 'checkpoints' / 'step_0000004'}")
    got = load_checkpoint(list_checkpoints(out)[-1])
    want = load_checkpoint(list_checkpoints(zero2_run)[-1])
    assert got["state"]["step"] == 8
    _assert_same(got["lora"], want["lora"])
    _assert_same(got["ema"], want["ema"])
    for a, b in zip(got["optimizer"]["zero"], want["optimizer"]["zero"]):
        _assert_same(
            dict(enumerate(a["single_partition_of_fp32_groups"])),
            dict(enumerate(b["single_partition_of_fp32_groups"])),
        )


def test_deepspeed_checkpoint_refused_without_deepspeed(zero2_run, tmp_path, monkeypatch):
    install(monkeypatch)
    cfg = load_run_config(None, BASE_OVERRIDES + ZERO_OVERRIDES)
    with pytest.raises(train_mod.TrainingError, match="DeepSpeed ZeRO.*2 partitions"):
        train_mod.train(
            cfg, tmp_path / "r", resume=str(list_checkpoints(zero2_run)[-1]), progress=False
        )


def _plugin_accelerator(stage: int, world: int = 2):
    from types import SimpleNamespace

    plugin = SimpleNamespace(
        deepspeed_config={"zero_optimization": {"stage": stage}, "train_batch_size": "auto"},
        zero_stage=stage,
        gradient_accumulation_steps=1,
    )
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=world)


def test_deepspeed_config_comes_from_the_run_config():
    from byg.distributed import configure_deepspeed

    acc = _plugin_accelerator(2, world=4)
    assert configure_deepspeed(acc, micro_batch=3, grad_accum=2, grad_clip=1.0) == 2
    ds = acc.state.deepspeed_plugin.deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == 1.0
    for stage in (0, 3):
        with pytest.raises(ValueError, match=f"ZeRO stage {stage} is not supported.*FSDP"):
            configure_deepspeed(
                _plugin_accelerator(stage), micro_batch=1, grad_accum=1, grad_clip=0.0
            )


def test_zero_checkpoint_needs_as_many_processes():
    ckpt = {"path": "ck", "optimizer": {"zero": [{}, {}]}}
    train_mod._check_optimizer_layout(ckpt, True, 2)
    with pytest.raises(train_mod.TrainingError, match="partitions for 2 processes, this run has 4"):
        train_mod._check_optimizer_layout(ckpt, True, 4)
    with pytest.raises(train_mod.TrainingError, match="without DeepSpeed"):
        train_mod._check_optimizer_layout({"path": "ck", "optimizer": {"optimizer": {}}}, True, 2)

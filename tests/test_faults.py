"""Fault injection: kills, signals, a full disk, NaNs and bad data lose no completed work.

Every run is the tiny backbone for 8 steps with a checkpoint every 2 (``_train_worker``).
Interrupted runs are resumed with ``--resume latest`` and must equal, bit for bit, one
uninterrupted run. Processes that are killed run in subprocesses; the fault hooks
(``BYG_FAULT_*``, documented in ``byg.train`` and ``byg.checkpoint``) make the moment of
the kill deterministic.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_worker import BASE_OVERRIDES, install
from PIL import Image

import byg.train as train_mod
from byg.checkpoint import list_checkpoints, load_checkpoint
from byg.cli import main as byg_main
from byg.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "_train_worker.py")


# ----------------------------------------------------------------------------- helpers


def _cfg(*extra: str):
    return load_run_config(None, BASE_OVERRIDES + list(extra))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """LoRA and EMA tensors of one uninterrupted 8-step run."""
    with pytest.MonkeyPatch.context() as mp:
        install(mp)
        res = train_mod.train(_cfg(), tmp_path_factory.mktemp("ref"), progress=False)
    return {"lora": res["editor"].lora_state_dict(), "ema": res["editor"].ema_state_dict()}


def _assert_equal(res: dict, reference: dict) -> None:
    for name, got in (
        ("lora", res["editor"].lora_state_dict()),
        ("ema", res["editor"].ema_state_dict()),
    ):
        assert got.keys() == reference[name].keys()
        for k in got:
            assert torch.equal(got[k], reference[name][k]), f"{name} {k}"


def _names(run: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run)]


def _spawn(run: Path, *args: str, **fault_env: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **fault_env}
    cmd = [sys.executable, WORKER, "train", f"--out={run}", *[f"--set={o}" for o in BASE_OVERRIDES]]
    log = open(run.parent / f"{run.name}.{len(list(run.parent.glob('*.log')))}.log", "w")
    return subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_marker(run: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    marker = run / "fault_marker"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text().endswith("\n"):
            text = marker.read_text()
            marker.unlink()
            return text
        assert proc.poll() is None, f"worker exited early with {proc.returncode}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("fault marker never appeared")


# ----------------------------------------------------------------------------- kills


def test_sigkill_in_training_and_in_save_then_resume_is_exact(tmp_path, monkeypatch, reference):
    run = tmp_path / "run"
    run.mkdir()
    # 1. killed in the middle of step 5 (checkpoints 2 and 4 are complete)
    p = _spawn(run, BYG_FAULT_HANG_AT_STEP="5")
    assert _wait_for_marker(run, p) == "hanging in step 5\n"
    p.kill()
    assert p.wait(60) == -signal.SIGKILL
    assert _names(run) == ["step_0000002", "step_0000004"]

    # 2. resumed, then killed inside the save of step 6: weights half written
    p = _spawn(run, "--resume=latest", BYG_FAULT_PAUSE_IN_SAVE="6")
    assert _wait_for_marker(run, p) == "paused in save of step 6\n"
    p.kill()
    assert p.wait(60) == -signal.SIGKILL
    partial = list((run / "checkpoints").glob(".tmp_step_0000006_*"))
    assert len(partial) == 1 and (partial[0] / "lora.safetensors").exists()
    assert _names(run) == ["step_0000002", "step_0000004"]  # no half checkpoint is listed
    assert load_checkpoint(run / "checkpoints" / "step_0000004")["state"]["step"] == 4

    # 3. --resume latest picks step 4 and ends where an uninterrupted run ends
    install(monkeypatch)
    res = train_mod.train(_cfg(), run, resume="latest", progress=False)
    assert [h["step"] for h in res["history"]] == [5, 6, 7, 8]
    _assert_equal(res, reference)
    assert not list((run / "checkpoints").glob(".tmp_*"))  # the leftover was cleaned up
    assert _names(run) == [f"step_{s:07d}" for s in (2, 4, 6, 8)]


def test_sigterm_finishes_the_step_saves_and_exits_zero(tmp_path, monkeypatch, reference):
    run = tmp_path / "run"
    run.mkdir()
    p = _spawn(run, BYG_FAULT_HANG_AT_STEP="3")
    assert _wait_for_marker(run, p) == "hanging in step 3\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0
    assert _names(run) == ["step_0000002", "step_0000003"]  # step 3 finished and saved
    log = next(tmp_path.glob("run.*.log")).read_text()
    assert "signal 15 received" in log

    install(monkeypatch)
    res = train_mod.train(_cfg(), run, resume="latest", progress=False)
    assert res["history"][0]["step"] == 4
    _assert_equal(res, reference)


# ----------------------------------------------------------------------------- disk, NaN


def test_disk_full_on_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, reference):
    install(monkeypatch)
    monkeypatch.setenv("BYG_FAULT_DISK_FULL_IN_SAVE", "4")
    with pytest.raises(train_mod.TrainingError, match=r"No space left.*step_0000002 is intact"):
        train_mod.train(_cfg(), tmp_path, progress=False)
    assert _names(tmp_path) == ["step_0000002"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002"]
    monkeypatch.delenv("BYG_FAULT_DISK_FULL_IN_SAVE")
    res = train_mod.train(_cfg(), tmp_path, resume="latest", progress=False)
    _assert_equal(res, reference)


def test_nan_step_is_skipped_without_any_update(tmp_path, monkeypatch):
    install(monkeypatch)
    good = train_mod.train(_cfg(), tmp_path / "good", stop_after=2, progress=False)
    monkeypatch.setenv("BYG_FAULT_NAN_AT_STEP", "3")
    res = train_mod.train(_cfg(), tmp_path / "nan", stop_after=3, progress=False)
    assert [h["step"] for h in res["history"]] == [1, 2]  # step 3 made no update
    for a, b in (
        (res["editor"].lora_state_dict(), good["editor"].lora_state_dict()),
        (res["editor"].ema_state_dict(), good["editor"].ema_state_dict()),
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    bad = [r for r in rows if r.get("skipped")]
    assert len(bad) == 1 and bad[0]["step"] == 3  # logged with the step and its loss terms
    assert math.isnan(bad[0]["loss"]) and math.isfinite(bad[0]["loss_id"])


def test_consecutive_nans_stop_and_keep_the_last_good_state(tmp_path, monkeypatch):
    install(monkeypatch)
    good = train_mod.train(_cfg(), tmp_path / "good", stop_after=3, progress=False)
    monkeypatch.setenv("BYG_FAULT_NAN_AT_STEP", "4,5,6")
    cfg = _cfg("train.max_bad_steps=3", "train.save_every=100")
    with pytest.raises(train_mod.TrainingError, match=r"3 consecutive non-finite.*step 3\)"):
        train_mod.train(cfg, tmp_path / "nan", progress=False)
    assert _names(tmp_path / "nan") == ["step_0000003"]  # saved on the way out
    saved = load_checkpoint(list_checkpoints(tmp_path / "nan")[-1])
    want = good["editor"].lora_state_dict()
    assert all(torch.equal(saved["lora"][k], want[k]) for k in want)


# ----------------------------------------------------------------------------- bad input


def _png(path: Path, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _row(name: str, **over) -> str:
    row = {
        "file_name": name,
        "src_caption": "a red circle",
        "tgt_caption": "a blue circle",
        "instruction": "make the circle blue",
        "reverse_instruction": "make the circle red",
        "edit_type": "color",
    }
    return json.dumps({**row, **over})


def _bad_folder(root: Path, *, metadata_faults: bool = True) -> Path:
    """4 good rows, a corrupt and a truncated PNG, and (optionally) a missing file, an
    empty caption and a malformed line."""
    root.mkdir()
    lines = []
    for i in range(4):
        _png(root / f"good{i}.png", i)
        lines.append(_row(f"good{i}.png"))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    (root / "truncated.png").write_bytes(_png(root / "full.png", 9)[:60])
    lines += [_row("corrupt.png"), _row("truncated.png")]
    if metadata_faults:
        _png(root / "empty.png", 7)
        lines += [_row("missing.png"), _row("empty.png", src_caption=""), '{"file_name": "x.png",']
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """Counts backbone builds: a bad input must be reported before any model is loaded."""
    install(monkeypatch)
    import byg.backbones.registry as registry

    calls: list[str] = []
    real = registry.build_backbone

    def counting(name, options=None):
        calls.append(name)
        return real(name, options)

    monkeypatch.setattr("byg.infer.build_backbone", counting)
    return calls


def _train_cli(run: Path, *sets: str) -> list[str]:
    return ["train", f"--out={run}", *[f"--set={o}" for o in BASE_OVERRIDES + list(sets)]]


def test_bad_dataset_is_refused_naming_the_items(tmp_path, builds, capsys):
    data = _bad_folder(tmp_path / "data")
    folder = ["data.source=folder", f"data.path={data}", "data.resolution=8"]
    assert byg_main(_train_cli(tmp_path / "run", *folder)) == 1
    err = capsys.readouterr().err
    assert "3 bad row(s)" in err
    assert "line 7 (missing.png)" in err and "does not exist" in err
    assert "line 8 (empty.png)" in err and "'src_caption' is empty" in err
    assert "line 9" in err and "not valid JSON" in err
    assert "data.skip_bad" in err  # the message says how to go on
    assert builds == []  # refused before any model was built

    # an image that does not decode is found when it is first loaded, and named
    data2 = _bad_folder(tmp_path / "data2", metadata_faults=False)
    folder2 = ["data.source=folder", f"data.path={data2}", "data.resolution=8"]
    assert byg_main(_train_cli(tmp_path / "run2", *folder2)) == 1
    err = capsys.readouterr().err
    assert "cannot decode image" in err and ("corrupt.png" in err or "truncated.png" in err)


def test_skip_bad_trains_on_the_good_rows_and_counts_the_rest(tmp_path, builds, capsys):
    data = _bad_folder(tmp_path / "data")
    cfg = _cfg("data.source=folder", f"data.path={data}", "data.resolution=8", "data.skip_bad=true")
    res = train_mod.train(cfg, tmp_path / "run", progress=False)
    assert res["steps"] == 8
    assert res["skipped_bad"] == 5  # 3 at load time, 2 when they failed to decode
    assert "skipped 5 bad item(s)" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_bad"] == 5
    assert any("corrupt.png" in item and "cannot decode" in item for item in rows[-1]["items"])


def test_missing_paths_and_bad_checkpoints_are_reported_before_loading(tmp_path, builds, capsys):
    run = tmp_path / "run"
    assert byg_main(_train_cli(run, "data.source=folder", f"data.path={tmp_path}/nope")) == 1
    err = capsys.readouterr().err
    assert "data.path" in err and "/nope" in err and "does not exist" in err
    assert byg_main(_train_cli(run, "model.options.checkpoint=./no/such/base")) == 1
    assert "model.options.checkpoint './no/such/base'" in capsys.readouterr().err
    assert byg_main([*_train_cli(run), f"--resume={tmp_path}/nope"]) == 1
    assert "cannot resume" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"does not exist: data.path '.*/gone'"):
        train_mod.train(_cfg("data.source=cache", f"data.path={tmp_path}/gone"), run)
    assert builds == []

    # a checkpoint of another backbone is refused by name, before the model is built
    train_mod.train(_cfg("train.steps=2"), run, progress=False)
    builds.clear()
    with pytest.raises(train_mod.TrainingError, match=r"model.backbone='tiny'.*'toy'"):
        train_mod.train(_cfg("model.backbone=toy"), run, resume="latest", progress=False)
    assert builds == []

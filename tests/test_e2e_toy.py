"""End to end on the real toy stack: toy world + toy backbone + ByG, train, resume, edit."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import byg.infer
from byg.cli import main
from byg.data.toy import ToyWorldConfig, render, sample_edit

TINY = [
    "model.options.dim=32",
    "model.options.depth=1",
    "model.options.heads=2",
    "model.options.stem_channels=8",
    "model.options.patch_size=4",
    "lora.rank=2",
    "train.batch_size=2",
    "train.steps=4",
    "train.save_every=2",
    "train.log_every=1",
    "train.preview_every=4",
    "train.num_threads=1",
    "byg.rollout_steps=2",
    "byg.warmup_steps=1",
    "byg.warmup_ratio=null",
    "byg.p_id=0.0",
    "sample.steps=2",
    "train.eval_every=4",
    "train.eval_examples=4",
]


def test_train_resume_edit_on_the_toy_world(tmp_path, monkeypatch):
    torch.manual_seed(0)
    out = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    assert (
        main(
            [
                "train",
                "--config",
                "configs/toy_image.yaml",
                "--out",
                str(out),
                "--max-steps",
                "2",
                *sets,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--config",
                "configs/toy_image.yaml",
                "--out",
                str(out),
                "--resume",
                "latest",
                *sets,
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    kinds = [r.get("kind") for r in rows if "kind" in r]
    assert "identity" in kinds and "full" in kinds  # warm-up then ByG steps
    assert (out / "checkpoints" / "step_0000004" / "lora.safetensors").exists()
    assert any((out / "previews").iterdir())
    # oracle metrics on held-out edits, written by `byg train` itself (toy data)
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4]  # end of each invocation
    assert 0.0 <= evals[0]["eval_preservation"] <= 1.0 and evals[0]["eval_psnr"] > 0

    ex = sample_edit(np.random.default_rng(0), ToyWorldConfig(), "seen")
    src = tmp_path / "src.png"
    Image.fromarray(render(ex.src, ToyWorldConfig())).save(src)
    dst = tmp_path / "out.png"
    rc = main(
        [
            "edit",
            "--checkpoint",
            str(out),
            "--image",
            str(src),
            "--instruction",
            ex.c_fwd,
            "--out",
            str(dst),
            "--steps",
            "2",
        ]
    )
    assert rc == 0
    img = Image.open(dst)
    assert img.size == (32, 32) and img.mode == "RGB"
    # --guidance-scale / --negative reach the sampler (this tiny random model ignores text,
    # so the maths of guidance is checked in tests/test_infer.py)
    seen = []
    real_edit = byg.infer.edit

    def spy(editor, x_src, text_fwd, **kw):
        seen.append((kw["guidance_scale"], kw["text_neg"]))
        return real_edit(editor, x_src, text_fwd, **kw)

    monkeypatch.setattr(byg.infer, "edit", spy)
    guided = tmp_path / "guided.png"
    args = ["edit", "--checkpoint", str(out), "--image", str(src), "--instruction", ex.c_fwd]
    rc = main([*args, "--out", str(guided), "--steps", "2", "--guidance-scale", "3",
               "--negative", ex.c_src])  # fmt: skip
    assert rc == 0 and Image.open(guided).size == (32, 32)
    assert seen[0][0] == 3.0 and seen[0][1] is not None
    assert main([*args, "--out", str(guided), "--steps", "2"]) == 0
    assert seen[1] == (1.0, None)  # the checkpoint's default: no guidance


def test_edit_reports_a_corrupt_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rc = main(
        [
            "edit",
            "--checkpoint",
            str(tmp_path / "nothing"),
            "--image",
            str(bad),
            "--instruction",
            "x",
            "--out",
            str(tmp_path / "o.png"),
        ]
    )
    assert rc == 1
    assert "error" in capsys.readouterr().err

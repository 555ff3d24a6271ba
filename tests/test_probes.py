"""benchmarks/probes.py runs on the shipped base (a smoke test; the numbers are not checked)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_TRAIN, TINY_UNET_TRAIN, load_benchmark


def _load():
    return load_benchmark("probes")


def test_prior_probe_writes_a_table_per_edit_type(tmp_path, capsys):
    probes = _load()
    out = tmp_path / "probes.md"
    assert probes.main(["prior", "--n", "16", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "edit type" not in line]
    assert len(rows) >= 3  # 16 edits cover several types
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        shares = [float(x) for x in cells[3].split(" / ")]
        assert len(shares) == 3 and all(0.0 <= x <= 1.0 for x in shares)


def test_run_probes_need_a_run():
    probes = _load()
    with pytest.raises(SystemExit):
        probes.main(["grads"])


def test_words_probe_reports_each_attribute_and_t(tmp_path):
    probes = _load()
    out = tmp_path / "words.md"
    assert probes.main(["words", "--out", str(out)]) == 0
    rows = {
        cells[0]: [float(x) for x in cells[1:]]
        for line in out.read_text().splitlines()
        if line.startswith("| ") and "attribute" not in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert sorted(rows) == ["background", "colour", "shape", "size", "texture"]
    assert all(len(r) == 3 and all(x >= 0 for x in r) for r in rows.values())
    # the shipped base follows background words at high noise (its caption accuracy >= 0.8)
    assert rows["background"][0] > 0.3


def test_trajectory_probe_writes_one_row_per_caption(tmp_path):
    from PIL import Image

    probes = _load()
    png = tmp_path / "traj.png"
    assert probes.main(["trajectory", "--png", str(png)]) == 0
    w, h = Image.open(png).size
    assert (w, h) == (11 * 32 * 4, 3 * 32 * 4)  # 10 snapshots + the sample, 3 captions


def test_denoise_probe_reports_each_attribute_per_t(tmp_path):
    probes = _load()
    out = tmp_path / "denoise.md"
    assert probes.main(["denoise", "--n", "12", "--out", str(out)]) == 0
    rows = {
        float(cells[0]): [float(x) for x in cells[1:]]
        for line in out.read_text().splitlines()
        if line.startswith("| 0")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert sorted(rows) == [0.5, 0.7, 0.9]
    assert all(len(r) == 7 and all(0.0 <= x <= 1.0 for x in r) for r in rows.values())
    # the background survives denoising from t = 0.5 on the shipped base
    assert rows[0.5][0] >= 0.9


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny fresh editor trained two steps: the probes' plumbing, not their numbers."""
    from byg.cli import main as byg_main

    tiny = {**TINY_TRAIN, "model.options.patch_size": 4}
    run = tmp_path_factory.mktemp("probes") / "run"
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    assert byg_main(["train", "--config", "configs/toy_image.yaml", "--out", str(run), *sets]) == 0
    return run


def test_editor_probe_compares_with_the_base_and_counts_changes(tmp_path, tiny_run):
    run = tiny_run
    probes = _load()
    out = tmp_path / "editor.md"
    assert probes.main(["editor", "--run", str(run), "--n", "8", "--out", str(out)]) == 0
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    bands = [[c.strip() for c in line.strip("|").split("|")] for line in lines if "-" in line[:8]]
    assert [b[0] for b in bands] == ["0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0"]
    assert all(float(b[1]) > 0 and float(b[2]) > 0 for b in bands)
    counts = [int(c) for c in lines[-1].strip("|").split("|")]
    assert len(counts) == 8 and all(0 <= c <= 8 for c in counts)


def test_prompts_probe_finds_the_shipped_base_worse_under_instructions_than_no_prompt(tmp_path):
    """The shipped base was pretrained on captions only: under the instruction its loss on
    the target's path is above its loss with the empty prompt, and the target caption is
    below both (docs/demo_findings.md item 13)."""
    probes = _load()
    out = tmp_path / "prompts.md"
    assert probes.main(["prompts", "--n", "16", "--samples", "8", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    rows = {
        float(cells[0]): [float(x) for x in cells[1:]]
        for line in lines
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
        if line.startswith("| 0.") and len(cells) == 5  # t, then the four prompts
    }
    assert sorted(rows) == [0.1, 0.3, 0.5, 0.7, 0.9]
    for target, _source, instruction, empty in rows.values():
        assert target < empty < instruction
    follow = [line for line in lines if line.startswith("| ") and line.rstrip().endswith(" |")][-1]
    assert 0.0 <= float(follow.strip("|").split("|")[-1]) <= 1.0


def _rows(path: Path) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in path.read_text().splitlines()
        if line.startswith("| 0.")
    ]


def test_follow_probe_reports_editor_and_base_on_both_paths(tmp_path, tiny_run):
    probes = _load()
    out = tmp_path / "follow.md"
    assert probes.main(["follow", "--run", str(tiny_run), "--n", "8", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [float(r[0]) for r in rows] == [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    assert all(len(r) == 5 and all(float(x) >= 0 for x in r[1:]) for r in rows)


def test_handoff_probe_scores_editor_handoff_and_sdedit(tmp_path, tiny_run):
    probes = _load()
    out = tmp_path / "handoff.md"
    assert probes.main(["handoff", "--run", str(tiny_run), "--n", "8", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [float(r[0]) for r in rows] == [0.5, 0.3, 0.15]
    for r in rows:
        for cell in r[1:]:
            success, rest = cell.split(" / ")
            assert 0.0 <= float(success) <= 1.0 and 0.0 <= float(rest.split()[0]) <= 1.0
    assert "Editor alone:" in out.read_text()


def test_grads_probe_takes_byg_changes_and_rejects_unknown_fields(tmp_path, tiny_run):
    probes = _load()
    out = tmp_path / "grads.md"
    args = ["grads", "--run", str(tiny_run), "--out", str(out)]
    assert probes.main([*args, "--byg", "prior_weighting=x0", "--byg", "lambda_prior=3"]) == 0
    text = out.read_text()
    assert "'prior_weighting': 'x0'" in text and "'lambda_prior': 3" in text
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    terms = [r[0].strip() for r in rows[1:]]
    assert terms[:5] == ["directional", "anchor (α·MSE)", "cycle", "identity (λ_id)", "all"]
    with pytest.raises(SystemExit, match="ByGConfig field"):
        probes.main(["grads", "--run", str(tiny_run), "--byg", "no_such_field=1"])


def test_score_probe_reports_both_splits_and_seen_types(tmp_path, tiny_run):
    probes = _load()
    out = tmp_path / "score.md"
    assert probes.main(["score", "--run", str(tiny_run), "--n", "8", "--out", str(out)]) == 0
    rows = {
        cells[0]: cells[1]
        for line in out.read_text().splitlines()
        if line.startswith("| ") and "split" not in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert "seen" in rows and "unseen" in rows
    assert any(k.startswith("seen ") for k in rows)
    for cell in rows.values():
        success, rest = cell.split(" / ")
        pres, both = rest.split(" [")
        assert all(0.0 <= float(x) <= 1.0 for x in (success, pres, both.rstrip("]")))
    guided = tmp_path / "guided.md"
    args = ["score", "--run", str(tiny_run), "--n", "4", "--out", str(guided)]
    assert probes.main([*args, "--guidance-scale", "2", "--negative", "c_src"]) == 0
    assert "text guidance 2 from c_src" in guided.read_text()


def test_routing_probe_reports_both_terms_and_drops_the_cycle_with_no_cycle(tmp_path):
    """On the demo config's untrained editor over the shipped base (a tiny random base has
    no caption shift, so every gradient would be zero)."""
    probes = _load()
    out = tmp_path / "routing.md"
    args = ["routing", "--n", "8", "--out", str(out)]
    assert probes.main(args) == 0
    rows = _rows(out)
    assert [float(r[0]) for r in rows] == [0.1, 0.3, 0.5, 0.7, 0.9]
    for r in rows:
        cosines = [float(r[i]) for i in (1, 2, 3, 4, 8)]
        assert all(-1.0 <= c <= 1.0 for c in cosines)
        assert float(r[5]) > 0 and float(r[6]) > 0 and float(r[7]) >= 0
    # the cycle reaches v_f only through the routed condition: no cycle, no gradient
    off = tmp_path / "routing_off.md"
    assert probes.main([*args[:-1], str(off), "--byg", "no_cycle=true"]) == 0
    assert "'no_cycle': True" in off.read_text()
    assert all(float(r[6]) == 0.0 for r in _rows(off))
    # references it does not rebuild are refused, not measured as something else
    for change in (
        "direction_reference=source_path",
        "direction_reference=editor_ema",
        "bootstrap_state=renoised",
    ):
        with pytest.raises(SystemExit, match="routing measures"):
            probes.main([*args, "--byg", change])


def test_gate_probe_reports_the_gate_and_each_terms_push(tmp_path, tiny_run):
    """A tiny U-Net editor with ``edit_gate`` trained two steps: the gate probe's means are
    gate values, its gradient table has every term; a run without a gate is refused."""
    from byg.cli import main as byg_main

    unet = {**TINY_UNET_TRAIN, "model.options.edit_gate": "true"}
    run = tmp_path / "gate_run"
    sets = [a for k, v in unet.items() for a in ("--set", f"{k}={v}")]
    assert byg_main(["train", "--config", "configs/toy_image.yaml", "--out", str(run), *sets]) == 0
    probes = _load()
    out = tmp_path / "gate.md"
    assert probes.main(["gate", "--run", str(run), "--n", "6", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [float(r[0]) for r in rows] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert all(0.0 < float(x) < 1.0 for r in rows for x in r[1:])
    terms = [
        line.strip("|").split("|")[0].strip()
        for line in out.read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| 0.")
    ]
    assert terms[-4:] == ["directional", "anchor (α·MSE)", "cycle", "all"]
    with pytest.raises(SystemExit, match="no edit_gate"):
        probes.main(["gate", "--run", str(tiny_run), "--n", "4"])


def test_edits_probe_draws_source_edit_and_truth_per_row(tmp_path, tiny_run):
    from PIL import Image

    probes = _load()
    png, out = tmp_path / "size.png", tmp_path / "edits.md"
    args = ["edits", "--run", str(tiny_run), "--n", "40", "--edit-type", "size"]
    assert probes.main([*args, "--png", str(png), "--out", str(out)]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and "row" not in ln]
    assert 1 <= len(rows) <= 16
    assert Image.open(png).size == (3 * 32 * 4, len(rows) * 32 * 4)  # 3 columns, 4x upscaled
    with pytest.raises(SystemExit, match="no 'nope' edits"):
        probes.main([*args[:-1], "nope", "--png", str(png)])


def test_editpath_probe_draws_the_editors_predictions_along_its_path(tmp_path, tiny_run):
    from PIL import Image

    probes = _load()
    png, out = tmp_path / "path.png", tmp_path / "path.md"
    args = ["editpath", "--run", str(tiny_run), "--n", "40", "--edit-type", "size"]
    assert probes.main([*args, "--png", str(png), "--out", str(out)]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and "row" not in ln]
    assert 1 <= len(rows) <= 16
    # source, x̂_0 at every 4th step (the times listed), the edit, the ground truth
    times = out.read_text().split("at t = ")[1].split(" |")[0].split(", ")
    assert float(times[0]) == 1.0 and len(times) >= 1
    assert Image.open(png).size == ((3 + len(times)) * 32 * 4, len(rows) * 32 * 4)


def test_target_probe_reads_the_source_path_target_per_t(tmp_path, tiny_run):
    from PIL import Image

    probes = _load()
    png, out = tmp_path / "target.png", tmp_path / "target.md"
    args = ["target", "--run", str(tiny_run), "--n", "24", "--base-steps", "2"]
    assert probes.main([*args, "--png", str(png), "--out", str(out)]) == 0
    text = out.read_text()
    rows = {
        float(c[0]): c[1:]
        for ln in text.splitlines()
        if ln.startswith("| 0.")
        for c in [[x.strip() for x in ln.strip("|").split("|")]]
    }
    assert sorted(rows) == [0.1, 0.3, 0.5, 0.7, 0.9]
    for cells in rows.values():
        pairs = [[float(v) for v in cell.split(" / ")] for cell in cells]
        assert len(pairs) == 4 and all(0.0 <= v <= 1.0 for p in pairs for v in p)
    assert "true targets themselves: 1.000 / 1.000" in text  # the oracle's ceiling
    w, h = Image.open(png).size
    assert w == (1 + 2 * 5 + 1) * 32 * 4 and h % (32 * 4) == 0

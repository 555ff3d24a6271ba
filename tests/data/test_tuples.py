"""The tuple folder format: rules, metadata round trips, validation, the dataset, toy export."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byg.data.tuples import (
    METADATA_NAME,
    DataError,
    EditFolderDataset,
    EditRow,
    read_metadata,
    reverse_instruction_problem,
    row_problems,
    target_caption_problem,
    validate_folder,
    write_rows,
)


def make_row(name: str, edit_type: str = "color_change", **kw) -> EditRow:
    fields = dict(
        file_name=name,
        src_caption="a red car parked on a street",
        tgt_caption="a blue car parked on a street",
        instruction="Make the car blue.",
        reverse_instruction="Make the car red.",
        edit_type=edit_type,
    )
    fields.update(kw)
    return EditRow(**fields)


def save_image(path: Path, size=(40, 30), colour=(200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_folder(root: Path, n: int = 4, targets: bool = False) -> list[EditRow]:
    rows = []
    for i in range(n):
        name = f"img_{i}.png"
        save_image(root / name, colour=(10 * i, 100, 200))
        kw = {}
        if targets:
            save_image(root / "targets" / name, colour=(255, 255, 0))
            kw["target_file_name"] = f"targets/{name}"
        rows.append(make_row(name, ["color_change", "remove"][i % 2], **kw))
    write_rows(root, rows, append=False)
    return rows


def cli(argv: list[str]) -> int:
    from byg.data.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "text",
    [
        "Restore the car.",
        "Revert the edit.",
        "Undo the colour change.",
        "Make the car its original colour.",
        "Change the car back to red.",
        "RESTORING the sky",
    ],
)
def test_reverse_rule_rejects_references_to_an_original_state(text):
    assert reverse_instruction_problem(text) is not None


@pytest.mark.parametrize(
    "text", ["Make the car red.", "Put a dog on the sofa.", "Paint the backpack green."]
)
def test_reverse_rule_accepts_self_contained_instructions(text):
    assert reverse_instruction_problem(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "The car is now blue.",
        "A car whose colour changed to blue.",
        "The sky became orange.",
        "A street without cars.",
        "A table with no cups on it.",
        "A dog that is not brown.",
        "The dog isn't brown.",
    ],
)
def test_target_rule_rejects_temporal_and_negative_captions(text):
    assert target_caption_problem(text) is not None


@pytest.mark.parametrize(
    "text", ["A blue car in the snow.", "A knotted rope on a wooden deck.", "An empty street."]
)
def test_target_rule_accepts_plain_descriptions(text):
    assert target_caption_problem(text) is None


def test_row_problems_names_each_broken_field():
    rec = make_row("a.png").to_dict()
    assert row_problems(rec) == []
    assert row_problems({**rec, "instruction": "  "}) == ["field 'instruction' is empty"]
    assert row_problems({k: v for k, v in rec.items() if k != "edit_type"}) == [
        "missing field 'edit_type'"
    ]
    assert "must be a string" in row_problems({**rec, "src_caption": 3})[0]
    assert "inside the folder" in row_problems({**rec, "file_name": "../x.png"})[0]
    assert "identical" in row_problems({**rec, "tgt_caption": rec["src_caption"]})[0]
    assert "not one of" in row_problems(rec, allowed_edit_types=["remove"])[0]


# ----------------------------------------------------------------------------- metadata


def test_write_read_round_trip_keeps_optionals_and_extra_columns(tmp_path):
    rows = [
        make_row("a.png"),
        make_row("sub/b.png", "style_change", style="watercolor painting"),
        make_row("c.png", target_file_name="targets/c.png", extra={"split": "train", "seen": True}),
    ]
    write_rows(tmp_path, rows[:1], append=False)
    write_rows(tmp_path, rows[1:])  # append
    lines = (tmp_path / METADATA_NAME).read_text().splitlines()
    assert len(lines) == 3
    assert "style" not in json.loads(lines[0])  # None optionals are left out
    got, bad = read_metadata(tmp_path)
    assert bad == []
    assert got == rows


def test_append_after_a_partial_last_line_keeps_new_rows_intact(tmp_path):
    write_rows(tmp_path, [make_row("a.png")], append=False)
    with open(tmp_path / METADATA_NAME, "a") as f:
        f.write('{"file_name": "b.png", "src_cap')  # a run killed mid-write
    write_rows(tmp_path, [make_row("c.png")])
    rows, bad = read_metadata(tmp_path, skip_bad=True)
    assert [r.file_name for r in rows] == ["a.png", "c.png"]
    assert len(bad) == 1 and bad[0].line_no == 2 and "not valid JSON" in bad[0].reason


def test_read_metadata_raises_naming_line_and_reason_unless_skip_bad(tmp_path):
    good = make_row("a.png").to_dict()
    lines = [
        json.dumps(good),
        "",  # blank lines are ignored
        json.dumps({**good, "file_name": "b.png", "reverse_instruction": "Undo it."}),
        "[1, 2]",
        json.dumps(good),  # duplicate file_name
        json.dumps({**good, "file_name": "e.png", "tgt_caption": "The car is now blue."}),
    ]
    (tmp_path / METADATA_NAME).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_metadata(tmp_path)
    msg = str(err.value)
    assert "4 bad row(s)" in msg and "line 3 (b.png)" in msg and "'undo'" in msg
    rows, bad = read_metadata(tmp_path, skip_bad=True)
    assert [r.file_name for r in rows] == ["a.png"]
    assert [b.line_no for b in bad] == [3, 4, 5, 6]
    assert "not a JSON object" in bad[1].reason
    assert "duplicate file_name (first on line 1)" in bad[2].reason
    assert "temporal" in bad[3].reason


def test_missing_folder_or_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_metadata(tmp_path / "nope")
    with pytest.raises(DataError, match="has no metadata.jsonl"):
        read_metadata(tmp_path)


# ----------------------------------------------------------------------------- validation


def test_validate_counts_per_type_and_lists_bad_files(tmp_path, capsys):
    make_folder(tmp_path, n=4)
    report = validate_folder(tmp_path)
    assert report.ok and report.counts == {"color_change": 2, "remove": 2}
    assert cli(["data", "validate", str(tmp_path)]) == 0

    (tmp_path / "img_1.png").write_bytes(b"not a png")  # undecodable
    (tmp_path / "img_2.png").unlink()  # missing
    report = validate_folder(tmp_path)
    assert not report.ok
    assert report.counts == {"color_change": 1, "remove": 1}
    assert [(b.line_no, b.file_name) for b in report.bad] == [(2, "img_1.png"), (3, "img_2.png")]
    assert "cannot decode" in report.bad[0].reason and "does not exist" in report.bad[1].reason
    # existence-only check does not decode
    fast = validate_folder(tmp_path, check_images=False)
    assert [b.file_name for b in fast.bad] == ["img_2.png"]

    capsys.readouterr()
    assert cli(["data", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 good row(s), 2 bad" in out and "line 2 (img_1.png)" in out


# ----------------------------------------------------------------------------- dataset


def test_dataset_items_shapes_range_and_fields(tmp_path):
    torch.manual_seed(0)
    rows = make_folder(tmp_path, n=3, targets=True)
    ds = EditFolderDataset(tmp_path, resolution=16)
    assert len(ds) == 3 and ds.num_skipped == 0
    item = ds[1]
    assert item["x_src"].shape == (3, 16, 16) and item["x_src"].dtype == torch.float32
    assert item["x_tgt"].shape == (3, 16, 16)
    assert item["x_src"].min() >= -1 and item["x_src"].max() <= 1
    # a solid colour maps to c / 127.5 - 1
    expected = torch.tensor([10, 100, 200]) / 127.5 - 1
    torch.testing.assert_close(item["x_src"][:, 8, 8], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(item["x_tgt"][:, 0, 0], torch.tensor([1.0, 1.0, -1.0]))
    assert (item["c_src"], item["c_tgt"], item["c_fwd"], item["c_rev"]) == (
        rows[1].src_caption,
        rows[1].tgt_caption,
        rows[1].instruction,
        rows[1].reverse_instruction,
    )
    assert item["edit_type"] == "remove" and item["index"] == 1


def test_dataset_resizes_shorter_side_and_centre_crops(tmp_path):
    # 60x20 image: left third red, middle third green, right third blue -> crop keeps green
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:40, 1] = 255
    arr[:, 40:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    write_rows(tmp_path, [make_row("wide.png")], append=False)
    x = EditFolderDataset(tmp_path, resolution=10)[0]["x_src"]
    assert x.shape == (3, 10, 10)
    torch.testing.assert_close(x[:, 5, 2:8], torch.tensor([-1.0, 1.0, -1.0])[:, None].expand(3, 6))


def test_dataset_refuses_bad_rows_unless_skip_bad(tmp_path, caplog):
    make_folder(tmp_path, n=4)
    with open(tmp_path / METADATA_NAME, "a") as f:
        f.write(json.dumps(make_row("gone.png").to_dict()) + "\n")
        f.write(json.dumps({**make_row("img_0b.png").to_dict(), "reverse_instruction": "Undo"}))
    with pytest.raises(DataError) as err:
        EditFolderDataset(tmp_path, resolution=8)
    assert "gone.png" in str(err.value) and "line 6 (img_0b.png)" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="byg.data"):
        ds = EditFolderDataset(tmp_path, resolution=8, skip_bad=True)
    assert len(ds) == 4 and ds.num_skipped == 2
    assert "skipped 2 bad row(s) of 6" in caplog.text


def test_undecodable_file_raises_naming_it_or_is_skipped_and_counted(tmp_path):
    make_folder(tmp_path, n=3)
    (tmp_path / "img_1.png").write_bytes(b"garbage")
    ds = EditFolderDataset(tmp_path, resolution=8)
    with pytest.raises(DataError, match="img_1.png: cannot decode"):
        ds[1]
    ds = EditFolderDataset(tmp_path, resolution=8, skip_bad=True)
    assert ds[1]["index"] == 2  # the next good row stands in
    assert ds[1]["index"] == 2 and ds.num_skipped == 1  # counted once
    # decoding up front finds it at construction
    ds = EditFolderDataset(tmp_path, resolution=8, skip_bad=True, check_images=True)
    assert len(ds) == 2 and ds.num_skipped == 1


def test_video_rows_load_as_channels_frames_height_width(tmp_path):
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = [np.full((32, 48, 3), 40 * k, np.uint8) for k in range(5)]
    iio.mimwrite(tmp_path / "clip.mp4", frames, fps=8, macro_block_size=1)
    write_rows(tmp_path, [make_row("clip.mp4", "style_change")], append=False)
    assert validate_folder(tmp_path).ok
    x = EditFolderDataset(tmp_path, resolution=16, num_frames=4)[0]["x_src"]
    assert x.shape == (3, 4, 16, 16)
    means = x.mean(dim=(0, 2, 3))
    assert torch.all(means[1:] > means[:-1])  # frames in order, brightening
    with pytest.raises(DataError, match="has 5 frames, need 9"):
        EditFolderDataset(tmp_path, resolution=16, num_frames=9)[0]


# ----------------------------------------------------------------------------- toy export


def test_toy_export_matches_the_toy_dataset_and_loads(tmp_path, capsys):
    from byg.data.toy import ToyEditDataset, ToyWorldConfig

    out = tmp_path / "toy"
    cli(["data", "toy", "--out", str(out), "--n", "12", "--split", "seen", "--seed", "3"])
    toy = ToyEditDataset(ToyWorldConfig(resolution=32), 12, seed=3, split="seen")
    rows, bad = read_metadata(out, skip_bad=True)
    assert len(rows) + len(bad) == 12
    # the only rule a toy row may break today: its captions describe a plain texture as
    # "without a pattern" / "with no pattern" (negative phrasing; see the data docs)
    for b in bad:
        assert "negative phrasing" in b.reason and "pattern" in b.reason, b.reason
    ds = EditFolderDataset(out, resolution=32, skip_bad=True)
    by_name = {r.file_name: r for r in rows}
    for j in range(len(ds)):
        item = ds[j]
        i = int(ds.rows[j].file_name.split(".")[0])
        ref = toy[i]
        for key in ("c_src", "c_tgt", "c_fwd", "c_rev", "edit_type"):
            assert item[key] == ref[key]
        torch.testing.assert_close(item["x_src"], ref["x_src"], atol=1e-6, rtol=0)
        torch.testing.assert_close(item["x_tgt"], ref["x_tgt"], atol=1e-6, rtol=0)
        assert by_name[ds.rows[j].file_name].extra == {"split": "seen", "seen": True}
    with pytest.raises(DataError, match="exists"):
        cli(["data", "toy", "--out", str(out), "--n", "2"])


def test_huggingface_imagefolder_reads_the_same_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = tmp_path / "data"
    rows = make_folder(data, n=3, targets=True)
    ds = datasets.load_dataset(
        "imagefolder", data_dir=str(data), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(ds) == 3
    assert set(ds.column_names) >= {
        "image",
        "target",
        "src_caption",
        "tgt_caption",
        "instruction",
        "reverse_instruction",
        "edit_type",
    }
    got = sorted(zip(ds["edit_type"], ds["instruction"]))
    assert got == sorted((r.edit_type, r.instruction) for r in rows)
    assert ds[0]["image"].size == (40, 30) and ds[0]["target"].getpixel((0, 0)) == (255, 255, 0)

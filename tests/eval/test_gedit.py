"""GEdit-Bench layout: reading a local copy, writing edits, the per-task table, the long-tail
builder, and the FlowEdit/SDEdit editors on a tiny backbone."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import TinyBackbone
from PIL import Image

from byg.backbones.editor import Editor
from byg.baselines.flowedit import FlowEditConfig
from byg.baselines.sdedit import SDEditConfig
from byg.cli import main as cli_main
from byg.eval.gedit import (
    GEDIT_TASK_TYPES,
    TASK_NAMES,
    baseline_edit_fn,
    bench_samples,
    check_gedit,
    load_benchmark,
    load_editor,
    output_path,
    run_editor,
    source_copy_path,
)
from byg.eval.longtail import DEFAULT_STYLES, build_longtail, parse_style
from byg.eval.report import load_summaries, task_table, write_report


def colour(i: int) -> tuple[int, int, int]:
    return (i * 7 % 256, i * 13 % 256, i * 29 % 256)


def fake_gedit_rows(n_per_task: int = 2) -> list[dict]:
    """11 task types x n keys, each in English and Chinese; key 0 of each task intersects."""
    rows = []
    for t, task in enumerate(GEDIT_TASK_TYPES):
        for k in range(n_per_task):
            key = f"{t:02d}{k:02d}abcdef"
            for lang, text in (("en", f"make it {task} {k}"), ("cn", f"把它变成 {task} {k}")):
                rows.append(
                    {
                        "task_type": task,
                        "key": key,
                        "instruction": text,
                        "instruction_language": lang,
                        "input_image": f"images/{key}.png",
                        "Intersection_exist": k == 0,
                    }
                )
    return rows


@pytest.fixture
def gedit_folder(tmp_path):
    """A tiny GEdit-Bench copy: data.jsonl + images/, sources of different sizes."""
    root = tmp_path / "GEdit-Bench"
    (root / "images").mkdir(parents=True)
    rows = fake_gedit_rows()
    for i, r in enumerate(rows):
        p = root / r["input_image"]
        if not p.exists():
            Image.new("RGB", (12 + i % 3, 10), colour(i)).save(p)
    (root / "data.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    return root


# ----------------------------------------------------------------------------- reading


def test_load_filters_language_and_subset(gedit_folder):
    en = load_benchmark(gedit_folder)
    assert len(en) == 22 and {r.language for r in en} == {"en"}
    assert {r.task_type for r in en} == set(GEDIT_TASK_TYPES)
    check_gedit(en)
    assert len(load_benchmark(gedit_folder, language="all")) == 44
    assert len(load_benchmark(gedit_folder, language="cn")) == 22
    inter = load_benchmark(gedit_folder, subset="intersection")
    assert len(inter) == 11 and all(r.intersection for r in inter)
    r = en[0]
    assert r.id == f"{r.task_type}/en/{r.key}" and r.load_image().mode == "RGB"
    with pytest.raises(ValueError, match="languages present: \\['cn', 'en'\\]"):
        load_benchmark(gedit_folder, language="de")


def test_parquet_copy_with_image_bytes(gedit_folder, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (gedit_folder / "data.jsonl").read_text().splitlines()]
    table = {k: [r[k] for r in rows] for k in rows[0] if k != "input_image"}
    table["input_image"] = [
        {"bytes": (gedit_folder / r["input_image"]).read_bytes(), "path": None} for r in rows
    ]
    (tmp_path / "hf" / "data").mkdir(parents=True)
    pq.write_table(
        pa.table(table), tmp_path / "hf" / "data" / "train-00000.parquet", row_group_size=7
    )
    got = load_benchmark(tmp_path / "hf")
    ref = {r.id: r for r in load_benchmark(gedit_folder)}
    assert [r.id for r in got] == list(ref)
    for r in got[::5]:
        assert r.image_file is None
        assert np.array_equal(np.asarray(r.load_image()), np.asarray(ref[r.id].load_image()))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: r.pop("instruction"), r"data.jsonl:1: missing field\(s\) \['instruction'\]"),
        (lambda r: r.update(key="../../etc"), "cannot be used in a file path"),
        (lambda r: r.update(instruction=""), "non-empty string"),
        (lambda r: r.update(Intersection_exist="yes"), "true/false"),
        (lambda r: r.update(input_image=42), "path or image bytes"),
    ],
)
def test_bad_rows_are_named(tmp_path, edit, match):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "x.png")
    row = {
        "task_type": "color_alter",
        "key": "k",
        "instruction": "red",
        "instruction_language": "en",
        "input_image": "images/x.png",
    }
    edit(row)
    (tmp_path / "data.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=match):
        load_benchmark(tmp_path)


def test_duplicates_missing_images_and_foreign_tasks(tmp_path):
    (tmp_path / "images").mkdir()
    row = {
        "task_type": "color_alter",
        "key": "k",
        "instruction": "red",
        "instruction_language": "en",
        "input_image": "images/x.png",
    }
    (tmp_path / "data.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(FileNotFoundError, match="x.png"):
        load_benchmark(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "x.png")
    (tmp_path / "data.jsonl").write_text((json.dumps(row) + "\n") * 2)
    with pytest.raises(ValueError, match="duplicate row 'color_alter/en/k'.*data.jsonl:1"):
        load_benchmark(tmp_path)
    row["task_type"] = "photo_to_style"
    (tmp_path / "data.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="not GEdit-Bench's"):
        check_gedit(load_benchmark(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_benchmark(tmp_path / "nope")


# ----------------------------------------------------------------------------- running


def test_eval_run_identity_writes_the_published_layout(gedit_folder, tmp_path):
    results = tmp_path / "results"
    args = [
        "eval",
        "run",
        "--method",
        "identity",
        "--bench",
        str(gedit_folder),
        "--results",
        str(results),
    ]
    assert cli_main(args) == 0
    rows = load_benchmark(gedit_folder)
    for r in rows:
        out = results / "identity" / "fullset" / r.task_type / "en" / f"{r.key}.png"
        assert out == output_path(results, "identity", r) and out.exists()
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(r.load_image()))
        assert source_copy_path(results, "identity", r).name == f"{r.key}_SRCIMG.png"
        assert source_copy_path(results, "identity", r).exists()
    index = [json.loads(x) for x in (results / "identity" / "index.jsonl").read_text().splitlines()]
    assert len(index) == 22 and {i["id"] for i in index} == {r.id for r in rows}
    assert (results / "identity" / index[0]["edited"]).exists()
    assert json.loads((results / "identity" / "run.json").read_text())["edited"] == 22
    assert not list(results.rglob("*.tmp"))

    # resumable: a second run skips everything; --overwrite redoes it
    before = os.path.getmtime(output_path(results, "identity", rows[0]))
    assert cli_main(args) == 0
    assert json.loads((results / "identity" / "run.json").read_text())["skipped"] == 22
    assert os.path.getmtime(output_path(results, "identity", rows[0])) == before
    assert cli_main(args + ["--overwrite", "--limit", "3"]) == 0
    assert json.loads((results / "identity" / "run.json").read_text())["edited"] == 3


def test_run_editor_with_a_callable(gedit_folder, tmp_path):
    seen = []

    def invert(image, instruction, row):
        seen.append((instruction, row["task_type"], row["instruction_language"], row["key"]))
        return Image.fromarray(255 - np.asarray(image))

    rows = load_benchmark(gedit_folder, subset="intersection")
    res = run_editor(invert, rows, tmp_path / "res", "inv", progress=False)
    assert (res["edited"], res["skipped"], res["total"]) == (11, 0, 11)
    assert seen[0] == (rows[0].instruction, rows[0].task_type, "en", rows[0].key)
    out = np.asarray(Image.open(output_path(tmp_path / "res", "inv", rows[0])))
    assert np.array_equal(out, 255 - np.asarray(rows[0].load_image()))
    samples = bench_samples(rows, tmp_path / "res", "inv")
    assert samples[0].edited_path == output_path(tmp_path / "res", "inv", rows[0])
    assert samples[0].meta["intersection_exist"] is True


def test_editor_must_return_an_image(gedit_folder, tmp_path):
    rows = load_benchmark(gedit_folder)[:2]
    with pytest.raises(TypeError, match=f"row '{rows[0].id}'"):
        run_editor(lambda im, ins, row: np.zeros(3), rows, tmp_path, "bad", progress=False)
    with pytest.raises(ValueError, match="plain folder name"):
        run_editor(lambda im, ins, row: im, rows, tmp_path, "../up", progress=False)


def test_load_editor_errors():
    with pytest.raises(ValueError, match="unknown method"):
        load_editor("kontext")
    with pytest.raises(ValueError, match="needs --checkpoint"):
        load_editor("byg")
    assert load_editor("identity")(Image.new("RGB", (3, 3)), "x", {}).size == (3, 3)


@pytest.mark.parametrize("method", ["flowedit", "sdedit"])
def test_baselines_as_edit_functions(method):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    editor = Editor(backbone, rank=2, ema_decay=0.0)
    opts = {"steps": 6, "n_max": 4} if method == "flowedit" else {"steps": 6, "strength": 0.5}
    fn = baseline_edit_fn(method, editor, editor.encode_text, resolution=8, options=opts)
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 14, 3), np.uint8))
    row = {
        "key": "k1",
        "task_type": "color_alter",
        "source_caption": "a red circle",
        "target_caption": "a blue circle",
    }
    backbone.calls = 0
    out = fn(src, "make it blue", row)
    cfg = FlowEditConfig(**opts) if method == "flowedit" else SDEditConfig(**opts)
    assert out.size == src.size and out.mode == "RGB"
    assert backbone.calls == cfg.model_calls  # CFG is one batched call per velocity
    assert np.array_equal(np.asarray(fn(src, "make it blue", row)), np.asarray(out))  # seeded
    with pytest.raises(ValueError, match="target_caption.*'k1'"):
        fn(src, "make it blue", {"key": "k1", "source_caption": "a red circle"})
    with pytest.raises(ValueError, match="unknown config field"):
        baseline_edit_fn(method, editor, editor.encode_text, options={"nmax": 3})


# ----------------------------------------------------------------------------- the table


def write_scores(results, method: str, per_task: dict[str, list[float]]) -> None:
    """Fake judged rows whose overall is sc = pq = the given value."""
    d = results / method
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for task, values in per_task.items():
        for i, v in enumerate(values):
            lines.append(
                {
                    "id": f"{task}/en/{i}",
                    "task_type": task,
                    "judge": "j",
                    "sc": v,
                    "pq": v,
                    "overall": v,
                    "intersection_exist": i == 0,
                    "error": None,
                }
            )
    lines.append(
        {"id": "failed/en/x", "task_type": "text_change", "judge": "j", "error": "refused"}
    )
    (d / "viescore_en.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_task_table_like_table_3(tmp_path):
    results = tmp_path / "results"
    ours = {t: [float(i), float(i) + 1.0] for i, t in enumerate(GEDIT_TASK_TYPES)}
    write_scores(results, "ours", ours)
    write_scores(results, "flowedit", {"subject-remove": [2.0], "background_change": [4.0]})
    summaries = load_summaries(results, ["ours", "flowedit", "absent"])
    assert list(summaries) == ["ours", "flowedit"]
    table = task_table(summaries).splitlines()
    assert table[0] == "| Edit type | ours | flowedit |"
    labels = [line.split("|")[1].strip() for line in table[2:]]
    assert labels == [TASK_NAMES[t] for t in GEDIT_TASK_TYPES] + ["**Average**"]
    assert "| Background change | 0.50 | 4.00 |" in table
    assert "| Subject remove | 7.50 | 2.00 |" in table
    assert "| Color alter | 1.50 | – |" in table
    mean_ours = sum(i + 0.5 for i in range(11)) / 11
    assert table[-1] == f"| **Average** | {mean_ours:.2f} | 3.00 |"
    assert summaries["ours"]["failed"] == 1 and not math.isnan(summaries["ours"]["overall"])
    inter = load_summaries(results, ["ours"], subset="intersection")["ours"]
    assert inter["overall"] == pytest.approx(sum(range(11)) / 11) and inter["failed"] == 0


def test_report_needs_scores(tmp_path):
    with pytest.raises(FileNotFoundError, match="viescore_en.jsonl"):
        write_report(tmp_path, ["none"], tmp_path / "r.md")


def test_report_grid_over_two_methods(gedit_folder, tmp_path):
    results = tmp_path / "results"
    rows = load_benchmark(gedit_folder)
    run_editor(lambda im, i, r: im, rows, results, "identity", progress=False)
    run_editor(
        lambda im, i, r: Image.fromarray(255 - np.asarray(im)), rows, results, "inv", progress=False
    )
    write_scores(results, "identity", {"color_alter": [1.0]})
    md = write_report(
        results,
        ["identity", "inv"],
        tmp_path / "rep" / "report.md",
        grid_html=tmp_path / "rep" / "grid.html",
        grid_png=tmp_path / "rep" / "grid.png",
        grid_rows=5,
    )
    page = (tmp_path / "rep" / "grid.html").read_text()
    srcs = [s.split('"')[0] for s in page.split('<img src="')[1:]]
    assert len(srcs) == 5 * 3  # 5 samples x (source + 2 methods)
    assert all((tmp_path / "rep" / s).exists() for s in srcs)
    assert "make it background_change 0" in page
    png = Image.open(tmp_path / "rep" / "grid.png")
    assert png.width > 3 * 192 and png.height > 5 * 192
    assert "grid.png" in md.read_text()


# ----------------------------------------------------------------------------- long tail


def test_longtail_builder(tmp_path):
    photos, styl = tmp_path / "photos", tmp_path / "styl"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), colour(i)).save(photos / f"p{i}.png")
    for slug in ("lego", "voxel"):
        (styl / slug).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour(9)).save(styl / slug / "s0.jpg")
    captions = {f"p{i}.png": f"a thing {i}" for i in range(3)} | {"s0.jpg": "a house"}
    bench = build_longtail(tmp_path / "lt", photos=photos, stylized=styl, captions=captions)
    rows = [json.loads(x) for x in bench.read_text().splitlines()]
    assert len(rows) == 3 * len(DEFAULT_STYLES) + 2
    p2s = [r for r in rows if r["task_type"] == "photo_to_style"]
    assert {r["style"] for r in p2s} == {s.slug for s in DEFAULT_STYLES}
    lego = next(r for r in rows if r["task_type"] == "style_to_photo" and r["style"] == "lego")
    assert lego["instruction"] == "Turn this Lego style image into a photorealistic photo."
    assert lego["source_caption"] == "a house, Lego style"
    loaded = load_benchmark(bench)
    assert len(loaded) == len(rows) and loaded[0].load_image().size == (8, 8)
    assert loaded[0].extra["target_caption"].startswith("a thing 0, ")

    few = build_longtail(tmp_path / "few", photos=photos, styles_per_photo=2, seed=1)
    assert len(few.read_text().splitlines()) == 6
    with pytest.raises(FileExistsError):
        build_longtail(tmp_path / "few", photos=photos)
    (styl / "anime").mkdir()
    with pytest.raises(ValueError, match=r"\['anime'\] name no style"):
        build_longtail(tmp_path / "x", stylized=styl)
    assert parse_style("watercolor painting").slug == "watercolor_painting"
    assert parse_style("wc=watercolor style").phrase == "watercolor style"


def test_longtail_cli_then_run(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(photos / "a.png")
    assert (
        cli_main(
            [
                "eval",
                "longtail",
                "--photos",
                str(photos),
                "--out",
                str(tmp_path / "lt"),
                "--styles",
                "voxel=voxel style",
                "pixel art",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "eval",
                "run",
                "--method",
                "identity",
                "--bench",
                str(tmp_path / "lt"),
                "--results",
                str(tmp_path / "res"),
            ]
        )
        == 0
    )
    outs = sorted(p.name for p in (tmp_path / "res" / "identity" / "fullset").rglob("*.png"))
    assert outs == [
        "a__to_pixel_art.png",
        "a__to_pixel_art_SRCIMG.png",
        "a__to_voxel.png",
        "a__to_voxel_SRCIMG.png",
    ]

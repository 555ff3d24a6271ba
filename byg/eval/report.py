"""Reports: markdown tables of scores, and HTML / PNG grids of sources and edits.

Everything is read from the results tree that ``byg eval run`` / ``viescore`` / ``video``
write, one folder per method::

    <results>/<method>/index.jsonl            edited rows (eval run)
    <results>/<method>/viescore_<lang>.jsonl  judged rows (eval viescore)
    <results>/<method>/video_metrics.jsonl    per-video metrics (eval video)

Tables: a per-task Overall table with one column per method (the paper's Table 3), a
per-task SC / PQ / Overall breakdown (the paper's Table 2), a summary with counts of scored
and failed samples, and the video metrics (the paper's Table 1).
"""

from __future__ import annotations

import html
import json
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from byg.eval.gedit import GEDIT_TASK_TYPES, TASK_NAMES, check_method_name
from byg.eval.viescore import aggregate, read_results

VIDEO_COLUMNS = (
    ("clip_dir", "CLIP dir ↑"),
    ("dino", "DINO sim. ↑"),
    ("motion_fidelity", "Motion fid. ↑"),
    ("flicker_source", "Flicker (source)"),
    ("flicker_edit", "Flicker (edit) ↓"),
)


def fmt(x: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, missing values as an en dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (numeric cells via ``fmt``)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def task_label(task: str) -> str:
    return TASK_NAMES.get(task, task)


def _group_order(names: set[str]) -> list[str]:
    known = [t for t in GEDIT_TASK_TYPES if t in names]
    return known + sorted(names - set(known))


def viescore_path(results: str | Path, method: str, language: str = "en") -> Path:
    """Default results file of ``eval viescore``: ``<results>/<method>/viescore_<lang>.jsonl``."""
    return Path(results) / check_method_name(method) / f"viescore_{language}.jsonl"


def load_summaries(
    results: str | Path,
    methods: Sequence[str],
    language: str = "en",
    group: str = "task_type",
    subset: str = "fullset",
) -> dict[str, dict[str, Any]]:
    """``aggregate`` of each method's VIEScore file; methods without one are skipped.

    ``subset="intersection"`` keeps the rows judged with ``intersection_exist`` true.
    """
    if subset not in ("fullset", "intersection"):
        raise ValueError(f"subset must be 'fullset' or 'intersection', got {subset!r}")
    out = {}
    for m in methods:
        path = viescore_path(results, m, language)
        if path.exists():
            rows = list(read_results(path).values())
            if subset == "intersection":
                rows = [r for r in rows if r.get("intersection_exist")]
            if rows:
                out[m] = aggregate(rows, group=group)
    return out


def task_table(summaries: dict[str, dict[str, Any]], metric: str = "overall") -> str:
    """Rows: task types (GEdit order first); columns: methods; last row: the task average."""
    methods = list(summaries)
    groups = _group_order({g for s in summaries.values() for g in s["groups"]})
    rows: list[list[Any]] = []
    for g in groups:
        row: list[Any] = [task_label(g)]
        for m in methods:
            row.append(summaries[m]["groups"].get(g, {}).get(metric))
        rows.append(row)
    rows.append(["**Average**"] + [summaries[m][metric] for m in methods])
    return markdown_table(["Edit type", *methods], rows)


def detail_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Per task, one row per method: SC, PQ, Overall and the sample count."""
    groups = _group_order({g for s in summaries.values() for g in s["groups"]})
    rows = []
    for g in groups:
        for m, s in summaries.items():
            st = s["groups"].get(g)
            if st is not None:
                rows.append([task_label(g), m, st["sc"], st["pq"], st["overall"], st["n"]])
    return markdown_table(["Edit type", "Method", "Semantic", "Quality", "Overall", "n"], rows)


def summary_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per method: task-averaged SC, PQ, Overall; scored and failed counts."""
    rows = [[m, s["sc"], s["pq"], s["overall"], s["n"], s["failed"]] for m, s in summaries.items()]
    return markdown_table(["Method", "SC", "PQ", "Overall", "scored", "failed"], rows)


def video_table(results: str | Path, methods: Sequence[str]) -> str | None:
    """Mean of each video metric per method (``video_metrics.jsonl``), or None if none."""
    rows = []
    for m in methods:
        path = Path(results) / check_method_name(m) / "video_metrics.jsonl"
        if not path.exists():
            continue
        recs = [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]
        row: list[Any] = [m, len(recs)]
        for key, _ in VIDEO_COLUMNS:
            vals = [r[key] for r in recs if r.get(key) is not None and not math.isnan(r[key])]
            row.append(sum(vals) / len(vals) if vals else None)
        rows.append(row)
    if not rows:
        return None
    return markdown_table(["Method", "videos", *[h for _, h in VIDEO_COLUMNS]], rows)


# ----------------------------------------------------------------------------- grids


def read_index(results: str | Path, method: str) -> list[dict[str, Any]]:
    """``<results>/<method>/index.jsonl`` rows with absolute ``source``/``edited`` paths."""
    method_dir = Path(results) / check_method_name(method)
    path = method_dir / "index.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `byg eval run --method {method}`")
    rows = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            r["edited"] = method_dir / r["edited"]
            r["source"] = method_dir / r["source"] if r.get("source") else None
            rows.append(r)
    return rows


def grid_entries(
    results: str | Path, methods: Sequence[str], max_rows: int = 24, language: str = "en"
) -> list[dict[str, Any]]:
    """Up to ``max_rows`` samples edited by every method, taken round-robin over tasks.

    Each entry: ``id, task_type, instruction, source, edits {method: path},
    scores {method: overall or None}``.
    """
    if not methods:
        raise ValueError("no methods to show")
    indexes = {m: {r["id"]: r for r in read_index(results, m)} for m in methods}
    scores = {}
    for m in methods:
        vs = viescore_path(results, m, language)
        scores[m] = read_results(vs) if vs.exists() else {}
    common = [i for i in indexes[methods[0]] if all(i in indexes[m] for m in methods)]
    if not common:
        raise ValueError(f"no sample was edited by all of {list(methods)}")
    by_task: dict[str, list[str]] = {}
    for i in sorted(common):
        by_task.setdefault(indexes[methods[0]][i]["task_type"], []).append(i)
    order: list[str] = []
    queues = [by_task[t] for t in _group_order(set(by_task))]
    while len(order) < max_rows and any(queues):
        for q in queues:
            if q and len(order) < max_rows:
                order.append(q.pop(0))
    entries = []
    for i in order:
        first = indexes[methods[0]][i]
        source = next((indexes[m][i]["source"] for m in methods if indexes[m][i]["source"]), None)
        entries.append(
            {
                "id": i,
                "task_type": first["task_type"],
                "instruction": first["instruction"],
                "source": source,
                "edits": {m: indexes[m][i]["edited"] for m in methods},
                "scores": {
                    m: (scores[m].get(i) or {}).get("overall") if scores[m] else None
                    for m in methods
                },
            }
        )
    return entries


def write_html_grid(
    entries: Sequence[dict[str, Any]], methods: Sequence[str], out: str | Path
) -> Path:
    """An HTML page: one row per sample (source, instruction, each method's edit)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def img(path: Path | None, caption: str = "") -> str:
        if path is None:
            return "<td>–</td>"
        rel = html.escape(os.path.relpath(path, out.parent))
        return f'<td><img src="{rel}" loading="lazy">{caption}</td>'

    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    body = []
    for e in entries:
        cells = [img(e["source"])]
        cells.append(
            f'<td class="txt"><b>{html.escape(task_label(e["task_type"]))}</b><br>'
            f"{html.escape(e['instruction'])}<br><small>{html.escape(e['id'])}</small></td>"
        )
        for m in methods:
            s = e["scores"].get(m)
            cap = f"<br><small>Overall {s:.2f}</small>" if isinstance(s, (int, float)) else ""
            cells.append(img(e["edits"][m], cap))
        body.append("<tr>" + "".join(cells) + "</tr>")
    page = (
        "<!doctype html><meta charset='utf-8'><title>byg edits</title><style>"
        "body{font-family:sans-serif}td{vertical-align:top;padding:4px}"
        "img{width:224px;height:auto}.txt{max-width:220px}</style>"
        f"<table><tr><th>source</th><th>instruction</th>{head}</tr>{''.join(body)}</table>"
    )
    out.write_text(page, encoding="utf-8")
    return out


def write_png_grid(
    entries: Sequence[dict[str, Any]], methods: Sequence[str], out: str | Path, thumb: int = 192
) -> Path:
    """A PNG sheet: per row the source, each method's edit, and the instruction beneath."""
    from byg.eval.viescore import open_rgb

    font = ImageFont.load_default()
    text_h, header_h, pad = 44, 20, 6
    cols = 1 + len(methods)
    width = cols * (thumb + pad) + pad
    height = header_h + len(entries) * (thumb + text_h + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(["source", *methods]):
        draw.text((pad + c * (thumb + pad), 4), name, fill="black", font=font)
    for r, e in enumerate(entries):
        y = header_h + r * (thumb + text_h + pad)
        paths = [e["source"], *[e["edits"][m] for m in methods]]
        for c, p in enumerate(paths):
            x = pad + c * (thumb + pad)
            if p is None:
                continue
            im = ImageOps.contain(open_rgb(p), (thumb, thumb), Image.Resampling.BICUBIC)
            sheet.paste(im, (x, y))
            s = e["scores"].get(methods[c - 1]) if c else None
            if isinstance(s, (int, float)):
                draw.text((x + 2, y + 2), f"{s:.2f}", fill="yellow", font=font)
        label = f"[{task_label(e['task_type'])}] {e['instruction']}"
        wrapped = textwrap.wrap(label, width=max(20, width // 7))[:3]
        draw.multiline_text((pad, y + thumb + 2), "\n".join(wrapped), fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def write_report(
    results: str | Path,
    methods: Sequence[str],
    out: str | Path,
    *,
    language: str = "en",
    group: str = "task_type",
    subset: str = "fullset",
    grid_html: str | Path | None = None,
    grid_png: str | Path | None = None,
    grid_rows: int = 24,
) -> Path:
    """Write the markdown report (and the grids when paths are given); return its path."""
    summaries = load_summaries(results, methods, language, group, subset)
    parts = [
        "# Evaluation report\n",
        f"Results: `{results}`; language: `{language}`; subset: `{subset}`.\n",
    ]
    if summaries:
        parts += [
            "\n## VIEScore overall per edit type\n",
            "Per-sample Overall = sqrt(SC · PQ), averaged within each type; "
            "**Average** is the mean over types.\n\n",
            task_table(summaries, "overall"),
            "\n## Summary\n\n",
            summary_table(summaries),
            "\n## Semantic / quality / overall per edit type\n\n",
            detail_table(summaries),
        ]
    vt = video_table(results, methods)
    if vt:
        parts += ["\n## Video metrics\n\n", vt]
    if not summaries and not vt and not (grid_html or grid_png):
        raise FileNotFoundError(
            f"no viescore_{language}.jsonl or video_metrics.jsonl under {results} for "
            f"{list(methods)}, and no grid asked for"
        )
    out = Path(out)
    if grid_html or grid_png:
        entries = grid_entries(results, methods, grid_rows, language)
        parts.append("\n## Edits\n\n")
        if grid_html:
            p = write_html_grid(entries, methods, grid_html)
            parts.append(f"- HTML grid: [{p.name}]({os.path.relpath(p, out.parent)})\n")
        if grid_png:
            p = write_png_grid(entries, methods, grid_png)
            parts.append(f"\n![edits]({os.path.relpath(p, out.parent)})\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts), encoding="utf-8")
    return out


__all__ = [
    "fmt",
    "markdown_table",
    "viescore_path",
    "load_summaries",
    "task_table",
    "detail_table",
    "summary_table",
    "video_table",
    "read_index",
    "grid_entries",
    "write_html_grid",
    "write_png_grid",
    "write_report",
]

"""``byg eval ...``: run editors over benchmarks, score them, and write reports.

Subcommands: ``run`` (edit a benchmark), ``viescore`` (VLM judge), ``report`` (tables and
grids), ``longtail`` (build the long-tail style benchmark), ``clip-dir``, ``dino`` and
``video`` (reference-based metrics from local feature models and OpenCV).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = "results"


def _debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bench",
        required=True,
        help="benchmark: GEdit-Bench folder (JSONL + images, parquet, or save_to_disk) or a "
        "benchmark.jsonl from `byg eval longtail`",
    )
    p.add_argument(
        "--language",
        default="en",
        help="instruction_language to keep: en (default, as the paper), cn, or all",
    )
    p.add_argument(
        "--subset",
        default="fullset",
        choices=("fullset", "intersection"),
        help="fullset (default) or the rows with Intersection_exist",
    )
    p.add_argument("--image-field", default="input_image", help="column holding the source image")
    p.add_argument(
        "--gedit",
        action="store_true",
        help="check that the task types are GEdit-Bench's 11 (error otherwise)",
    )
    p.add_argument("--limit", type=int, help="only the first N rows (smoke runs)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results root (default: results)")


def _load_rows(args: argparse.Namespace):
    from byg.eval.gedit import check_gedit, load_benchmark

    rows = load_benchmark(
        args.bench, language=args.language, subset=args.subset, image_field=args.image_field
    )
    if args.gedit:
        check_gedit(rows)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        rows = rows[: args.limit]
    return rows


def _parse_opts(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--opt {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    os.replace(tmp, p)
    return p


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return sum(vals) / len(vals) if vals else None


# ----------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from byg.eval.gedit import load_editor, run_editor

    rows = _load_rows(args)
    name = args.name or args.method
    edit = load_editor(
        args.method,
        args.checkpoint,
        device=args.device,
        steps=args.steps,
        seed=args.seed,
        options=_parse_opts(args.opt),
    )
    res = run_editor(
        edit, rows, args.results, name, overwrite=args.overwrite, save_source=not args.no_source
    )
    meta = {
        "method": args.method,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "bench": str(args.bench),
        "language": args.language,
        "subset": args.subset,
        "steps": args.steps,
        "seed": args.seed,
        "options": _parse_opts(args.opt),
        **res,
    }
    (Path(args.results) / name / "run.json").write_text(json.dumps(meta, indent=2), "utf-8")
    print(
        f"{name}: edited {res['edited']}, skipped {res['skipped']} existing, of {res['total']} "
        f"rows in {res['seconds']:.1f}s -> {Path(args.results) / name}"
    )
    return 0


def cmd_viescore(args: argparse.Namespace) -> int:
    from byg.eval.gedit import bench_samples
    from byg.eval.judge import OpenAIJudge
    from byg.eval.report import summary_table, task_table, viescore_path
    from byg.eval.viescore import VIEPrompts, aggregate, load_prompts, run_viescore

    rows = _load_rows(args)
    judge = OpenAIJudge(
        args.judge_url,
        args.judge_model,
        api_key_env=args.api_key_env,
        timeout=args.timeout,
        max_retries=args.max_retries,
    )
    out = Path(args.out) if args.out else viescore_path(args.results, args.method, args.language)
    rows_out = run_viescore(
        bench_samples(rows, args.results, args.method),
        judge,
        out,
        judge_name=args.judge_model,
        prompts=load_prompts(args.prompts) if args.prompts else VIEPrompts(),
        workers=args.workers,
        parse_retries=args.parse_retries,
    )
    summary = {args.method: aggregate(rows_out, group=args.group_by)}
    print(task_table(summary))
    print(summary_table(summary))
    print(f"scores in {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from byg.eval.report import write_report

    out = Path(args.out or Path(args.results) / "report.md")
    p = write_report(
        args.results,
        args.methods,
        out,
        language=args.language,
        group=args.group_by,
        subset=args.subset,
        grid_html=args.grid_html,
        grid_png=args.grid_png,
        grid_rows=args.grid_rows,
    )
    print(p.read_text("utf-8"))
    print(f"wrote {p}")
    return 0


def cmd_longtail(args: argparse.Namespace) -> int:
    from byg.eval.longtail import (
        DEFAULT_STYLES,
        PHOTO_TO_STYLE,
        STYLE_TO_PHOTO,
        build_longtail,
        parse_style,
    )

    captions = None
    if args.captions:
        cp = Path(args.captions)
        if not cp.is_file():
            raise FileNotFoundError(f"captions file {str(cp)!r} does not exist")
        captions = json.loads(cp.read_text("utf-8"))
        if not isinstance(captions, dict):
            raise ValueError(f"{cp}: expected a JSON object {{image file name: caption}}")
    styles = [parse_style(s) for s in args.styles] if args.styles else list(DEFAULT_STYLES)
    bench = build_longtail(
        args.out,
        photos=args.photos,
        stylized=args.stylized,
        styles=styles,
        styles_per_photo=args.styles_per_photo,
        captions=captions,
        photo_to_style=args.photo_to_style or PHOTO_TO_STYLE,
        style_to_photo=args.style_to_photo or STYLE_TO_PHOTO,
        seed=args.seed,
    )
    rows = [json.loads(x) for x in bench.read_text("utf-8").splitlines() if x.strip()]
    n_dir = {
        d: sum(r["direction"] == d for r in rows) for d in ("photo_to_style", "style_to_photo")
    }
    print(
        f"wrote {bench}: {len(rows)} instructions ({n_dir['photo_to_style']} photo→style, "
        f"{n_dir['style_to_photo']} style→photo) over {len(styles)} styles"
    )
    return 0


def _metric_cmd(args: argparse.Namespace, *, clip: bool, dino: bool, video: bool) -> int:
    from byg.eval.features import ClipFeatures, DinoFeatures, read_pairs, score_pairs

    pairs = read_pairs(args.pairs, need_captions=clip)
    clip_m = ClipFeatures(args.clip, args.device, args.batch_size) if clip else None
    dino_m = DinoFeatures(args.dino, args.device, args.batch_size) if dino else None
    rows = score_pairs(
        pairs,
        clip=clip_m,
        dino=dino_m,
        video=video,
        max_frames=args.max_frames,
        min_speed=getattr(args, "min_speed", 0.1),
    )
    keys = [
        k
        for k in (
            "clip_dir",
            "clip_img",
            "dino",
            "motion_fidelity",
            "flicker_source",
            "flicker_edit",
        )
        if k in rows[0]
    ]
    out = args.out
    if out is None and getattr(args, "method", None):
        out = Path(args.results) / args.method / "video_metrics.jsonl"
    if out:
        print(f"wrote {_write_jsonl(rows, out)}")
    for k in keys:
        m = _mean(rows, k)
        print(f"{k}: {'n/a' if m is None else f'{m:.4f}'} (mean over {len(rows)} pairs)")
    return 0


def cmd_clip_dir(args: argparse.Namespace) -> int:
    return _metric_cmd(args, clip=True, dino=False, video=False)


def cmd_dino(args: argparse.Namespace) -> int:
    return _metric_cmd(args, clip=False, dino=True, video=False)


def cmd_video(args: argparse.Namespace) -> int:
    return _metric_cmd(args, clip=bool(args.clip), dino=bool(args.dino), video=True)


# ----------------------------------------------------------------------------- wiring


def _pairs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pairs",
        required=True,
        help="JSONL of {source, edited[, id, source_caption, target_caption]} with paths "
        "relative to it (images, videos or frame folders); <results>/<method>/index.jsonl "
        "from `eval run` works",
    )
    p.add_argument("--out", help="write per-pair metrics to this JSONL")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--max-frames", type=int, help="use only the first N frames of each video")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``byg eval`` and its subcommands to the CLI."""
    ev = sub.add_parser(
        "eval",
        help="evaluate editors: run benchmarks, VIEScore, CLIP/DINO/video metrics, reports",
        description="Evaluate editors the way the paper does: edit a benchmark (eval run), "
        "judge it with a VLM (eval viescore), add reference metrics (clip-dir, dino, video) "
        "and write a report (eval report).",
    )
    esub = ev.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    ev.set_defaults(func=lambda args: (ev.print_help(), 2)[1])

    p = esub.add_parser(
        "run",
        help="run an editor over a benchmark; writes <results>/<name>/fullset/<task>/<lang>/<key>.png",
    )
    _bench_args(p)
    p.add_argument(
        "--method",
        required=True,
        choices=("byg", "identity", "flowedit", "sdedit"),
        help="byg: a trained checkpoint; identity: returns the source; flowedit/sdedit: "
        "zero-shot baselines on the checkpoint's frozen base (rows need captions)",
    )
    p.add_argument("--checkpoint", help="checkpoint or run folder (byg, flowedit, sdedit)")
    p.add_argument("--name", help="results folder name (default: the method)")
    p.add_argument("--device", default="cpu", help="torch device for the editor")
    p.add_argument("--steps", type=int, help="sampling steps (byg; default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="baseline config field, e.g. --opt n_max=24 --opt guidance_tgt=5.5",
    )
    p.add_argument("--overwrite", action="store_true", help="redo rows whose output exists")
    p.add_argument(
        "--no-source", action="store_true", help="do not copy sources as <key>_SRCIMG.png"
    )
    _debug(p)
    p.set_defaults(func=cmd_run)

    p = esub.add_parser(
        "viescore",
        help="VIEScore with an OpenAI-compatible VLM judge (SC, PQ, Overall per task)",
        description="Judge every edit of --method: SC = min(editing success, over-editing), "
        "PQ = min(naturalness, artifacts), Overall = sqrt(SC*PQ); means per task type, then "
        "over types. Resumable: rerun the same command to continue.",
    )
    _bench_args(p)
    p.add_argument("--method", required=True, help="results folder name to score")
    p.add_argument(
        "--judge-url",
        required=True,
        help="OpenAI-compatible API base, e.g. http://localhost:8000/v1 (vLLM)",
    )
    p.add_argument(
        "--judge-model",
        required=True,
        help="served model name, e.g. Qwen/Qwen2.5-VL-72B-Instruct (the paper's judge)",
    )
    p.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (unset: no key sent)",
    )
    p.add_argument("--workers", type=int, default=4, help="samples judged concurrently")
    p.add_argument(
        "--parse-retries", type=int, default=2, help="re-asks when a reply does not parse"
    )
    p.add_argument("--max-retries", type=int, default=4, help="HTTP retries (timeouts, 429, 5xx)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP attempt")
    p.add_argument("--prompts", help="JSON file {context, sc, pq} replacing the judge prompts")
    p.add_argument("--out", help="results JSONL (default <results>/<method>/viescore_<lang>.jsonl)")
    p.add_argument("--group-by", default="task_type", help="row field the means are taken over")
    _debug(p)
    p.set_defaults(func=cmd_viescore)

    p = esub.add_parser(
        "report", help="markdown tables (per task, per method) and HTML/PNG grids of edits"
    )
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results root (default: results)")
    p.add_argument("--methods", nargs="+", required=True, help="method folders, in column order")
    p.add_argument("--language", default="en", help="which viescore_<lang>.jsonl to read")
    p.add_argument("--group-by", default="task_type", help="row field to group scores by")
    p.add_argument(
        "--subset",
        default="fullset",
        choices=("fullset", "intersection"),
        help="score every judged row, or only those with Intersection_exist",
    )
    p.add_argument("--out", help="markdown file (default <results>/report.md)")
    p.add_argument("--grid-html", help="also write an HTML grid of sources and edits here")
    p.add_argument("--grid-png", help="also write a PNG grid here")
    p.add_argument("--grid-rows", type=int, default=24, help="samples in the grids")
    _debug(p)
    p.set_defaults(func=cmd_report)

    p = esub.add_parser(
        "longtail",
        help="build the long-tail style benchmark (photo→style and style→photo) from your images",
    )
    p.add_argument("--out", required=True, help="benchmark folder to create")
    p.add_argument("--photos", help="folder of photorealistic source images")
    p.add_argument(
        "--stylized", help="folder with one sub-folder of stylised images per style slug"
    )
    p.add_argument(
        "--styles",
        nargs="+",
        help="styles as 'slug=phrase' or phrases (default: the paper's six: gta_v, "
        "minecraft, american_comic, low_poly, voxel, lego)",
    )
    p.add_argument("--styles-per-photo", type=int, help="styles drawn per photo (default: all)")
    p.add_argument("--captions", help="JSON {image file name: caption} for captioned rows")
    p.add_argument("--photo-to-style", help="instruction template with {style}")
    p.add_argument("--style-to-photo", help="instruction template with {style}")
    p.add_argument("--seed", type=int, default=0, help="seed for --styles-per-photo")
    _debug(p)
    p.set_defaults(func=cmd_longtail)

    p = esub.add_parser(
        "clip-dir",
        help="CLIP directional similarity per image pair (videos: per frame, averaged)",
    )
    p.add_argument("--clip", required=True, help="local CLIPModel folder (save_pretrained)")
    _pairs_args(p)
    _debug(p)
    p.set_defaults(func=cmd_clip_dir)

    p = esub.add_parser(
        "dino", help="DINO CLS similarity per image pair (videos: per frame, averaged)"
    )
    p.add_argument("--dino", required=True, help="local Dinov2Model/ViTModel folder")
    _pairs_args(p)
    _debug(p)
    p.set_defaults(func=cmd_dino)

    p = esub.add_parser(
        "video",
        help="video metrics: flicker, motion fidelity (OpenCV), optional CLIP-dir and DINO",
    )
    _pairs_args(p)
    p.add_argument("--clip", help="also CLIP-dir per frame with this local CLIPModel folder")
    p.add_argument("--dino", help="also DINO per frame with this local model folder")
    p.add_argument(
        "--method",
        help="write <results>/<method>/video_metrics.jsonl (read by `eval report`)",
    )
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results root (with --method)")
    p.add_argument(
        "--min-speed",
        type=float,
        default=0.1,
        help="tracks slower than this (pixels/frame) are static and left out of motion fidelity",
    )
    _debug(p)
    p.set_defaults(func=cmd_video)


__all__ = ["register"]

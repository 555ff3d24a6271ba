"""``byg data``: validate, toy, generate, video-captions, synth-videos."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _add_vlm_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("VLM server (any OpenAI-compatible chat-completions endpoint)")
    g.add_argument(
        "--endpoint",
        required=True,
        help="API base URL, e.g. http://localhost:8000/v1 (or the full .../chat/completions URL)",
    )
    g.add_argument(
        "--model", required=True, help="model name the server serves (Qwen/Qwen3-VL-8B-Instruct)"
    )
    g.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key, sent as a bearer token and never "
        "printed (unset: no key; default %(default)s)",
    )
    g.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight (default %(default)s)"
    )
    g.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)"
    )
    g.add_argument(
        "--retries",
        type=int,
        default=4,
        help="retries after timeouts, 429 and 5xx, with exponential backoff (default %(default)s)",
    )
    g.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="first backoff in seconds, doubled per retry, capped at 30 (default %(default)s)",
    )
    g.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature (default %(default)s)"
    )
    g.add_argument(
        "--extra-body",
        type=json.loads,
        default={},
        metavar="JSON",
        help='extra request fields, e.g. \'{"chat_template_kwargs": {"enable_thinking": false}}\'',
    )
    g.add_argument(
        "--max-tokens",
        type=int,
        default=2048,
        help="reply length limit; raise it for thinking models (default %(default)s)",
    )


def _client(args: argparse.Namespace):
    from byg.data.vlm import ChatClient, VLMConfig

    return ChatClient(
        VLMConfig(
            endpoint=args.endpoint,
            model=args.model,
            api_key_env=args.api_key_env,
            timeout=args.timeout,
            max_retries=args.retries,
            backoff=args.backoff,
            concurrency=args.concurrency,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            extra_body=args.extra_body,
        )
    )


def _print_stats(stats, what: str) -> None:
    print(
        f"{what}: kept {stats.kept}, rejected {stats.rejected}, failed {stats.failed}, "
        f"skipped (done before) {stats.skipped}"
    )
    for reason, n in stats.reasons.most_common(10):
        print(f"  {n:6d}  {reason}")


# ----------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from byg.data.tuples import validate_folder

    report = validate_folder(args.dir, check_images=not args.no_check_images, progress=True)
    print(report.summary(max_bad=args.max_bad))
    return 0 if report.ok else 1


def cmd_toy(args: argparse.Namespace) -> int:
    from byg.data.tuples import validate_folder

    export_toy(Path(args.out), args.n, split=args.split, seed=args.seed, resolution=args.resolution)
    report = validate_folder(args.out, check_images=False)
    print(report.summary(max_bad=args.max_bad))
    return 0 if report.ok else 1


def export_toy(out: Path, n: int, *, split: str = "train", seed: int = 0, resolution: int = 32):
    """Write ``n`` toy-world tuples to ``out`` in the ``metadata.jsonl`` format.

    Row ``i`` is ``ToyEditDataset(ToyWorldConfig(resolution), n, seed, split)`` item ``i``:
    the source as ``{i:06d}.png``, its ground truth as ``targets/{i:06d}.png``
    (``target_file_name``), and ``split`` and ``seen`` as extra columns.
    """
    from PIL import Image
    from tqdm import tqdm

    from byg.data.toy import ToyEditDataset, ToyWorldConfig, render
    from byg.data.tuples import METADATA_NAME, DataError, EditRow, write_rows

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if (out / METADATA_NAME).exists():
        raise DataError(f"{out / METADATA_NAME} exists; choose an empty --out")
    world = ToyWorldConfig(resolution=resolution)
    ds = ToyEditDataset(world, n, seed=seed, split=split)
    (out / "targets").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(n), desc="toy", unit="img"):
        ex = ds.example(i)
        name = f"{i:06d}.png"  # no split word in names: `datasets` would read it as a split
        Image.fromarray(render(ex.src, world)).save(out / name)
        Image.fromarray(render(ex.tgt, world)).save(out / "targets" / name)
        rows.append(
            EditRow(
                file_name=name,
                src_caption=ex.c_src,
                tgt_caption=ex.c_tgt,
                instruction=ex.c_fwd,
                reverse_instruction=ex.c_rev,
                edit_type=ex.edit_type,
                target_file_name=f"targets/{name}",
                extra={"split": split, "seen": ex.seen},
            )
        )
    write_rows(out, rows, append=False)
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from byg.data.generate import GenerateConfig, generate_edit_specs, load_source_metadata
    from byg.data.tuples import validate_folder

    out = Path(args.out or args.images)
    cfg = GenerateConfig(
        types_per_image=args.types_per_image,
        balance=args.balance,
        force_photoreal_prob=args.force_photoreal_prob,
        seed=args.seed,
        max_image_side=args.max_image_side,
        copy_mode=args.copy_mode,
        resume=args.resume,
        limit=args.limit,
        max_consecutive_failures=args.max_consecutive_failures,
    )
    meta = load_source_metadata(args.source_metadata) if args.source_metadata else None
    stats = generate_edit_specs(args.images, out, _client(args), cfg, source_metadata=meta)
    _print_stats(stats, "generate")
    print(f"log of every outcome: {out / 'generate_log.jsonl'}")
    if stats.kept == 0 and stats.skipped == 0:
        print("no rows kept", file=sys.stderr)
        return 1
    report = validate_folder(out, check_images=False)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_video_captions(args: argparse.Namespace) -> int:
    from byg.data.generate import VideoCaptionConfig, generate_video_captions, load_captions

    captions = load_captions(args.captions)
    cfg = VideoCaptionConfig(
        styles=tuple(s.strip() for s in args.styles.split(",") if s.strip()),
        n=args.n,
        template=args.template,
        seed=args.seed,
        resume=args.resume,
    )
    stats = generate_video_captions(captions, args.out, _client(args), cfg)
    _print_stats(stats, "video-captions")
    print(f"wrote {args.out}; next: byg data synth-videos {args.out} --out DIR --pipeline PATH")
    return 0 if stats.kept + stats.skipped > 0 else 1


def cmd_synth_videos(args: argparse.Namespace) -> int:
    from byg.data.generate import SynthConfig, load_base_pipeline, synth_videos

    pipe = load_base_pipeline(args.pipeline, device=args.device, dtype=args.dtype)
    cfg = SynthConfig(
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance=args.guidance,
        fps=args.fps,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        limit=args.limit,
    )
    n = synth_videos(args.captions, args.out, pipe, cfg)
    print(f"wrote {n} clip(s) to {args.out}; check them with: byg data validate {args.out}")
    return 0


# ----------------------------------------------------------------------------- wiring


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="make, export and check training tuple folders (metadata.jsonl)",
        description=(
            "Training data for ByG: per source image a source caption, a target caption, a "
            "forward and a reverse instruction, in a folder with metadata.jsonl "
            "(Hugging Face imagefolder layout)."
        ),
    )
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = dsub.add_parser(
        "validate",
        help="check every row of a tuple folder; non-zero exit on bad rows",
        description="Check fields, caption/instruction rules and that every file decodes; "
        "print counts per edit type and the bad rows with reasons.",
    )
    p.add_argument("dir", help="folder with metadata.jsonl")
    p.add_argument(
        "--no-check-images",
        action="store_true",
        help="only check that files exist, do not decode them (fast)",
    )
    p.add_argument("--max-bad", type=int, default=50, help="bad rows to list (default %(default)s)")
    _add_debug(p)
    p.set_defaults(func=cmd_validate)

    p = dsub.add_parser(
        "toy",
        help="export toy-world tuples (with ground-truth targets) as a tuple folder",
    )
    p.add_argument("--out", required=True, help="output folder (must not hold a metadata.jsonl)")
    p.add_argument("--n", type=int, required=True, help="number of tuples")
    p.add_argument(
        "--split",
        choices=("train", "seen", "unseen"),
        default="train",
        help="which edits: train/seen use seen edits only, unseen the held-out ones",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="row i equals toy dataset item i for this seed"
    )
    p.add_argument(
        "--resolution", type=int, default=32, help="image side in pixels (default %(default)s)"
    )
    p.add_argument("--max-bad", type=int, default=20, help="bad rows to list after export")
    _add_debug(p)
    p.set_defaults(func=cmd_toy)

    p = dsub.add_parser(
        "generate",
        help="ask a VLM for one edit specification per image (resumable)",
        description=(
            "For each image: draw a few allowed edit types (priority x usage balancing), ask "
            "the VLM for edit_type, src_caption, instruction, tgt_caption, reverse_instruction "
            "as JSON, keep rows that pass the rules, append them to OUT/metadata.jsonl. Every "
            "outcome is logged to OUT/generate_log.jsonl."
        ),
    )
    p.add_argument("images", help="folder of source images (searched recursively)")
    p.add_argument(
        "--out",
        help="dataset folder (default: the image folder itself; otherwise images are copied in)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run: skip images already kept or rejected",
    )
    p.add_argument(
        "--source-metadata",
        help="JSONL with file_name and optional caption / photorealistic (bool) / style per image",
    )
    p.add_argument(
        "--types-per-image",
        type=int,
        default=3,
        help="edit types offered per image (default %(default)s)",
    )
    p.add_argument(
        "--balance",
        type=float,
        default=1.0,
        help="strength of the usage-balancing term; 0 = priorities only (default %(default)s)",
    )
    p.add_argument(
        "--force-photoreal-prob",
        type=float,
        default=0.3,
        help="probability of forcing a style change to photorealistic for a source marked "
        "non-photorealistic (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the type/style draws")
    p.add_argument(
        "--max-image-side",
        type=int,
        default=1024,
        help="downscale images to this side before sending (default %(default)s)",
    )
    p.add_argument(
        "--copy-mode",
        choices=("copy", "symlink", "hardlink"),
        default="copy",
        help="how kept images reach --out when it differs from the image folder",
    )
    p.add_argument("--limit", type=int, help="process at most this many images in this run")
    p.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=20,
        help="stop when this many requests in a row fail (default %(default)s)",
    )
    _add_vlm_args(p)
    _add_debug(p)
    p.set_defaults(func=cmd_generate)

    p = dsub.add_parser(
        "video-captions",
        help="strip style hints from video captions (text-only VLM) and wrap them in styles",
        description=(
            "Sample detailed captions, have the model remove style hints, wrap each in a "
            "template with a random style, and write prompts plus the style-conversion edit "
            "per clip as JSONL, for `byg data synth-videos`."
        ),
    )
    p.add_argument("captions", help="captions: .txt (one per line) or .jsonl (caption/text key)")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--n", type=int, help="how many captions to sample (default: all)")
    p.add_argument(
        "--styles",
        default="cartoon,photorealistic",
        help="comma-separated styles to draw from (default %(default)s)",
    )
    p.add_argument(
        "--template",
        default="{caption} The video is {style_phrase}.",
        help="prompt template with {caption} and {style} or {style_phrase} (default %(default)r)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the caption and style draws")
    p.add_argument("--resume", action="store_true", help="append to --out, skipping done ids")
    _add_vlm_args(p)
    _add_debug(p)
    p.set_defaults(func=cmd_video_captions)

    p = dsub.add_parser(
        "synth-videos",
        help="render training clips from video-captions output with the base text-to-video model",
        description="Needs the base model weights on disk (a diffusers pipeline folder); "
        "writes OUT/clips/*.mp4 and OUT/metadata.jsonl (resumable).",
    )
    p.add_argument("captions", help="JSONL written by `byg data video-captions`")
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument(
        "--pipeline",
        required=True,
        help="local diffusers pipeline folder of the base model (e.g. Wan2.1-T2V-1.3B-Diffusers)",
    )
    p.add_argument("--device", default="cuda", help="torch device (default %(default)s)")
    p.add_argument("--dtype", default="bfloat16", help="torch dtype (default %(default)s)")
    p.add_argument("--num-frames", type=int, default=81, help="frames per clip")
    p.add_argument("--height", type=int, default=480, help="clip height")
    p.add_argument("--width", type=int, default=832, help="clip width")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--fps", type=int, default=16, help="frame rate of the written mp4")
    p.add_argument("--negative-prompt", default="", help="negative prompt for the base model")
    p.add_argument("--seed", type=int, default=0, help="clip seed = f(seed, id)")
    p.add_argument("--limit", type=int, help="render at most this many clips in this run")
    _add_debug(p)
    p.set_defaults(func=cmd_synth_videos)

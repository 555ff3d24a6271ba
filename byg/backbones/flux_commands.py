"""``byg cache`` (latents + text embeddings to safetensors) and ``byg export`` (LoRA file).

Both work for any latent backbone of the registry (FLUX, Wan); the FLUX specifics live in
``byg.backbones.flux``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _run_config(args: argparse.Namespace):
    from byg.run_config import load_run_config

    cfg = load_run_config(args.config, args.set)
    if getattr(args, "pretrained", None):
        cfg.model.options["pretrained"] = args.pretrained
    return cfg


def cmd_cache(args: argparse.Namespace) -> int:
    from byg.backbones.registry import build_cache_encoder
    from byg.cache import build_cache
    from byg.data.tuples import EditFolderDataset

    cfg = _run_config(args)
    data = args.data or (cfg.data.path if cfg.data.source == "folder" else None)
    if not data:
        raise ValueError("give --data FOLDER (a metadata.jsonl folder) to cache")
    out = args.out or (cfg.data.path if cfg.data.source == "cache" else None)
    if not out:
        raise ValueError("give --out DIR (or set data.source: cache and data.path in the config)")
    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data!r} is not a folder")
    encoder = build_cache_encoder(cfg.model.backbone, cfg.model.options)
    if args.device:
        encoder.to(args.device)
    dataset = EditFolderDataset(
        data,
        resolution=cfg.data.resolution,
        skip_bad=cfg.data.skip_bad,
        num_frames=args.num_frames,
    )
    summary = build_cache(
        encoder,
        dataset,
        out,
        cfg.data.resolution,
        batch_size=args.batch_size,
        text_batch_size=args.text_batch_size,
    )
    print(
        f"cached {summary.rows} tuples into {summary.out_dir}: {summary.media} images "
        f"({summary.media_encoded} newly encoded), {summary.prompts} distinct prompts "
        f"({summary.prompts_encoded} newly encoded); model_id {summary.model_id}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from byg.export import export_checkpoint

    path = export_checkpoint(
        args.checkpoint, args.out, fmt=args.format, use_ema=args.ema, dtype=args.dtype
    )
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cache`` and ``export`` to the ``byg`` CLI."""
    p = sub.add_parser(
        "cache",
        help="precompute VAE latents and text embeddings of a tuple folder (latent backbones)",
        description=(
            "Encode every source (and optional target) image with the backbone's VAE and every "
            "caption/instruction (c_src, c_tgt, c_fwd, c_rev) with its text encoders, once, into "
            "safetensors. Train on it with data.source=cache, data.path=<--out>: the run then "
            "holds only the transformer. Re-running extends the cache incrementally."
        ),
    )
    p.add_argument("--config", required=True, help="run config (model and data.resolution)")
    p.add_argument(
        "--data", help="tuple folder with metadata.jsonl (default: data.path if source=folder)"
    )
    p.add_argument("--out", help="cache folder (default: data.path if data.source=cache)")
    p.add_argument("--pretrained", help="local diffusers folder (sets model.options.pretrained)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    p.add_argument("--batch-size", type=int, default=4, help="images (or clips) per VAE call")
    p.add_argument("--num-frames", type=int, help="videos: keep the first N frames of each clip")
    p.add_argument("--text-batch-size", type=int, default=16, help="prompts per text-encoder call")
    p.add_argument(
        "--device", help="device of the VAE and text encoders (default: cuda if available)"
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser(
        "export",
        help="write a trained LoRA in another library's format",
        description=(
            "Export the LoRA of a checkpoint. --format diffusers writes a safetensors file that "
            "FluxKontextPipeline.load_lora_weights (FLUX) accepts; the LoRA scale is folded in."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder (newest)")
    p.add_argument("--format", default="diffusers", choices=["diffusers"], help="output format")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the EMA weights (default: what byg edit uses, the config's sample.use_ema)",
    )
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the written tensors",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=cmd_export)


__all__ = ["register", "cmd_cache", "cmd_export"]

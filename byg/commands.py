"""``byg train``, ``byg edit`` and ``byg demo``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def cmd_train(args: argparse.Namespace) -> int:
    from byg.run_config import load_run_config
    from byg.train import train

    overrides = list(args.set)
    if args.lora_targets:
        names = [n.strip() for n in args.lora_targets.split(",") if n.strip()]
        overrides.append(f"lora.targets={names}")
    if args.skip_bad_data:
        overrides.append("data.skip_bad=true")
    cfg = load_run_config(args.config, overrides)
    out = Path(args.out or f"runs/{cfg.name}")
    if cfg.data.path and not Path(cfg.data.path).exists():
        raise FileNotFoundError(f"data.path {cfg.data.path!r} does not exist")
    hooks = []
    if cfg.train.eval_every and cfg.data.source == "toy":  # oracle metrics → eval.jsonl
        from byg.toy_eval import oracle_hook

        hooks.append(oracle_hook(cfg))
    res = train(cfg, out, resume=args.resume, stop_after=args.max_steps, hooks=hooks)
    _close_process_group()  # after success only: a failed rank must not wait in a barrier
    if os.environ.get("RANK", "0") == "0":  # once, not once per process
        print(
            f"trained to step {res['steps']} in {res['wall_seconds']:.0f}s; checkpoints in {out / 'checkpoints'}"
        )
    return 0


def _close_process_group() -> None:
    """Tear down torch.distributed before the interpreter exits (multi-process runs).

    Left to interpreter shutdown, the communication threads of a DeepSpeed run were seen to
    abort a worker after a successful run ("terminate called without an active exception").
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cmd_edit(args: argparse.Namespace) -> int:
    from byg.infer import EditSession, open_image

    if args.video:
        from byg.video_edit import edit_video_file

        if args.guidance_scale not in (None, 1.0) or args.negative:
            raise ValueError("--guidance-scale / --negative are for image edits (--image)")

        edit_video_file(
            args.checkpoint,
            args.video,
            args.instruction,
            args.out,
            steps=args.steps,
            seed=args.seed,
        )
        print(f"wrote {args.out}")
        return 0
    if not args.image:
        raise ValueError("give --image (or --video)")
    session = EditSession(args.checkpoint, device=args.device)
    out = session(
        open_image(args.image),
        args.instruction,
        steps=args.steps,
        seed=args.seed,
        guidance_scale=args.guidance_scale,
        negative=args.negative,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from byg.demo import run_demo

    if args.video:
        from byg.demo_video import run_video_demo

        if args.config or args.set or args.base or args.steps is not None:
            raise SystemExit(
                "byg demo --video: --config, --set, --base and --steps are image-demo options"
            )

        run_video_demo(out=Path(args.out or "runs/demo-video"), quick=args.quick)
        return 0
    if args.base and args.pretrain_base:
        raise SystemExit("byg demo: give --base DIR or --pretrain-base, not both")
    run_demo(
        out=Path(args.out),
        quick=args.quick,
        pretrain=args.pretrain_base,
        steps=args.steps,
        base=Path(args.base) if args.base else None,
        config=Path(args.config) if args.config else None,
        overrides=args.set,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an editor (ByG or supervised) from a YAML config",
        description="Train an editor. Every config field can be overridden with --set a.b=value.",
    )
    p.add_argument("--config", help="YAML run config (e.g. configs/toy_image.yaml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--resume", help="'latest', a run folder or a checkpoint folder")
    p.add_argument("--max-steps", type=int, help="stop after this many steps of this invocation")
    p.add_argument(
        "--lora-targets",
        help="comma-separated module names for LoRA (default: the backbone's standard targets)",
    )
    p.add_argument(
        "--skip-bad-data",
        action="store_true",
        help="skip (and count) unreadable images and malformed rows instead of stopping",
    )
    _add_debug(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("edit", help="edit an image (or video) with a trained checkpoint")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint folder or run folder (newest checkpoint)"
    )
    p.add_argument("--image", help="input image")
    p.add_argument("--video", help="input video (mp4/gif) for video backbones")
    p.add_argument("--instruction", required=True, help='the edit, e.g. "make the circle green"')
    p.add_argument("--out", required=True, help="output path (.png, or .mp4/.gif for video)")
    p.add_argument(
        "--steps", type=int, help="sampling steps (default: the checkpoint's sample.steps)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument(
        "--guidance-scale",
        type=float,
        help="text guidance away from --negative, same source (not in the paper; 1 = off; "
        "default: the checkpoint's sample.guidance_scale); costs a second editor pass per step",
    )
    p.add_argument(
        "--negative",
        default="",
        help='negative text for --guidance-scale, e.g. the source\'s caption (default: "")',
    )
    p.add_argument("--device", default="cpu", help="torch device")
    _add_debug(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "demo",
        help="the whole story on the toy world: base, ByG without pairs, evaluation, report",
        description=(
            "Pretrain (or reuse) the toy base, train a ByG editor without pairs, train an "
            "identity-only editor for comparison, evaluate all against ground truth, and write "
            "report.md, results.json, a sample grid and loss curves."
        ),
    )
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="a short smoke run (minutes)")
    p.add_argument("--video", action="store_true", help="the toy video demo instead")
    p.add_argument(
        "--pretrain-base",
        action="store_true",
        help="pretrain the base instead of using the shipped one",
    )
    p.add_argument(
        "--base",
        metavar="DIR",
        help="a saved toy base to start from instead of the shipped one, e.g. "
        "byg/assets/toy_base_attn16 (attention at 16x16 too: every attribute >= 0.9, the "
        "demo about 1.85x slower)",
    )
    p.add_argument("--steps", type=int, help="override the number of ByG training steps")
    p.add_argument(
        "--config",
        metavar="YAML",
        help="the ByG run's config (default configs/toy_image.yaml); a model.options.checkpoint "
        "in it is the base, e.g. configs/toy_caption.yaml",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the ByG run's config, as in byg train",
    )
    _add_debug(p)
    p.set_defaults(func=cmd_demo)

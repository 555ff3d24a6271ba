"""``byg``: train, run and evaluate unpaired editors.

Subcommands are defined next to the code they drive; this file only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: modules that contribute subcommands through ``register(subparsers)``; imported lazily
#: so that a missing optional piece does not break the rest of the CLI
COMMAND_MODULES = (
    "byg.commands",  # train, edit, demo
    "byg.pretrain",  # pretrain-base
    "byg.data.commands",  # data validate / toy / generate / ...
    "byg.eval.commands",  # eval viescore / report / ...
    "byg.backbones.flux_commands",  # cache, export
    "byg.bench",  # bench quality / speed
    "byg.demo_video",  # demo-video
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byg",
        description=(
            "Bootstrap Your Generator: fine-tune a flow-matching text-to-image/video model into an "
            "instruction-following editor from unpaired data (sources, captions, instructions). "
            "Start with `byg demo` (toy world, CPU, minutes)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that part of byg is not present in this build
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"byg {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""How well can ANY editor on a toy base learn the edits, given every weight and the pairs?

    python benchmarks/supervised_ceiling.py --steps 3000 --out runs/x/ceiling.jsonl
    python benchmarks/supervised_ceiling.py --base byg/assets/toy_base_attn16 \\
        --option cond_add=true --option cond_add_levels=4 --steps 10000 --out runs/x/a16.jsonl
    python benchmarks/supervised_ceiling.py --steps 0 --init runs/x/ceiling.safetensors \\
        --sample-steps 50 --out runs/x/ceiling_50.jsonl     # score saved weights again

An upper bound for ByG on the toy world (not part of CI): the supervised objective
(METHOD.md §6, Eq. 1) on ground-truth pairs, with EVERY weight of the toy backbone trained
(no LoRA, so no adapter capacity limit), from the base in ``--base`` turned into an editor by
``--option`` (``byg.backbones.toy`` editor options; default ``cond_add=true``, the demo
editor's). Every ``--eval-every`` steps the editor is scored exactly as the demo scores its
editors (``byg.toy_eval.evaluate``: 20 Euler steps, the oracle, ``--n`` held-out seen edits
from the demo's evaluation stream): edit success, preservation, both, PSNR, per edit type,
and what broke preservation (other attributes that read differently, the object moved, its
silhouette changed). One JSON line per evaluation goes to ``--out`` and to stdout; the
final weights go beside it (``--out`` with ``.safetensors``). With ``--ema D`` an EMA of
the weights (decay ``D``) is kept, scored beside them (``"ema"`` in each line) and saved
(``.ema.safetensors``).

ByG never sees a pair and trains LoRA weights only, so where this editor cannot reach the
demo's targets (seen edit success >= 0.8 with preservation >= 0.9) within a budget, there
is no reason to expect ByG on the same base and editor to reach them within it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from byg.backbones.toy import load_toy_base
from byg.data.toy import ToyEditDataset, ToyWorldConfig
from byg.eval.toy_metrics import preservation_breaks
from byg.eval.toy_oracle import ToyOracle
from byg.flow import sample_path
from byg.objectives import losses
from byg.toy_eval import editor_fn, eval_dataset, evaluate


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def why_not_preserved(per_example: list[dict]) -> dict[str, int]:
    """Counts, over the outputs that failed preservation, of each reason it failed."""
    return dict(
        preservation_breaks([r for r in per_example if not r["preservation"]]).most_common()
    )


def score(model, dataset, oracle, steps: int = 20) -> dict:
    res = evaluate(editor_fn(model, steps=steps), dataset, oracle)
    o = res["overall"]
    return {
        "edit_success": round(o["edit_success"], 3),
        "preservation": round(o["preservation"], 3),
        "both": round(o["success_and_preservation"], 3),
        "psnr": round(o["psnr"], 2),
        "by_type": {
            k: [round(v["edit_success"], 2), round(v["preservation"], 2)]
            for k, v in sorted(res["by_type"].items())
        },
        "why_not_preserved": why_not_preserved(res["per_example"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", help="toy base folder (default: the shipped byg/assets/toy_base)")
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="toy editor option (cond_add, cond_add_levels, cond_tokens, edit_gate, ...); "
        "default cond_add=true",
    )
    p.add_argument("--steps", type=int, default=3000, help="0: only score --init's weights")
    p.add_argument("--init", type=Path, help="start from these weights (a .safetensors it wrote)")
    p.add_argument("--sample-steps", type=int, default=20, help="Euler steps when scoring")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (no decay)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--n", type=int, default=96, help="held-out seen edits per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="also keep an EMA of the weights with this decay (e.g. 0.999) and score it too",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per evaluation")
    args = p.parse_args(argv)
    if not 0.0 <= args.ema < 1.0:
        p.error("--ema must be in [0, 1)")
    if args.steps < 0 or args.eval_every < 1 or args.n < 1 or args.sample_steps < 1:
        p.error("--eval-every, --n and --sample-steps must be >= 1, --steps >= 0")
    if args.steps == 0 and not args.init:
        p.error("--steps 0 only scores, and needs --init")
    options = dict(args.option or [("cond_add", True)])

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_toy_base(args.base, **options)
    if args.init:
        try:
            model.load_state_dict(load_file(args.init))
        except (RuntimeError, OSError) as err:  # wrong file, or another base / --option set
            p.error(f"--init {args.init} does not fit --base and --option: {err}")
    for q in model.parameters():
        q.requires_grad_(True)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    world = ToyWorldConfig(resolution=model.config.image_size)
    train = ToyEditDataset(world, 1_000_000, seed=args.seed, split="train")
    held_out = eval_dataset(world, "seen", args.n)
    oracle = ToyOracle.load()
    g = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "init": str(args.init) if args.init else None,
        "base": args.base or "byg/assets/toy_base",
        "options": options,
        **{k: getattr(args, k) for k in ("steps", "lr", "batch_size", "n", "seed", "sample_steps")},
        "trained_parameters": sum(q.numel() for q in params),
    }
    print(json.dumps(header), flush=True)
    start = time.time()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if args.ema else {}

    def evaluation(step: int, loss: float | None) -> None:
        model.eval()
        with torch.no_grad():
            row = {"step": step, "loss": loss, **score(model, held_out, oracle, args.sample_steps)}
            if ema:
                trained = {k: v.clone() for k, v in model.state_dict().items()}
                model.load_state_dict(ema)
                row["ema"] = score(model, held_out, oracle, args.sample_steps)
                model.load_state_dict(trained)
        model.train()
        row["seconds"] = round(time.time() - start)
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()

    with args.out.open("w") as log:
        log.write(json.dumps(header) + "\n")
        if args.steps == 0:
            evaluation(0, None)
            return 0
        for step in range(1, args.steps + 1):
            items = [train[rng.randrange(len(train))] for _ in range(args.batch_size)]
            x_src = torch.stack([it["x_src"] for it in items])
            x_tgt = torch.stack([it["x_tgt"] for it in items])
            text = model.encode_text([it["c_fwd"] for it in items])
            t = torch.rand(args.batch_size, generator=g)
            path = sample_path(x_tgt, torch.randn(x_tgt.shape, generator=g), t)
            loss = losses.mse(model(path.x_t, t, text, x_src), path.velocity).mean()
            if not torch.isfinite(loss):
                raise SystemExit(f"non-finite loss {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        ema[k].lerp_(v, 1.0 - args.ema)
            if step % args.eval_every == 0 or step == args.steps:
                evaluation(step, round(loss.item(), 4))
    weights = args.out.with_suffix(".safetensors")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, weights)
    if ema:
        save_file(ema, args.out.with_suffix(".ema.safetensors"))
    print(f"weights: {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

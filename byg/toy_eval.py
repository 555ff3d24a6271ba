"""Evaluate editors on held-out toy edits against ground truth, with the oracle.

Methods are ``EditFn``s over batches of pixels: ``fn(x_src [B,3,H,W], items) -> x_edit``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from byg.backbones.base import index_text
from byg.backbones.editor import Editor
from byg.infer import edit

BatchEditFn = Callable[[Tensor, list[dict]], Tensor]

EVAL_SEED = 10_007  # held-out scenes: a seed stream training never uses


def eval_dataset(world, split: str, n: int, seed: int = EVAL_SEED):
    from byg.data.toy import ToyEditDataset

    return ToyEditDataset(world, n, seed=seed, split=split)


def editor_fn(
    editor: Editor,
    *,
    steps: int = 20,
    shift: float = 1.0,
    use_ema: bool = False,
    seed: int = 0,
    guidance_scale: float = 1.0,
    negative: str = "c_rev",
) -> BatchEditFn:
    """ByG / supervised editors: Euler sampling with ``G_θ(·, ·, x_src, c_fwd)``.

    ``guidance_scale`` ≠ 1 guides away from each item's ``negative`` text field (``c_rev``:
    the reverse text, ``c_src``: the source's caption) or from the empty text (``""``).
    """

    def fn(x_src: Tensor, items: list[dict]) -> Tensor:
        prompts = [it["c_fwd"] for it in items]
        if guidance_scale != 1.0:
            prompts += [it[negative] if negative else "" for it in items]
        both = {k: v.to(x_src.device) for k, v in editor.encode_text(prompts).items()}
        n = len(items)
        text = index_text(both, slice(0, n))
        neg = index_text(both, slice(n, 2 * n)) if guidance_scale != 1.0 else None
        was = editor.training
        editor.eval()
        out = edit(
            editor,
            x_src,
            text,
            steps=steps,
            shift=shift,
            seed=seed,
            use_ema=use_ema,
            guidance_scale=guidance_scale,
            text_neg=neg,
        )
        editor.train(was)
        return out

    return fn


def identity_fn(x_src: Tensor, items: list[dict]) -> Tensor:
    """The do-nothing edit: output = source."""
    return x_src.clone()


@torch.no_grad()
def run_method(fn: BatchEditFn, dataset, batch_size: int = 64) -> tuple[Tensor, list[dict]]:
    outs, items_all = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x_src = torch.stack([it["x_src"] for it in items])
        outs.append(fn(x_src, items).clamp(-1, 1).cpu())
        items_all.extend(items)
    return torch.cat(outs), items_all


def evaluate(fn: BatchEditFn, dataset, oracle, batch_size: int = 64) -> dict:
    """Oracle metrics of ``fn`` on every example of ``dataset`` (see byg.eval.toy_metrics)."""
    from byg.eval.toy_metrics import evaluate_edits

    outs, _ = run_method(fn, dataset, batch_size)
    examples = [dataset.example(i) for i in range(len(dataset))]
    return evaluate_edits(outs, examples, oracle)


CURVE_SEED = 20_011  # the small held-out set scored during training


def oracle_hook(cfg, *, n: int | None = None, curve: list[dict] | None = None, oracle=None):
    """A ``byg.train`` hook scoring the editor on held-out seen toy edits with the oracle.

    Returns ``hook(step, editor, row) -> {"eval_edit_success", "eval_preservation",
    "eval_psnr"}`` (written to ``eval.jsonl`` every ``train.eval_every`` steps); each result
    is also appended to ``curve`` when given. ``n`` defaults to ``train.eval_examples``;
    ``oracle`` to ``ToyOracle.load()``.
    """
    from byg.data.toy import ToyWorldConfig
    from byg.eval.toy_oracle import ToyOracle

    world = ToyWorldConfig(resolution=cfg.data.resolution, **cfg.data.toy)
    oracle = ToyOracle.load() if oracle is None else oracle
    data = eval_dataset(world, "seen", n or cfg.train.eval_examples, seed=CURVE_SEED)

    def hook(step, editor, row):
        m = evaluate(editor_fn(editor, steps=cfg.sample.steps), data, oracle)["overall"]
        point = {k: m[k] for k in ("edit_success", "preservation", "psnr")}
        if curve is not None:
            curve.append({"step": step, **point})
        return {f"eval_{k}": v for k, v in point.items()}

    return hook


__all__ = [
    "BatchEditFn",
    "CURVE_SEED",
    "oracle_hook",
    "EVAL_SEED",
    "eval_dataset",
    "editor_fn",
    "identity_fn",
    "run_method",
    "evaluate",
]

"""Export a trained editor's LoRA for use outside ``byg`` (``byg export``).

``--format diffusers`` writes one safetensors file in the naming diffusers' LoRA loaders read
(``FluxKontextPipeline.load_lora_weights`` for FLUX; the same peft layout for other
pipelines whose denoiser is called ``transformer``)::

    transformer.<module path>.lora_A.weight   [r, in]
    transformer.<module path>.lora_B.weight   [out, r]

The editor stores peft tensors named ``transformer.<path>.lora_A.default.weight``; export
drops the adapter name and folds the LoRA scale ``alpha / rank`` into ``lora_B``, so any
loader that assumes ``alpha = rank`` (diffusers does, without metadata) computes exactly the
editor's ``W x + (alpha / rank) B A x``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from byg.checkpoint import load_checkpoint, resolve_checkpoint
from byg.config import from_dict
from byg.run_config import RunConfig

FORMATS = ("diffusers",)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PEFT_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def diffusers_lora_state_dict(
    lora: dict[str, Tensor],
    scale: float | dict[str, float],
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Editor (peft) LoRA tensors -> diffusers names, with ``scale`` folded into ``lora_B``.

    Args:
        lora: ``{"transformer.<path>.lora_A.<adapter>.weight": [r, in], ...lora_B...: [out, r]}``.
        scale: ``alpha / rank`` of the editor's LoRA, or one per module (``"transformer.<path>"``)
            when ranks differ between modules (``lora.rank_pattern``).
        dtype: dtype of the written tensors.

    Raises:
        ValueError: a name that is not a peft LoRA weight of a ``transformer`` module, or an
            A without its B.
    """
    out: dict[str, Tensor] = {}
    for name, tensor in lora.items():
        m = _PEFT_NAME.match(name)
        if m is None:
            raise ValueError(
                f"LoRA tensor {name!r} is not named <module>.lora_A|B.<adapter>.weight"
            )
        module = m["module"]
        if not module.startswith("transformer."):
            raise ValueError(
                f"LoRA tensor {name!r}: diffusers export needs a backbone whose denoiser is the "
                "attribute 'transformer' (FLUX, Wan); this checkpoint is from another backbone"
            )
        t = tensor.detach().float()
        if m["ab"] == "B":
            t = t * (scale[module] if isinstance(scale, dict) else scale)
        out[f"{module}.lora_{m['ab']}.weight"] = t.to(dtype).contiguous()
    modules_a = {k.rsplit(".lora_", 1)[0] for k in out if k.endswith(".lora_A.weight")}
    modules_b = {k.rsplit(".lora_", 1)[0] for k in out if k.endswith(".lora_B.weight")}
    unpaired = sorted(modules_a ^ modules_b)
    if unpaired:
        raise ValueError(f"LoRA modules without both A and B: {unpaired[:3]}")
    return out


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "diffusers",
    use_ema: bool | None = None,
    dtype: str = "bfloat16",
) -> Path:
    """Write the LoRA of ``checkpoint`` (a checkpoint or run folder) to the file ``out``.

    Args:
        use_ema: export the EMA tensors; ``None`` follows the checkpoint's ``sample.use_ema``
            (what ``byg edit`` samples with).
        dtype: ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        The written path.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    cfg = from_dict(RunConfig, ckpt["config"])
    use_ema = cfg.sample.use_ema if use_ema is None else use_ema
    tensors = ckpt["lora"]
    if use_ema:
        if ckpt["ema"] is None:
            raise ValueError(f"{ckpt['path']} has no ema.safetensors (trained with EMA decay 0)")
        tensors = ckpt["ema"]
    ranks = {cfg.lora.rank, *cfg.lora.rank_pattern.values()}
    scales = {}  # per module: alpha / rank, as the Editor built it (alpha None: scale 1)
    for name, t in tensors.items():
        if ".lora_A." not in name:
            continue
        r = t.shape[0]
        if r not in ranks:
            raise ValueError(
                f"{name} has rank {r}, the config's lora.rank / rank_pattern say {sorted(ranks)}"
            )
        scales[name.split(".lora_A.")[0]] = 1.0 if cfg.lora.alpha is None else cfg.lora.alpha / r
    state = diffusers_lora_state_dict(tensors, scales, DTYPES[dtype])
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "pt",
        "byg_checkpoint": str(ckpt["path"]),
        "byg_backbone": cfg.model.backbone,
        "byg_rank": str(cfg.lora.rank),
        "byg_weights": "ema" if use_ema else "lora",
    }
    save_file(state, out, metadata=meta)
    return out


__all__ = ["FORMATS", "diffusers_lora_state_dict", "export_checkpoint"]

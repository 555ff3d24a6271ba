"""GPU memory ESTIMATE for ByG training on FLUX.1-dev (12B), printed with its arithmetic.

Nothing here runs on a GPU; every figure is an estimate until a GPU run confirms it.

* Parameters: FLUX.1-dev's ``FluxTransformer2DModel`` config instantiated on the meta device
  (exact count, no memory); LoRA parameters counted on the same module tree with the
  backbone's default targets (peft's suffix rule).
* Activations: bytes saved for backward per token per block, MEASURED on CPU with
  ``torch.autograd.graph.saved_tensors_hooks`` through the real ``FluxBackbone`` + ``Editor``
  (bf16 base, fp32 LoRA rank r) at two reduced widths, fitted as ``a·width + b`` and
  extrapolated to FLUX's width 3072. Attention memory is linear in tokens (flash /
  memory-efficient SDPA on GPU; the CPU kernel used for the measurement is the flash one too).
* A ByG step (``byg/objectives/byg.py``): gradient-carrying editor calls on 2B sequences
  (forward edit + identity, batched) and B sequences (reverse), all alive until backward;
  sequence = T5 text + noisy + condition tokens. No-grad calls (rollout, base) only add a
  transient one-block working set.

    python benchmarks/flux_memory.py [--rank 64] [--batch 1] [--adam8bit] [--no-checkpointing]
"""

from __future__ import annotations

import argparse

import torch

from byg.backbones.editor import Editor
from byg.backbones.flux import FLUX_LORA_TARGETS, FluxBackbone, build

GB = 1e9
FLUX1_DEV = {  # black-forest-labs/FLUX.1-dev transformer/config.json
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
TEXT_ENCODERS_PARAMS = {"T5-XXL encoder": 4.762e9, "CLIP-L text": 0.123e9, "VAE": 0.084e9}
TEXT_TOKENS = 512  # T5 tokens (FLUX.1-dev)
OVERHEAD_GB = 3.0  # CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation (a guess)


def count_params(rank: int) -> tuple[int, int, int]:
    """(transformer params, LoRA params, LoRA'd linear layers) of FLUX.1-dev."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX1_DEV)
    n = sum(p.numel() for p in model.parameters())
    targets = FLUX_LORA_TARGETS + tuple(
        f"single_transformer_blocks.{i}.proj_out" for i in range(FLUX1_DEV["num_single_layers"])
    )
    lora, layers = 0, 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and any(
            name == t or name.endswith("." + t) for t in targets
        ):
            lora += rank * (m.in_features + m.out_features)
            layers += 1
    return n, lora, layers


def saved_bytes_per_token(width: int, rank: int) -> tuple[float, float]:
    """Bytes saved for backward per token in one double and one single block (measured)."""
    heads = width // 128
    cfg = {**FLUX1_DEV, "num_layers": 1, "num_single_layers": 1, "num_attention_heads": heads}
    bb: FluxBackbone = build(
        {"transformer": cfg, "dtype": "bfloat16", "gradient_checkpointing": False}
    )
    editor = Editor(bb, rank=rank, ema_decay=0.0)
    from peft.tuners.tuners_utils import cast_adapter_dtype

    cast_adapter_dtype(editor.backbone, "default", autocast_adapter_dtype=True)  # fp32 LoRA
    params = {p.untyped_storage().data_ptr() for p in editor.parameters()}
    current: list[str] = ["other"]
    seen: dict[str, dict[int, int]] = {"double": {}, "single": {}, "other": {}}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[current[0]][ptr] = t.untyped_storage().nbytes()
        return t

    def enter(name):
        def hook(*_):
            current[0] = name

        return hook

    def leave(*_):
        current[0] = "other"

    tr = bb.transformer
    for block, name in (
        (tr.transformer_blocks[0], "double"),
        (tr.single_transformer_blocks[0], "single"),
    ):
        block.register_forward_pre_hook(enter(name))
        block.register_forward_hook(leave)
    h = w = 16  # latents -> 64 noisy + 64 condition tokens
    text_len = 32
    tokens = text_len + 2 * (h // 2) * (w // 2)
    x = torch.randn(1, 16, h, w)
    text = {
        "prompt_embeds": torch.randn(1, text_len, 4096),
        "pooled_prompt_embeds": torch.randn(1, 768),
    }
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = editor(x, torch.tensor([0.5]), text, x)
    out.float().square().mean().backward()
    return (
        sum(seen["double"].values()) / tokens,
        sum(seen["single"].values()) / tokens,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rank", type=int, default=64, help="LoRA rank")
    ap.add_argument("--batch", type=int, default=1, help="samples per GPU per micro-step")
    ap.add_argument("--adam8bit", action="store_true", help="bitsandbytes 8-bit AdamW states")
    ap.add_argument(
        "--no-checkpointing", action="store_true", help="keep every block's activations"
    )
    ap.add_argument("--text-encoders", action="store_true", help="no cache: T5/CLIP/VAE on the GPU")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    n, n_lora, layers = count_params(args.rank)
    print(f"FLUX.1-dev transformer: {n / 1e9:.3f} B parameters")
    print(f"LoRA rank {args.rank} on {layers} linear layers: {n_lora / 1e6:.1f} M parameters\n")

    (d1, s1), (d2, s2) = (
        saved_bytes_per_token(256, args.rank),
        saved_bytes_per_token(512, args.rank),
    )
    width = FLUX1_DEV["num_attention_heads"] * FLUX1_DEV["attention_head_dim"]

    def extrapolate(v1: float, v2: float) -> float:
        a = (v2 - v1) / 256
        return v1 + a * (width - 256)

    per_tok_double, per_tok_single = extrapolate(d1, d2), extrapolate(s1, s2)
    print("saved-for-backward bytes per token per block (measured at width 256 / 512 -> 3072):")
    print(f"  double block: {d1:.0f} / {d2:.0f} -> {per_tok_double:.0f}")
    print(f"  single block: {s1:.0f} / {s2:.0f} -> {per_tok_single:.0f}\n")

    weights = n * 2 / GB
    adam = n_lora * (2 if args.adam8bit else 8) / GB
    lora = {
        "LoRA weights (fp32)": n_lora * 4 / GB,
        "LoRA grads (fp32)": n_lora * 4 / GB,
        f"AdamW states ({'8-bit' if args.adam8bit else 'fp32'} m, v)": adam,
        "EMA LoRA copy (fp32)": n_lora * 4 / GB,
        "EMA swap buffer (fp32, in rollout)": n_lora * 4 / GB,
    }
    t5 = TEXT_TOKENS * 4096 * 2 + 768 * 2  # bf16 prompt_embeds [512, 4096] + pooled [768]
    print(f"cache on disk: {t5 / 1e6:.2f} MB per distinct prompt (bf16 T5 + CLIP pooled); latents")
    for res in (512, 1024):
        print(
            f"  {res} px: 16 x {res // 8} x {res // 8} x 4 B = {16 * (res // 8) ** 2 * 4 / 1e6:.2f} MB"
        )
    print()
    n_double, n_single = FLUX1_DEV["num_layers"], FLUX1_DEV["num_single_layers"]
    for res in (512, 1024):
        img = (res // 16) ** 2  # 2x2-packed tokens of the 8x VAE latents
        seq = TEXT_TOKENS + 2 * img  # text + noisy + condition
        grad_seqs = 3 * args.batch  # [v_f | v_id] batched (2B) + v_r (B)
        block_in = seq * width * 2  # one block's bf16 input hidden states, per sequence
        if args.no_checkpointing:
            stored = grad_seqs * seq * (n_double * per_tok_double + n_single * per_tok_single)
            recompute = 0.0
            stored_line = f"{grad_seqs} seq x {seq} tok x all blocks' saved activations"
        else:
            stored = grad_seqs * (n_double + n_single) * block_in
            # backward recomputes one block at a time (batch 2B) and holds its gradients too
            recompute = 2 * (2 * args.batch) * seq * max(per_tok_double, per_tok_single)
            stored_line = f"{grad_seqs} seq x 57 block inputs x {seq} tok x {width} x 2 B"
        base_seq = TEXT_TOKENS + img
        base_transient = (4 * args.batch) * base_seq * max(per_tok_double, per_tok_single)
        act = stored / GB + max(recompute, base_transient) / GB
        text_enc = sum(TEXT_ENCODERS_PARAMS.values()) * 2 / GB if args.text_encoders else 0.0
        total = weights + sum(lora.values()) + act + text_enc + OVERHEAD_GB
        print(f"=== {res} px: {img} image tokens, sequence {seq} (text {TEXT_TOKENS} + 2 x {img})")
        print(f"  transformer weights (bf16)          {weights:6.1f} GB  ({n / 1e9:.2f} B x 2 B)")
        for k, v in lora.items():
            print(f"  {k:<36s}{v:6.1f} GB")
        print(f"  activations kept for backward       {stored / GB:6.1f} GB  ({stored_line})")
        print(
            f"  working set (recompute | base pass) {max(recompute, base_transient) / GB:6.1f} GB"
            f"  (recompute {recompute / GB:.1f}, base 4B x {base_seq} tok {base_transient / GB:.1f})"
        )
        if text_enc:
            print(f"  text encoders + VAE (bf16)          {text_enc:6.1f} GB")
        print(f"  runtime overhead (guess)            {OVERHEAD_GB:6.1f} GB")
        print(
            f"  TOTAL (estimate)                    {total:6.1f} GB per GPU, batch {args.batch}\n"
        )


if __name__ == "__main__":
    main()

"""Wan2.x video backbone over diffusers' ``WanTransformer3DModel`` (METHOD.md §2).

``v = WanBackbone(x_t [B, C, F, H, W], t [B], {"prompt_embeds": [B, L, D]}, cond=None)``

One forward, written out (``_velocity``) so the condition path is visible:

1. the noisy latents and the condition latents are patch-embedded SEPARATELY with the
   transformer's own ``patch_embedding`` and concatenated along the token axis
   (``[B, N, D] + [B, N, D] -> [B, 2N, D]``);
2. the condition tokens get the SAME rotary tables as the noisy tokens (METHOD.md §2,
   video): token ``j`` of the condition clip sits at the space-time position of noisy
   token ``j``; ``rotary_tables`` returns them and a test checks the equality;
3. the blocks run over all ``2N`` tokens (non-reentrant gradient checkpointing optional);
4. the output is sliced back to the ``N`` noisy tokens before the final modulation,
   projection and unpatchify.

With ``cond=None`` this is exactly the transformer's own forward (tested to equality).

Time: ``t ∈ [0, 1]`` (``byg.flow``: 1 is noise) is handed to Wan as ``1000·t`` (its
scheduler's ``timestep = sigma · num_train_timesteps``). Wan predicts ``noise − x0``, the
same velocity as ``byg.flow.velocity_target``.

Layouts (read from the diffusers folder's ``model_index.json``, or forced by ``layout``):

* ``a14b``: Wan2.2 A14B, two experts. ``transformer`` is the high-noise expert and runs
  every sample with ``t >= boundary`` (0.875 for T2V, the folder's ``boundary_ratio``),
  ``transformer_2`` the low-noise expert runs the rest. A batch with mixed times is split
  per sample and re-assembled. ``train_experts`` puts LoRA on ``both`` experts or only on
  the ``high`` or ``low`` one (the other stays frozen, without LoRA).
* ``ti2v``: Wan2.2 TI2V-5B, one transformer over the 48-channel Wan2.2 VAE (16x spatial).
* ``single``: any one-transformer Wan folder (Wan2.1 T2V).

Choices METHOD.md leaves open, each an option:

* ``cond_timestep``: ``"shared"`` (default) modulates the condition tokens with the
  sample's ``t``, like every token of the plain model; ``"zero"`` gives them ``t = 0``
  (they are clean), through Wan2.2's per-token timestep path (the way TI2V-5B marks its
  clean first frame). ``"zero"`` keeps a ``[B, 2N, 6, D]`` modulation tensor, which is
  large at 480x832x81.
* text: UMT5 hidden states with the padding positions zeroed, padded to
  ``max_sequence_length`` (512), exactly as ``WanPipeline.encode_prompt``; a prompt
  longer than that is an error, not a silent truncation.
* media latents: the VAE posterior mode, normalised with the VAE's ``latents_mean`` /
  ``latents_std`` (as the Wan pipelines do before the transformer).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from byg.backbones.base import Backbone, TextEmbeds
from byg.config import from_dict

#: Wan's time embedding takes ``timestep = t · NUM_TRAIN_TIMESTEPS``
NUM_TRAIN_TIMESTEPS = 1000
#: Wan2.2 A14B T2V's expert boundary (I2V uses 0.9); used when a folder names none
T2V_BOUNDARY = 0.875
LAYOUTS = ("auto", "a14b", "ti2v", "single")
EXPERTS = ("both", "high", "low")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: linear layers of every ``WanTransformerBlock`` that get LoRA: self-attention,
#: cross-attention (to the text) and the feed-forward network
BLOCK_LORA_LAYERS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)
TEXT_KEY = "prompt_embeds"


def _checkpoint(fn, *args):
    """Non-reentrant activation checkpointing.

    The reentrant variant returns outputs that do not require grad when no INPUT does, so
    the LoRA weights inside the block silently get no gradient (the noisy latents, the time
    and text embeddings never require grad here). Tests swap this function for the
    reentrant one to show the failure.
    """
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


# --------------------------------------------------------------------------- options


@dataclass
class WanOptions:
    """``model.options`` of a Wan run (parsed strictly: a typo is a named error).

    Attributes:
        pretrained: a diffusers Wan folder (``model_index.json``, ``transformer/``,
            ``transformer_2/`` for A14B, ``vae/``, ``text_encoder/``, ``tokenizer/``).
        tiny: build a tiny random model in memory instead (smoke runs, tests).
        seed: seed of the tiny model's weights.
        layout: ``auto`` (read the folder), ``a14b``, ``ti2v`` or ``single``.
        boundary: ``t >= boundary`` runs the high-noise expert (A14B). ``None``: the
            folder's ``boundary_ratio`` (0.875 for T2V).
        train_experts: which A14B experts get LoRA: ``both``, ``high`` or ``low``.
        dtype: transformer weights: ``float32`` or ``bfloat16`` (GPU).
        gradient_checkpointing: recompute each block in the backward (non-reentrant).
        cond_timestep: ``shared`` or ``zero`` (see the module docstring).
        max_sequence_length: UMT5 tokens per prompt (Wan: 512).
        text_encoder_dtype, vae_dtype: dtypes of UMT5 and the VAE (the VAE in float32
            decodes best, as the Wan pipelines recommend).
        vae_tiling: decode/encode in tiles (large videos on one GPU).
        encoder_device: where UMT5 and the VAE run for caching and editing (``None``:
            ``cuda`` when available, else ``cpu``).
    """

    pretrained: str | None = None
    tiny: bool = False
    seed: int = 0
    layout: str = "auto"
    boundary: float | None = None
    train_experts: str = "both"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    cond_timestep: str = "shared"
    max_sequence_length: int = 512
    text_encoder_dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    vae_tiling: bool = False
    encoder_device: str | None = None

    def __post_init__(self) -> None:
        if (self.pretrained is None) == (not self.tiny):
            raise ValueError("set exactly one of pretrained (a diffusers Wan folder) or tiny: true")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.tiny and self.layout == "auto":
            self.layout = "a14b"
        if self.train_experts not in EXPERTS:
            raise ValueError(
                f"train_experts must be one of {list(EXPERTS)}, got {self.train_experts!r}"
            )
        for name in ("dtype", "text_encoder_dtype", "vae_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(
                    f"{name} must be one of {list(DTYPES)}, got {getattr(self, name)!r}"
                )
        if self.cond_timestep not in ("shared", "zero"):
            raise ValueError(
                f"cond_timestep must be 'shared' or 'zero', got {self.cond_timestep!r}"
            )
        if self.boundary is not None and not 0.0 < self.boundary < 1.0:
            raise ValueError(f"boundary must be in (0, 1), got {self.boundary}")
        if self.max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be >= 1, got {self.max_sequence_length}")


def parse_options(options: dict[str, Any] | WanOptions) -> WanOptions:
    return options if isinstance(options, WanOptions) else from_dict(WanOptions, dict(options))


def _encoder_device(opts: WanOptions) -> torch.device:
    if opts.encoder_device is not None:
        return torch.device(opts.encoder_device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- folder reading


@dataclass
class _Folder:
    root: Path
    layout: str
    boundary: float | None


def _read_folder(opts: WanOptions) -> _Folder:
    """Check a diffusers Wan folder and resolve its layout and expert boundary."""
    root = Path(opts.pretrained or "")
    index_path = root / "model_index.json"
    if not root.is_dir():
        raise FileNotFoundError(f"Wan folder {str(root)!r} does not exist")
    if not index_path.exists():
        raise FileNotFoundError(
            f"{str(root)!r} is not a diffusers Wan folder: it has no model_index.json"
        )
    index = json.loads(index_path.read_text())
    two = (index.get("transformer_2") or [None])[0] is not None
    found = "a14b" if two else ("ti2v" if index.get("expand_timesteps") else "single")
    layout = found if opts.layout == "auto" else opts.layout
    if layout == "a14b" and not two:
        raise ValueError(
            f"layout 'a14b' needs two experts but {str(index_path)!r} names no transformer_2"
        )
    for sub in ("transformer", "transformer_2") if layout == "a14b" else ("transformer",):
        if not (root / sub / "config.json").exists():
            raise FileNotFoundError(f"Wan folder {str(root)!r} lacks {sub}/config.json")
    boundary = None
    if layout == "a14b":
        boundary = opts.boundary if opts.boundary is not None else index.get("boundary_ratio")
        if boundary is None:
            raise ValueError(
                f"{str(index_path)!r} has no boundary_ratio; set model.options.boundary "
                f"(Wan2.2 T2V uses {T2V_BOUNDARY})"
            )
    return _Folder(root=root, layout=layout, boundary=boundary)


# --------------------------------------------------------------------------- tiny parts


def _tiny_tokenizer(max_length: int = 512):
    """A character-level tokenizer with T5's special ids (pad 0, eos 1, unk 2), built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789 ,.'-!?"
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {c: i + 3 for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tiny_components(layout: str = "a14b", seed: int = 0) -> dict[str, Any]:
    """Random tiny Wan parts (real diffusers/transformers classes) for tests and smoke runs.

    Returns the keyword arguments of ``diffusers.WanPipeline`` (``transformer``,
    ``transformer_2``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``,
    ``boundary_ratio``, ``expand_timesteps``). The global RNG is left untouched.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if layout not in ("a14b", "ti2v", "single"):
        raise ValueError(f"tiny layout must be 'a14b', 'ti2v' or 'single', got {layout!r}")
    ti2v = layout == "ti2v"
    channels = 48 if ti2v else 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        def transformer() -> WanTransformer3DModel:
            return WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=12,
                in_channels=channels,
                out_channels=channels,
                text_dim=32,
                freq_dim=32,
                ffn_dim=32,
                num_layers=2,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=32,
            )

        vae_kwargs: dict[str, Any] = dict(
            base_dim=3,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        if ti2v:  # the Wan2.2 VAE: 48 channels, 2x2 pixel patches, 16x spatial
            vae_kwargs |= dict(
                z_dim=48,
                in_channels=12,
                out_channels=12,
                is_residual=True,
                patch_size=2,
                latents_mean=[0.0] * 48,
                latents_std=[1.0] * 48,
                scale_factor_spatial=16,
                scale_factor_temporal=4,
            )
        else:
            vae_kwargs |= dict(z_dim=16)
        text_cfg = UMT5Config(
            vocab_size=64,
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            is_encoder_decoder=False,
        )
        parts = {
            "transformer": transformer(),
            "transformer_2": transformer() if layout == "a14b" else None,
            "vae": AutoencoderKLWan(**vae_kwargs),
            "text_encoder": UMT5EncoderModel(text_cfg),
        }
    parts["tokenizer"] = _tiny_tokenizer()
    parts["scheduler"] = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    parts["boundary_ratio"] = T2V_BOUNDARY if layout == "a14b" else None
    parts["expand_timesteps"] = ti2v
    return parts


def write_tiny_pretrained(path: str | Path, layout: str = "a14b", seed: int = 0) -> Path:
    """Save ``tiny_components`` as a diffusers Wan folder (``WanPipeline.save_pretrained``)."""
    from diffusers import WanPipeline

    path = Path(path)
    WanPipeline(**tiny_components(layout, seed)).save_pretrained(path)
    return path


# --------------------------------------------------------------------------- text encoder


class WanTextEncoder:
    """UMT5 + tokenizer: prompts -> ``{"prompt_embeds": [B, L, D]}`` as ``WanPipeline`` makes them.

    Positions after each prompt's last token are zeroed (the transformer's cross-attention
    has no mask; Wan was trained with zero padding to ``L``).
    """

    def __init__(self, tokenizer, model: nn.Module, max_sequence_length: int) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_sequence_length = max_sequence_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> WanTextEncoder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> TextEmbeds:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {prompts!r}")
        L = self.max_sequence_length
        full = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        for p, ids in zip(prompts, full):
            if len(ids) > L:
                raise ValueError(
                    f"prompt has {len(ids)} tokens, more than max_sequence_length={L}: {p[:80]!r}"
                )
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=L,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        hidden = self.model(ids, mask).last_hidden_state  # (B, L, D)
        hidden = hidden * mask[..., None].to(hidden.dtype)  # zero padding, as WanPipeline
        return {TEXT_KEY: hidden}


def _load_text_encoder(opts: WanOptions) -> WanTextEncoder:
    dtype = DTYPES[opts.text_encoder_dtype]
    if opts.tiny:
        parts = tiny_components(opts.layout, opts.seed)
        model, tokenizer = _cast_keep_fp32(parts["text_encoder"], dtype), parts["tokenizer"]
    else:
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(opts.pretrained or "")
        for sub in ("text_encoder", "tokenizer"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"Wan folder {str(root)!r} lacks {sub}/")
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        model = UMT5EncoderModel.from_pretrained(root / "text_encoder", dtype=dtype)
    return WanTextEncoder(tokenizer, model, opts.max_sequence_length)


# --------------------------------------------------------------------------- backbone


class WanBackbone(Backbone):
    """``WanTransformer3DModel`` (one or two experts) as a ``byg`` backbone.

    Args:
        transformer: the (high-noise, for A14B) transformer.
        transformer_2: the low-noise expert (A14B) or ``None``.
        boundary: ``t >= boundary`` runs ``transformer`` (A14B only).
        train_experts: ``both``, ``high`` or ``low``: whose blocks get LoRA by default.
        gradient_checkpointing: non-reentrant checkpointing of every block.
        cond_timestep: ``shared`` or ``zero`` (module docstring).
        options: the parsed options (identity, lazy text encoder).
    """

    kind = "video"

    def __init__(
        self,
        transformer: nn.Module,
        transformer_2: nn.Module | None = None,
        *,
        boundary: float | None = None,
        train_experts: str = "both",
        gradient_checkpointing: bool = False,
        cond_timestep: str = "shared",
        options: WanOptions | None = None,
    ) -> None:
        super().__init__()
        if transformer_2 is not None and boundary is None:
            raise ValueError("two experts need a boundary (Wan2.2 T2V: 0.875)")
        if transformer_2 is None and train_experts != "both":
            raise ValueError(
                f"train_experts={train_experts!r} needs the two-expert A14B layout; "
                "this model has one transformer"
            )
        if transformer_2 is not None:
            a, b = transformer.config, transformer_2.config
            for key in ("patch_size", "in_channels", "out_channels", "text_dim"):
                if tuple(_as_tuple(a[key])) != tuple(_as_tuple(b[key])):
                    raise ValueError(f"the two experts disagree on {key}: {a[key]} vs {b[key]}")
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary = boundary
        self.train_experts = train_experts
        self.gradient_checkpointing = gradient_checkpointing
        self.cond_timestep = cond_timestep
        self.options = options
        self._text: list[WanTextEncoder] = []  # lazily loaded; kept out of the module tree
        self.default_lora_targets = self._lora_targets()

    # ------------------------------------------------------------------ structure
    @property
    def in_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(_as_tuple(self.transformer.config.patch_size))  # type: ignore[return-value]

    def experts(self) -> dict[str, nn.Module]:
        """``{"high": transformer, "low": transformer_2}`` (``{"high": transformer}`` if one)."""
        out = {"high": self.transformer}
        if self.transformer_2 is not None:
            out["low"] = self.transformer_2
        return out

    def _lora_targets(self) -> tuple[str, ...]:
        """Full module names (exact peft matches) of the LoRA linears of the trained experts."""
        names = {"high": "transformer", "low": "transformer_2"}
        chosen = ["high", "low"] if self.train_experts == "both" else [self.train_experts]
        targets = []
        for key in chosen:
            module = self.experts().get(key)
            if module is None:
                continue
            for i in range(len(module.blocks)):
                targets += [f"{names[key]}.blocks.{i}.{layer}" for layer in BLOCK_LORA_LAYERS]
        return tuple(targets)

    def is_high_noise(self, t: Tensor) -> Tensor:
        """``[B]`` bool: which samples the high-noise expert runs (all, with one expert)."""
        if self.transformer_2 is None:
            return torch.ones_like(t, dtype=torch.bool)
        return t >= self.boundary

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "class": type(self).__name__,
            "pretrained": None if o is None else o.pretrained,
            "tiny": None if o is None else o.tiny,
            "experts": list(self.experts()),
            "boundary": self.boundary,
            "train_experts": self.train_experts,
            "cond_timestep": self.cond_timestep,
        }

    # ------------------------------------------------------------------ text
    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """UMT5 embeddings ``{"prompt_embeds": [B, L, D]}`` (loaded from the folder on first use)."""
        if not self._text:
            if self.options is None:
                raise RuntimeError(
                    "this WanBackbone was built without options, so it has no text encoder; "
                    "build it with build({'pretrained': ...}) or pass cached embeddings"
                )
            self._text.append(_load_text_encoder(self.options))
        encoder = self._text[0]
        device = self.transformer.patch_embedding.weight.device
        if encoder.device != device:
            encoder.to(device)
        return encoder(prompts)

    # ------------------------------------------------------------------ positions
    def rotary_tables(
        self, x_t: Tensor, with_cond: bool, expert: str = "high"
    ) -> tuple[Tensor, Tensor]:
        """Rotary ``(cos, sin)``, each ``[1, N or 2N, 1, head_dim]``.

        The condition tokens (the second ``N``) reuse the noisy tokens' tables: the same
        space-time positions (METHOD.md §2, video).
        """
        cos, sin = self.experts()[expert].rope(x_t)  # (1, N, 1, head_dim)
        if with_cond:
            cos, sin = torch.cat([cos, cos], dim=1), torch.cat([sin, sin], dim=1)
        return cos, sin

    # ------------------------------------------------------------------ forward
    def forward(
        self, x_t: Tensor, t: Tensor, text: TextEmbeds, cond: Tensor | None = None
    ) -> Tensor:
        """Velocity like ``x_t`` (``[B, C, F, H, W]``, or ``[B, C, H, W]`` for one frame).

        Each sample runs the expert of its own ``t``; the result has ``x_t``'s dtype.
        """
        self.check_inputs(x_t, t, cond)
        if x_t.ndim == 4:  # an image latent [B, C, H, W] is a one-frame video
            c = None if cond is None else cond[:, :, None]
            return self.forward(x_t[:, :, None], t, text, c)[:, :, 0]
        if x_t.ndim != 5:
            raise ValueError(f"Wan expects latents [B, C, F, H, W], got {tuple(x_t.shape)}")
        if x_t.shape[1] != self.in_channels:
            raise ValueError(
                f"latents have {x_t.shape[1]} channels, the transformer expects {self.in_channels}"
            )
        if cond is not None and cond.shape != x_t.shape:
            raise ValueError(
                "cond must have the same [C, F, H, W] as x_t (its tokens reuse the noisy tokens' "
                f"positions): {tuple(cond.shape)} vs {tuple(x_t.shape)}"
            )
        if TEXT_KEY not in text:
            raise ValueError(f"text embeddings need {TEXT_KEY!r}, got keys {sorted(text)}")
        emb = text[TEXT_KEY]
        if emb.ndim != 3 or emb.shape[0] != x_t.shape[0]:
            raise ValueError(f"{TEXT_KEY} must be [B={x_t.shape[0]}, L, D], got {tuple(emb.shape)}")

        high = self.is_high_noise(t)
        if bool(high.all()):
            return self._velocity(self.transformer, x_t, t, emb, cond)
        if bool((~high).all()):
            return self._velocity(self.transformer_2, x_t, t, emb, cond)
        outs, order = [], []
        for mask, expert in ((high, self.transformer), (~high, self.transformer_2)):
            idx = mask.nonzero().squeeze(1)
            c = None if cond is None else cond[idx]
            outs.append(self._velocity(expert, x_t[idx], t[idx], emb[idx], c))
            order.append(idx)
        return torch.cat(outs)[torch.argsort(torch.cat(order))]

    def _velocity(
        self, model: nn.Module, x: Tensor, t: Tensor, emb: Tensor, cond: Tensor | None
    ) -> Tensor:
        """One expert over one batch: patch-embed, concatenate, blocks, slice, unpatchify."""
        p_t, p_h, p_w = _as_tuple(model.config.patch_size)
        B, _, F, H, W = x.shape
        if F % p_t or H % p_h or W % p_w:
            raise ValueError(
                f"latent grid F={F}, H={H}, W={W} is not divisible by the patch {(p_t, p_h, p_w)}"
            )
        f, h, w = F // p_t, H // p_h, W // p_w
        dtype = model.patch_embedding.weight.dtype
        rotary = self.rotary_tables(
            x, cond is not None, "high" if model is self.transformer else "low"
        )

        tokens = model.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        n = tokens.shape[1]
        if cond is not None:
            cond_tokens = model.patch_embedding(cond.to(dtype)).flatten(2).transpose(1, 2)
            tokens = torch.cat([tokens, cond_tokens], dim=1)  # (B, 2N, D)
        tokens = tokens.contiguous()

        timestep = t.float() * NUM_TRAIN_TIMESTEPS  # (B,)
        per_token = cond is not None and self.cond_timestep == "zero"
        if per_token:  # noisy tokens at t, clean condition tokens at 0
            timestep = torch.cat([timestep[:, None].expand(B, n), timestep.new_zeros(B, n)], 1)
        temb, proj, context, _ = model.condition_embedder(
            timestep.flatten() if per_token else timestep,
            emb.to(dtype),
            None,
            timestep_seq_len=timestep.shape[1] if per_token else None,
        )
        # (B, 2N, 6, D) per token, else (B, 6, D)
        proj = proj.unflatten(2, (6, -1)) if per_token else proj.unflatten(1, (6, -1))

        for block in model.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = _checkpoint(block, tokens, context, proj, rotary)
            else:
                tokens = block(tokens, context, proj, rotary)

        tokens = tokens[:, :n]  # drop the condition tokens: (B, N, D)
        if per_token:
            temb = temb[:, :n]
            shift, scale = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(
                2, dim=2
            )
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        out = model.proj_out(tokens)  # (B, N, p_t p_h p_w C)
        out = out.reshape(B, f, h, w, p_t, p_h, p_w, -1)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return out.to(x.dtype)  # (B, C, F, H, W)


def _as_tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


# --------------------------------------------------------------------------- builders


def build(options: dict[str, Any]) -> WanBackbone:
    """Backbone from ``model.options`` alone (``byg.backbones.registry``).

    ``{"pretrained": "/path/Wan2.2-T2V-A14B-Diffusers", "dtype": "bfloat16", ...}`` loads the
    folder's transformer(s); ``{"tiny": true, "layout": "a14b"}`` builds random tiny ones.
    """
    opts = parse_options(options)
    dtype = DTYPES[opts.dtype]
    if opts.tiny:
        parts = tiny_components(opts.layout, opts.seed)
        t1, t2 = parts["transformer"], parts["transformer_2"]
        boundary = opts.boundary if opts.boundary is not None else parts["boundary_ratio"]
        if dtype != torch.float32:
            t1 = _cast_keep_fp32(t1, dtype)
            t2 = None if t2 is None else _cast_keep_fp32(t2, dtype)
    else:
        from diffusers import WanTransformer3DModel

        folder = _read_folder(opts)
        t1 = WanTransformer3DModel.from_pretrained(
            folder.root, subfolder="transformer", torch_dtype=dtype
        )
        t2 = None
        if folder.layout == "a14b":
            t2 = WanTransformer3DModel.from_pretrained(
                folder.root, subfolder="transformer_2", torch_dtype=dtype
            )
        boundary = folder.boundary
    return WanBackbone(
        t1,
        t2,
        boundary=boundary,
        train_experts=opts.train_experts,
        gradient_checkpointing=opts.gradient_checkpointing,
        cond_timestep=opts.cond_timestep,
        options=opts,
    )


def _cast_keep_fp32(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating weights to ``dtype`` except those diffusers keeps in float32.

    ``_keep_in_fp32_modules`` (rope, time embedder, modulation tables, norms) stay float32,
    as ``from_pretrained(torch_dtype=...)`` leaves them.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                fp32 = bool(keep & set(name.split(".")))
                tensor.data = tensor.data.to(torch.float32 if fp32 else dtype)
    return model


class WanCacheEncoder:
    """The ``byg.cache.CacheEncoder`` of Wan: the VAE and UMT5 of one Wan folder.

    ``encode_media``: pixels ``[B, 3, F, H, W]`` (or an image ``[B, 3, H, W]``, taken as one
    frame) in ``[-1, 1]`` -> normalised latents ``[B, z, 1 + (F - 1)/4, H/s, W/s]`` with
    ``s = 8`` (Wan2.1/A14B VAE) or 16 (Wan2.2 TI2V VAE); ``F`` must be ``1 + 4k``.
    ``decode_media`` inverts it (clamped to ``[-1, 1]``). ``encode_text`` is
    ``WanTextEncoder``.
    """

    def __init__(
        self, vae: nn.Module, text: WanTextEncoder, model_id: str, device: torch.device
    ) -> None:
        self.vae = vae.eval().requires_grad_(False).to(device)
        self.text = text.to(device)
        self.model_id = model_id
        self.device = device
        cfg = vae.config
        z = cfg.z_dim
        self.temporal_factor = int(cfg.scale_factor_temporal or 4)
        self.spatial_factor = int(cfg.scale_factor_spatial or 8)
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def check_pixels(self, x: Tensor) -> Tensor:
        """``[B, 3, F, H, W]`` in [-1, 1] with a frame count and size the VAE accepts."""
        if x.ndim == 4:
            x = x[:, :, None]  # an image is a one-frame video
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected pixels [B, 3, F, H, W], got {tuple(x.shape)}")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"pixels must lie in [-1, 1], got range [{lo:.3f}, {hi:.3f}]")
        F, H, W = x.shape[2:]
        tf, s = self.temporal_factor, self.spatial_factor
        if (F - 1) % tf:
            raise ValueError(
                f"Wan's VAE needs 1 + {tf}k frames, got {F} (use {1 + (F - 1) // tf * tf})"
            )
        if H % s or W % s:
            raise ValueError(f"frame size {H}x{W} must be divisible by {s} for this VAE")
        return x

    def to(self, device: torch.device | str) -> WanCacheEncoder:
        """Move the VAE and UMT5 (``byg cache --device``)."""
        self.device = torch.device(device)
        self.vae.to(self.device)
        self.text.to(self.device)
        return self

    @torch.no_grad()
    def encode_media(self, x: Tensor) -> Tensor:
        """Pixels -> normalised float32 latents on ``x``'s device (an image gives ``[B, z, h, w]``)."""
        image = x.ndim == 4
        v = self.check_pixels(x)
        posterior = self.vae.encode(v.to(self.device, self.dtype)).latent_dist
        z = posterior.mode().float()  # deterministic: the posterior mode
        z = (z - self.mean.to(z.device)) / self.std.to(z.device)
        return (z[:, :, 0] if image else z).to(x.device)

    @torch.no_grad()
    def decode_media(self, latents: Tensor) -> Tensor:
        """Latents ``[B, z, f, h, w]`` (or ``[B, z, h, w]``) -> float32 pixels in [-1, 1]."""
        image = latents.ndim == 4
        z = latents[:, :, None] if image else latents
        if z.ndim != 5:
            raise ValueError(f"expected latents [B, C, F, H, W], got {tuple(latents.shape)}")
        z = z.to(self.device).float() * self.std.to(self.device) + self.mean.to(self.device)
        x = self.vae.decode(z.to(self.dtype)).sample.float().clamp(-1, 1)
        return (x[:, :, 0] if image else x).to(latents.device)

    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        return self.text(prompts)


def _folder_id(root: Path, opts: WanOptions) -> str:
    """Model identity for cache keys.

    The folder name, the VAE / UMT5 / tokenizer configs, a sample of every weight file's
    bytes (its size and 64 KiB from its middle and end: cheap, and different fine-tunes
    differ there), the dtypes and the text length.
    """
    h = hashlib.sha1()
    for sub in ("vae", "text_encoder", "tokenizer"):
        for p in sorted((root / sub).glob("*")):
            if not p.is_file():
                continue
            h.update(f"{sub}/{p.name}".encode())
            if p.suffix in (".json", ".txt", ".model"):
                h.update(p.read_bytes())
                continue
            size = p.stat().st_size
            h.update(str(size).encode())
            with p.open("rb") as f:
                for offset in (size // 2, max(0, size - 65536)):
                    f.seek(offset)
                    h.update(f.read(65536))
    h.update(f"{opts.vae_dtype}/{opts.text_encoder_dtype}/{opts.max_sequence_length}".encode())
    return f"wan:{root.resolve().name}:{h.hexdigest()[:12]}"


def build_cache_encoder(options: dict[str, Any]) -> WanCacheEncoder:
    """VAE + UMT5 of the same folder (or tiny model) as ``build(options)``."""
    from diffusers import AutoencoderKLWan

    opts = parse_options(options)
    device = _encoder_device(opts)
    vae_dtype = DTYPES[opts.vae_dtype]
    if opts.tiny:
        vae = _cast_keep_fp32(tiny_components(opts.layout, opts.seed)["vae"], vae_dtype)
        model_id = (
            f"wan:tiny-{opts.layout}-seed{opts.seed}:"
            f"{opts.vae_dtype}/{opts.text_encoder_dtype}/{opts.max_sequence_length}"
        )
    else:
        root = Path(opts.pretrained or "")
        if not (root / "vae" / "config.json").exists():
            raise FileNotFoundError(f"Wan folder {str(root)!r} lacks vae/config.json")
        vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype)
        model_id = _folder_id(root, opts)
    if opts.vae_tiling:
        vae.enable_tiling()
    return WanCacheEncoder(vae, _load_text_encoder(opts), model_id, device)


def latent_shape(
    encoder: WanCacheEncoder, frames: int, height: int, width: int
) -> tuple[int, int, int, int]:
    """``[z, F', H', W']`` of a clip of ``frames`` x ``height`` x ``width`` pixels."""
    z = int(encoder.vae.config.z_dim)
    f = 1 + (frames - 1) // encoder.temporal_factor
    return z, f, height // encoder.spatial_factor, width // encoder.spatial_factor


def num_tokens(latent_fhw: tuple[int, int, int], patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Noisy tokens per clip (double it with the condition clip)."""
    return math.prod(d // p for d, p in zip(latent_fhw, patch))


__all__ = [
    "WanOptions",
    "WanBackbone",
    "WanTextEncoder",
    "WanCacheEncoder",
    "BLOCK_LORA_LAYERS",
    "NUM_TRAIN_TIMESTEPS",
    "T2V_BOUNDARY",
    "build",
    "build_cache_encoder",
    "tiny_components",
    "write_tiny_pretrained",
    "latent_shape",
    "num_tokens",
]

"""FLUX.1 image backbone: diffusers' ``FluxTransformer2DModel`` behind the ``Backbone`` interface.

A trained editor is exactly a FLUX.1 Kontext-style model (METHOD.md §2):

* latents ``[B, C, H, W]`` (VAE space, scaled and shifted) are packed into 2×2 patches:
  ``[B, (H/2)(W/2), 4C]`` tokens with position ids ``(0, row, col)``;
* the source latents ``cond`` are packed the same way and appended AFTER the noisy tokens
  with ids ``(1, row, col)``: the first id axis marks the context image, as in
  ``FluxKontextPipeline.prepare_latents``;
* text tokens get ids ``(0, 0, 0)``; the pooled CLIP vector and the guidance value go
  through the time embedding (FLUX.1-dev is guidance-distilled: ``guidance`` is an input,
  not classifier-free guidance);
* the output is sliced back to the noisy tokens and unpacked to ``[B, C, H, W]``.

With ``cond=None`` this is the plain text-to-image FLUX.1 model, so the base ``B`` is the
same module with LoRA disabled and no condition tokens.

Time: FLUX's ``timestep`` input is the flow time ``t`` in ``[0, 1]`` (the transformer
multiplies by 1000 inside); our ``t`` (1 = noise) and velocity ``ε − x_0`` are FLUX's
own conventions, so nothing is converted.

Text: ``encode_text`` reproduces ``FluxKontextPipeline.encode_prompt``: CLIP-L pooled output
(``pooled_prompt_embeds [B, 768]``) and T5-XXL last hidden states
(``prompt_embeds [B, max_sequence_length, 4096]``, padded to ``max_sequence_length`` and run
without an attention mask, exactly like the pipeline). The text encoders and the VAE live in
``FluxEncoder`` (the ``byg.cache.CacheEncoder`` of this backbone), loaded lazily so that a
run on cached embeddings holds only the transformer.

Sampling shift: the Kontext pipeline shifts its sigmas by ``exp(mu)`` with ``mu`` from
``calculate_shift(image_seq_len)``; ``kontext_shift(resolution)`` returns that number so that
``sample.shift`` reproduces the pipeline's schedule exactly (see docs/flux.md).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor

from byg.backbones.base import Backbone, TextEmbeds
from byg.config import ConfigError, from_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: LoRA targets shared by double- and single-stream blocks (peft suffix match): attention
#: q/k/v/out, the text stream's added projections, both feed-forwards, the single blocks'
#: MLP input. The single blocks' ``proj_out`` is added per block index in ``FluxBackbone``
#: (a bare ``proj_out`` would also match the transformer's final output layer).
FLUX_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
)

#: defaults of FLUX.1's ``FlowMatchEulerDiscreteScheduler`` (scheduler/scheduler_config.json)
SHIFT_BASE_SEQ_LEN, SHIFT_MAX_SEQ_LEN, SHIFT_BASE, SHIFT_MAX = 256, 4096, 0.5, 1.15
#: text ids, pooled vector and T5 keys of a FLUX ``TextEmbeds``
PROMPT_EMBEDS, POOLED_EMBEDS = "prompt_embeds", "pooled_prompt_embeds"


# ----------------------------------------------------------------------------- options


@dataclass
class FluxOptions:
    """``model.options`` of the ``flux`` backbone (strict: a typo is a named error).

    Attributes:
        pretrained: local diffusers folder in the FLUX.1-dev layout (``transformer/``,
            ``vae/``, ``text_encoder/``, ``tokenizer/``, ``text_encoder_2/``, ``tokenizer_2/``).
            FLUX.1-dev and FLUX.1-Kontext-dev folders both work. Nothing is downloaded.
        transformer: instead of ``pretrained``: ``FluxTransformer2DModel`` config fields for a
            randomly initialised transformer (tests, memory/speed benchmarks). No text
            encoders or VAE come with it: train from a cache.
        seed: seed of that random initialisation.
        dtype: weights of the transformer, VAE and text encoders (``bfloat16`` on GPUs).
        guidance: value fed to the guidance embedding (FLUX.1-dev is guidance-distilled; the
            diffusers pipelines default to 3.5). Used for ``B``, ``G`` and ``G_ema`` alike; change
            it temporarily with ``FluxBackbone.using_guidance``.
        gradient_checkpointing: recompute each transformer block in the backward pass
            (non-reentrant ``torch.utils.checkpoint``, which lets gradients reach the LoRA
            weights although the blocks' inputs need no grad).
        max_sequence_length: T5 tokens per prompt (FLUX.1-dev: 512, the pipeline's default).
        encoder_device: where the VAE and text encoders run (``None``: CUDA when available).
    """

    pretrained: str | None = None
    transformer: dict[str, Any] | None = None
    seed: int = 0
    dtype: str = "bfloat16"
    guidance: float = 3.5
    gradient_checkpointing: bool = True
    max_sequence_length: int = 512
    encoder_device: str | None = None

    def __post_init__(self) -> None:
        if (self.pretrained is None) == (self.transformer is None):
            raise ValueError(
                "give exactly one of 'pretrained' (a local diffusers FLUX folder) or "
                "'transformer' (config of a random transformer)"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not 1 <= self.max_sequence_length <= 512:
            raise ValueError(
                f"max_sequence_length must be in [1, 512], got {self.max_sequence_length}"
            )
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.pretrained is not None and not Path(self.pretrained).is_dir():
            raise ValueError(f"pretrained folder {self.pretrained!r} does not exist")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def parse_options(options: dict[str, Any]) -> FluxOptions:
    """``model.options`` dict -> ``FluxOptions`` (``ConfigError`` naming a bad field)."""
    return from_dict(FluxOptions, dict(options), "model.options")


# ----------------------------------------------------------------------------- packing


def pack_latents(x: Tensor) -> Tensor:
    """2×2 patches: ``[B, C, H, W] -> [B, (H/2)(W/2), 4C]`` (``FluxPipeline._pack_latents``)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX latents need even height and width, got {tuple(x.shape)}")
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, 2, 2)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of ``pack_latents``: ``[B, (H/2)(W/2), 4C] -> [B, C, H, W]``."""
    b, n, c4 = tokens.shape
    if n != (height // 2) * (width // 2):
        raise ValueError(f"{n} tokens cannot be unpacked to {height}x{width} latents")
    x = tokens.view(b, height // 2, width // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, height, width)  # (B, C, H, W)


def position_ids(height: int, width: int, index: int = 0, device=None) -> Tensor:
    """Token ids ``[(H/2)(W/2), 3]`` = ``(index, row, col)`` of packed ``H×W`` latents.

    ``index = 0`` for the image being generated, ``1`` for the Kontext context image.
    """
    h, w = height // 2, width // 2
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return ids.reshape(h * w, 3)


def kontext_mu(image_seq_len: int) -> float:
    """``calculate_shift`` of the FLUX pipelines with FLUX.1's scheduler defaults."""
    m = (SHIFT_MAX - SHIFT_BASE) / (SHIFT_MAX_SEQ_LEN - SHIFT_BASE_SEQ_LEN)
    return image_seq_len * m + (SHIFT_BASE - m * SHIFT_BASE_SEQ_LEN)


def kontext_shift(resolution: int | tuple[int, int], vae_scale_factor: int = 8) -> float:
    """The time shift ``a = exp(mu)`` the Kontext pipeline uses at this pixel resolution.

    The pipeline's dynamic shifting maps ``σ -> e^μ σ / (1 + (e^μ − 1) σ)``
    (``FlowMatchEulerDiscreteScheduler.time_shift`` with exponent 1), which is
    ``byg.flow.shift_time`` with ``shift = e^μ``; its sigmas ``linspace(1, 1/N, N)`` plus a
    final 0 are ``byg.flow.schedule(N)``'s grid. So ``sample.shift = kontext_shift(R)``
    reproduces the pipeline's schedule. 512 px -> 1.878, 1024 px -> 3.158.
    """
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    seq_len = (h // (vae_scale_factor * 2)) * (w // (vae_scale_factor * 2))
    return math.exp(kontext_mu(seq_len))


# ----------------------------------------------------------------------------- backbone


class FluxBackbone(Backbone):
    """``v = FLUX(x_t, t, text, cond)`` on VAE latents ``[B, C, H, W]`` (see module docstring).

    Args:
        transformer: a ``FluxTransformer2DModel`` (``in_channels = 4 × latent channels``).
        guidance: guidance-embedding value (ignored, and must be left at default, for models
            without ``guidance_embeds``).
        encoder: the text/VAE encoder used by ``encode_text`` (``None``: no text encoders;
            use cached embeddings).
        gradient_checkpointing: non-reentrant checkpointing of every block.
    """

    kind = "image"

    def __init__(
        self,
        transformer: Any,
        guidance: float = 3.5,
        encoder: FluxEncoder | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.guidance = float(guidance)
        self.has_guidance = bool(transformer.config.guidance_embeds)
        self.latent_channels = transformer.config.in_channels // 4
        if transformer.config.in_channels % 4 or transformer.config.patch_size != 1:
            raise ValueError(
                "FluxBackbone packs 2x2 latent patches itself: the transformer needs patch_size 1 "
                f"and in_channels divisible by 4, got {transformer.config.patch_size}, "
                f"{transformer.config.in_channels}"
            )
        n_single = len(transformer.single_transformer_blocks)
        self.default_lora_targets = FLUX_LORA_TARGETS + tuple(
            f"single_transformer_blocks.{i}.proj_out" for i in range(n_single)
        )
        # a plain attribute, not a submodule: the text encoders never join the trained
        # module, its parameters or its state dict
        self.encoder = encoder
        if gradient_checkpointing:
            transformer.enable_gradient_checkpointing(
                gradient_checkpointing_func=functools.partial(
                    torch.utils.checkpoint.checkpoint, use_reentrant=False
                )
            )

    @contextmanager
    def using_guidance(self, value: float) -> Iterator[None]:
        """Temporarily feed another guidance value (e.g. FlowEdit's 1.5 / 5.5)."""
        old, self.guidance = self.guidance, float(value)
        try:
            yield
        finally:
            self.guidance = old

    def forward(
        self, x_t: Tensor, t: Tensor, text: TextEmbeds, cond: Tensor | None = None
    ) -> Tensor:
        """Velocity ``[B, C, H, W]`` of noisy latents ``x_t [B, C, H, W]`` at times ``t [B]``.

        ``cond``: source latents ``[B, C, H', W']`` (Kontext context; ``H', W'`` may differ).
        ``text``: ``prompt_embeds [B, L, D]`` and ``pooled_prompt_embeds [B, P]``.
        """
        self.check_inputs(x_t, t, cond)
        if x_t.ndim != 4 or x_t.shape[1] != self.latent_channels:
            raise ValueError(
                f"x_t must be [B, {self.latent_channels}, H, W] latents, got {tuple(x_t.shape)}"
            )
        missing = [k for k in (PROMPT_EMBEDS, POOLED_EMBEDS) if k not in text]
        if missing:
            raise ValueError(f"FLUX text embeddings lack {missing}; got keys {sorted(text)}")
        b, _, h, w = x_t.shape
        for k in (PROMPT_EMBEDS, POOLED_EMBEDS):
            if text[k].shape[0] != b:
                raise ValueError(f"text[{k!r}] has batch {text[k].shape[0]}, x_t has {b}")
        dtype, device = self.transformer.dtype, x_t.device
        tokens = pack_latents(x_t)  # (B, N, 4C)
        ids = position_ids(h, w, 0, device)  # (N, 3)
        n_noisy = tokens.shape[1]
        if cond is not None:
            if cond.ndim != 4:
                raise ValueError(f"cond must be [B, C, H, W] latents, got {tuple(cond.shape)}")
            tokens = torch.cat([tokens, pack_latents(cond)], dim=1)  # (B, N + N', 4C)
            ids = torch.cat([ids, position_ids(cond.shape[2], cond.shape[3], 1, device)], dim=0)
        prompt = text[PROMPT_EMBEDS]
        guidance = None
        if self.has_guidance:
            guidance = torch.full((b,), self.guidance, device=device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=tokens.to(dtype),
            encoder_hidden_states=prompt.to(device, dtype),
            pooled_projections=text[POOLED_EMBEDS].to(device, dtype),
            timestep=t.to(device, dtype),
            img_ids=ids,
            txt_ids=torch.zeros(prompt.shape[1], 3, device=device),
            guidance=guidance,
            return_dict=False,
        )[0]
        out = out[:, :n_noisy]  # drop the context tokens' outputs
        return unpack_latents(out, h, w).to(x_t.dtype)

    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """CLIP + T5 embeddings (on the transformer's device); needs a ``pretrained`` folder."""
        if self.encoder is None:
            raise RuntimeError(
                "this FLUX backbone has no text encoders (built without 'pretrained'); "
                "train from a cache (`byg cache`) or build it from a diffusers folder"
            )
        embeds = self.encoder.encode_text(prompts)
        device = next(self.transformer.parameters()).device
        return {k: v.to(device) for k, v in embeds.items()}

    def describe(self) -> dict[str, Any]:
        c = self.transformer.config
        keys = (
            "in_channels",
            "num_layers",
            "num_single_layers",
            "attention_head_dim",
            "num_attention_heads",
            "joint_attention_dim",
            "pooled_projection_dim",
            "guidance_embeds",
        )
        return {"class": type(self).__name__, **{k: c[k] for k in keys}, "guidance": self.guidance}


# ----------------------------------------------------------------------------- encoders


def _folder_digest(root: Path, subfolders: tuple[str, ...]) -> str:
    """Cheap identity of the encoder weights: configs, tokenizer files, weight sizes."""
    h = hashlib.sha256()
    for sub in subfolders:
        d = root / sub
        if not d.is_dir():
            raise FileNotFoundError(f"{root} lacks {sub}/ (not a FLUX diffusers folder?)")
        for f in sorted(d.rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(root).as_posix()
            if f.suffix in (".json", ".txt", ".model"):
                h.update(rel.encode() + f.read_bytes())
            else:  # weights: name and size (hashing 10 GB of T5 on every run is too slow)
                h.update(f"{rel}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


class FluxEncoder:
    """VAE + CLIP-L + T5-XXL of a FLUX folder: the ``CacheEncoder`` of ``FluxBackbone``.

    Loaded lazily per part: ``encode_text`` loads only the text encoders, ``encode_media``
    and ``decode_media`` only the VAE. Latents are ``(mode(VAE(x)) − shift) × scale``,
    exactly ``FluxKontextPipeline._encode_vae_image`` (deterministic: the posterior mode).
    """

    def __init__(self, opts: FluxOptions) -> None:
        if opts.pretrained is None:
            raise ValueError("the FLUX encoder needs model.options.pretrained (a diffusers folder)")
        self.root = Path(opts.pretrained)
        self.dtype = opts.torch_dtype
        self.max_sequence_length = opts.max_sequence_length
        dev = opts.encoder_device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        subs = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
        self.model_id = (
            f"flux:{self.root.resolve().name}:{_folder_digest(self.root, subs)}"
            f":t5len{self.max_sequence_length}:{opts.dtype}"
        )
        self._vae: Any = None
        self._text: Any = None

    # -- lazy parts
    @property
    def vae(self) -> Any:
        if self._vae is None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(self.root, subfolder="vae", torch_dtype=self.dtype)
            self._vae = vae.to(self.device).eval().requires_grad_(False)
        return self._vae

    @property
    def text_models(self) -> tuple[Any, Any, Any, Any]:
        if self._text is None:
            from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

            kw = {"torch_dtype": self.dtype}
            clip = CLIPTextModel.from_pretrained(self.root, subfolder="text_encoder", **kw)
            t5 = T5EncoderModel.from_pretrained(self.root, subfolder="text_encoder_2", **kw)
            tok = AutoTokenizer.from_pretrained(self.root, subfolder="tokenizer")
            tok2 = AutoTokenizer.from_pretrained(self.root, subfolder="tokenizer_2")
            clip = clip.to(self.device).eval().requires_grad_(False)
            t5 = t5.to(self.device).eval().requires_grad_(False)
            self._text = (tok, clip, tok2, t5)
        return self._text

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device: str | torch.device) -> FluxEncoder:
        self.device = torch.device(device)
        for part in (self._vae, *(self._text or ())):
            if isinstance(part, torch.nn.Module):
                part.to(self.device)
        return self

    # -- CacheEncoder
    @torch.no_grad()
    def encode_media(self, x: Tensor) -> Tensor:
        """Pixels ``[B, 3, H, W]`` in ``[-1, 1]`` -> latents ``[B, C, H/8, W/8]`` (float32)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FLUX encodes images [B, 3, H, W], got {tuple(x.shape)}")
        multiple = self.vae_scale_factor * 2
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} must be divisible by {multiple} "
                "(VAE factor x 2x2 packing)"
            )
        vae = self.vae
        z = vae.encode(x.to(self.device, self.dtype)).latent_dist.mode()
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        return z.float().to(x.device)

    @torch.no_grad()
    def decode_media(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, h, w]`` -> pixels ``[B, 3, 8h, 8w]`` in ``[-1, 1]`` (float32)."""
        vae = self.vae
        z = (
            latents.to(self.device, self.dtype) / vae.config.scaling_factor
            + vae.config.shift_factor
        )
        return vae.decode(z, return_dict=False)[0].float().clamp(-1, 1).to(latents.device)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """``FluxKontextPipeline.encode_prompt`` without LoRA scaling (text encoders frozen).

        Returns ``{"prompt_embeds": [B, max_sequence_length, D_t5],
        "pooled_prompt_embeds": [B, D_clip]}`` in the weights' dtype, on ``self.device``.
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {prompts!r}")
        tok, clip, tok2, t5 = self.text_models
        ids = tok(
            prompts,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = clip(ids.to(self.device), output_hidden_states=False).pooler_output
        ids2 = tok2(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        hidden = t5(ids2.to(self.device), output_hidden_states=False)[0]
        return {PROMPT_EMBEDS: hidden.to(self.dtype), POOLED_EMBEDS: pooled.to(self.dtype)}


# ----------------------------------------------------------------------------- builders


def _random_transformer(cfg: dict[str, Any], seed: int, dtype: torch.dtype) -> Any:
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # fp32 init, then cast: the same weights in every dtype
        try:
            model = FluxTransformer2DModel(**cfg)
        except TypeError as e:
            raise ConfigError(f"model.options.transformer: {e}") from e
    # nn.Module.to: ModelMixin.to warns about fp32-only modules, which FLUX does not have
    return torch.nn.Module.to(model, dtype)


TINY_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 16,  # 4 latent channels x 2x2 packing
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 4, 8],
    "guidance_embeds": True,
}


def save_tiny_flux(out_dir: str | Path, seed: int = 0, clip_length: int = 16) -> Path:
    """Write a random tiny FLUX folder (diffusers layout) for offline tests and smoke runs.

    Real classes with tiny configs: ``FluxTransformer2DModel`` (``TINY_TRANSFORMER``), a
    2-level ``AutoencoderKL`` (4 latent channels, factor 2, FLUX's shift/scale), ``CLIPTextModel``
    and ``T5EncoderModel`` with character-level tokenizers built here, and FLUX.1's scheduler
    config, saved through ``FluxPipeline.save_pretrained`` (the FLUX.1-dev layout, which
    ``FluxKontextPipeline.from_pretrained`` also loads). No download.
    """
    import string

    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:  # byte-level BPE without merges: one token per character
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=clip_length)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -3.5) for c in chars]
    tokenizer_2 = T5Tokenizer(vocab=pieces, extra_ids=0)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TINY_TRANSFORMER)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
            shift_factor=0.1159,
            scaling_factor=0.3611,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=clip_length,
                projection_dim=32,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=SHIFT_BASE,
        max_shift=SHIFT_MAX,
        base_image_seq_len=SHIFT_BASE_SEQ_LEN,
        max_image_seq_len=SHIFT_MAX_SEQ_LEN,
    )
    pipe = FluxPipeline(  # FLUX.1-dev's own model_index.json names FluxPipeline
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build(options: dict[str, Any]) -> FluxBackbone:
    """Registry entry: ``FluxBackbone`` from ``model.options`` (see ``FluxOptions``)."""
    opts = parse_options(options)
    if opts.pretrained is not None:
        from diffusers import FluxTransformer2DModel

        transformer = FluxTransformer2DModel.from_pretrained(
            opts.pretrained, subfolder="transformer", torch_dtype=opts.torch_dtype
        )
        encoder: FluxEncoder | None = FluxEncoder(opts)
    else:
        transformer = _random_transformer(dict(opts.transformer or {}), opts.seed, opts.torch_dtype)
        encoder = None
    transformer.requires_grad_(False)
    if opts.guidance != FluxOptions.guidance and not transformer.config.guidance_embeds:
        raise ValueError(
            f"model.options.guidance={opts.guidance} but this transformer has no guidance "
            "embedding (FLUX.1-schnell?)"
        )
    return FluxBackbone(
        transformer,
        guidance=opts.guidance,
        encoder=encoder,
        gradient_checkpointing=opts.gradient_checkpointing,
    )


def build_cache_encoder(options: dict[str, Any]) -> FluxEncoder:
    """Registry entry: the VAE + text encoders of the same ``pretrained`` folder."""
    return FluxEncoder(parse_options(options))


__all__ = [
    "FLUX_LORA_TARGETS",
    "FluxBackbone",
    "FluxEncoder",
    "FluxOptions",
    "build",
    "build_cache_encoder",
    "kontext_mu",
    "kontext_shift",
    "pack_latents",
    "save_tiny_flux",
    "parse_options",
    "position_ids",
    "unpack_latents",
]

"""FLUX backbone on a tiny random FLUX folder (real diffusers/transformers classes, offline).

The reference for every "matches Kontext" check is diffusers' own ``FluxKontextPipeline``
code (its packing, position ids, prompt encoding, VAE scaling and scheduler), loaded from the
same tiny folder.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from byg.backbones.editor import Editor
from byg.backbones.flux import (
    FLUX_LORA_TARGETS,
    TINY_TRANSFORMER,
    FluxBackbone,
    build,
    build_cache_encoder,
    kontext_mu,
    kontext_shift,
    pack_latents,
    position_ids,
    save_tiny_flux,
    unpack_latents,
)
from byg.backbones.registry import build_backbone
from byg.config import ConfigError
from byg.flow import schedule
from byg.objectives.byg import ByGConfig, ByGObjective
from byg.objectives.common import EditBatch

SEQ = 16  # T5 tokens in these tests (the pipeline's max_sequence_length is passed the same)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is several times faster than two on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> str:
    return str(save_tiny_flux(tmp_path_factory.mktemp("tiny_flux")))


@pytest.fixture(scope="session")
def opts(tiny_flux) -> dict:
    return {
        "pretrained": tiny_flux,
        "dtype": "float32",
        "max_sequence_length": SEQ,
        "gradient_checkpointing": False,
        "encoder_device": "cpu",
    }


@pytest.fixture(scope="session")
def backbone(opts) -> FluxBackbone:
    return build(opts)


@pytest.fixture(scope="session")
def encoder(opts):
    return build_cache_encoder(opts)


@pytest.fixture(scope="session")
def pipe(tiny_flux):
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline.from_pretrained(tiny_flux)


def _text(encoder, prompts):
    return encoder.encode_text(prompts)


def _plain_transformer(bb: FluxBackbone, x, t, text, guidance):
    """The text-to-image FLUX call written out with the pipeline's own helpers."""
    b, c, h, w = x.shape
    p = bb.transformer
    tokens = type_pipe()._pack_latents(x, b, c, h, w)
    ids = type_pipe()._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
    out = p(
        hidden_states=tokens,
        timestep=t,
        guidance=torch.full((b,), guidance),
        pooled_projections=text["pooled_prompt_embeds"],
        encoder_hidden_states=text["prompt_embeds"],
        txt_ids=torch.zeros(text["prompt_embeds"].shape[1], 3),
        img_ids=ids,
        return_dict=False,
    )[0]
    return type_pipe()._unpack_latents(out, h * 2, w * 2, 2)  # pixel size, vae factor 2


def type_pipe():
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline


# ----------------------------------------------------------------------------- options


def test_options_are_strict(tiny_flux):
    with pytest.raises(ConfigError, match="pretraind.*did you mean 'pretrained'"):
        build({"pretraind": tiny_flux})
    with pytest.raises(ConfigError, match="exactly one of"):
        build({"pretrained": tiny_flux, "transformer": dict(TINY_TRANSFORMER)})
    with pytest.raises(ConfigError, match="dtype"):
        build({"pretrained": tiny_flux, "dtype": "fp8"})
    with pytest.raises(ConfigError, match="does not exist"):
        build({"pretrained": tiny_flux + "_missing"})
    with pytest.raises(ConfigError, match="max_sequence_length"):
        build({"pretrained": tiny_flux, "max_sequence_length": 1024})


def test_registry_builds_flux(opts):
    bb = build_backbone("flux", opts)
    assert isinstance(bb, FluxBackbone)
    d = bb.describe()
    assert d["class"] == "FluxBackbone" and d["in_channels"] == 16 and d["guidance"] == 3.5


# ----------------------------------------------------------------------------- packing / ids


def test_packing_matches_pipeline_and_roundtrips():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 8)
    ours = pack_latents(x)
    theirs = type_pipe()._pack_latents(x, 2, 4, 6, 8)
    assert ours.shape == (2, 12, 16)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(ours, 6, 8), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 4, 5, 8))


def test_condition_ids_and_forward_match_kontext(backbone, encoder, pipe):
    """Our forward with ``cond`` is exactly the Kontext pipeline's transformer call."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    cond = torch.randn(2, 4, 6, 10)  # Kontext allows a context image of another size
    t = torch.tensor([0.3, 0.8])
    latents, image_latents, latent_ids, image_ids = pipe.prepare_latents(
        cond, 2, 4, 16, 16, torch.float32, "cpu", None, pack_latents(x)
    )
    torch.testing.assert_close(position_ids(8, 8, 0), latent_ids, rtol=0, atol=0)
    torch.testing.assert_close(position_ids(6, 10, 1), image_ids, rtol=0, atol=0)
    assert (image_ids[:, 0] == 1).all() and (latent_ids[:, 0] == 0).all()
    torch.testing.assert_close(pack_latents(cond), image_latents, rtol=0, atol=0)

    text = _text(encoder, ["make it red", "make it blue"])
    ref = backbone.transformer(
        hidden_states=torch.cat([latents, image_latents], dim=1),
        timestep=t,
        guidance=torch.full((2,), backbone.guidance),
        pooled_projections=text["pooled_prompt_embeds"],
        encoder_hidden_states=text["prompt_embeds"],
        txt_ids=torch.zeros(SEQ, 3),
        img_ids=torch.cat([latent_ids, image_ids], dim=0),
        return_dict=False,
    )[0][:, : latents.shape[1]]
    out = backbone(x, t, text, cond)
    assert out.shape == x.shape
    torch.testing.assert_close(pack_latents(out), ref, rtol=1e-5, atol=1e-6)
    # the condition matters (the test would pass vacuously otherwise)
    assert (backbone(x, t, text, None) - out).abs().max() > 1e-3


def test_forward_checks_inputs(backbone, encoder):
    text = _text(encoder, ["a cat"])
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="latents"):
        backbone(torch.randn(1, 3, 8, 8), torch.rand(1), text)
    with pytest.raises(ValueError, match="lack"):
        backbone(x, torch.rand(1), {"prompt_embeds": text["prompt_embeds"]})
    with pytest.raises(ValueError, match="batch"):
        backbone(torch.randn(2, 4, 8, 8), torch.rand(2), text)
    with pytest.raises(ValueError, match="shape"):
        backbone(x, torch.rand(2), text)


# ----------------------------------------------------------------------------- LoRA / base


def test_zero_lora_without_condition_is_the_plain_transformer(opts, encoder):
    torch.manual_seed(0)
    editor = Editor(build(opts), rank=4, ema_decay=0.0)  # peft init: B = 0
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.25, 0.9])
    text = _text(encoder, ["a red car", "a blue car"])
    ref = _plain_transformer(editor.backbone, x, t, text, 3.5)
    torch.testing.assert_close(editor(x, t, text), ref, rtol=1e-5, atol=1e-6)
    # a non-zero LoRA changes G but not B (adapters disabled)
    with torch.no_grad():
        for p in editor.lora_parameters():
            p.normal_(0, 0.2)
    assert (editor(x, t, text) - ref).abs().max() > 1e-3
    with editor.base():
        torch.testing.assert_close(editor(x, t, text), ref, rtol=1e-5, atol=1e-6)


def test_default_lora_targets(backbone):
    names = set(backbone.default_lora_targets)
    assert set(FLUX_LORA_TARGETS) <= names
    assert "single_transformer_blocks.0.proj_out" in names
    editor = Editor(build_backbone_copy(backbone), rank=2, ema_decay=0.0)
    hit = {n.split(".lora_")[0] for n, _ in editor.lora_named_parameters()}
    assert "transformer.proj_out" not in hit  # the final output layer stays frozen
    for expected in (
        "transformer.transformer_blocks.0.attn.to_q",
        "transformer.transformer_blocks.0.attn.add_v_proj",
        "transformer.transformer_blocks.0.attn.to_add_out",
        "transformer.transformer_blocks.0.ff.net.2",
        "transformer.transformer_blocks.0.ff_context.net.0.proj",
        "transformer.single_transformer_blocks.0.proj_mlp",
        "transformer.single_transformer_blocks.0.proj_out",
        "transformer.single_transformer_blocks.0.attn.to_k",
    ):
        assert expected in hit, expected


def build_backbone_copy(bb: FluxBackbone) -> FluxBackbone:
    """A fresh backbone with the same config (LoRA injection mutates its module)."""
    cfg = {k: v for k, v in bb.transformer.config.items() if not k.startswith("_")}
    return build({"transformer": cfg, "dtype": "float32", "gradient_checkpointing": False})


# ----------------------------------------------------------------------------- text / VAE


def test_encode_text_matches_pipeline(encoder, pipe, backbone):
    prompts = ["make the sky orange", "a photo of a dog on grass, sunny"]
    ours = encoder.encode_text(prompts)
    embeds, pooled, text_ids = pipe.encode_prompt(prompts, max_sequence_length=SEQ)
    # same computation; only CPU kernel scheduling differs (observed <= 1e-6)
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=1e-4, atol=1e-5)
    assert ours["prompt_embeds"].shape == (2, SEQ, 32) and text_ids.abs().sum() == 0
    # the backbone's own encode_text uses the same encoders
    torch.testing.assert_close(
        backbone.encode_text(prompts)["prompt_embeds"], embeds, rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="list of strings"):
        encoder.encode_text("a bare string")


def test_vae_matches_pipeline_scaling(encoder, pipe):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = encoder.encode_media(x)
    torch.testing.assert_close(z, pipe._encode_vae_image(x, generator=None), rtol=1e-4, atol=1e-5)
    assert z.shape == (2, 4, 8, 8)
    ref = pipe.vae.decode(z / 0.3611 + 0.1159, return_dict=False)[0].clamp(-1, 1)
    torch.testing.assert_close(encoder.decode_media(z), ref)
    with pytest.raises(ValueError, match="divisible"):
        encoder.encode_media(torch.zeros(1, 3, 14, 16))


# ----------------------------------------------------------------------------- guidance / shift


def test_guidance_value_and_context_manager(backbone, encoder):
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([0.5])
    text = _text(encoder, ["a cat"])
    v = backbone(x, t, text)
    with backbone.using_guidance(7.0):
        assert backbone.guidance == 7.0
        v7 = backbone(x, t, text)
    assert backbone.guidance == 3.5
    assert (v7 - v).abs().max() > 1e-4
    torch.testing.assert_close(backbone(x, t, text), v)


def test_kontext_shift_reproduces_the_pipeline_schedule(pipe):
    assert kontext_shift(512) == pytest.approx(math.exp(0.5 + 0.65 * (1024 - 256) / 3840))
    assert kontext_shift(1024) == pytest.approx(math.exp(1.15))
    for n, seq in ((4, 16), (20, 1024), (28, 4096)):
        mu = kontext_mu(seq)
        pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
        ours = schedule(n, shift=math.exp(mu))
        torch.testing.assert_close(ours, pipe.scheduler.sigmas.float(), rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- training


def test_gradient_checkpointing_is_non_reentrant_and_exact(encoder):
    cfg = {"transformer": dict(TINY_TRANSFORMER), "dtype": "float32", "seed": 1}
    grads = []
    for ckpt in (False, True):
        bb = build({**cfg, "gradient_checkpointing": ckpt})
        if ckpt:
            fn = bb.transformer._gradient_checkpointing_func
            assert bb.transformer.gradient_checkpointing and fn.keywords == {"use_reentrant": False}
        editor = Editor(bb, rank=4, ema_decay=0.0)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in editor.lora_parameters():
                p.normal_(0, 0.1)
        x, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        loss = editor(x, torch.tensor([0.3, 0.6]), _text(encoder, ["a", "b"]), cond).square().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in editor.lora_named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert any(g.abs().sum() > 0 for g in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_bf16_weights(encoder):
    cfg = {"transformer": dict(TINY_TRANSFORMER), "seed": 1, "gradient_checkpointing": False}
    bb16, bb32 = build({**cfg, "dtype": "bfloat16"}), build({**cfg, "dtype": "float32"})
    assert bb16.transformer.dtype == torch.bfloat16
    torch.manual_seed(0)
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([0.4]), _text(encoder, ["a"])
    v16, v32 = bb16(x, t, text, x), bb32(x, t, text, x)
    assert v16.dtype == torch.float32 and torch.isfinite(v16).all()
    # bf16 rounds t * 1000 before the sinusoidal embedding (as the pipeline does): loose bound
    assert (v16 - v32).abs().mean() < 0.1 * v32.abs().mean()
    # fp32 LoRA on the bf16 base (what AdamW needs): peft casts activations per layer
    from peft.tuners.tuners_utils import cast_adapter_dtype

    editor = Editor(bb16, rank=2, ema_decay=0.0)
    cast_adapter_dtype(editor.backbone, "default", autocast_adapter_dtype=True)
    assert all(p.dtype == torch.float32 for p in editor.lora_parameters())
    editor(x, t, text, x).square().mean().backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 for p in editor.lora_parameters()
    )


def test_random_transformer_is_seeded_and_has_no_text_encoders():
    a = build({"transformer": dict(TINY_TRANSFORMER), "seed": 5, "dtype": "float32"})
    b = build({"transformer": dict(TINY_TRANSFORMER), "seed": 5, "dtype": "float32"})
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(RuntimeError, match="no text encoders"):
        a.encode_text(["a cat"])
    with pytest.raises(ConfigError, match="transformer"):
        build({"transformer": {"num_layerz": 1}})


def test_byg_steps_change_lora_not_base(opts, encoder):
    torch.manual_seed(0)
    editor = Editor(build(opts), rank=4, ema_decay=0.5)
    base_before = {n: p.clone() for n, p in editor.named_parameters() if "lora_" not in n}
    lora_before = editor.lora_state_dict()
    ema_before = editor.ema_state_dict()
    prompts = {"src": ["a red car"], "tgt": ["a blue car"], "fwd": ["make the car blue"]}
    prompts["rev"] = ["make the car red"]
    x_src = encoder.encode_media(torch.rand(1, 3, 16, 16) * 2 - 1)
    batch = EditBatch(x_src=x_src, text={r: encoder.encode_text(p) for r, p in prompts.items()})
    obj = ByGObjective(ByGConfig(rollout_steps=1, warmup_steps=0, p_id=0.0, warmup_ratio=None))
    opt = torch.optim.AdamW(editor.lora_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        out = obj(editor, batch, step, g, random.Random(step))
        assert out.kind == "full" and torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        editor.update_ema()
    after = editor.lora_state_dict()
    assert all(not torch.equal(after[n], lora_before[n]) for n in after)
    assert any(not torch.equal(editor.ema_state_dict()[n], ema_before[n]) for n in ema_before)
    for n, p in editor.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), f"base weight {n} changed"
            assert not p.requires_grad


def test_shipped_config_builds_on_the_tiny_folder(tiny_flux):
    from pathlib import Path

    from byg.infer import build_editor
    from byg.run_config import load_run_config

    cfg = load_run_config(
        Path(__file__).parents[2] / "configs" / "flux_byg.yaml",
        [f"model.options.pretrained={tiny_flux}", "model.options.dtype=float32"],
    )
    assert cfg.lora.rank == 64 and cfg.byg.rollout_steps == 10 and cfg.byg.p_id == 0.15
    assert cfg.sample.steps == 20 and cfg.sample.shift == pytest.approx(kontext_shift(512), 1e-5)
    editor = build_editor(cfg)
    a = next(p for n, p in editor.lora_named_parameters() if "lora_A" in n)
    assert a.shape[0] == 64

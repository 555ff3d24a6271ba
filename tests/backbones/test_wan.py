"""Wan2.2 backbone, its cache encoder, video I/O and the UniPC sampler, on tiny random models.

The tiny models are real ``WanTransformer3DModel`` / ``AutoencoderKLWan`` / ``UMT5EncoderModel``
instances with small configs and a locally built tokenizer, saved as diffusers folders
(``WanPipeline.save_pretrained``) so that ``build({"pretrained": folder})`` runs the real
loading code. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import math
import random
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from byg.backbones import wan
from byg.backbones.editor import Editor
from byg.config import ConfigError
from byg.objectives.byg import ByGConfig, ByGObjective
from byg.objectives.common import EditBatch, TimeSampling
from byg.sampling import unipc_sample
from byg.video_io import read_video, resize_video, trim_frames, write_video

L = 32  # UMT5 tokens per prompt in these tests (Wan itself uses 512)
PROMPTS = ["a red circle moving left", "a blue square, cartoon"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are dominated by thread overhead; on a shared 2-core box 1 thread is ~20x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("wan")
    return {
        layout: str(wan.write_tiny_pretrained(root / layout, layout, seed=0))
        for layout in ("a14b", "ti2v")
    }


def _opts(folder: str, **kw) -> dict:
    return {
        "pretrained": folder,
        "max_sequence_length": L,
        "text_encoder_dtype": "float32",
        "encoder_device": "cpu",
        **kw,
    }


@pytest.fixture(scope="session")
def a14b(folders) -> wan.WanBackbone:
    return wan.build(_opts(folders["a14b"]))


@pytest.fixture(scope="session")
def text(a14b) -> dict:
    return a14b.encode_text(PROMPTS)


def _latents(b: int = 2, c: int = 16, f: int = 2, h: int = 4, w: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, f, h, w, generator=g), torch.randn(b, c, f, h, w, generator=g)


def _plain(model, x, t, emb):
    """The transformer's own forward (the reference for 'no condition')."""
    return model(hidden_states=x, timestep=t * 1000, encoder_hidden_states=emb).sample


# --------------------------------------------------------------------------- building


def test_build_reads_layouts_from_the_folder(folders, a14b):
    assert set(a14b.experts()) == {"high", "low"}
    assert a14b.boundary == pytest.approx(0.875)  # model_index.json boundary_ratio
    assert a14b.kind == "video"
    ti2v = wan.build(_opts(folders["ti2v"]))
    assert set(ti2v.experts()) == {"high"} and ti2v.in_channels == 48
    assert all(n.startswith("transformer.") for n in ti2v.default_lora_targets)
    # options are parsed strictly and checked against the folder
    with pytest.raises(ConfigError, match="pretraind"):
        wan.build({"pretraind": folders["a14b"]})
    with pytest.raises(ConfigError, match="exactly one"):
        wan.build({})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wan.build({"pretrained": folders["a14b"] + "_missing"})
    with pytest.raises(ValueError, match="two experts"):
        wan.build(_opts(folders["ti2v"], layout="a14b"))
    with pytest.raises(ValueError, match="train_experts"):
        wan.build(_opts(folders["ti2v"], train_experts="high"))
    assert wan.build(_opts(folders["a14b"], boundary=0.6)).boundary == 0.6


def test_shapes_and_input_errors(a14b, text):
    x, cond = _latents()
    t = torch.tensor([0.95, 0.3])
    with torch.no_grad():
        v = a14b(x, t, text, cond)
        v_plain = a14b(x, t, text)
        v_img = a14b(x[:, :, 0], t, text, cond[:, :, 0])  # [B, C, H, W]: one frame
    assert v.shape == x.shape and v.dtype == torch.float32
    assert v_img.shape == x[:, :, 0].shape
    assert not torch.allclose(v, v_plain)  # the condition tokens are attended to
    with pytest.raises(ValueError, match="same"):
        a14b(x, t, text, cond[:, :, :1])
    with pytest.raises(ValueError, match="channels"):
        a14b(x[:, :8], t, text)
    with pytest.raises(ValueError, match="prompt_embeds"):
        a14b(x, t, {"tokens": text["prompt_embeds"]})
    with pytest.raises(ValueError, match="divisible"):
        a14b(x[..., :5], t, text)
    with pytest.raises(ValueError, match=r"\[B\]"):
        a14b(x, t[:1], text)


def test_condition_tokens_get_the_noisy_tokens_rotary_tables(a14b, text):
    x, cond = _latents()
    n = 2 * (4 // 2) * (6 // 2)  # tokens of one clip: F * H/2 * W/2
    cos, sin = a14b.rotary_tables(x, with_cond=True)
    ref_cos, ref_sin = a14b.transformer.rope(x)
    assert cos.shape[1] == 2 * n and ref_cos.shape[1] == n
    assert torch.equal(cos[:, :n], ref_cos) and torch.equal(cos[:, n:], ref_cos)
    assert torch.equal(sin[:, :n], ref_sin) and torch.equal(sin[:, n:], ref_sin)
    # and those are the tables the self-attention really receives, in both experts
    seen = []
    hooks = [
        m.blocks[0].attn1.register_forward_pre_hook(lambda mod, args: seen.append(args[3]))
        for m in (a14b.transformer, a14b.transformer_2)
    ]
    try:
        with torch.no_grad():
            a14b(x, torch.tensor([0.95, 0.2]), text, cond)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == 2
    for used_cos, used_sin in seen:
        assert torch.equal(used_cos, cos) and torch.equal(used_sin, sin)


def test_zero_lora_without_condition_is_the_plain_transformer(folders, text):
    a14b = wan.build(_opts(folders["a14b"]))
    editor = Editor(a14b, rank=4, ema_decay=0.0)  # peft init: B = 0
    x, _ = _latents()
    emb = text["prompt_embeds"]
    t = torch.tensor([0.9, 0.2])  # one sample per expert
    with torch.no_grad():
        v = editor(x, t, text, None)
        ref = torch.cat(
            [
                _plain(a14b.transformer, x[:1], t[:1], emb[:1]),
                _plain(a14b.transformer_2, x[1:], t[1:], emb[1:]),
            ]
        )
        assert torch.equal(v, ref)
        for p in editor.lora_parameters():  # non-zero LoRA: G moves away, B does not
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(editor(x, t, text, None), ref, atol=1e-4)
        with editor.base():
            assert torch.equal(editor(x, t, text, None), ref)


def test_two_experts_route_each_sample_by_its_time(folders, text):
    bb = wan.build(_opts(folders["a14b"]))
    t = torch.tensor([0.95, 0.875, 0.5, 0.1])
    assert bb.is_high_noise(t).tolist() == [True, True, False, False]
    x, cond = _latents(b=4)
    emb = torch.cat([text["prompt_embeds"]] * 2)
    with torch.no_grad():
        v = bb(x, t, {"prompt_embeds": emb}, cond)
        for i in range(4):
            single = bb(
                x[i : i + 1], t[i : i + 1], {"prompt_embeds": emb[i : i + 1]}, cond[i : i + 1]
            )
            assert torch.allclose(v[i : i + 1], single, atol=1e-5)
        # the experts differ, so routing to the wrong one would show
        wrong = _plain(bb.transformer_2, x[:1], t[:1], emb[:1])
        assert not torch.allclose(bb(x[:1], t[:1], {"prompt_embeds": emb[:1]}), wrong, atol=1e-3)
    moved = wan.build(_opts(folders["a14b"], boundary=0.4))
    assert moved.is_high_noise(t).tolist() == [True, True, True, False]


def test_cond_timestep_zero_gives_clean_condition_tokens_time_zero(folders, text):
    shared = wan.build(_opts(folders["a14b"]))
    zero = wan.build(_opts(folders["a14b"], cond_timestep="zero"))
    x, cond = _latents()
    with torch.no_grad():
        t0 = torch.zeros(2)  # noisy tokens at 0 too: both modes agree
        assert torch.allclose(zero(x, t0, text, cond), shared(x, t0, text, cond), atol=1e-5)
        t = torch.tensor([0.95, 0.5])
        assert not torch.allclose(zero(x, t, text, cond), shared(x, t, text, cond), atol=1e-4)
        assert torch.equal(zero(x, t, text), shared(x, t, text))  # no condition: same model


# --------------------------------------------------------------------------- LoRA training


@pytest.mark.parametrize("train_experts", ["both", "low"])
def test_byg_steps_change_lora_not_base(folders, text, train_experts):
    torch.manual_seed(0)
    bb = wan.build(_opts(folders["a14b"], train_experts=train_experts, gradient_checkpointing=True))
    editor = Editor(bb, rank=4, ema_decay=0.0)
    names = [n for n, _ in editor.lora_named_parameters()]
    in_low = [n.startswith("transformer_2.") for n in names]
    assert all(in_low) if train_experts == "low" else sum(in_low) == len(names) // 2
    per_block = 2 * len(wan.BLOCK_LORA_LAYERS)  # A and B of every target linear
    assert len(names) == per_block * 2 * (2 if train_experts == "both" else 1)

    base_before = {n: p.detach().clone() for n, p in bb.named_parameters() if "lora_" not in n}
    lora_before = editor.lora_state_dict()
    x_src, _ = _latents()
    batch = EditBatch(x_src=x_src, text={"src": text, "tgt": text, "fwd": text, "rev": text})
    # logit-normal times with shift 3 (the paper's video setting) put both experts to work
    time = TimeSampling(kind="logit_normal", shift=3.0)
    obj = ByGObjective(ByGConfig(rollout_steps=2, warmup_steps=0, p_id=0.0, time=time))
    opt = torch.optim.AdamW(editor.lora_parameters(), lr=1e-2, weight_decay=0.0)
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    for step in range(3):  # B moves on a step that reaches its expert, A on a later one
        out = obj(editor, batch, step, gen, rng)
        assert out.kind == "full" and math.isfinite(out.loss.item())
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        editor.update_ema()
    lora_after = editor.lora_state_dict()
    changed = [n for n in names if not torch.equal(lora_before[n], lora_after[n])]
    assert len(changed) == len(names)
    for n, p in bb.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), f"base weight {n} changed"


def _lora_grads(editor: Editor, x, t, text, cond) -> dict[str, torch.Tensor | None]:
    editor.zero_grad(set_to_none=True)
    v = editor(x, t, text, cond)
    keep_graph = 0.0 * sum(p.sum() for p in editor.lora_parameters())  # backward never fails
    ((v**2).mean() + keep_graph).backward()
    return {
        n: None if p.grad is None else p.grad.clone() for n, p in editor.lora_named_parameters()
    }


def test_checkpointing_is_non_reentrant_and_keeps_lora_grads(folders, text, monkeypatch):
    torch.manual_seed(0)
    bb = wan.build(_opts(folders["a14b"]))
    editor = Editor(bb, rank=4, ema_decay=0.0)
    with torch.no_grad():
        for n, p in editor.lora_named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x, cond = _latents()  # no input requires grad: the case reentrant checkpointing breaks
    t = torch.tensor([0.95, 0.3])
    ref = _lora_grads(editor, x, t, text, cond)
    bb.gradient_checkpointing = True
    ours = _lora_grads(editor, x, t, text, cond)
    for n, g in ref.items():
        assert g is not None and g.abs().sum() > 0, n
        assert torch.allclose(ours[n], g, atol=1e-6, rtol=1e-5), n
    # the hazard this guards against: reentrant checkpointing silently zeroes them
    reentrant = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)
    monkeypatch.setattr(wan, "_checkpoint", lambda fn, *a: reentrant(fn, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dropped = _lora_grads(editor, x, t, text, cond)
    assert all(g is not None and g.abs().sum() == 0 for g in dropped.values())


def test_lora_save_load_round_trip(folders, text, tmp_path):
    torch.manual_seed(0)
    editor = Editor(wan.build(_opts(folders["a14b"])), rank=4, ema_decay=0.9)
    with torch.no_grad():
        for p in editor.lora_parameters():
            p.normal_(0, 0.05)
    editor.update_ema()
    save_file(editor.lora_state_dict(), tmp_path / "lora.safetensors")
    save_file(editor.ema_state_dict(), tmp_path / "ema.safetensors")
    x, cond = _latents()
    t = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        want, want_ema = editor(x, t, text, cond), None
        with editor.ema():
            want_ema = editor(x, t, text, cond)

    fresh = Editor(wan.build(_opts(folders["a14b"])), rank=4, ema_decay=0.9)
    fresh.load_lora_state_dict(
        load_file(tmp_path / "lora.safetensors"), load_file(tmp_path / "ema.safetensors")
    )
    with torch.no_grad():
        assert torch.equal(fresh(x, t, text, cond), want)
        with fresh.ema():
            assert torch.equal(fresh(x, t, text, cond), want_ema)
    # a LoRA trained on one expert does not load into an editor of both
    one = Editor(wan.build(_opts(folders["a14b"], train_experts="high")), rank=4, ema_decay=0.0)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_lora_state_dict(one.lora_state_dict())


def test_bf16_weights_give_float32_velocity_close_to_float32(folders, text):
    full = wan.build(_opts(folders["a14b"]))
    half = wan.build(_opts(folders["a14b"], dtype="bfloat16"))
    assert half.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert half.transformer.scale_shift_table.dtype == torch.float32  # kept fp32 by diffusers
    x, cond = _latents()
    t = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        a, b = full(x, t, text, cond), half(x, t, text, cond)
    assert b.dtype == torch.float32
    assert (a - b).norm() / a.norm() < 0.05


# --------------------------------------------------------------------------- text and VAE


def test_text_embeddings_match_wan_pipeline(folders, text):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folders["a14b"])
    with torch.no_grad():
        ref, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, max_sequence_length=L, device="cpu"
        )
    emb = text["prompt_embeds"]
    assert emb.shape == (2, L, 32)
    assert torch.allclose(emb, ref, atol=1e-5)
    n_tokens = len(PROMPTS[0]) + 1  # characters + </s>
    assert emb[0, n_tokens:].abs().sum() == 0 and emb[0, n_tokens - 1].abs().sum() > 0
    enc = wan.build_cache_encoder(_opts(folders["a14b"]))
    with pytest.raises(ValueError, match="max_sequence_length"):
        enc.encode_text(["x" * (L + 5)])


def test_cache_encoder_shapes_identity_and_errors(folders):
    from byg.cache import CacheEncoder

    enc = wan.build_cache_encoder(_opts(folders["a14b"]))
    assert isinstance(enc, CacheEncoder)
    g = torch.Generator().manual_seed(0)
    px = torch.rand(1, 3, 5, 32, 48, generator=g) * 2 - 1
    z = enc.encode_media(px)
    assert z.shape == (1, 16, 2, 4, 6) and z.dtype == torch.float32
    assert torch.equal(enc.encode_media(px), z)  # deterministic: the posterior mode
    assert enc.decode_media(z).shape == px.shape
    img = enc.encode_media(px[:, :, 0])  # an image is one frame
    assert img.shape == (1, 16, 4, 6) and enc.decode_media(img).shape == (1, 3, 32, 48)
    assert wan.latent_shape(enc, 5, 32, 48) == (16, 2, 4, 6)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        enc.encode_media(px[:, :, :4])
    with pytest.raises(ValueError, match="divisible by 8"):
        enc.encode_media(px[..., :30])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        enc.encode_media(px * 3)
    ti2v = wan.build_cache_encoder(_opts(folders["ti2v"]))
    assert ti2v.encode_media(torch.zeros(1, 3, 5, 64, 64)).shape == (1, 48, 2, 4, 4)
    # identity: stable for a folder and options, different across folders and text lengths
    assert wan.build_cache_encoder(_opts(folders["a14b"])).model_id == enc.model_id
    assert ti2v.model_id != enc.model_id
    longer = wan.build_cache_encoder(_opts(folders["a14b"], max_sequence_length=L + 1))
    assert longer.model_id != enc.model_id


# --------------------------------------------------------------------------- video files


def _clip(frames: int = 9, h: int = 32, w: int = 48) -> torch.Tensor:
    t = torch.linspace(0, 1, frames)[:, None, None]
    y = torch.linspace(-1, 1, h)[None, :, None]
    x = torch.linspace(-1, 1, w)[None, None, :]
    return 0.8 * torch.stack(
        [torch.sin(3 * x + 2 * t) + 0 * y, torch.cos(2 * y + t) + 0 * x, x * y + 0 * t]
    )  # [3, F, H, W], smooth so that the codecs keep it


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / float(((a - b) ** 2).mean()))  # peak-to-peak 2


@pytest.mark.parametrize("suffix,min_psnr", [(".mp4", 30.0), (".gif", 25.0)])
def test_video_write_read_round_trip(tmp_path, suffix, min_psnr):
    import imageio.v2 as imageio

    clip = _clip()
    path = write_video(tmp_path / f"clip{suffix}", clip, fps=8)
    reader = imageio.get_reader(path, format="FFMPEG" if suffix == ".mp4" else "GIF")
    assert sum(1 for _ in reader) == 9  # an independent decoder sees every frame
    reader.close()
    back, fps = read_video(path)
    assert back.shape == clip.shape and fps == pytest.approx(8.0, rel=0.05)
    assert _psnr(back, clip) > min_psnr
    two, _ = read_video(path, stride=2, max_frames=3)
    assert two.shape[1] == 3 and torch.allclose(two[:, 1], back[:, 2])


def test_video_io_errors_and_helpers(tmp_path):
    clip = _clip()
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", clip[..., :31, :], fps=8)
    with pytest.raises(ValueError, match="expected one of"):
        write_video(tmp_path / "x.avi", clip)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot decode"):
        read_video(tmp_path / "bad.mp4")
    assert trim_frames(clip[:, :8]).shape[1] == 5  # 1 + 4k frames for Wan's VAE
    assert resize_video(clip, 16, 24).shape == (3, 9, 16, 24)


def test_edit_tiny_video_end_to_end(folders, tmp_path):
    """Encode an MP4, edit with UniPC through the editor, decode, write a playable MP4."""
    from byg.infer import edit

    opts = _opts(folders["a14b"])
    editor = Editor(wan.build(opts), rank=4, ema_decay=0.0).eval()
    enc = wan.build_cache_encoder(opts)
    src = write_video(tmp_path / "in.mp4", _clip(9, 32, 48), fps=8)
    frames, fps = read_video(src)
    z = enc.encode_media(trim_frames(frames)[None])  # [1, 16, 3, 4, 6]
    out = edit(
        editor, z, enc.encode_text(["make it a cartoon"]), steps=3, shift=3.0, sampler="unipc"
    )
    assert out.shape == z.shape and torch.isfinite(out).all()
    video = enc.decode_media(out)[0]
    path = write_video(tmp_path / "out.mp4", video, fps=fps)
    back, _ = read_video(path)
    assert back.shape == video.shape


# --------------------------------------------------------------------------- UniPC sampler


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_unipc_integrates_a_constant_velocity_exactly(shift):
    """``dx/dt = v`` from t = 1 to 0: ``x(0) = x(1) - v``."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g)
    v = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g)
    out = unipc_sample(lambda x, t: v, x1, num_steps=8, shift=shift)
    # the scheduler starts at sigma = 1 - 1e-6 and keeps sigmas in float32
    assert torch.allclose(out, x1 - v, atol=1e-5)


def test_unipc_recovers_a_point_mass_exactly():
    """The flow of a single data point ``x0`` is ``v = (x - x0) / t``: every sampler ends at ``x0``."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 4, 3, dtype=torch.float64, generator=g)
    x0 = torch.randn(2, 4, 3, dtype=torch.float64, generator=g)

    def velocity(x, t):
        return (x - x0) / t.to(x).view(-1, 1, 1)

    out = unipc_sample(velocity, x1, num_steps=8, shift=5.0)
    assert torch.allclose(out, x0, atol=1e-6)


# --------------------------------------------------------------------------- shipped config


def test_wan22_config_loads_with_the_paper_settings():
    from pathlib import Path

    from byg.run_config import load_run_config

    path = Path(__file__).resolve().parents[2] / "configs" / "wan22_byg.yaml"
    cfg = load_run_config(path)
    opts = wan.parse_options(cfg.model.options)  # strict: a typo in the YAML fails here
    assert cfg.model.backbone == "wan" and opts.dtype == "bfloat16" and opts.gradient_checkpointing
    assert cfg.lora.rank == 64 and cfg.train.steps == 750 and cfg.byg.p_id == pytest.approx(0.10)
    assert cfg.ema_decay == 0.0 and cfg.byg.time.kind == "logit_normal"
    assert cfg.sample.sampler == "unipc" and cfg.data.source == "cache"

"""Latent/text cache round-trips and the diffusers LoRA export, on a tiny random FLUX folder.

The export test is the end-to-end claim: a LoRA exported by ``byg export`` and loaded into
diffusers' own ``FluxKontextPipeline`` produces the same image as ``byg edit`` for the same
seed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from byg.backbones.flux import build, build_cache_encoder, kontext_shift, save_tiny_flux
from byg.cache import (
    CachedEditDataset,
    CacheEncoder,
    CacheMismatchError,
    build_cache,
    collate_cached,
    read_manifest,
)
from byg.checkpoint import save_checkpoint
from byg.cli import main as byg_main
from byg.config import from_dict
from byg.export import diffusers_lora_state_dict, export_checkpoint
from byg.infer import build_editor
from byg.objectives.common import EditBatch
from byg.run_config import RunConfig, run_config_dict

SEQ = 16
RES = 16  # pixels; tiny VAE factor 2 -> 8x8 latents -> 16 packed tokens


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> str:
    return str(save_tiny_flux(tmp_path_factory.mktemp("tiny_flux_cache")))


@pytest.fixture(scope="session")
def opts(tiny_flux) -> dict:
    return {
        "pretrained": tiny_flux,
        "dtype": "float32",
        "max_sequence_length": SEQ,
        "gradient_checkpointing": False,
        "encoder_device": "cpu",
        "guidance": 2.5,
    }


@pytest.fixture(scope="session")
def encoder(opts):
    return build_cache_encoder(opts)


def _rows(n: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    captions = ["a red car", "a blue car", "a cat on a sofa", "a dog on a sofa"]
    items = []
    for i in range(n):
        items.append(
            {
                "x_src": torch.rand(3, RES, RES, generator=g) * 2 - 1,
                "file_name": f"img_{i}.png",
                "c_src": captions[i % 2],  # rows 0 and 2 share their source caption
                "c_tgt": captions[(i + 1) % 2],  # ... which is row 1's target caption
                "c_fwd": f"make it {['blue', 'red'][i % 2]}",
                "c_rev": f"make it {['red', 'blue'][i % 2]}",
            }
        )
    if n > 1:
        items[1]["x_tgt"] = torch.rand(3, RES, RES, generator=g) * 2 - 1
        items[1]["target_file_name"] = "img_1_target.png"
    return items


# ----------------------------------------------------------------------------- cache


def test_cache_roundtrip_and_dedup(tmp_path, encoder, opts):
    items = _rows()
    summary = build_cache(encoder, items, tmp_path / "c", RES, batch_size=2, progress=False)
    prompts = {it[k] for it in items for k in ("c_src", "c_tgt", "c_fwd", "c_rev")}
    assert summary.rows == 3 and summary.media == 4 and summary.media_encoded == 4
    assert summary.prompts == len(prompts) == 4 and summary.prompts_encoded == 4
    assert read_manifest(tmp_path / "c")["model_id"] == encoder.model_id

    ds = CachedEditDataset(tmp_path / "c", model_id=encoder.model_id, resolution=RES)
    assert len(ds) == 3
    for i, it in enumerate(items):
        got = ds[i]
        want = encoder.encode_media(it["x_src"][None])[0]
        torch.testing.assert_close(got["x_src"], want, rtol=1e-4, atol=1e-5)
        for role, key in (("src", "c_src"), ("tgt", "c_tgt"), ("fwd", "c_fwd"), ("rev", "c_rev")):
            want = encoder.encode_text([it[key]])
            for name, t in got["text"][role].items():
                torch.testing.assert_close(t, want[name][0], rtol=1e-4, atol=1e-5)
        assert ("x_tgt" in got) == ("x_tgt" in it)
    assert ds[1]["x_tgt"].shape == (4, 8, 8)

    batch = collate_cached([ds[0], ds[1], ds[2]])
    assert isinstance(batch, EditBatch) and batch.x_tgt is None  # not every item has one
    assert batch.x_src.shape == (3, 4, 8, 8)
    assert batch.text["fwd"]["prompt_embeds"].shape == (3, SEQ, 32)
    assert collate_cached([ds[1]]).x_tgt.shape == (1, 4, 8, 8)
    v = build(opts)(batch.x_src, torch.rand(3), batch.text["fwd"], batch.x_src)
    assert v.shape == batch.x_src.shape


def test_cache_is_incremental_and_reencodes_changed_files(tmp_path, encoder):
    items = _rows()
    build_cache(encoder, items, tmp_path, RES, progress=False)
    again = build_cache(encoder, items, tmp_path, RES, progress=False)
    assert again.media_encoded == 0 and again.prompts_encoded == 0
    items[0]["x_src"] = -items[0]["x_src"]  # same file name, new content
    items[0]["c_fwd"] = "make it green"
    third = build_cache(encoder, items, tmp_path, RES, progress=False)
    assert third.media_encoded == 1 and third.prompts_encoded == 1
    got = CachedEditDataset(tmp_path)[0]
    want = encoder.encode_media(items[0]["x_src"][None])[0]
    torch.testing.assert_close(got["x_src"], want, rtol=1e-4, atol=1e-5)


def test_cache_refuses_other_model_or_resolution(tmp_path, encoder, opts):
    build_cache(encoder, _rows(1), tmp_path / "c", RES, progress=False)
    with pytest.raises(CacheMismatchError, match="built for model .*flux:other"):
        CachedEditDataset(tmp_path / "c", model_id="flux:other")
    with pytest.raises(CacheMismatchError, match="resolution"):
        CachedEditDataset(tmp_path / "c", resolution=32)
    other = build_cache_encoder({**opts, "max_sequence_length": 8})  # other text length
    assert other.model_id != encoder.model_id
    with pytest.raises(CacheMismatchError, match="rebuild"):
        build_cache(other, _rows(1), tmp_path / "c", RES, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("not a cache")
    with pytest.raises(ValueError, match="not a byg cache"):
        build_cache(encoder, _rows(1), tmp_path / "junk", RES, progress=False)
    with pytest.raises(FileNotFoundError, match="not a byg cache"):
        CachedEditDataset(tmp_path / "junk")


def test_cache_names_bad_items(tmp_path, encoder):
    items = _rows(2)
    items[1]["c_rev"] = "  "
    with pytest.raises(ValueError, match=r"item 1 \(img_1.png\): c_rev"):
        build_cache(encoder, items, tmp_path / "a", RES, progress=False)
    items = _rows(2)
    items[0]["x_src"] = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match=r"item 0 \(img_0.png\): x_src is \(8, 8\)"):
        build_cache(encoder, items, tmp_path / "b", RES, progress=False)


class PoolEncoder:
    """A pure-function ``CacheEncoder`` for video-shaped data (2x spatial average pooling)."""

    model_id = "pool2-test"

    def encode_media(self, x):
        b, c, f, h, w = x.shape
        return x.reshape(b, c, f, h // 2, 2, w // 2, 2).mean((4, 6))

    def decode_media(self, z):
        return z.repeat_interleave(2, -1).repeat_interleave(2, -2)

    def encode_text(self, prompts):
        lengths = torch.tensor([[float(len(p))] for p in prompts])
        return {"context": lengths.repeat(1, 3)[:, None, :]}  # (B, 1, 3)


def test_cache_is_backbone_agnostic_video(tmp_path):
    enc = PoolEncoder()
    assert isinstance(enc, CacheEncoder)
    torch.manual_seed(0)
    items = [
        {"x_src": torch.randn(3, 5, 8, 8), "c_src": "a", "c_tgt": "bb", "c_fwd": "c", "c_rev": "dd"}
        for _ in range(2)
    ]
    summary = build_cache(enc, items, tmp_path, (8, 8), progress=False)
    assert summary.media == 2  # unnamed items are keyed by their pixels
    batch = collate_cached([CachedEditDataset(tmp_path)[i] for i in range(2)])
    assert batch.x_src.shape == (2, 3, 5, 4, 4)
    torch.testing.assert_close(
        batch.x_src, enc.encode_media(torch.stack([i["x_src"] for i in items]))
    )
    assert batch.text["tgt"]["context"][:, 0, 0].tolist() == [2.0, 2.0]


def _write_folder(root, n: int = 2):
    root.mkdir()
    rng = np.random.RandomState(0)
    rows = []
    for i in range(n):
        name = f"src_{i}.png"
        Image.fromarray((rng.rand(RES, RES, 3) * 255).astype(np.uint8)).save(root / name)
        rows.append(
            {
                "file_name": name,
                "src_caption": f"a photo of a red house {i}",
                "tgt_caption": f"a photo of a blue house {i}",
                "instruction": "paint the house blue",
                "reverse_instruction": "paint the house red",
                "edit_type": "color",
            }
        )
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_byg_cache_command_on_a_folder(tmp_path, opts):
    rows = _write_folder(tmp_path / "data")
    cfg = {
        "model": {"backbone": "flux", "options": opts},
        "data": {"source": "cache", "path": str(tmp_path / "cache"), "resolution": RES},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    rc = byg_main(
        ["cache", "--config", str(tmp_path / "run.yaml"), "--data", str(tmp_path / "data")]
    )
    assert rc == 0
    ds = CachedEditDataset(tmp_path / "cache", resolution=RES)
    assert [ds[i]["file_name"] for i in range(len(ds))] == [r["file_name"] for r in rows]
    assert read_manifest(tmp_path / "cache")["prompts"] == 6  # the instructions repeat
    assert byg_main(["cache", "--config", str(tmp_path / "run.yaml")]) == 1  # no --data


# ----------------------------------------------------------------------------- export


def test_diffusers_names_and_scale():
    a, b = torch.randn(2, 5), torch.randn(7, 2)
    peft = {
        "transformer.blocks.0.attn.to_q.lora_A.default.weight": a,
        "transformer.blocks.0.attn.to_q.lora_B.default.weight": b,
    }
    out = diffusers_lora_state_dict(peft, scale=4.0)
    assert set(out) == {
        "transformer.blocks.0.attn.to_q.lora_A.weight",
        "transformer.blocks.0.attn.to_q.lora_B.weight",
    }
    torch.testing.assert_close(out["transformer.blocks.0.attn.to_q.lora_B.weight"], 4.0 * b)
    torch.testing.assert_close(out["transformer.blocks.0.attn.to_q.lora_A.weight"], a)
    with pytest.raises(ValueError, match="without both A and B"):
        diffusers_lora_state_dict({k: v for k, v in peft.items() if "lora_A" in k}, 1.0)
    with pytest.raises(ValueError, match="attribute 'transformer'"):
        diffusers_lora_state_dict({"net.fc.lora_A.default.weight": a}, 1.0)
    with pytest.raises(ValueError, match="is not named"):
        diffusers_lora_state_dict({"transformer.fc.weight": a}, 1.0)
    per_module = diffusers_lora_state_dict(peft, {"transformer.blocks.0.attn.to_q": 0.5})
    torch.testing.assert_close(per_module["transformer.blocks.0.attn.to_q.lora_B.weight"], 0.5 * b)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, opts):
    """A checkpoint of a FLUX editor with a random non-zero LoRA, alpha != rank, and another
    rank for ``to_q`` (``lora.rank_pattern``): the export must fold each module's own scale."""
    cfg = from_dict(
        RunConfig,
        {
            "model": {"backbone": "flux", "options": opts},
            "lora": {"rank": 4, "alpha": 8.0, "rank_pattern": {"to_q": 6}},
            "data": {"resolution": RES},
            # the pipeline's dynamic shift at this size: exp(mu(16 tokens))
            "sample": {"steps": 4, "shift": kontext_shift(RES, vae_scale_factor=2)},
        },
    )
    editor = build_editor(cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in editor.lora_parameters():
            p.normal_(0, 0.3)
    return save_checkpoint(
        tmp_path_factory.mktemp("run"),
        1,
        lora=editor.lora_state_dict(),
        ema=editor.ema_state_dict(),
        optimizer_state={},
        state={},
        config=run_config_dict(cfg),
    )


def test_export_refuses_missing_ema_and_bad_suffix(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        export_checkpoint(checkpoint, tmp_path / "lora.bin")
    sd = load_file(export_checkpoint(checkpoint, tmp_path / "ema.safetensors", use_ema=True))
    assert all(t.dtype == torch.bfloat16 for t in sd.values())  # default export dtype


def test_exported_lora_in_kontext_pipeline_matches_byg_edit(checkpoint, tiny_flux, tmp_path):
    from diffusers import FluxKontextPipeline

    lora_file = tmp_path / "lora.safetensors"
    assert (
        byg_main(
            ["export", "--checkpoint", str(checkpoint), "--format", "diffusers"]
            + ["--out", str(lora_file), "--dtype", "float32"]
        )
        == 0
    )
    image = Image.fromarray((np.random.RandomState(3).rand(RES, RES, 3) * 255).astype(np.uint8))
    image.save(tmp_path / "in.png")
    assert (
        byg_main(
            ["edit", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "in.png")]
            + ["--instruction", "make it red", "--out", str(tmp_path / "byg.png"), "--seed", "7"]
        )
        == 0
    )
    ours = np.asarray(Image.open(tmp_path / "byg.png").convert("RGB")).astype(int)

    pipe = FluxKontextPipeline.from_pretrained(tiny_flux)

    def run(output_type: str):
        return pipe(
            image=image,
            prompt="make it red",
            height=RES,
            width=RES,
            max_area=RES * RES,
            _auto_resize=False,
            num_inference_steps=4,
            guidance_scale=2.5,
            max_sequence_length=SEQ,
            generator=torch.Generator().manual_seed(7),
            output_type=output_type,
        ).images[0]

    without_lora = np.asarray(run("pil")).astype(int)
    pipe.load_lora_weights(str(lora_file))
    theirs = np.asarray(run("pil")).astype(int)
    # same image to one 8-bit level (float differences of ~1e-6 may flip a rounding)
    assert np.abs(ours - theirs).max() <= 1, np.abs(ours - theirs).max()
    # and the LoRA matters, so the comparison is not vacuous
    assert np.abs(without_lora - theirs).max() > 20


def test_train_from_cache_then_export(tmp_path, encoder, opts):
    """`byg train` on a cache holds only the transformer; its checkpoint exports."""
    from byg.train import train

    build_cache(encoder, _rows(), tmp_path / "cache", RES, progress=False)
    cfg = from_dict(
        RunConfig,
        {
            "model": {"backbone": "flux", "options": opts},
            "lora": {"rank": 4},
            "data": {"source": "cache", "path": str(tmp_path / "cache"), "resolution": RES},
            "byg": {"rollout_steps": 2, "warmup_steps": 1, "warmup_ratio": None, "p_id": 0.0},
            "train": {"steps": 2, "batch_size": 2, "save_every": 2, "preview_every": 0},
        },
    )
    res = train(cfg, tmp_path / "run", progress=False)
    assert res["steps"] == 2
    assert res["editor"].backbone.encoder._text is None  # text encoders never loaded
    out = export_checkpoint(tmp_path / "run", tmp_path / "lora.safetensors")
    sd = load_file(out)
    assert sd and all(k.startswith("transformer.") and ".default." not in k for k in sd)
    assert any(v.abs().sum() > 0 for k, v in sd.items() if "lora_B" in k)  # trained

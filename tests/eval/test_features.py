"""CLIP directional similarity and DINO similarity with tiny random transformers models.

The models are real transformers classes (``CLIPModel``, ``Dinov2Model``, ``ViTModel``) with
tiny configs, saved with ``save_pretrained`` into a temporary folder together with a locally
built tokenizer and image processor, and loaded back by path through ``byg.eval.features``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from byg.cli import main as cli_main
from byg.eval.features import (
    ClipFeatures,
    DinoFeatures,
    clip_dir_scores,
    clip_directional,
    clip_image_scores,
    dino_scores,
    feature_similarity,
    read_pairs,
    score_pairs,
)

WORDS = "[PAD] [UNK] [EOS] a photo of cat dog red blue in the style lego voxel".split()


def rand_image(seed: int, size=(40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-clip")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    ).save_pretrained(path)
    small = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    cfg = CLIPConfig(
        text_config={
            **small,
            "vocab_size": len(WORDS),
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


def save_tiny_dino(path, kind: str):
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    small = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    if kind == "dinov2":
        Dinov2Model(Dinov2Config(**small, mlp_ratio=2)).save_pretrained(path)
        BitImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ).save_pretrained(path)
    else:
        ViTModel(ViTConfig(**small, intermediate_size=37), add_pooling_layer=False).save_pretrained(
            path
        )
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["dinov2", "vit"])
def dino_dir(request, tmp_path_factory):
    """A tiny DINOv2 and a tiny DINO (ViT) folder: the two families DINO checkpoints use."""
    return save_tiny_dino(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    return save_tiny_dino(tmp_path_factory.mktemp("tiny-dinov2-pairs"), "dinov2")


@pytest.fixture(scope="module")
def clip(clip_dir):
    return ClipFeatures(clip_dir, device="cpu")


# ----------------------------------------------------------------------------- the formula


def test_clip_directional_matches_the_formula_on_constructed_embeddings():
    g = torch.Generator().manual_seed(0)
    i0, i1, t0, t1 = (torch.randn(5, 8, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    n = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    di, dt = n(i1) - n(i0), n(t1) - n(t0)
    expected = (di * dt).sum(-1) / (di.norm(dim=-1) * dt.norm(dim=-1))
    torch.testing.assert_close(clip_directional(i0, i1, t0, t1), expected)
    # text rows broadcast
    torch.testing.assert_close(
        clip_directional(i0, i1, t0[:1], t1[:1]),
        clip_directional(i0, i1, t0[:1].expand(5, 8), t1[:1].expand(5, 8)),
    )


def test_clip_directional_special_cases():
    e = torch.eye(4, dtype=torch.float64)
    src_img, src_txt = e[[0]], e[[0]]
    # the image moves exactly as the caption does
    assert clip_directional(src_img, e[[1]], src_txt, e[[1]]).item() == pytest.approx(1.0)
    # ... in the opposite direction
    assert clip_directional(e[[1]], src_img, src_txt, e[[1]]).item() == pytest.approx(-1.0)
    # ... orthogonally to it: (e2 - e0) . (e1 - e0) / 2 = 1/2
    assert clip_directional(src_img, e[[2]], src_txt, e[[1]]).item() == pytest.approx(0.5)
    assert clip_directional(e[[2]], e[[3]], src_txt, e[[1]]).item() == pytest.approx(0.0)
    # an unchanged image scores 0, scale does not matter
    assert clip_directional(src_img, 5 * src_img, src_txt, e[[1]]).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        clip_directional(e[0], e[1], e[0], e[1])
    with pytest.raises(ValueError, match="differ"):
        feature_similarity(e[:2], e[:3])


# ----------------------------------------------------------------------------- CLIP by path


def test_clip_features_loaded_by_path_match_the_model(clip, clip_dir):
    from transformers import CLIPImageProcessor, CLIPModel

    ims = [rand_image(0), rand_image(1, (20, 50))]
    emb = clip.images(ims)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    model = CLIPModel.from_pretrained(clip_dir).eval()
    pix = CLIPImageProcessor.from_pretrained(clip_dir)(images=ims, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=pix["pixel_values"])
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(emb, F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)
    txt = clip.texts(["a photo of a cat", "a red dog in the lego style", "unknownword"])
    assert txt.shape == (3, 16) and not torch.allclose(txt[0], txt[1])


def test_identical_images_give_similarity_one_and_no_direction(clip):
    a, b = rand_image(3), rand_image(4)
    sim = clip_image_scores(clip, [a, a], [a.copy(), b])
    assert sim[0].item() == pytest.approx(1.0, abs=1e-5) and sim[1].item() < 0.9999
    d = clip_dir_scores(clip, [a, a], [a.copy(), b], "a photo of a cat", "a photo of a dog")
    assert d[0].item() == pytest.approx(0.0, abs=1e-4)
    ei, et = clip.images([a, b]), clip.texts(["a photo of a cat", "a photo of a dog"])
    expected = clip_directional(ei[:1], ei[1:], et[:1], et[1:])
    assert d[1].item() == pytest.approx(expected.item(), abs=1e-5)


# ----------------------------------------------------------------------------- DINO by path


def test_dino_cls_features(dino_dir):
    from transformers import AutoImageProcessor, AutoModel

    dino = DinoFeatures(dino_dir, device="cpu", batch_size=2)
    a, b, c = rand_image(5), rand_image(6), rand_image(7, (64, 20))
    s = dino_scores(dino, [a, a, b], [a.copy(), b, c])
    assert s[0].item() == pytest.approx(1.0, abs=1e-5)
    assert s[1].item() < 0.9999 and s[2].item() < 0.9999
    model = AutoModel.from_pretrained(dino_dir).eval()
    pix = AutoImageProcessor.from_pretrained(dino_dir)(images=[b, c], return_tensors="pt")
    with torch.no_grad():
        cls = model(**pix).last_hidden_state[:, 0]
    torch.testing.assert_close(dino.images([b, c]), F.normalize(cls, dim=-1), atol=1e-5, rtol=0)


def test_wrong_model_folders_are_named(clip_dir, dino_dir, tmp_path):
    with pytest.raises(ValueError, match="not CLIP"):
        ClipFeatures(dino_dir, device="cpu")
    with pytest.raises(ValueError, match="'clip' model; DINO"):
        DinoFeatures(clip_dir, device="cpu")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ClipFeatures(tmp_path / "missing", device="cpu")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((dino_dir / "config.json").read_text())
    for f in dino_dir.glob("*.safetensors"):
        (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match="image processor"):
        DinoFeatures(bare, device="cpu")


# ----------------------------------------------------------------------------- pairs and CLI


def make_pairs(tmp_path) -> tuple:
    """One image pair (identical) and one 3-frame video pair (frame folders)."""
    rand_image(10).save(tmp_path / "src.png")
    rand_image(10).save(tmp_path / "same.png")
    for name, seed in (("vsrc", 20), ("vedit", 30)):
        (tmp_path / name).mkdir()
        for k in range(3):
            rand_image(seed + k, (24, 24)).save(tmp_path / name / f"{k:03d}.png")
    lines = [
        {
            "id": "img",
            "source": "src.png",
            "edited": "same.png",
            "source_caption": "a photo of a cat",
            "target_caption": "a photo of a dog",
        },
        {
            "id": "vid",
            "source": "vsrc",
            "edited": "vedit",
            "source_caption": "a cat",
            "target_caption": "a cat in the lego style",
        },
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return pairs, lines


def test_score_pairs_per_frame(tmp_path, clip, dinov2_dir):
    pairs_file, _ = make_pairs(tmp_path)
    pairs = read_pairs(pairs_file, need_captions=True)
    dino = DinoFeatures(dinov2_dir, device="cpu")
    rows = score_pairs(pairs, clip=clip, dino=dino, progress=False)
    img, vid = rows
    assert img["frames"] == 1 and img["dino"] == pytest.approx(1.0, abs=1e-5)
    assert img["clip_dir"] == pytest.approx(0.0, abs=1e-4)
    assert img["clip_img"] == pytest.approx(1.0, abs=1e-5)
    src = [Image.open(tmp_path / "vsrc" / f"{k:03d}.png").convert("RGB") for k in range(3)]
    edt = [Image.open(tmp_path / "vedit" / f"{k:03d}.png").convert("RGB") for k in range(3)]
    per_frame = clip_dir_scores(clip, src, edt, "a cat", "a cat in the lego style")
    assert vid["frames"] == 3 and vid["clip_dir"] == pytest.approx(
        per_frame.mean().item(), abs=1e-5
    )
    assert vid["dino"] == pytest.approx(dino_scores(dino, src, edt).mean().item(), abs=1e-5)


def test_pairs_errors(tmp_path):
    pairs_file, lines = make_pairs(tmp_path)
    lines[1].pop("target_caption")
    pairs_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: field 'target_caption'"):
        read_pairs(pairs_file, need_captions=True)
    assert len(read_pairs(pairs_file)) == 2
    (tmp_path / "vedit" / "002.png").unlink()
    with pytest.raises(ValueError, match="3 source frames vs 2 edited"):
        score_pairs(read_pairs(pairs_file)[1:], video=True, progress=False)
    lines[0]["edited"] = "gone.png"
    pairs_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_pairs(pairs_file)


def test_cli_clip_dir_and_dino(tmp_path, clip_dir, dinov2_dir, capsys):
    pairs_file, _ = make_pairs(tmp_path)
    out = tmp_path / "clip.jsonl"
    assert (
        cli_main(
            [
                "eval",
                "clip-dir",
                "--clip",
                str(clip_dir),
                "--pairs",
                str(pairs_file),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["img", "vid"] and "clip_dir" in rows[0]
    assert (
        cli_main(
            [
                "eval",
                "dino",
                "--dino",
                str(dinov2_dir),
                "--pairs",
                str(pairs_file),
                "--device",
                "cpu",
                "--max-frames",
                "2",
            ]
        )
        == 0
    )
    assert "dino:" in capsys.readouterr().out

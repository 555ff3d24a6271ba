"""The toy video backbone: shapes, shared positional encodings of condition tokens, time mixing."""

from __future__ import annotations

import pytest
import torch

from byg.backbones.editor import Editor
from byg.backbones.registry import build_backbone
from byg.backbones.toy_video import (
    ToyVideoBackbone,
    ToyVideoBackboneConfig,
    load_toy_video_backbone,
    save_toy_video_backbone,
    sincos_3d,
)
from byg.data.toy_video import ToyVideoConfig, ToyVideoEditDataset

TINY = dict(frames=4, image_size=16, dim=24, depth=1, heads=2, stem_channels=8, text_layers=1)


def _model(**kw) -> ToyVideoBackbone:
    torch.manual_seed(0)
    return ToyVideoBackbone(ToyVideoBackboneConfig(**{**TINY, **kw})).eval()


def _inputs(m: ToyVideoBackbone, b: int = 2):
    c = m.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, c.frames, c.image_size, c.image_size, generator=g)
    cond = torch.randn(x.shape, generator=g)
    text = m.encode_text(["a red circle on blue moving to the left slowly"] * b)
    return x, cond, torch.rand(b, generator=g), text


@pytest.mark.parametrize("skips", [True, False])
def test_shapes_with_and_without_condition(skips):
    m = _model(skips=skips)
    assert (m.head_conv.in_channels == 16) == skips  # the noisy stem features join the head
    x, cond, t, text = _inputs(m)
    with torch.no_grad():
        assert m(x, t, text).shape == x.shape
        assert m(x, t, text, cond).shape == x.shape
    assert m.num_tokens == (4 // 2) * (16 // 4) ** 2
    with pytest.raises(ValueError, match="cond must match"):
        m(x, t, text, cond[:, :, :2])
    with pytest.raises(ValueError, match="x_t must be"):
        m(x[:, :, :2], t, text)


def _tokens_into_first_block(m, *args):
    seen = {}

    def grab(module, args):
        seen["h"] = args[0]  # returns None: the inputs pass unchanged

    hook = m.blocks[0].register_forward_pre_hook(grab)
    with torch.no_grad():
        m(*args)
    hook.remove()
    return seen["h"]


def test_condition_tokens_get_exactly_the_noisy_tokens_positional_encodings():
    # with the same clip as input and condition, the same time and no type marker, the two
    # halves of the token sequence are equal only if every position code is shared
    m = _model(cond_time="shared")
    with torch.no_grad():
        m.type_cond.zero_()
    x, _, t, text = _inputs(m)
    h = _tokens_into_first_block(m, x, t, text, x)
    n = m.num_tokens
    assert h.shape[1] == 2 * n
    assert torch.equal(h[:, :n], h[:, n:])
    # ... and the shared code is a real one: every space-time position gets its own vector
    pos = sincos_3d(2, 4, 24)
    assert torch.equal(m.pos, pos)
    assert torch.cdist(pos, pos).add(torch.eye(len(pos)) * 1e3).min() > 0.1
    # the default model marks condition tokens with type_cond on top of the same codes
    m2 = _model()
    h2 = _tokens_into_first_block(m2, x, t, text, x)
    assert not torch.equal(h2[:, :n], h2[:, n:])


def _randomize_zero_inits(m):
    with torch.no_grad():  # AdaLN-zero and the zero head make a fresh model output 0
        for p in m.parameters():
            if p.ndim > 0 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return m


def test_attention_mixes_time_but_not_samples():
    m = _randomize_zero_inits(_model())
    x, _, t, text = _inputs(m)
    y = x.clone()
    y[0, :, 0] += 1.0  # change frame 0 of sample 0 only
    with torch.no_grad():
        a, b = m(x, t, text), m(y, t, text)
    assert (a[0, :, -1] - b[0, :, -1]).abs().max() > 1e-4  # reaches the last frame
    assert torch.equal(a[1], b[1])  # never another sample


def test_base_view_of_the_editor_is_the_backbone(tmp_path):
    m = _randomize_zero_inits(_model())
    x, cond, t, text = _inputs(m)
    with torch.no_grad():
        ref = m(x, t, text)
    save_toy_video_backbone(m, tmp_path / "b")
    loaded = load_toy_video_backbone(tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text), ref)
    editor = Editor(
        build_backbone("toy_video", {"checkpoint": str(tmp_path / "b")}), rank=2, ema_decay=0.0
    )
    with torch.no_grad():
        for p in editor.lora_parameters():
            p.normal_()
        with editor.base():
            assert torch.allclose(editor(x, t, text), ref, atol=1e-6)
        assert not torch.allclose(editor(x, t, text, cond), ref, atol=1e-3)
    with pytest.raises(ValueError, match="checkpoint"):
        build_backbone("toy_video", {})


def test_vocabulary_covers_the_video_world():
    m = _model()
    ds = ToyVideoEditDataset(ToyVideoConfig(), 40, seed=0)
    prompts = [ds[i][k] for i in range(0, 40, 4) for k in ("c_src", "c_tgt", "c_fwd", "c_rev")]
    tokens = m.encode_text(prompts)["tokens"]
    assert not (tokens == m.tokenizer.unk_id).any()


def test_rope_gives_condition_tokens_the_same_rotary_rows():
    m = _model(pos_embed="rope", skips=False)
    x, cond, t, text = _inputs(m)
    seen = {}

    def grab(module, args):
        seen["rope"] = args[5]

    hook = m.blocks[0].register_forward_pre_hook(grab)
    with torch.no_grad():
        m(x, t, text, cond)
    hook.remove()
    cos, sin = seen["rope"]
    n = m.num_tokens
    assert (
        cos.shape == (2 * n, 24 // 2)
        and torch.equal(cos[:n], cos[n:])
        and torch.equal(sin[:n], sin[n:])
    )
    assert torch.equal(cos[:n], m.rope_cos)
    # every space-time position has its own rotation (time, row and column all enter)
    rows = torch.cat([m.rope_cos, m.rope_sin], 1)
    assert torch.cdist(rows, rows).add(torch.eye(n) * 1e3).min() > 1e-3
    with torch.no_grad():
        assert m(x, t, text, cond).shape == x.shape

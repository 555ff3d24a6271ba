"""Inference: plain METHOD.md §5 sampling and the optional text guidance around it."""

from __future__ import annotations

import pytest
import torch

from byg.backbones.base import index_text
from byg.backbones.editor import Editor
from byg.infer import edit
from byg.run_config import SampleConfig


@pytest.fixture
def editor(tiny_backbone) -> Editor:
    ed = Editor(tiny_backbone, rank=2, ema_decay=0.0)
    with torch.no_grad():  # nonzero LoRA so that the editor differs from the base
        for name, p in ed.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return ed.eval()


def test_text_guidance_identities(editor):
    torch.manual_seed(0)
    x_src = torch.randn(2, 3, 4, 4)
    both = editor.encode_text(["make it red", "a blue square", "make it green", "a red square"])
    fwd, neg = index_text(both, slice(0, 2)), index_text(both, slice(2, 4))
    with torch.no_grad():
        plain = edit(editor, x_src, fwd, steps=3)
        plain_neg = edit(editor, x_src, neg, steps=3)
        # scale 1 is plain sampling; the negative is then never used
        assert torch.equal(
            edit(editor, x_src, fwd, steps=3, guidance_scale=1.0, text_neg=neg), plain
        )
        # any scale with negative = positive is plain sampling; scale 0 samples the negative
        same = edit(editor, x_src, fwd, steps=3, guidance_scale=3.0, text_neg=fwd)
        torch.testing.assert_close(same, plain, atol=1e-5, rtol=0)
        zero = edit(editor, x_src, fwd, steps=3, guidance_scale=0.0, text_neg=neg)
        torch.testing.assert_close(zero, plain_neg, atol=1e-5, rtol=0)
        # and a real scale moves the result past the positive, away from the negative
        far = edit(editor, x_src, fwd, steps=3, guidance_scale=2.0, text_neg=neg)
    assert (far - plain).abs().max() > 1e-3
    calls = editor.backbone.calls
    with torch.no_grad():
        edit(editor, x_src, fwd, steps=3, guidance_scale=2.0, text_neg=neg)
    assert editor.backbone.calls - calls == 3  # one batched call per step


def test_guidance_needs_a_negative_and_a_valid_scale(editor):
    x_src = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="negative text"):
        edit(editor, x_src, editor.encode_text(["x"]), steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        SampleConfig(guidance_scale=-1.0)

"""The toy backbone: shapes, condition tokens, positional codes, LoRA, tokenizer, configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from byg.backbones.editor import Editor
from byg.backbones.registry import build_backbone
from byg.backbones.toy import (
    ToyBackbone,
    ToyBackboneConfig,
    apply_rope,
    load_toy_backbone,
    rope_2d,
    save_toy_backbone,
    split_words,
)
from byg.config import ConfigError, from_dict

VOCAB = ["a", "red", "blue", "circle", "square", "on", "background"]
TINY = dict(
    image_size=8,
    stem_channels=8,
    patch_size=2,
    dim=32,
    depth=2,
    heads=2,
    text_layers=1,
    max_text_len=8,
    vocab=VOCAB,
)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised gates and heads included) a random value, so
    that no path is trivially switched off at init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _tiny(**kw) -> ToyBackbone:
    torch.manual_seed(0)
    return _randomize(ToyBackbone(ToyBackboneConfig(**{**TINY, **kw}))).eval()


def _inputs(model: ToyBackbone, b: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    s = model.config.image_size
    x = torch.randn(b, 3, s, s, generator=gen)
    cond = torch.randn(b, 3, s, s, generator=gen)
    t = torch.rand(b, generator=gen)
    text = model.encode_text(["a red circle", "blue square on a red background", ""][:b])
    return x, t, text, cond


SHIPPED_LAYOUT = dict(pos_embed="rope", skips=False, stem_levels=2, patch_size=1)
UNET = dict(arch="unet", pos_embed="rope", stem_levels=2, attn_from_level=0, depth=1)
LAYOUTS = pytest.mark.parametrize(
    "layout", [{}, SHIPPED_LAYOUT, UNET], ids=["default", "rope_skipfree", "unet"]
)


@LAYOUTS
def test_shapes_with_and_without_cond(layout):
    model = _tiny(**layout)
    x, t, text, cond = _inputs(model)
    assert model(x, t, text).shape == x.shape
    assert model(x, t, text, cond).shape == x.shape
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, t[:2], text)
    with pytest.raises(ValueError, match="cond must match"):
        model(x, t, text, cond[:, :, :4, :4])


def test_cond_none_is_the_text_to_image_model():
    """Without cond the output ignores every condition-only piece; with cond it changes."""
    model = _tiny()
    x, t, text, cond = _inputs(model)
    with torch.no_grad():
        plain = model(x, t, text)
        model.type_cond.add_(5.0)
        assert torch.equal(model(x, t, text), plain)
        shared = ToyBackbone(dataclasses.replace(model.config, cond_time="shared"))
        shared.load_state_dict(model.state_dict())
        assert torch.equal(shared.eval()(x, t, text), plain)
        with_cond = model(x, t, text, cond)
    assert (with_cond - plain).abs().max() > 1e-3
    # per-sample independence: sample 0 alone equals sample 0 of the batch
    one = model(x[:1], t[:1], {k: v[:1] for k, v in text.items()})
    torch.testing.assert_close(one, plain[:1], rtol=1e-5, atol=1e-5)


def test_cond_tokens_share_positional_encoding_with_noisy_tokens():
    """With x_t = cond and t = 0 the condition tokens entering the first block equal the
    noisy tokens plus exactly the type embedding: same stem, same patching, same 2D code."""
    model = _tiny()
    x, _, text, _ = _inputs(model)
    t0 = torch.zeros(x.shape[0])
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))
    with torch.no_grad():
        model(x, t0, text, x.clone())
    hook.remove()
    n = model.grid**2
    h = seen["h"]  # (B, 2N, D)
    assert h.shape[1] == 2 * n
    torch.testing.assert_close(h[:, n:] - model.type_cond, h[:, :n], rtol=1e-5, atol=1e-5)
    # and the code is really positional: every token position gets a distinct code
    assert torch.unique(model.pos, dim=0).shape[0] == n


def test_rope_scores_depend_on_relative_position_only():
    """<R_i q, R_j k> is a function of (row_i - row_j, col_i - col_j): same offset, same score."""
    grid, dh = 4, 8
    cos, sin = rope_2d(grid, dh)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(dh, generator=gen), torch.randn(dh, generator=gen)
    qs = apply_rope(q.expand(1, 1, grid * grid, dh), cos, sin)[0, 0]
    ks = apply_rope(k.expand(1, 1, grid * grid, dh), cos, sin)[0, 0]

    def idx(r: int, c: int) -> int:
        return r * grid + c

    same = [qs[idx(0, 0)] @ ks[idx(1, 2)], qs[idx(2, 1)] @ ks[idx(3, 3)]]  # offset (1, 2)
    torch.testing.assert_close(same[0], same[1])
    other = qs[idx(0, 0)] @ ks[idx(2, 1)]  # offset (2, 1) differs
    assert not torch.isclose(same[0], other)
    # a rotation: norms are kept
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(grid * grid))


def test_rope_condition_tokens_get_the_same_rotary_rows():
    """pos_embed='rope': no additive code; the condition tokens carry the noisy tokens' rotary
    rows, so condition token i sits at relative offset 0 from noisy token i."""
    model = _tiny(pos_embed="rope")
    x, t, text, cond = _inputs(model)
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(
        lambda m, args: seen.update(h=args[0], rope=args[5])
    )
    with torch.no_grad():
        model(x, torch.zeros_like(t), text, x.clone())
    hook.remove()
    n = model.grid**2
    cos, sin = seen["rope"]
    assert cos.shape == (2 * n, model.config.dim // model.config.heads)
    torch.testing.assert_close(cos[n:], cos[:n])
    torch.testing.assert_close(sin[n:], sin[:n])
    assert torch.unique(cos[:n], dim=0).shape[0] == n  # distinct per position
    h = seen["h"]  # tokens enter without an additive code: cond = noisy + type only
    torch.testing.assert_close(h[:, n:] - model.type_cond, h[:, :n], rtol=1e-5, atol=1e-5)
    # the condition reaches the output
    with torch.no_grad():
        a = model(x, t, text, cond)
        b = model(x, t, text, None)
    assert not torch.allclose(a, b)


def test_skip_free_decoder_reads_the_tokens_only():
    """skips=False: no merge of noisy features in the decoder, so the output depends on x_t
    only through the transformer tokens; zeroing the tokens' path (to_pixels) leaves an
    output that no longer depends on x_t at all, which is not true with skips."""
    for skips, depends in ((False, False), (True, True)):
        model = _tiny(**{**SHIPPED_LAYOUT, "skips": skips})
        with torch.no_grad():
            model.to_pixels.weight.zero_()
            model.to_pixels.bias.zero_()
        x, t, text, _ = _inputs(model)
        with torch.no_grad():
            a, b = model(x, t, text), model(x + 1.0, t, text)
        assert (not torch.allclose(a, b)) is depends, skips


def test_cond_time_clean_uses_t0_for_condition():
    """'clean' condition tokens do not depend on the noisy tokens' t through the stem."""
    model = _tiny()
    x, t, text, cond = _inputs(model)
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(x, t, text, cond)
        model(x, 1 - t, text, cond)
    hook.remove()
    n = model.grid**2
    torch.testing.assert_close(seen[0][:, n:], seen[1][:, n:])
    assert not torch.allclose(seen[0][:, :n], seen[1][:, :n])


@LAYOUTS
def test_editor_with_zero_lora_equals_backbone_and_lora_reaches_cond_path(layout):
    model = _tiny(**layout)
    x, t, text, cond = _inputs(model)
    with torch.no_grad():
        ref_plain, ref_cond = model(x, t, text), model(x, t, text, cond)
    editor = Editor(model, rank=4, ema_decay=0.0)
    names = [n for n, _ in editor.lora_named_parameters()]
    for target in model.default_lora_targets:  # every default target matched something
        if target == "cond_add_proj" and not model.config.cond_add:
            continue
        assert any(f".{target}.lora_" in "." + n for n in names), target
    assert not any("text_encoder" in n for n in names)
    with torch.no_grad():
        torch.testing.assert_close(editor(x, t, text), ref_plain, rtol=0, atol=0)
        torch.testing.assert_close(editor(x, t, text, cond), ref_cond, rtol=0, atol=0)
    # a trainable LoRA can move the output through the condition tokens
    for p in editor.lora_parameters():
        assert p.requires_grad
    out = editor(x, t, text, cond)
    grad = torch.autograd.grad(out.square().sum(), editor.lora_parameters(), allow_unused=True)
    lora_b = [g for (n, _), g in zip(editor.lora_named_parameters(), grad) if "lora_B" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in lora_b)
    with torch.no_grad():
        for n, p in editor.lora_named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        assert (editor(x, t, text, cond) - ref_cond).abs().max() > 1e-4
        with editor.base():
            torch.testing.assert_close(editor(x, t, text, cond), ref_cond, rtol=0, atol=0)


def test_sample_prediction_returns_the_velocity_of_its_clean_image():
    """``prediction: sample``: the head's output is x̂_0 and forward returns the velocity
    whose one-step prediction ``x_t - t v`` is exactly that x̂_0 (t floored at sample_t_min);
    the same weights under ``prediction: velocity`` return the head's output itself."""
    model = _tiny(prediction="sample", sample_t_min=0.1, **SHIPPED_LAYOUT)
    as_velocity = ToyBackbone(dataclasses.replace(model.config, prediction="velocity")).eval()
    as_velocity.load_state_dict(model.state_dict())
    x, _, text, cond = _inputs(model)
    t = torch.tensor([0.7, 0.3, 0.02])
    with torch.no_grad():
        for c in (None, cond):
            x0_hat = as_velocity(x, t, text, c)
            v = model(x, t, text, c)
            floor = t.clamp_min(0.1).view(-1, 1, 1, 1)
            torch.testing.assert_close(x - floor * v, x0_hat)
            # at t >= sample_t_min the METHOD.md §1 one-step prediction recovers x̂_0
            torch.testing.assert_close((x - t.view(-1, 1, 1, 1) * v)[:2], x0_hat[:2])
    with pytest.raises(ConfigError, match="prediction"):
        from_dict(ToyBackboneConfig, {"prediction": "eps"})
    with pytest.raises(ValueError, match="sample_t_min"):
        ToyBackboneConfig(sample_t_min=0.0)


def test_tokenizer_unknown_words_empty_prompt_and_limits():
    model = _tiny()
    tok = model.tokenizer
    out = model.encode_text(["A RED, circle!", "", "a zebra circle"])
    assert out["tokens"].shape == out["mask"].shape == (3, TINY["max_text_len"])
    assert out["tokens"].dtype == torch.long and out["mask"].dtype == torch.bool
    assert tok.decode(out["tokens"][:1]) == ["a red circle"]
    assert out["mask"].sum(1).tolist() == [4, 1, 4]  # <bos> + words; "" is <bos> only
    assert out["tokens"][1, 0] == tok.bos_id
    assert out["tokens"][2, 2] == tok.unk_id  # zebra
    assert split_words("Big-circle, on RED.") == ["big", "circle", "on", "red"]
    with pytest.raises(ValueError, match="more than max_text_len"):
        model.encode_text(["a " * 20])
    # the empty prompt is a valid unconditional input (no NaN from an all-masked row)
    x, t, _, _ = _inputs(model)
    assert torch.isfinite(model(x, t, model.encode_text([""] * 3))).all()


def test_trailing_padding_does_not_change_the_output():
    model = _tiny()
    x, t, text, _ = _inputs(model)
    pad = torch.full((3, 5), model.tokenizer.pad_id)
    longer = {
        "tokens": torch.cat([text["tokens"], pad], 1),
        "mask": torch.cat([text["mask"], torch.zeros(3, 5, dtype=torch.bool)], 1),
    }
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, longer), model(x, t, text))


def test_default_vocabulary_covers_toy_captions():
    toy = pytest.importorskip("byg.data.toy")
    model = ToyBackbone(ToyBackboneConfig(**{**TINY, "vocab": None, "max_text_len": 32}))
    rng = __import__("numpy").random.default_rng(0)
    cfg = toy.ToyWorldConfig()
    prompts = [toy.caption(toy.sample_scene(rng, cfg), rng) for _ in range(200)]
    tokens = model.encode_text(prompts)["tokens"]
    assert not (tokens == model.tokenizer.unk_id).any()
    assert model.config.vocab == sorted(set(model.config.vocab))


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="heads must divide dim"):
        ToyBackboneConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match="patch_size"):
        from_dict(ToyBackboneConfig, {"patch_size": 3})
    with pytest.raises(ConfigError, match="'dims'.*did you mean 'dim'"):
        from_dict(ToyBackboneConfig, {"dims": 64})
    with pytest.raises(ConfigError, match="cond_time"):
        from_dict(ToyBackboneConfig, {"cond_time": "noisy"})
    with pytest.raises(ValueError, match="vocab"):
        ToyBackboneConfig(vocab=["Red"])
    with pytest.raises(ConfigError, match="stem_channels"):
        build_backbone("toy", {"config": {**TINY, "stem_channels": 12}})
    with pytest.raises(ValueError, match="arch must be"):
        ToyBackboneConfig(arch="unet3d")
    with pytest.raises(ValueError, match="pos_embed='rope'"):
        ToyBackboneConfig(arch="unet", pos_embed="sincos", stem_levels=3)
    with pytest.raises(ValueError, match="attn_from_level"):
        ToyBackboneConfig(arch="unet", pos_embed="rope", stem_levels=2, attn_from_level=2)
    with pytest.raises(ValueError, match="level 0 has 24 channels"):
        ToyBackboneConfig(
            arch="unet", pos_embed="rope", stem_channels=24, heads=4, attn_from_level=0
        )
    with pytest.raises(ValueError, match=r"allows only \['cond_add'"):
        build_backbone("toy", {"checkpoint": "x", "dim": 8})
    with pytest.raises(ValueError, match="'cond_add' must be true or false"):
        build_backbone("toy", {"checkpoint": "x", "cond_add": "yes"})
    with pytest.raises(ValueError, match="'cond_tokens' must be true or false"):
        build_backbone("toy", {"checkpoint": "x", "cond_tokens": 0})
    with pytest.raises(ValueError, match="'cond_add_levels' must be an integer"):
        build_backbone("toy", {"checkpoint": "x", "cond_add_levels": "2"})
    with pytest.raises(ValueError, match="need cond_add: true"):
        ToyBackboneConfig(arch="unet", pos_embed="rope", stem_levels=2, cond_add_levels=1)
    with pytest.raises(ValueError, match="cond_add_levels must be in"):
        ToyBackboneConfig(
            arch="unet", pos_embed="rope", stem_levels=2, cond_add=True, cond_add_levels=3
        )
    with pytest.raises(ValueError, match="need arch='unet'"):
        ToyBackboneConfig(cond_add=True, cond_tokens=False)


@pytest.mark.parametrize("layout", [{}, UNET], ids=["default", "unet"])
def test_save_load_round_trip_and_registry(tmp_path, layout):
    model = _tiny(**layout)
    x, t, text, cond = _inputs(model)
    save_toy_backbone(model, tmp_path / "ck", extra={"seed": 3})
    assert not list((tmp_path / "ck").glob("*.tmp"))
    for loaded in (
        load_toy_backbone(tmp_path / "ck"),
        build_backbone("toy", {"checkpoint": str(tmp_path / "ck")}),
    ):
        assert loaded.describe() == model.describe()
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(x, t, text, cond), model(x, t, text, cond), rtol=0, atol=0
            )
    fresh = build_backbone("toy", {"config": TINY})
    assert fresh.describe()["config"]["dim"] == TINY["dim"]
    with pytest.raises(FileNotFoundError, match="missing"):
        load_toy_backbone(tmp_path / "nowhere")


@pytest.mark.parametrize("layout", [SHIPPED_LAYOUT, UNET], ids=["rope_skipfree", "unet"])
def test_cond_add_starts_as_the_base_loads_onto_old_checkpoints_and_lora_trains_it(
    tmp_path, layout
):
    """``cond_add``: zero-initialised, a checkpoint saved without it loads with it and gives
    the same outputs; the projection is a LoRA target, and once its LoRA is non-zero the
    condition reaches the noisy tokens at the same grid position."""
    model = _tiny(**layout, cond_add=False)
    unet = model.config.arch == "unet"
    x, t, text, cond = _inputs(model)
    save_toy_backbone(model, tmp_path / "old")
    with_add = build_backbone("toy", {"checkpoint": str(tmp_path / "old"), "cond_add": True})
    assert with_add.config.cond_add and not with_add.cond_add_proj.weight.any()
    with torch.no_grad():
        torch.testing.assert_close(with_add(x, t, text, cond), model(x, t, text, cond))
    # saved with it, loaded without it: the projection is dropped, nothing else
    save_toy_backbone(with_add, tmp_path / "new")
    plain = load_toy_backbone(tmp_path / "new", cond_add=False)
    assert not hasattr(plain, "cond_add_proj")
    assert load_toy_backbone(tmp_path / "new").config.cond_add
    full = 8 if unet else 32  # a 1x1 conv over the stem channels, or a linear over dim
    editor = Editor(with_add, rank=4, ema_decay=0.0, rank_pattern={"cond_add_proj": full})
    shapes = {n: tuple(p.shape) for n, p in editor.lora_named_parameters()}
    proj_a = shapes["cond_add_proj.lora_A.default.weight"]
    assert proj_a == ((full, full, 1, 1) if unet else (full, full))  # full rank
    qkv_a = (
        "enc.0.0.attn.qkv.lora_A.default.weight" if unet else "blocks.0.qkv.lora_A.default.weight"
    )
    assert shapes[qkv_a] == ((4, 8) if unet else (4, 32))  # the others keep rank 4
    assert editor.backbone.cond_add_proj.scaling["default"] == 1.0  # alpha follows the rank
    # with every other adapter at zero, a non-zero cond_add_proj LoRA changes the output,
    # and only where a condition is given
    with torch.no_grad():
        for n, p in editor.lora_named_parameters():
            if "cond_add_proj.lora_B" in n:
                p.normal_(0, 0.5)
        assert (editor(x, t, text, cond) - model(x, t, text, cond)).abs().max() > 1e-4
        torch.testing.assert_close(editor(x, t, text), model(x, t, text), rtol=0, atol=0)


def test_a_checkpoint_saved_with_cond_add_must_hold_its_projection(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _tiny(**SHIPPED_LAYOUT, cond_add=True)
    save_toy_backbone(model, tmp_path / "ck")
    state = load_file(str(tmp_path / "ck" / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("cond_add_proj.")}
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing.*cond_add_proj"):
        load_toy_backbone(tmp_path / "ck")


def test_unet_joins_condition_tokens_along_the_token_axis_in_every_attention_layer():
    """``arch: unet``: without a condition each attention layer sees the N pixels of its level;
    with one it sees 2N tokens (noisy, then condition), and the noisy half's modulation is
    the noisy image's. The condition reaches the output; the base ignores nothing else."""
    model = _tiny(**UNET)
    x, t, text, cond = _inputs(model)
    blocks = [m for m in model.modules() if type(m).__name__ == "DiTBlock"]
    assert len(blocks) == 5  # encoder 2 levels + middle 1 + decoder 2 levels
    seen: list = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape)) for b in blocks]
    with torch.no_grad():
        plain = model(x, t, text)
        n_plain = [s[1] for s in seen]
        seen.clear()
        with_cond = model(x, t, text, cond)
        n_cond = [s[1] for s in seen]
        assert all(s[0] == x.shape[0] for s in seen)
        other = model(x, t, text, cond.flip(-1))
    for h in hooks:
        h.remove()
    assert n_cond == [2 * n for n in n_plain]
    assert (with_cond - plain).abs().max() > 1e-3 and (other - with_cond).abs().max() > 1e-3
    one = model(x[:1], t[:1], {k: v[:1] for k, v in text.items()}, cond[:1])
    torch.testing.assert_close(one, with_cond[:1], rtol=1e-5, atol=1e-5)


def test_text_encoder_reads_word_order_from_the_start():
    """Swapping the object and background colours must change the caption features at
    initialisation already: the positions are as large as the word embeddings, so the
    encoder does not start as a bag of words (which binds colours to the wrong region)."""
    torch.manual_seed(0)
    model = ToyBackbone(ToyBackboneConfig(**TINY)).eval()
    a = ["a red circle on a blue background"]
    b = ["a blue circle on a red background"]
    with torch.no_grad():
        fa, _, _ = model._text(model.encode_text(a))
        fb, _, _ = model._text(model.encode_text(b))
    # the colour tokens sit at positions 2 and 6: their features must not just swap places
    swapped = fb.clone()
    swapped[:, [2, 6]] = fb[:, [6, 2]]
    rel = (fa - swapped).norm() / fa.norm()
    assert rel > 0.3, float(rel)


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_unet_without_condition_tokens_is_the_base_until_its_projections_open(tmp_path, levels):
    """``cond_tokens: false``: the condition enters only through the zero-initialised
    ``cond_add_proj`` convs (the stem's, and ``cond_add_levels`` encoder levels'), so a base
    saved without them loads as an editor that is exactly the base, condition or not. Once
    a level's projection is non-zero, the condition changes the output through it alone."""
    model = _tiny(**UNET, cond_add=False)
    x, t, text, cond = _inputs(model)
    save_toy_backbone(model, tmp_path / "base")
    opts = {"cond_add": True, "cond_tokens": False, "cond_add_levels": levels}
    editor = build_backbone("toy", {"checkpoint": str(tmp_path / "base"), **opts})
    assert len(editor.cond_level_add) == levels
    with torch.no_grad():
        base_out = model(x, t, text)
        torch.testing.assert_close(editor(x, t, text, cond), base_out, rtol=0, atol=1e-6)
        projections = [editor.cond_add_proj] + [m.cond_add_proj for m in editor.cond_level_add]
        for i, proj in enumerate(projections):
            for p in projections:
                p.weight.zero_()
            proj.weight.normal_(0, 0.5)
            moved = editor(x, t, text, cond)
            assert (moved - base_out).abs().max() > 1e-3, (
                f"projection {i} does not reach the output"
            )
            other = editor(x, t, text, cond.flip(0))
            assert (other - moved).abs().max() > 1e-3  # it is the condition that moves it
            torch.testing.assert_close(editor(x, t, text), base_out, rtol=0, atol=0)
    # the level projections are LoRA targets like the stem's
    lora = Editor(editor, rank=2, ema_decay=0.0)
    names = {n for n, _ in lora.lora_named_parameters()}
    for level in range(levels):
        assert f"cond_level_add.{level}.cond_add_proj.lora_A.default.weight" in names


def test_edit_gate_blends_the_network_with_the_exact_copy_of_the_source(tmp_path):
    """``edit_gate``: ``v = g·v_net + (1 − g)·(x_t − y)/t`` with ``g = sigmoid(edit_gate)``;
    a base saved without the gate loads with it; the gate is a LoRA target; with the gate
    shut, Euler sampling lands on the source exactly; without a condition it is the base."""
    model = _tiny(**UNET, cond_add=True)
    x, t, text, cond = _inputs(model)
    t = t.clamp_min(0.1)
    save_toy_backbone(model, tmp_path / "base")
    gated = build_backbone(
        "toy", {"checkpoint": str(tmp_path / "base"), "cond_add": True, "edit_gate": True}
    )
    g = torch.sigmoid(torch.tensor(gated.config.edit_gate_bias))
    with torch.no_grad():
        v_net = model(x, t, text, cond)
        copy = (x - cond) / t.view(-1, 1, 1, 1)
        torch.testing.assert_close(gated(x, t, text, cond), g * v_net + (1 - g) * copy)
        torch.testing.assert_close(gated(x, t, text), model(x, t, text), rtol=0, atol=0)
        # a spatially varying gate, pixel by pixel
        gated.edit_gate.weight.normal_(0, 0.5)
        feats = {}
        hook = gated.head_out.register_forward_hook(lambda m, i, o: feats.update(h=i[0]))
        v = gated(x, t, text, cond)
        hook.remove()
        g_map = torch.sigmoid(gated.edit_gate(feats["h"][: len(x)]))
        assert g_map.std() > 1e-3
        torch.testing.assert_close(v, g_map * v_net + (1 - g_map) * copy)
        # shut: every Euler step moves straight to the source, which the last step reaches
        gated.edit_gate.weight.zero_()
        gated.edit_gate.bias.fill_(-60.0)
        z, ts = torch.randn_like(x), torch.linspace(1, 0, 6)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            z = z + (t1 - t0) * gated(z, t0.expand(len(x)), text, cond)
        torch.testing.assert_close(z, cond, rtol=0, atol=1e-5)
    lora = Editor(gated, rank=2, ema_decay=0.0)
    assert "edit_gate.lora_A.default.weight" in {n for n, _ in lora.lora_named_parameters()}
    with pytest.raises(ValueError, match="edit_gate"):
        ToyBackboneConfig(**TINY, edit_gate=True)  # hybrid layout: no gate
    with pytest.raises(ValueError, match="edit_gate_bias"):
        build_backbone("toy", {"checkpoint": str(tmp_path / "base"), "edit_gate_bias": "x"})

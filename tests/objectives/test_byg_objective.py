"""Pins Algorithm 1 down (METHOD.md §4) on a tiny real backbone."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from byg.backbones.editor import Editor
from byg.flow import interpolate, velocity_target
from byg.objectives import losses
from byg.objectives.byg import ByGConfig, ByGObjective
from byg.objectives.common import EditBatch
from byg.objectives.supervised import SupervisedConfig, SupervisedObjective


def make_batch(editor: Editor, n: int = 3, seed: int = 0) -> EditBatch:
    g = torch.Generator().manual_seed(seed)
    x_src = torch.randn(n, 3, 4, 4, generator=g)
    prompts = {
        "src": ["a red circle"] * n,
        "tgt": ["a blue circle"] * n,
        "fwd": ["make it blue"] * n,
        "rev": ["make it red"] * n,
    }
    text = {k: editor.encode_text(v) for k, v in prompts.items()}
    return EditBatch(x_src=x_src, text=text, x_tgt=torch.randn(n, 3, 4, 4, generator=g))


def make_editor(backbone, decay: float = 0.9) -> Editor:
    ed = Editor(backbone, rank=4, ema_decay=decay, init_lora=False)  # random B: LoRA is live
    return ed


def test_route_gradient_value_and_gradient():
    torch.manual_seed(0)
    x_hat = torch.randn(5, requires_grad=True)
    x_clean = torch.randn(5)
    w = torch.randn(5)
    routed = losses.route_gradient(x_hat, x_clean)
    torch.testing.assert_close(routed, x_clean, rtol=0, atol=1e-6)  # value: the clean rollout
    (routed * w).sum().backward()
    torch.testing.assert_close(x_hat.grad, w)  # gradient is the identity into x_hat
    plain = losses.route_gradient(x_hat, x_clean, enabled=False)
    assert plain is x_hat


def test_directional_loss_on_hand_made_vectors():
    delta = torch.tensor([[1.0, 0.0]])
    ref = torch.tensor([[2.0, 2.0]])
    aligned = ref + 3 * delta
    opposite = ref - delta
    orth = ref + torch.tensor([[0.0, 1.0]])
    assert losses.directional(aligned, ref, delta).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.directional(opposite, ref, delta).item() == pytest.approx(2.0, abs=1e-6)
    assert losses.directional(orth, ref, delta).item() == pytest.approx(1.0, abs=1e-6)
    total, l_dir, l_mse = losses.prior(aligned, ref, ref + delta, alpha=0.5)
    assert l_mse.item() == pytest.approx(((aligned - ref - delta) ** 2).mean().item())
    assert total.item() == pytest.approx(l_dir.item() + 0.5 * l_mse.item())


def test_delta_form_matches_the_shift_with_its_size():
    delta = torch.tensor([[1.0, 0.0]])
    ref = torch.tensor([[2.0, 2.0]])
    # the cosine is content with any positive multiple of the shift; delta only with 1x
    assert losses.delta_match(ref + delta, ref, delta).item() == pytest.approx(0.0)
    assert losses.delta_match(ref + 3 * delta, ref, delta).item() == pytest.approx(2.0)
    assert losses.delta_match(ref, ref, delta).item() == pytest.approx(0.5)  # no edit: ‖Δ‖²/D
    # with the base's u_src as reference it is the MSE anchor: optimum v = u_tgt
    u_src, u_tgt, v = torch.randn(3, 4, 6).unbind(0)
    torch.testing.assert_close(losses.delta_match(v, u_src, u_tgt - u_src), losses.mse(v, u_tgt))
    total, l_dir, l_mse = losses.prior(v, u_src, u_tgt, alpha=0.5, form="delta", mse_scale=6.0)
    torch.testing.assert_close(total, 6.0 * l_dir + 0.5 * 6.0 * l_mse)
    with pytest.raises(ValueError, match="form"):
        losses.prior(v, u_src, u_tgt, alpha=0.5, form="other")
    # delta_scale sizes the target shift: v = u_src + 2Δ is its optimum
    v2 = u_src + 2 * (u_tgt - u_src)
    _, l2, _ = losses.prior(v2, u_src, u_tgt, alpha=0.0, form="delta", delta_scale=2.0)
    assert l2.abs().max().item() < 1e-10


def test_direction_form_changes_only_the_directional_term(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    cos = _full_terms(editor, batch, direction_reference="editor")
    delta = _full_terms(editor, batch, direction_reference="editor", direction_form="delta")
    assert delta["dir_fwd"] != pytest.approx(cos["dir_fwd"])
    for k in ("mse_fwd", "loss_cyc", "loss_id"):
        assert delta[k] == pytest.approx(cos[k])
    with pytest.raises(ValueError, match="direction_form"):
        ByGConfig(direction_form="other")
    with pytest.raises(ValueError, match="cosine form ignores it"):
        ByGConfig(direction_scale=2.0)
    scaled = _full_terms(
        editor, batch, direction_reference="editor", direction_form="delta", direction_scale=2.0
    )
    assert scaled["dir_fwd"] != pytest.approx(delta["dir_fwd"])
    assert scaled["mse_fwd"] == pytest.approx(delta["mse_fwd"])


def test_prior_t_max_drops_the_prior_above_it_and_nothing_else(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    full = _full_terms(editor, batch, direction_reference="editor", direction_form="delta")
    tiny = _full_terms(
        editor, batch, direction_reference="editor", direction_form="delta", prior_t_max=1e-6
    )
    assert full["prior_fwd"] > 0 and tiny["prior_fwd"] == 0 and tiny["prior_rev"] == 0
    for k in ("dir_fwd", "mse_fwd", "loss_cyc", "loss_id"):
        assert tiny[k] == pytest.approx(full[k])
    with pytest.raises(ValueError, match="prior_t_max"):
        ByGConfig(prior_t_max=0.0)


def test_prior_weighting_x0_scales_each_prior_by_t_squared_and_nothing_else(tiny_backbone):
    from byg.objectives.common import randn_like

    editor = make_editor(tiny_backbone)
    batch = make_batch(editor, n=1)  # one sample: the logged means are that sample's values
    kw = dict(direction_reference="editor", direction_form="delta")
    vel = _full_terms(editor, batch, **kw)
    x0 = _full_terms(editor, batch, prior_weighting="x0", **kw)
    g = torch.Generator().manual_seed(3)  # the draws full_step makes: t, ε, then t'
    cfg = ByGConfig()
    t = cfg.time.sample(1, g, torch.device("cpu")).item()
    randn_like(batch.x_src, g)
    t_r = cfg.time.sample(1, g, torch.device("cpu")).item()
    assert x0["prior_fwd"] == pytest.approx(vel["prior_fwd"] * t**2, rel=1e-5)
    assert x0["prior_rev"] == pytest.approx(vel["prior_rev"] * t_r**2, rel=1e-5)
    for k in ("dir_fwd", "mse_fwd", "dir_rev", "loss_cyc", "loss_id"):
        assert x0[k] == pytest.approx(vel[k])
    with pytest.raises(ValueError, match="prior_weighting"):
        ByGConfig(prior_weighting="sample")


def test_editor_reference_t_min_falls_back_to_the_base_reference_below_it(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    kw = dict(direction_form="delta")
    ed = _full_terms(editor, batch, direction_reference="editor", **kw)
    base = _full_terms(editor, batch, direction_reference="base", **kw)
    # every t below 1 - 1e-6: the base reference everywhere, i.e. the anchor to u_tgt
    low = _full_terms(
        editor, batch, direction_reference="editor", editor_reference_t_min=1 - 1e-6, **kw
    )
    assert ed["dir_fwd"] != pytest.approx(base["dir_fwd"])
    for k in ("dir_fwd", "dir_rev", "prior_fwd", "prior_rev"):
        assert low[k] == pytest.approx(base[k])
    assert low["dir_fwd"] == pytest.approx(low["mse_fwd"])  # delta with u_src: the anchor
    for k in ("mse_fwd", "loss_cyc", "loss_id"):
        assert low[k] == pytest.approx(ed[k])
    # per sample: above t_min the editor's reference, at or below it u_src
    obj = ByGObjective(ByGConfig(direction_reference="editor", editor_reference_t_min=0.5))
    ref_ed, u_src = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    mixed = obj._reference(ref_ed, u_src, torch.tensor([0.2, 0.5, 0.8]))
    assert mixed[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    # ... and with editor_reference_t_max: u_src above it as well, the band (t_min, t_max]
    banded = ByGConfig(
        direction_reference="editor", editor_reference_t_min=0.3, editor_reference_t_max=0.7
    )
    mixed = ByGObjective(banded)._reference(ref_ed, u_src, torch.tensor([0.2, 0.5, 0.9]))
    assert mixed[:, 0, 0].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="need direction_reference: editor, editor_ema"):
        ByGConfig(editor_reference_t_min=0.5)
    with pytest.raises(ValueError, match="need direction_reference: editor, editor_ema"):
        ByGConfig(editor_reference_t_max=0.5)
    with pytest.raises(ValueError, match="editor_reference_t_max must be in"):
        ByGConfig(
            direction_reference="editor", editor_reference_t_min=0.5, editor_reference_t_max=0.4
        )
    with pytest.raises(ValueError, match="editor_reference_t_min"):
        ByGConfig(direction_reference="editor", editor_reference_t_min=1.0)


def test_losses_are_per_sample():
    a, b = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    assert losses.mse(a, b).shape == (4,)
    assert losses.directional(a, b, a - b).shape == (4,)


def count_calls(editor):
    log = []

    def hook(mod, args):
        active = any(m.disable_adapters is False for m in editor._tuner_layers())
        log.append(
            ("ema" if editor.ema_active else ("lora" if active else "base"), args[0].shape[0])
        )

    return log, editor.backbone.register_forward_pre_hook(hook)


@pytest.mark.parametrize("k,k_clean", [(3, None), (2, 5)])
def test_rollout_calls_ema_exact_number_of_times(tiny_backbone, k, k_clean):
    cfg = ByGConfig(rollout_steps=k, rollout_clean_steps=k_clean, warmup_steps=0)
    editor = make_editor(tiny_backbone)
    obj = ByGObjective(cfg)
    log, h = count_calls(editor)
    obj.full_step(editor, make_batch(editor), torch.Generator().manual_seed(0))
    h.remove()
    ema_calls = [c for c in log if c[0] == "ema"]
    assert len(ema_calls) == k + (k_clean or k)
    # base: one batched call for all four prior queries; trainable: forward+identity, reverse
    assert [c for c in log if c[0] == "base"] == [("base", 12)]
    assert [c for c in log if c[0] == "lora"] == [("lora", 6), ("lora", 3)]


def test_rollout_is_one_trajectory(tiny_backbone):
    """x_clean continues from x_t: re-running the low half from x_t reproduces it."""
    from byg.flow import schedule
    from byg.sampling import euler_sample

    cfg = ByGConfig(rollout_steps=3, warmup_steps=0)
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    t = torch.tensor([0.3, 0.6, 0.9])
    eps = torch.randn(3, 3, 4, 4)
    x_t, x_clean = ByGObjective(cfg).rollout(editor, batch, t, eps)
    with editor.ema(), torch.no_grad():
        grid = t[:, None] * schedule(3)[None]
        again = euler_sample(lambda x, tt: editor(x, tt, batch.text["fwd"], batch.x_src), x_t, grid)
    torch.testing.assert_close(again, x_clean)


def test_base_is_never_updated(tiny_backbone):
    editor = make_editor(tiny_backbone)
    base_before = {n: p.clone() for n, p in editor.backbone.named_parameters() if "lora_" not in n}
    lora_before = editor.lora_state_dict()
    opt = torch.optim.AdamW(editor.lora_parameters(), lr=1e-2)
    obj = ByGObjective(ByGConfig(rollout_steps=2, warmup_steps=0, p_id=0.0))
    for step in range(3):
        out = obj(
            editor,
            make_batch(editor, seed=step),
            step,
            torch.Generator().manual_seed(step),
            random.Random(0),
        )
        opt.zero_grad()
        out.loss.backward()
        for n, p in editor.backbone.named_parameters():
            assert ("lora_" in n) == (p.grad is not None), n
        opt.step()
        editor.update_ema()
    for n, p in editor.backbone.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n
    assert any(not torch.equal(p, lora_before[n]) for n, p in editor.lora_named_parameters())


def test_base_context_equals_plain_backbone(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    t = torch.full((3,), 0.5)
    with torch.no_grad():
        with_lora = editor(batch.x_src, t, batch.text["src"])
        with editor.base():
            base = editor(batch.x_src, t, batch.text["src"])
        # the same computation by hand without any adapter: merge-free reference
        for m in editor._tuner_layers():
            m.enable_adapters(False)
        plain = editor.backbone(batch.x_src, t, batch.text["src"])
        for m in editor._tuner_layers():
            m.enable_adapters(True)
    assert torch.equal(base, plain)
    assert not torch.allclose(with_lora, base)


def test_ema_swap_and_update(tiny_backbone):
    editor = make_editor(tiny_backbone, decay=0.5)
    before = editor.lora_state_dict()
    with torch.no_grad():
        for p in editor.lora_parameters():
            p.add_(1.0)
    editor.update_ema()
    for n, e in editor.ema_state_dict().items():
        torch.testing.assert_close(e, before[n] + 0.5)
    current = editor.lora_state_dict()
    with editor.ema():
        for n, p in editor.lora_named_parameters():
            torch.testing.assert_close(p, before[n] + 0.5)
    for n, p in editor.lora_named_parameters():
        assert torch.equal(p, current[n])  # restored
    # decay 0: the EMA is the current weights, no swap
    ed0 = make_editor(tiny_backbone.__class__(), decay=0.0)
    assert ed0.ema_state_dict() == {}


def _grads(editor, loss):
    editor.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in editor.lora_parameters()])


def test_cycle_gradient_reaches_lora_through_the_one_step_edit(tiny_backbone):
    """Only the cycle term on: its gradient w.r.t. LoRA has a part through x̂_edit that is
    exactly what the routed condition adds over a detached clean condition."""
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    base_cfg = dict(rollout_steps=2, warmup_steps=0, lambda_prior=0.0, lambda_id=0.0)

    def cyc_loss(cfg_kwargs, detach_cond=False):
        obj = ByGObjective(ByGConfig(**base_cfg, **cfg_kwargs))
        if detach_cond:
            orig = losses.route_gradient
            losses.route_gradient = lambda x_hat, x_clean, enabled=True: x_clean.detach()
        try:
            out = obj.full_step(editor, batch, torch.Generator().manual_seed(7))
        finally:
            if detach_cond:
                losses.route_gradient = orig
        return out

    # (the rollout swaps EMA tensors in place, so take each gradient before the next step)
    routed = cyc_loss({})
    g_routed = _grads(editor, routed.loss)
    detached = cyc_loss({}, detach_cond=True)
    g_detached = _grads(editor, detached.loss)
    assert routed.terms["loss_cyc"] == pytest.approx(detached.terms["loss_cyc"])  # same value
    assert not torch.allclose(g_routed, g_detached)  # extra path through x̂_edit exists
    # no_gradient_routing conditions on x̂_edit itself: a different value
    plain = cyc_loss({"no_gradient_routing": True})
    assert plain.terms["loss_cyc"] != pytest.approx(routed.terms["loss_cyc"])
    # cycle_detach: the same value as routed, and exactly the detached condition's gradient
    cut = cyc_loss({"cycle_detach": True})
    g_cut = _grads(editor, cut.loss)
    assert cut.terms["loss_cyc"] == pytest.approx(routed.terms["loss_cyc"])
    torch.testing.assert_close(g_cut, g_detached)
    with pytest.raises(ValueError, match="cycle_detach"):
        ByGConfig(cycle_detach=True, no_gradient_routing=True)


def _full_terms(editor, batch, **kw):
    obj = ByGObjective(ByGConfig(rollout_steps=2, warmup_steps=0, **kw))
    return obj.full_step(editor, batch, torch.Generator().manual_seed(3)).terms


@pytest.mark.parametrize(
    "switch,changed,unchanged",
    [
        ("no_cycle", {"loss"}, {"loss_cyc", "prior_fwd", "loss_id"}),
        (
            "no_directional",
            {"prior_fwd", "prior_rev", "loss"},
            {"dir_fwd", "mse_fwd", "loss_cyc", "loss_id"},
        ),
        (
            "no_regularization",
            {"prior_fwd", "prior_rev", "loss"},
            {"dir_fwd", "mse_fwd", "loss_cyc", "loss_id"},
        ),
        ("no_gradient_routing", {"loss_cyc", "prior_rev"}, {"prior_fwd", "loss_id"}),
        ("no_bootstrap", {"prior_fwd"}, {"loss_id"}),
    ],
)
def test_each_ablation_changes_only_what_it_says(switch, changed, unchanged):
    from conftest import TinyBackbone

    torch.manual_seed(0)
    editor = make_editor(TinyBackbone())
    batch = make_batch(editor)
    ref = _full_terms(editor, batch)
    abl = _full_terms(editor, batch, **{switch: True})
    # one process, the same seeds: what the switch leaves alone is bit-identical, so any
    # difference in the other terms is the switch's (on this tiny editor the condition image
    # moves the reverse pass by as little as ~1e-7 relative)
    for k in changed:
        assert abl[k] != ref[k], f"{switch} should change {k}"
    for k in unchanged:
        assert abl[k] == ref[k], f"{switch} must not change {k}"


def test_ablation_effective_values():
    assert ByGConfig(no_regularization=True).eff_alpha == 0
    assert ByGConfig(no_cycle=True).eff_lambda_cyc == 0
    c = ByGConfig(no_identity_steps=True)
    assert c.eff_p_id == 0 and c.eff_warmup_steps == 0
    base = ByGConfig()
    for f in dataclasses.fields(ByGConfig):
        if f.name.startswith("no_"):
            other = dataclasses.replace(base, **{f.name: True})
            diffs = [
                g.name
                for g in dataclasses.fields(ByGConfig)
                if getattr(base, g.name) != getattr(other, g.name)
            ]
            assert diffs == [f.name]


def test_identity_steps_skip_the_rollout(tiny_backbone):
    editor = make_editor(tiny_backbone)
    obj = ByGObjective(ByGConfig(rollout_steps=4, warmup_steps=2, warmup_ratio=None, p_id=0.0))
    log, h = count_calls(editor)
    out = obj(editor, make_batch(editor), 0, torch.Generator().manual_seed(0), random.Random(0))
    assert out.kind == "identity"
    assert not [c for c in log if c[0] == "ema"]
    assert set(out.terms) >= {"loss_id", "loss_base_uncond"}
    out = obj(editor, make_batch(editor), 1, torch.Generator().manual_seed(0), random.Random(0))
    assert obj.warmup_done  # step count reached, no ratio condition
    log.clear()
    out = obj(editor, make_batch(editor), 2, torch.Generator().manual_seed(0), random.Random(0))
    assert out.kind == "full" and len([c for c in log if c[0] == "ema"]) == 8
    h.remove()


def test_warmup_waits_for_the_copy_path(tiny_backbone):
    obj = ByGObjective(ByGConfig(warmup_steps=1, warmup_ratio=0.5, warmup_max_steps=5))
    obj._update_warmup(0, id_loss=1.0, base_loss=1.0)
    assert not obj.warmup_done  # identity loss not below half the base loss
    for s in range(1, 4):
        obj._update_warmup(s, id_loss=1.0, base_loss=1.0)
    assert not obj.warmup_done
    obj._update_warmup(4, id_loss=1.0, base_loss=1.0)
    assert obj.warmup_done  # the cap
    obj2 = ByGObjective(ByGConfig(warmup_steps=1, warmup_ratio=0.5))
    obj2._update_warmup(0, id_loss=0.1, base_loss=1.0)
    assert obj2.warmup_done
    restored = ByGObjective(ByGConfig())
    restored.load_state_dict(obj2.state_dict())
    assert restored.warmup_done


def test_random_identity_steps_probability():
    obj = ByGObjective(ByGConfig(warmup_steps=0, p_id=0.15))
    rng = random.Random(0)
    frac = sum(obj.is_identity_step(s, rng) for s in range(4000)) / 4000
    assert abs(frac - 0.15) < 0.02


def test_option_c_reference_uses_editor(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    ref = _full_terms(editor, batch)
    opt_c = _full_terms(editor, batch, direction_reference="editor")
    assert opt_c["dir_fwd"] != pytest.approx(ref["dir_fwd"])
    assert opt_c["mse_fwd"] == pytest.approx(ref["mse_fwd"])
    with pytest.raises(ValueError, match="direction_reference"):
        ByGConfig(direction_reference="other")


def test_option_c_reference_from_the_ema_weights(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    kw = dict(direction_form="delta")
    # a fresh editor's EMA is its weights: both references give the same terms
    cur = _full_terms(editor, batch, direction_reference="editor", **kw)
    ema = _full_terms(editor, batch, direction_reference="editor_ema", **kw)
    for k in ("dir_fwd", "dir_rev", "loss_cyc", "loss_id"):
        assert ema[k] == pytest.approx(cur[k], rel=1e-5)
    with torch.no_grad():  # the trained weights move on; the EMA stays where it was
        for p in editor.lora_parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, t = batch.x_src, torch.full((batch.size,), 0.5)
    with editor.ema():
        expected = editor(x, t, batch.text["rev"], x)
    torch.testing.assert_close(editor.ema_forward(x, t, batch.text["rev"], x), expected)
    cur = _full_terms(editor, batch, direction_reference="editor", **kw)
    ema = _full_terms(editor, batch, direction_reference="editor_ema", **kw)
    assert ema["dir_fwd"] != pytest.approx(cur["dir_fwd"])
    assert ema["dir_rev"] != pytest.approx(cur["dir_rev"])
    for k in ("mse_fwd", "loss_cyc", "loss_id"):  # only the reference changed
        assert ema[k] == pytest.approx(cur[k], rel=1e-5)
    # the EMA weights never enter the graph: the step back-propagates into the LoRA weights
    obj = ByGObjective(ByGConfig(rollout_steps=2, warmup_steps=0, direction_reference="editor_ema"))
    out = obj.full_step(editor, batch, torch.Generator().manual_seed(3))
    out.loss.backward()
    assert all(p.grad is not None for p in editor.lora_parameters())
    with pytest.raises(ValueError, match="editor, editor_ema or source_path"):
        ByGConfig(direction_reference="base", editor_reference_t_min=0.5)


def _step_draws(cfg, editor, batch, seed):
    """``full_step``'s draws redone in its order: ``t, ε, t', ε'`` and the rollout."""
    g, n, x_src = torch.Generator().manual_seed(seed), batch.size, batch.x_src
    t = cfg.time.sample(n, g, x_src.device)
    eps = torch.randn(x_src.shape, generator=g)
    t_r = cfg.time.sample(n, g, x_src.device)
    eps_r = torch.randn(x_src.shape, generator=g)
    x_t, x_clean = ByGObjective(cfg).rollout(editor, batch, t, eps)
    return t, eps, t_r, eps_r, x_t, x_clean


def test_renoised_bootstrap_state_trains_the_edit_on_the_straight_path_to_x_clean(tiny_backbone):
    """``bootstrap_state: renoised``: the forward edit (and the base's queries) at
    ``(1 − t)·x_clean + t·ε`` instead of the rollout's state; the cycle's condition and the
    identity pass are untouched."""
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    cfg = ByGConfig(rollout_steps=2, warmup_steps=0, bootstrap_state="renoised")
    inputs = []
    h = editor.backbone.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    terms = ByGObjective(cfg).full_step(editor, batch, torch.Generator().manual_seed(3)).terms
    h.remove()
    t, eps, _, _, x_t, x_clean = _step_draws(cfg, editor, batch, seed=3)
    n = batch.size
    base_in = inputs[cfg.rollout_steps + cfg.clean_steps]  # the first call after the rollout
    torch.testing.assert_close(base_in[:n], interpolate(x_clean, eps, t))  # [x_t | c_tgt]
    assert not torch.allclose(base_in[:n], x_t)
    plain = _full_terms(editor, batch)
    for k in ("loss_cyc", "loss_id"):
        assert terms[k] == pytest.approx(plain[k], rel=1e-6)
    for k in ("mse_fwd", "dir_fwd"):
        assert terms[k] != pytest.approx(plain[k])
    with pytest.raises(ValueError, match="bootstrap_state"):
        ByGConfig(bootstrap_state="rollout")


def test_source_path_reference_reads_the_base_on_the_source_path(tiny_backbone):
    """``direction_reference: source_path``: ``Δ = B(x_t, c_tgt) − B(s_t, c_src)`` with
    ``s_t`` the source noised by the rollout's own ``ε``, against the reference ``ε − x_src``;
    in reverse ``B(s_t', c_src) − B(x̃_t', c_tgt)`` on the edit's path, reference ``ε' − x̃``."""
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    cfg = ByGConfig(
        rollout_steps=2, warmup_steps=0, direction_reference="source_path", direction_form="delta"
    )
    obj = ByGObjective(cfg)
    terms = obj.full_step(editor, batch, torch.Generator().manual_seed(3)).terms
    t, eps, t_r, eps_r, x_t, x_clean = _step_draws(cfg, editor, batch, seed=3)
    x_src, text = batch.x_src, batch.text
    s_t, s_tr = interpolate(x_src, eps, t), interpolate(x_src, eps_r, t_r)
    with torch.no_grad():
        with editor.base():
            u_tgt = editor(x_t, t, text["tgt"], None)
            u_src = editor(s_t, t, text["src"], None)  # on the source's path, not at x_t
            u_tgt_r = editor(s_tr, t_r, text["src"], None)
            u_src_r = editor(interpolate(x_clean, eps_r, t_r), t_r, text["tgt"], None)
        v_f = editor(x_t, t, text["fwd"], x_src)
        v_r = editor(s_tr, t_r, text["rev"], x_clean)
    dir_f = losses.delta_match(v_f, velocity_target(x_src, eps), u_tgt - u_src)
    dir_r = losses.delta_match(v_r, velocity_target(x_clean, eps_r), u_tgt_r - u_src_r)
    assert terms["dir_fwd"] == pytest.approx(dir_f.mean().item(), rel=1e-4)
    assert terms["dir_rev"] == pytest.approx(dir_r.mean().item(), rel=1e-4)
    assert terms["mse_fwd"] == pytest.approx(losses.mse(v_f, u_tgt).mean().item(), rel=1e-4)
    # the anchor, cycle and identity are those of METHOD.md's reference
    plain = _full_terms(editor, batch, direction_form="delta")
    for k in ("mse_fwd", "loss_cyc", "loss_id"):
        assert terms[k] == pytest.approx(plain[k], rel=1e-5)
    assert terms["dir_fwd"] != pytest.approx(plain["dir_fwd"])
    # no editor call for the reference: the base's four queries and the two trainable calls
    log, h = count_calls(editor)
    obj.full_step(editor, batch, torch.Generator().manual_seed(3))
    h.remove()
    assert len([c for c in log if c[0] != "ema"]) == 3  # base (4 queries), fwd + id, reverse


def test_source_path_below_reference_t_min_is_the_anchor_to_the_bases_denoising(tiny_backbone):
    """``editor_reference_t_min`` with ``source_path``: samples at or below it take ``u_src``
    as the reference, so the delta form's target is ``u_tgt`` (the base's own denoising of
    ``x_t`` under ``c_tgt``; in reverse of ``s_t'`` under ``c_src``), read where source_path
    reads the base; above it the source path's exact velocities stay."""
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    kw = dict(direction_reference="source_path", direction_form="delta", bootstrap_state="renoised")
    sp = _full_terms(editor, batch, **kw)
    low = _full_terms(editor, batch, editor_reference_t_min=1 - 1e-6, **kw)
    for k in ("dir_fwd", "dir_rev"):  # every t below t_min: the anchor, as logged in mse_*
        assert low[k] == pytest.approx(low["mse_" + k[4:]], rel=1e-5)
        assert low[k] != pytest.approx(sp[k])
    for k in ("mse_fwd", "mse_rev", "loss_cyc", "loss_id"):  # nothing else changes
        assert low[k] == pytest.approx(sp[k], rel=1e-5)
    t, _, t_r, *_ = _step_draws(ByGConfig(rollout_steps=2, **kw), editor, batch, seed=3)
    assert min(t.min(), t_r.min()) > 1e-3  # every sample above t_min: source_path unchanged
    none = _full_terms(editor, batch, editor_reference_t_min=1e-3, **kw)
    for k in ("dir_fwd", "dir_rev"):
        assert none[k] == pytest.approx(sp[k], rel=1e-6)
    # editor_reference_t_max: above it the same anchor, so a band below every t is the anchor
    high = _full_terms(editor, batch, editor_reference_t_max=1e-3, **kw)
    for k in ("dir_fwd", "dir_rev", "mse_fwd", "mse_rev", "loss_cyc", "loss_id"):
        assert high[k] == pytest.approx(low[k], rel=1e-5)


def test_prior_read_t_max_reads_the_base_lower_on_the_same_paths(tiny_backbone):
    """``prior_read_t_max``: above it the base reads the renoised edit's and the source's
    paths at ``t_b = prior_read_t_max`` (same noise), and the delta form's forward target is
    ``x̂_0 = x_src + x̂_0^B(x_b, t_b, c_tgt) − x̂_0^B(s_b, t_b, c_src)`` at the sample's own
    ``(x_t, t)`` (reverse: ``x_clean + x̂_0^B(s'_b, c_src) − x̂_0^B(x̃'_b, c_tgt)``); at or below
    it, and for cycle, identity and the number of calls, nothing changes."""
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor, n=6)
    kw = dict(direction_reference="source_path", direction_form="delta", bootstrap_state="renoised")
    cfg0 = ByGConfig(rollout_steps=2, warmup_steps=0, **kw)
    t, eps, t_r, eps_r, _, x_clean = _step_draws(cfg0, editor, batch, seed=3)
    cap = float(torch.cat([t, t_r]).median())
    assert (t > cap).any() and (t <= cap).any()  # both branches are exercised
    cfg = ByGConfig(rollout_steps=2, warmup_steps=0, prior_read_t_max=cap, **kw)
    obj = ByGObjective(cfg)
    terms = obj.full_step(editor, batch, torch.Generator().manual_seed(3)).terms
    x_src, text = batch.x_src, batch.text
    x_t, s_tr = interpolate(x_clean, eps, t), interpolate(x_src, eps_r, t_r)
    tb, trb = t.clamp(max=cap), t_r.clamp(max=cap)

    def x0_base(end, noise, tt, words):  # the base's clean prediction at (end's path, tt)
        x = interpolate(end, noise, tt)
        return x - tt.view(-1, 1, 1, 1) * editor(x, tt, words, None)

    with torch.no_grad():
        with editor.base():
            x0_tgt = x0_base(x_clean, eps, tb, text["tgt"])
            x0_src = x0_base(x_src, eps, tb, text["src"])
            x0_tgt_r = x0_base(x_src, eps_r, trb, text["src"])
            x0_src_r = x0_base(x_clean, eps_r, trb, text["tgt"])
        v_f = editor(x_t, t, text["fwd"], x_src)
        v_r = editor(s_tr, t_r, text["rev"], x_clean)

    def v_of(x, tt, x0):  # the velocity at (x, tt) whose one-step clean prediction is x0
        return (x - x0) / tt.view(-1, 1, 1, 1)

    want_f = losses.mse(v_f, v_of(x_t, t, x_src + x0_tgt - x0_src))
    want_r = losses.mse(v_r, v_of(s_tr, t_r, x_clean + x0_tgt_r - x0_src_r))
    assert terms["dir_fwd"] == pytest.approx(want_f.mean().item(), rel=1e-4)
    assert terms["dir_rev"] == pytest.approx(want_r.mean().item(), rel=1e-4)
    anchor = losses.mse(v_f, v_of(x_t, t, x0_tgt))  # the anchor reads the same x̂_0^B(x_b)
    assert terms["mse_fwd"] == pytest.approx(anchor.mean().item(), rel=1e-4)
    plain = _full_terms(editor, batch, **kw)
    for k in ("loss_cyc", "loss_id"):
        assert terms[k] == pytest.approx(plain[k], rel=1e-6)
    assert terms["dir_fwd"] != pytest.approx(plain["dir_fwd"], rel=1e-3)
    # a cap above every t changes nothing; the base's four queries stay one call
    above = _full_terms(editor, batch, prior_read_t_max=float(torch.cat([t, t_r]).max()), **kw)
    for k in ("dir_fwd", "dir_rev", "mse_fwd", "mse_rev"):
        assert above[k] == pytest.approx(plain[k], rel=1e-6)
    log, h = count_calls(editor)
    obj.full_step(editor, batch, torch.Generator().manual_seed(3))
    h.remove()
    assert len([c for c in log if c[0] != "ema"]) == 3
    # without prior_reverse only the forward pair is read, the forward target unchanged
    fwd_only = _full_terms(editor, batch, prior_read_t_max=cap, prior_reverse=False, **kw)
    assert fwd_only["dir_fwd"] == pytest.approx(terms["dir_fwd"], rel=1e-5)
    assert fwd_only["dir_rev"] == 0.0 and fwd_only["prior_rev"] == 0.0
    for bad in (dict(kw, bootstrap_state="trajectory"), dict(kw, direction_reference="editor")):
        with pytest.raises(ValueError, match="prior_read_t_max"):
            ByGConfig(prior_read_t_max=0.5, **bad)
    with pytest.raises(ValueError, match="prior_read_t_max"):
        ByGConfig(prior_read_t_max=0.0, **kw)


def test_source_path_target_is_the_true_edit_where_the_base_is_exact():
    """Where the base denoises both paths exactly (``ε − x_e`` on the edit's path under
    ``c_tgt``, ``ε − x_src`` on the source's under ``c_src``), the delta form's optimum under
    ``source_path`` is the true edit's velocity ``ε − x_e`` at every ``t``, and a copier
    (``ε − x_src``) pays exactly ``‖x_e − x_src‖²``: the perfect editor is a fixed point."""
    g = torch.Generator().manual_seed(0)
    x_src, x_e, eps = torch.randn(3, 2, 8, generator=g, dtype=torch.float64)
    v_true, u_src_path = eps - x_e, eps - x_src
    kw = dict(alpha=0.0, form="delta", reference=u_src_path)
    _, l_dir, _ = losses.prior(v_true, u_src_path, v_true, **kw)
    assert l_dir.abs().max().item() < 1e-12
    _, l_copy, _ = losses.prior(u_src_path, u_src_path, v_true, **kw)
    torch.testing.assert_close(l_copy, losses.mse(x_e, x_src))


def test_supervised_objective(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    out = SupervisedObjective(SupervisedConfig())(
        editor, batch, 0, torch.Generator().manual_seed(0), random.Random(0)
    )
    assert out.kind == "supervised" and out.loss.ndim == 0
    out.loss.backward()
    assert all(p.grad is not None for p in editor.lora_parameters())
    with pytest.raises(ValueError, match="x_tgt"):
        SupervisedObjective(SupervisedConfig())(
            editor, EditBatch(batch.x_src, batch.text), 0, torch.Generator(), random.Random(0)
        )


def test_mse_reduction_sum_weighs_squared_norms_by_the_latent_size(tiny_backbone):
    """'sum' reads ‖·‖² as the squared norm: every MSE-type term is D times its mean, the
    directional terms are untouched, and the logged terms stay per-element means."""
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    d = batch.x_src[0].numel()
    w = dict(alpha=0.1, lambda_prior=1.0, lambda_cyc=1.0, lambda_id=0.2)
    mean = _full_terms(editor, batch, **w)
    summed = _full_terms(editor, batch, mse_reduction="sum", **w)
    for key in ("dir_fwd", "mse_fwd", "dir_rev", "mse_rev", "loss_cyc", "loss_id"):
        assert summed[key] == pytest.approx(mean[key], rel=1e-5), key

    def total(t: dict, k: float) -> float:
        prior = t["dir_fwd"] + t["dir_rev"] + w["alpha"] * k * (t["mse_fwd"] + t["mse_rev"])
        return w["lambda_prior"] * prior + k * (
            w["lambda_cyc"] * t["loss_cyc"] + w["lambda_id"] * t["loss_id"]
        )

    assert mean["loss"] == pytest.approx(total(mean, 1.0), rel=1e-4)
    assert summed["loss"] == pytest.approx(total(summed, float(d)), rel=1e-4)
    obj = ByGObjective(ByGConfig(mse_reduction="sum", warmup_steps=0))
    out = obj.identity_step(editor, batch, 0, torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(d * out.terms["loss_id"], rel=1e-5)
    with pytest.raises(ValueError, match="mse_reduction"):
        ByGConfig(mse_reduction="median")


def test_rollout_reuse_amortises_one_rollout_over_r_full_steps(tiny_backbone):
    """R = 3: full steps 1 and 4 roll out; steps 2, 3 train on step 1's batch and rollout
    (no EMA call), with fresh cycle noise; slots keep separate rollouts."""
    cfg = ByGConfig(rollout_steps=2, rollout_clean_steps=1, warmup_steps=0, rollout_reuse=3)
    editor = make_editor(tiny_backbone)
    obj = ByGObjective(cfg)
    batches = [make_batch(editor, seed=s) for s in range(5)]
    log, h = count_calls(editor)
    seen_src, ema_calls, cyc = [], [], []
    for i in range(4):
        before = len(log)
        out = obj.full_step(editor, batches[i], torch.Generator().manual_seed(i))
        ema_calls.append(sum(1 for c in log[before:] if c[0] == "ema"))
        seen_src.append(obj._kept[0]["batch"].x_src)
        cyc.append(out.terms["loss_cyc"])
    h.remove()
    assert ema_calls == [3, 0, 0, 3] and obj.rollouts == 2
    assert seen_src[1] is batches[0].x_src and seen_src[2] is batches[0].x_src
    assert seen_src[3] is batches[3].x_src  # a new group starts with its own batch
    assert len(set(cyc[:3])) == 3  # same rollout, fresh t' and ε' each step
    obj.slot = 1  # another micro-step: its own rollout
    obj.full_step(editor, batches[4], torch.Generator().manual_seed(9))
    assert obj.rollouts == 3 and obj._kept[1]["batch"] is batches[4]
    assert obj._kept[0]["batch"] is batches[3]


def test_rollout_reuse_one_is_the_method_as_written(tiny_backbone):
    editor = make_editor(tiny_backbone)
    batch = make_batch(editor)
    a = ByGObjective(ByGConfig(rollout_steps=2, warmup_steps=0))
    b = ByGObjective(ByGConfig(rollout_steps=2, warmup_steps=0, rollout_reuse=1))
    ta = a.full_step(editor, batch, torch.Generator().manual_seed(0)).terms
    tb = b.full_step(editor, batch, torch.Generator().manual_seed(0)).terms
    assert ta == tb and not b._kept
    with pytest.raises(ValueError, match="rollout_reuse"):
        ByGConfig(rollout_reuse=0)

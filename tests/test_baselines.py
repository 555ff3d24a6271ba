"""FlowEdit and SDEdit on analytic velocity fields."""

import pytest
import torch

from byg.baselines.flowedit import FlowEditConfig, flowedit
from byg.baselines.sdedit import SDEditConfig, sdedit
from byg.guidance import cfg_velocity


def point_field(x0):
    """Exact velocity of the flow whose data is the single point ``x0``."""
    return lambda x, t: (x - x0) / t.view(-1, *[1] * (x.ndim - 1))


def test_flowedit_identical_captions_is_identity():
    x = torch.randn(2, 3, 4, 4)
    v = point_field(torch.zeros(2, 3, 4, 4))
    out = flowedit(v, v, x, FlowEditConfig(steps=10, n_max=8), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)


def test_flowedit_moves_between_point_distributions():
    """Source data {a}, target data {b}: the edit direction v_tgt - v_src = (a - b)/t along z_t."""
    a, b = torch.zeros(1, 4), torch.ones(1, 4)
    out = flowedit(point_field(a), point_field(b), a.clone(), FlowEditConfig(steps=20, n_max=20))
    torch.testing.assert_close(out, b, atol=1e-4, rtol=0)


def test_sdedit_full_strength_reaches_target_point():
    b = torch.full((2, 4), 3.0)
    out = sdedit(point_field(b), torch.zeros(2, 4), SDEditConfig(strength=1.0, steps=10))
    torch.testing.assert_close(out, b, atol=1e-5, rtol=0)


def test_configs_validate():
    with pytest.raises(ValueError, match="n_max"):
        FlowEditConfig(steps=5, n_max=6)
    with pytest.raises(ValueError, match="strength"):
        SDEditConfig(strength=0.0)
    assert FlowEditConfig(steps=28, n_max=24, n_avg=2).model_calls == 96


def test_cfg_velocity_combines_one_batched_call():
    calls = []

    def model(x, t, text, cond):
        calls.append(x.shape[0])
        return text["s"].view(-1, 1) * torch.ones_like(x)

    v = cfg_velocity(model, {"s": torch.tensor([2.0])}, {"s": torch.tensor([1.0])}, scale=3.0)
    out = v(torch.zeros(1, 2), torch.tensor([0.5]))
    torch.testing.assert_close(out, torch.full((1, 2), 1.0 + 3.0 * (2.0 - 1.0)))
    assert calls == [2]

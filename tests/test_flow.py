"""METHOD.md §1 conventions, checked in float64."""

import pytest
import torch

from byg import flow
from byg.sampling import euler_sample, sample, unipc_sample


def test_path_endpoints_and_velocity():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    assert torch.equal(flow.interpolate(x0, eps, torch.zeros(4, dtype=torch.float64)), x0)
    assert torch.equal(flow.interpolate(x0, eps, torch.ones(4, dtype=torch.float64)), eps)
    # the velocity is the time derivative of the path (finite difference, exact for a line)
    t = torch.rand(4, generator=g, dtype=torch.float64) * 0.9
    h = 1e-3
    fd = (flow.interpolate(x0, eps, t + h) - flow.interpolate(x0, eps, t)) / h
    torch.testing.assert_close(fd, flow.velocity_target(x0, eps), rtol=1e-9, atol=1e-9)


def test_one_step_prediction_inverts_path():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.37, 1.0], dtype=torch.float64)
    p = flow.sample_path(x0, eps, t)
    torch.testing.assert_close(flow.predict_x0(p.x_t, t, p.velocity), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow.predict_noise(p.x_t, t, p.velocity), eps, rtol=0, atol=1e-12)


def test_constant_velocity_integrates_exactly():
    x1 = torch.randn(2, 3, dtype=torch.float64)
    c = torch.randn(2, 3, dtype=torch.float64)
    grid = flow.schedule(7, shift=3.0).double()
    out = euler_sample(lambda x, t: c, x1, grid)
    torch.testing.assert_close(out, x1 - c, rtol=0, atol=1e-12)  # integral of c over t: 1 -> 0
    # per-sample grids stopping at different t
    t_stop = torch.tensor([0.2, 0.7], dtype=torch.float64)
    grids = flow.truncated_schedule(5, t_stop).double()
    out = euler_sample(lambda x, t: c, x1, grids)
    torch.testing.assert_close(out, x1 - (1 - t_stop[:, None]) * c, rtol=0, atol=1e-12)


def test_true_velocity_field_recovers_data():
    """Sampling the exact velocity of a single-point data distribution returns that point."""
    x0 = torch.randn(2, 4, dtype=torch.float64)

    def v(x, t):  # x_t = (1 - t) x0 + t eps  =>  eps = (x - (1 - t) x0) / t,  v = eps - x0
        tb = t[:, None].double()
        return (x - x0) / tb

    out = sample(v, torch.randn(2, 4, dtype=torch.float64), num_steps=4)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_shift_is_monotone_bijection(shift):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    s = flow.shift_time(t, shift)
    assert s[0] == 0 and s[-1] == 1
    assert torch.all(s[1:] > s[:-1])
    if shift > 1:
        assert torch.all(s[1:-1] > t[1:-1])  # mass moves towards noise


def test_timestep_sampling_ranges_and_errors():
    g = torch.Generator().manual_seed(0)
    for kind in ("uniform", "logit_normal"):
        t = flow.sample_timesteps(4096, kind=kind, shift=3.0, generator=g)
        assert t.shape == (4096,) and t.min() >= 0 and t.max() <= 1
    ln = flow.sample_timesteps(4096, kind="logit_normal", generator=g)
    assert abs(ln.mean().item() - 0.5) < 0.02  # symmetric around 1/2 with m = 0
    shifted = flow.sample_timesteps(4096, kind="logit_normal", shift=3.0, generator=g)
    assert shifted.mean() > ln.mean() + 0.1
    with pytest.raises(ValueError, match="unknown timestep kind"):
        flow.sample_timesteps(3, kind="cosine")
    with pytest.raises(ValueError, match="shift"):
        flow.shift_time(torch.zeros(1), 0.0)


def test_schedule_shape_and_endpoints():
    s = flow.schedule(20, shift=2.0)
    assert s.shape == (21,) and s[0] == 1 and s[-1] == 0
    assert torch.all(s[1:] < s[:-1])
    with pytest.raises(ValueError, match="num_steps"):
        flow.schedule(0)


def test_unipc_constant_velocity():
    x1 = torch.randn(2, 3, 4, 4)
    c = torch.randn(2, 3, 4, 4)
    out = unipc_sample(lambda x, t: c, x1, num_steps=8, shift=3.0)
    torch.testing.assert_close(out, x1 - c, rtol=1e-4, atol=1e-4)

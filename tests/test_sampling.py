import math

import pytest
import torch

from vggflow.sampling import Guidance, euler_rollout, subsample_steps
from vggflow.timegrid import interpolate, one_step_prediction, target_velocity, uniform_grid


def test_time_convention_interpolant_and_one_step_prediction():
    noise, data = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor([0.0, 0.5, 1.0])
    x = interpolate(noise, data, t)
    assert torch.allclose(x[0], noise[0]) and torch.allclose(x[2], data[2])
    # the conditional velocity carries x_t exactly to the data
    v = target_velocity(noise, data)
    assert torch.allclose(one_step_prediction(x, t, v), data, atol=1e-6)


def test_euler_matches_closed_form_of_linear_ode():
    # dx/dt = k x: Euler with K steps gives (1 + k/K)^K x0 exactly.
    k, steps = 0.7, 20
    x0 = torch.randn(5, 3)
    guidance = Guidance(torch.zeros(5), torch.zeros(5), 1.0)
    rollout = euler_rollout(lambda x, t, c: k * x, x0, uniform_grid(steps), guidance, [""] * 5)
    assert rollout.states.shape == (steps + 1, 5, 3)
    assert torch.allclose(rollout.final, x0 * (1 + k / steps) ** steps, rtol=1e-5)
    # first order: doubling the steps halves the error against exp(k)
    error = [
        abs(euler_rollout(lambda x, t, c: k * x, torch.ones(1, 1, dtype=torch.float64),
                          uniform_grid(n).double(), guidance, [""]).final[0].item() - math.exp(k))
        for n in (20, 40)
    ]
    assert error[0] / error[1] == pytest.approx(2.0, rel=0.05)


def test_euler_time_dependent_velocity_is_left_riemann_sum():
    # dx/dt = t: the Euler end point is the left Riemann sum of t over the grid.
    steps = 10
    guidance = Guidance(torch.zeros(1), torch.zeros(1), 1.0)
    rollout = euler_rollout(lambda x, t, c: t[:, None].expand_as(x), torch.zeros(1, 1),
                            uniform_grid(steps), guidance, [""])
    assert rollout.final.item() == pytest.approx(sum(i / steps for i in range(steps)) / steps)


def test_guidance_combines_branches():
    def fn(x, t, c):
        return c[:, None].float().expand_as(x)

    guidance = Guidance(torch.tensor([3]), torch.tensor([1]), 2.5)
    v = guidance.velocity(fn, torch.zeros(1, 2), torch.zeros(1))
    assert torch.allclose(v, torch.full((1, 2), 1 + 2.5 * (3 - 1)))
    assert Guidance(torch.tensor([3]), torch.tensor([1]), 1.0).velocity(
        fn, torch.zeros(1, 2), torch.zeros(1)).eq(3).all()


def test_detached_unconditional_branch_runs_apart_without_a_graph():
    """detach_uncond: the same value and gradient as detaching the unconditional half of one
    batched call, but that branch runs in its own call without a graph (no backward through it);
    a given ``uncond_velocity`` replaces the call."""
    weight = torch.tensor([[1.5, -0.5], [0.25, 2.0]], requires_grad=True)
    calls = []

    def fn(x, t, cond):
        calls.append((len(x), torch.is_grad_enabled()))
        return (x @ weight) * (1 + t[:, None]) + cond

    x, t = torch.randn(3, 2), torch.rand(3)
    guidance = Guidance(torch.randn(3, 2), torch.randn(3, 2), 4.0)
    both = fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([guidance.cond, guidance.uncond]))
    v_cond, v_uncond = both.chunk(2)
    expected = v_uncond.detach() + 4.0 * (v_cond - v_uncond.detach())
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), weight)
    calls.clear()
    v = guidance.velocity(fn, x, t, detach_uncond=True)
    assert calls == [(3, True), (3, False)]
    (grad,) = torch.autograd.grad(v.square().sum(), weight)
    assert torch.allclose(v, expected) and torch.allclose(grad, expected_grad)
    calls.clear()
    given = guidance.velocity(fn, x, t, uncond_velocity=v_uncond.detach())
    assert calls == [(3, True)] and torch.allclose(given, expected)


def test_subsample_steps_one_per_bin_never_noise():
    generator = torch.Generator().manual_seed(0)
    picks = subsample_steps(20, 5, 4000, generator)
    assert picks.shape == (4000, 5)
    for b in range(5):
        low, high = 4 * b, 4 * b + 3
        column = picks[:, b]
        assert column.min() >= max(low, 1) and column.max() <= high
        assert set(column.tolist()) == set(range(max(low, 1), high + 1))
    with pytest.raises(ValueError):
        subsample_steps(20, 20, 1, generator)

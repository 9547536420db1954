"""toy2d: the analytic base, and VGG-Flow / VGG-Flow-PMP against the closed forms (notes Part D)."""

import math

import pytest
import torch

from vggflow import closed_form as cf
from vggflow.config import RunConfig
from vggflow.models.toy2d import GaussianMixture, inverse_variance_integral, sigma_t
from vggflow.sampling import Guidance, euler_rollout
from vggflow.suites.toy2d import Toy2dSuite
from vggflow.timegrid import uniform_grid

TOLERANCE = 0.05  # the 5%


def test_inverse_variance_integral_matches_quadrature():
    for s in (0.6, 1.0, 2.0):
        t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
        numeric = torch.trapezoid(1 / sigma_t(t, s) ** 2, t).item()
        assert inverse_variance_integral(s) == pytest.approx(numeric, rel=1e-6)
    assert inverse_variance_integral(1.0) == pytest.approx(math.pi / 2)


def test_single_gaussian_velocity_is_part_d():
    mu, s = torch.tensor([0.5, -0.3]), 0.6
    base = GaussianMixture(((0.5, -0.3),), (s,), (1.0,))
    x, t = torch.randn(7, 2), torch.rand(7)
    k = (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2)
    expected = mu + k[:, None] * (x - t[:, None] * mu)
    assert torch.allclose(base.velocity(x, t), expected, atol=1e-6)


def test_mixture_velocity_transports_noise_to_the_mixture():
    base = GaussianMixture(((-1.5, 0.0), (1.5, 0.5)), (0.5, 0.8), (0.3, 0.7))
    noise = torch.randn((20_000, 2), generator=torch.Generator().manual_seed(0))
    guidance = Guidance(torch.zeros(20_000), torch.zeros(20_000), 1.0)
    rollout = euler_rollout(lambda x, t, c: base.velocity(x, t), noise, uniform_grid(400),
                            guidance, [""] * 20_000, record=False)
    exact = base.sample(200_000, torch.Generator().manual_seed(1))
    assert torch.allclose(rollout.final.mean(0), exact.mean(0), atol=0.04)
    share_right = (rollout.final[:, 0] > 0).float().mean().item()
    assert share_right == pytest.approx((exact[:, 0] > 0).float().mean().item(), abs=0.015)


@pytest.fixture(scope="module")
def trained():
    """VGG-Flow (exact consistency, central and forward differences) and PMP trained on the
    closed form."""
    return {
        "exact": cf.measure(cf.train(cf.run_config("vggflow", 800, "exact"), threads=2)),
        "finite_difference": cf.measure(
            cf.train(cf.run_config("vggflow", 800, "finite_difference"), threads=2)),
        "forward_difference": cf.measure(cf.train(
            cf.run_config("vggflow", 800, "finite_difference", fd_scheme="forward"), threads=2)),
        "pmp": cf.measure(cf.train(cf.run_config("vggflow_pmp", 500, num_steps=60), threads=2)),
    }


@pytest.mark.parametrize("variant", ["exact", "finite_difference", "forward_difference", "pmp"])
def test_trained_control_value_gradient_and_shift_match_the_closed_form(trained, variant):
    result = trained[variant]
    # shift is clearly non-zero: beta s^2 a pi / (2 s) = (0.47, 0.24)
    assert min(abs(v) for v in result["shift_exact"]) > 0.2
    assert result["control_rel_error"] < TOLERANCE, result
    assert result["value_gradient_rel_error"] < TOLERANCE, result
    assert result["shift_rel_error"] < TOLERANCE, result


def test_closed_form_figure(trained, tmp_path):
    cf.plot(list(trained.values()), tmp_path / "check.png")
    assert (tmp_path / "check.png").stat().st_size > 10_000


def toy_method(name: str, num_steps: int = 20, **method):
    cfg = RunConfig.from_mapping(cf.run_config(name, 1, num_steps=num_steps))
    cfg.method.update(method)
    suite = Toy2dSuite(cfg.resources)
    from vggflow.methods import METHODS, load_builtin_methods

    load_builtin_methods()
    return METHODS.get(name)(cfg, suite), suite


def base_rollout(suite, num_steps: int, n: int = 256):
    model = suite.flow_model
    prompts = ["a point"] * n
    guidance = Guidance(model.encode_prompts(prompts), model.null_condition(n), 1.0)
    noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(0))
    return euler_rollout(model.velocity, noise, uniform_grid(num_steps), guidance, prompts)


def test_pmp_costate_is_the_closed_form_and_converges_with_the_grid():
    errors = []
    for steps in (20, 80, 320):
        method, suite = toy_method("vggflow_pmp", num_steps=steps)
        rollout = base_rollout(suite, steps)
        costates = method.costates(rollout).double()
        keep = [k for k, t in enumerate(rollout.times.tolist()) if 0.1 <= t <= 0.9]
        exact = cf.optimal_value_gradient(rollout.times[keep].double())
        # Gaussian base: the costate is the same for every sample
        assert torch.allclose(costates[keep], costates[keep].mean(1, keepdim=True), atol=1e-5)
        errors.append(((costates[keep].mean(1) - exact).norm(dim=1) / exact.norm(dim=1)).max())
    # the exact discrete adjoint of Euler is first order: error ~ 1/steps
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01 and errors[0] / errors[1] == pytest.approx(4, rel=0.25)


class ClosedFormNu(torch.nn.Module):
    """nu(x, t) such that g = -eta_t a + nu = -a s / sigma_t exactly (eta = t^2)."""

    def forward(self, x, t, cond):
        a = torch.tensor(cf.REWARD_A, dtype=x.dtype)
        exact = -a * (cf.STD / sigma_t(t, cf.STD).to(x.dtype))[:, None]
        return exact + (t**2)[:, None] * a


@pytest.mark.parametrize("consistency", ["exact", "finite_difference"])
def test_consistency_residual_vanishes_at_the_closed_form(consistency):
    method, suite = toy_method("vggflow", consistency=consistency)
    method.value_net = ClosedFormNu()
    batch = method.prepare(base_rollout(suite, 20), torch.Generator().manual_seed(1))
    residual, g = method.consistency_residual(batch)
    assert residual.abs().max() < 1e-3 * g.abs().max()


def test_forward_differences_leave_a_first_order_residual_at_the_closed_form():
    """``fd_scheme: forward`` at the closed-form g: the residual is the differences' truncation
    error, which halves with the step (central differences leave under 1e-4 at both steps)."""
    largest = {}
    for eps in (2e-3, 1e-3):
        method, suite = toy_method("vggflow", consistency="finite_difference",
                                   fd_scheme="forward", fd_eps=eps)
        method.value_net = ClosedFormNu()
        batch = method.prepare(base_rollout(suite, 20), torch.Generator().manual_seed(1))
        residual, g = method.consistency_residual(batch)
        largest[eps] = (residual.abs().max() / g.abs().max()).item()
    assert largest[1e-3] < 5e-3, largest
    assert largest[2e-3] / largest[1e-3] == pytest.approx(2, rel=0.1), largest


def test_finite_difference_agrees_with_exact_on_toy2d():
    method, suite = toy_method("vggflow")
    with torch.no_grad():
        for p in method.value_net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = method.prepare(base_rollout(suite, 20), torch.Generator().manual_seed(1))
    exact, _ = method.consistency_residual(batch)
    method.settings = type(method.settings)(**{**vars(method.settings),
                                               "consistency": "finite_difference"})
    fd, _ = method.consistency_residual(batch)
    relative = ((fd - exact).norm() / exact.norm()).item()
    assert relative < 1e-3, relative  # toy2d's base Jacobian is symmetric: J g = J^T g

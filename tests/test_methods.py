"""Generic per-method checks: every registered method builds, and a step lowers its loss."""

import pytest
import torch

from vggflow.config import ConfigError, RunConfig
from vggflow.methods import METHODS, load_builtin_methods
from vggflow.sampling import Guidance, euler_rollout
from vggflow.suites.digits import DigitsSuite
from vggflow.timegrid import uniform_grid

load_builtin_methods()


def fixed_rollout(model, n=6, steps=20):
    generator = torch.Generator().manual_seed(0)
    prompts = [f"a handwritten {i % 10}" for i in range(n)]
    guidance = Guidance(model.encode_prompts(prompts), model.null_condition(n), 2.0)
    noise = torch.randn((n, 1, 8, 8), generator=generator)
    return euler_rollout(model.velocity, noise, uniform_grid(steps), guidance, prompts)


def build(make_run_config, name, **blocks):
    cfg = RunConfig.from_mapping(make_run_config(method_name=name, **blocks))
    suite = DigitsSuite(cfg.resources, lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha)
    return METHODS.get(name)(cfg, suite), suite


@pytest.mark.parametrize("name", METHODS.names())
def test_each_module_step_lowers_its_loss_on_a_fixed_batch(make_run_config, name):
    torch.manual_seed(0)
    method, suite = build(make_run_config, name)
    batch = method.prepare(fixed_rollout(suite.flow_model), torch.Generator().manual_seed(1))
    for module_name, module in method.trainable_modules().items():
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-4)
        losses = []
        for _ in range(5):
            loss = method.loss(module_name, batch, 0)["loss"]
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert losses[-1] < losses[0], (module_name, losses)


@pytest.mark.parametrize("name", METHODS.names())
def test_losses_reach_only_their_own_module(make_run_config, name):
    method, suite = build(make_run_config, name)
    batch = method.prepare(fixed_rollout(suite.flow_model), torch.Generator().manual_seed(1))
    modules = method.trainable_modules()
    for module_name in modules:
        for module in modules.values():
            module.zero_grad(set_to_none=True)
        method.loss(module_name, batch, 0)["loss"].backward()
        for other_name, other in modules.items():
            grads = [p.grad for p in other.parameters() if p.requires_grad]
            touched = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert touched == (other_name == module_name), (module_name, other_name)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError, match="known methods: .*refl.*vggflow"):
        METHODS.get("nope")


def test_vggflow_consistency_derivative_matches_finite_differences(make_run_config):
    torch.manual_seed(0)
    method, suite = build(make_run_config, "vggflow")
    with torch.no_grad():
        for p in method.value_net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-trivial nu_phi
    batch = method.prepare(fixed_rollout(suite.flow_model), torch.Generator().manual_seed(1))
    method._set_first_threshold(batch)  # as the update's first loss does
    v_theta, v_base = method._velocities(batch)
    g_fn = method.value_gradient_fn(v_theta, batch.guidance, batch.prompts)
    with torch.no_grad():
        direction = v_base - method.settings.beta * g_fn(batch.x, batch.t)
    _, dg = torch.func.jvp(g_fn, (batch.x, batch.t), (direction, torch.ones_like(batch.t)))
    eps = 1e-3
    with torch.no_grad():
        fd = (g_fn(batch.x + eps * direction, batch.t + eps)
              - g_fn(batch.x - eps * direction, batch.t - eps)) / (2 * eps)
    assert torch.allclose(dg, fd, rtol=2e-2, atol=2e-2 * fd.abs().max().item())


def test_vggflow_value_gradient_starts_at_the_reward_gradient(make_run_config):
    # At t = 1 with nu_phi ~ 0 (tiny init) and no clipping: g = -grad r(x_1).
    method, suite = build(make_run_config, "vggflow",
                          method={"reward_grad_clip": "none"})
    x = torch.randn(4, 1, 8, 8)
    t = torch.ones(4)
    prompts = [f"a handwritten {i}" for i in range(4)]
    cond = suite.flow_model.encode_prompts(prompts)
    guidance = Guidance(cond, suite.flow_model.null_condition(4), 1.0)
    g = method.value_gradient_fn(torch.zeros_like(x), guidance, prompts)(x, t)
    x_req = x.clone().requires_grad_(True)
    reward = suite.reward("margin")(suite.flow_model.decode(x_req), prompts).sum()
    (grad_r,) = torch.autograd.grad(reward, x_req)
    assert torch.allclose(g, -grad_r, atol=1e-2 * grad_r.abs().max().item())


def test_refl_rejects_stop_steps_outside_the_grid(make_run_config):
    from vggflow.config import ConfigError

    with pytest.raises(ConfigError, match="stop_steps"):
        build(make_run_config, "refl", method={"stop_steps": [15, 25]})


def test_evaluated_prediction_velocity_with_finite_differences_needs_a_fine_dtype(
        make_run_config):
    """Re-evaluating the flow model at steps of fd_eps (1e-3) is below bf16's resolution (about
    4e-3 of an O(1) latent): that combination is refused by name, with the fixes."""
    cfg = RunConfig.from_mapping(make_run_config(method={
        "consistency": "finite_difference", "prediction_velocity": "evaluated"}))
    suite = DigitsSuite(cfg.resources, lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha)
    METHODS.get("vggflow")(cfg, suite)  # the digits model runs in fp32
    suite.flow_model.dtype = torch.bfloat16  # as an SD3 model with model.dtype bfloat16
    with pytest.raises(ConfigError, match=r"prediction_velocity.*bfloat16.*float32 or "
                                          r"prediction_velocity: held"):
        METHODS.get("vggflow")(cfg, suite)

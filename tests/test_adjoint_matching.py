"""Adjoint Matching: the memoryless SDE, the lean adjoint, and the exact reward tilt on toy2d."""

import tempfile
from pathlib import Path

import pytest
import torch

from vggflow import closed_form as cf
from vggflow.config import ConfigError, RunConfig
from vggflow.methods import METHODS, load_builtin_methods
from vggflow.methods.base import WeightedChunks
from vggflow.sampling import (
    Guidance,
    Rollout,
    euler_rollout,
    memoryless_sigma,
    sde_drift,
    sde_rollout,
)
from vggflow.suites.toy2d import Toy2dSuite
from vggflow.timegrid import uniform_grid
from vggflow.train import Trainer

load_builtin_methods()
LAMBDA = 1.0


def am_config(steps: int, updates: int = 1, **method) -> dict:
    cfg = cf.run_config("vggflow", updates, num_steps=steps)
    cfg["method"] = {"name": "adjoint_matching", "lr": 1e-3, "reward_scale": LAMBDA, **method}
    return cfg


def build(steps: int):
    cfg = RunConfig.from_mapping(am_config(steps))
    suite = Toy2dSuite(cfg.resources)
    return METHODS.get("adjoint_matching")(cfg, suite), suite


def test_memoryless_sde_keeps_the_base_marginal():
    # With the exact base velocity, the memoryless SDE ends at the base N(mu, s^2 I).
    _, suite = build(20)
    model = suite.flow_model
    n = 20_000
    generator = torch.Generator().manual_seed(0)
    guidance = Guidance(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), 1.0)
    rollout = sde_rollout(model.base_velocity, torch.randn((n, 2), generator=generator),
                          uniform_grid(400), guidance, [""] * n, 1 / 400, generator)
    assert torch.allclose(rollout.final.mean(0), torch.tensor(cf.MEAN), atol=0.03)
    assert torch.allclose(rollout.final.var(0), torch.full((2,), cf.STD**2), rtol=0.05)


def test_lean_adjoint_is_the_exact_gradient_of_the_discrete_base_chain():
    method, suite = build(20)
    model = suite.flow_model
    times = uniform_grid(20)
    batch = 8
    cond = torch.zeros(batch, dtype=torch.long)
    x0 = torch.randn(batch, 2, requires_grad=True)
    states, x = [x0], x0
    for k in range(19):  # noiseless base steps; the last state's successor is x1_hat
        t = times[k].expand(batch)
        x = x + (times[k + 1] - times[k]) * method.base_drift(x, t, cond)
        states.append(x)
    x1_hat = x + (times[20] - times[19]) * model.base_velocity(x, times[19].expand(batch), cond)
    objective = -LAMBDA * method.reward(model.decode(x1_hat), [""] * batch).sum()
    (exact,) = torch.autograd.grad(objective, x0)
    stored = torch.stack([s.detach() for s in states] + [x1_hat.detach()])
    rollout = Rollout(stored, times, Guidance(cond, cond, 1.0), [""] * batch)
    adjoints = method.lean_adjoint(rollout)
    assert not adjoints.requires_grad
    assert torch.allclose(adjoints[0], exact, rtol=1e-4, atol=1e-6)


def test_lean_adjoint_matches_the_closed_form_for_a_gaussian_base():
    # Base N(mu, s^2 I): v(x, t) = mu + c(t) (x - t mu) with c = (t s^2 - (1 - t)) / var_t,
    # var_t = t^2 s^2 + (1 - t)^2, so the memoryless drift's Jacobian is the scalar
    # c + (sigma^2 / 2) (t c - 1) / (1 - t), and the final ODE step's is c. For r = a . x the
    # discrete adjoint is a_k = -lambda a prod_{j >= k} (1 + h_j J_j).
    method, _ = build(20)
    times = uniform_grid(20).double()
    s2 = cf.STD**2
    var = times**2 * s2 + (1 - times) ** 2
    c = (times * s2 - (1 - times)) / var
    sigma2 = memoryless_sigma(times[:-1], method.offset).double() ** 2
    jacobian = c[:-1] + 0.5 * sigma2 * (times[:-1] * c[:-1] - 1) / (1 - times[:-1])
    jacobian[-1] = c[-2]  # the final, noiseless base step
    factors = 1 + (times[1:] - times[:-1]) * jacobian
    scale = torch.flip(torch.cumprod(torch.flip(factors, [0]), 0), [0])  # prod over j >= k
    exact = -LAMBDA * scale[:, None] * torch.tensor(cf.REWARD_A, dtype=torch.float64)
    batch = 4
    cond = torch.zeros(batch, dtype=torch.long)
    states = torch.randn(21, batch, 2, generator=torch.Generator().manual_seed(3))
    adjoints = method.lean_adjoint(Rollout(states, uniform_grid(20), Guidance(cond, cond, 1.0),
                                           [""] * batch))
    assert adjoints.shape == (20, batch, 2)
    assert torch.allclose(adjoints.double(), exact[:, None, :].expand(20, batch, 2), rtol=1e-4)


def test_stored_trajectory_and_prepared_terms_hold_no_graph():
    method, suite = build(20)
    model = suite.flow_model
    guidance = Guidance(model.encode_prompts(["a point"] * 16), model.null_condition(16), 1.0)
    generator = torch.Generator().manual_seed(0)
    rollout = method.rollout(model.velocity, torch.randn(16, 2), uniform_grid(20), guidance,
                             ["a point"] * 16, generator)
    assert not rollout.states.requires_grad
    terms = method.prepare(rollout, generator)
    assert not any(t.requires_grad for t in (terms.x, terms.t, terms.sigma, terms.adjoint))
    # the last quarter (5 of 20 steps) plus 5 random earlier ones
    assert terms.x.shape[0] == 16 * 10
    assert method.select_steps(20, generator)[-5:] == [15, 16, 17, 18, 19]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("reward_scale", 0.0, "reward_scale: lambda must be positive"),
    ("reward_scale", -1.0, "reward_scale: lambda must be positive"),
    ("early_fraction", 0.9, "early_fraction: must lie in"),
])
def test_bad_settings_name_the_key(key, value, message):
    cfg = RunConfig.from_mapping(am_config(20, **{key: value}))
    with pytest.raises(ConfigError, match=message):
        METHODS.get("adjoint_matching")(cfg, Toy2dSuite(cfg.resources))


def test_drift_is_velocity_plus_half_sigma_squared_score():
    x, t, v = torch.tensor([[1.0, 2.0]]), torch.tensor([0.25]), torch.tensor([[0.5, -1.0]])
    sigma = memoryless_sigma(t, 0.05)
    score = (0.25 * v - x) / 0.75
    assert torch.allclose(sde_drift(v, x, t, sigma), v + 0.5 * sigma**2 * score)


@pytest.fixture(scope="module")
def tilt_errors():
    """Per grid: relative error of the trained mean shift against lambda s^2 a; covariance."""
    results = {}
    for steps in (20, 40, 80):
        with tempfile.TemporaryDirectory() as state:
            trainer = Trainer(RunConfig.from_mapping(am_config(steps, updates=600)),
                              Path(state) / "state", threads=2)
            trainer.run()
        model, n = trainer.model, 20_000
        noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(5))
        guidance = Guidance(model.encode_prompts(["a point"] * n), model.null_condition(n), 1.0)
        fine = uniform_grid(400)
        tuned = euler_rollout(model.velocity, noise, fine, guidance, [""] * n, record=False).final
        base = euler_rollout(model.base_velocity, noise, fine, guidance, [""] * n,
                             record=False).final
        exact = LAMBDA * cf.STD**2 * torch.tensor(cf.REWARD_A)
        shift = tuned.mean(0) - base.mean(0)
        results[steps] = {"shift_error": ((shift - exact).norm() / exact.norm()).item(),
                          "cov": torch.cov(tuned.T)}
    return results


def test_adjoint_matching_approaches_the_exact_tilt(tilt_errors):
    # Measured: shift reaches 78% / 87% / 93% of lambda s^2 a on 20 / 40 / 80 steps.
    errors = [tilt_errors[s]["shift_error"] for s in (20, 40, 80)]
    print("Adjoint Matching shift errors on 20/40/80 steps:", errors)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.10
    for steps, result in tilt_errors.items():
        assert torch.allclose(result["cov"], cf.STD**2 * torch.eye(2), atol=0.05 * cf.STD**2), steps


def peak_tensor_bytes(fn) -> tuple[int, object]:
    """Peak bytes of tensors allocated while ``fn()`` runs (CPU), and its result.

    From the torch profiler's memory timeline (a private module of the pinned torch).
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                 record_shapes=True) as prof:
        result = fn()
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        live += {"CREATE": size, "DESTROY": -size}.get(action.name, 0)
        peak = max(peak, live)
    return peak, result


def am_update_memory(make_run_config, tmp_path, steps: int, chunk: int | None) -> dict:
    """Working memory (bytes) of one Adjoint Matching micro-batch on digits, by phase: the lean
    adjoint (its (N, B, D) output, like the stored trajectory, aside) and loss + backward."""
    cfg = make_run_config(
        method_name="adjoint_matching",
        method={"name": "adjoint_matching", "reward_scale": 1.0, "loss_chunk_steps": chunk},
        sampler={"num_steps": steps, "guidance_scale": 2.0},
        train={"micro_batch_size": 64, "effective_batch_size": 64})
    trainer = Trainer(RunConfig.from_mapping(cfg), tmp_path / f"state{steps}", threads=1)
    rollout = trainer.rollout_batch(torch.Generator().manual_seed(0))
    peak, adjoints = peak_tensor_bytes(lambda: trainer.method.lean_adjoint(rollout))
    adjoint_phase = peak - adjoints.untyped_storage().nbytes()
    batch = trainer.method.prepare(rollout, torch.Generator().manual_seed(0))

    def loss_and_backward():
        for weight, piece in WeightedChunks.of(batch).chunks:
            (trainer.method.loss("lora", piece, 0)["loss"] * weight).backward()

    trainer.model.adapter().zero_grad(set_to_none=True)
    loss_phase, _ = peak_tensor_bytes(loss_and_backward)
    return {"adjoint": adjoint_phase, "loss": loss_phase}


def test_peak_memory_does_not_grow_with_the_grid(make_run_config, tmp_path):
    coarse = am_update_memory(make_run_config, tmp_path, 10, chunk=1)
    fine = am_update_memory(make_run_config, tmp_path, 40, chunk=1)
    print("working memory (bytes), 10 vs 40 steps:", coarse, fine)
    for phase in ("adjoint", "loss"):
        assert fine[phase] <= 1.2 * coarse[phase], phase
    # the measurement sees growth: without chunks the loss phase holds all selected steps at once
    unchunked = am_update_memory(make_run_config, tmp_path, 40, chunk=None)
    assert unchunked["loss"] > 2 * fine["loss"]


def test_chunked_loss_gives_the_same_update(tmp_path):
    params = {}
    for chunk in (None, 2):
        cfg = RunConfig.from_mapping(am_config(20, updates=3, loss_chunk_steps=chunk))
        trainer = Trainer(cfg, tmp_path / f"state{chunk}", threads=1)
        trainer.run()
        params[chunk] = torch.cat([p.detach().flatten() for p in trainer.model.adapter()
                                   .parameters() if p.requires_grad])
    assert torch.allclose(params[None], params[2], rtol=1e-5, atol=1e-7)
    assert not torch.equal(params[None], torch.zeros_like(params[None]))

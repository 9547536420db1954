"""Closed forms on toy2d (notes Part D) and the check that trained methods reach them.

Base N(mu, s^2 I) in 2-D, linear reward r(x) = a . x, objective
E[1/2 int |v_theta - v_base|^2 dt - beta r(x_1)] (paper convention, sigma_t^2 = t^2 s^2 + (1-t)^2):

* optimal control  u*(t) = v_theta - v_base = beta a s / sigma_t (the same for every x);
* value gradient   g*(t) = -a s / sigma_t (g(x, 1) = -a); VGG-Flow-PMP's costate equals it;
* terminal shift   beta s^2 a int_0^1 dt / sigma_t^2 = beta s^2 a pi / (2 s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from vggflow.config import RunConfig
from vggflow.models.toy2d import inverse_variance_integral, sigma_t
from vggflow.sampling import Guidance, euler_rollout
from vggflow.timegrid import uniform_grid
from vggflow.train import Trainer

MEAN = (0.5, -0.3)
STD = 0.6  # s != 1 on purpose
REWARD_A = (1.0, 0.5)
BETA = 0.5


def optimal_control(t: torch.Tensor, a=REWARD_A, s=STD, beta=BETA) -> torch.Tensor:
    """(T, 2) values of beta a s / sigma_t."""
    return beta * torch.tensor(a, dtype=torch.float64) * (s / sigma_t(t, s))[:, None]


def optimal_value_gradient(t: torch.Tensor, a=REWARD_A, s=STD) -> torch.Tensor:
    """(T, 2) values of -a s / sigma_t."""
    return -torch.tensor(a, dtype=torch.float64) * (s / sigma_t(t, s))[:, None]


def terminal_shift(a=REWARD_A, s=STD, beta=BETA) -> torch.Tensor:
    return beta * s**2 * inverse_variance_integral(s) * torch.tensor(a, dtype=torch.float64)


def run_config(method: str, updates: int, consistency: str = "exact", num_steps: int = 20,
               seed: int = 0, fd_scheme: str = "central") -> dict:
    """A resolved toy2d run config (Gaussian base, linear reward) for ``method``."""
    methods = {
        "vggflow": {"name": "vggflow", "lr": 1e-3, "beta": BETA, "alpha": 10.0,
                    "consistency": consistency, "fd_scheme": fd_scheme},
        "vggflow_pmp": {"name": "vggflow_pmp", "lr": 1e-3, "beta": BETA},
    }
    return {
        "suite": "toy2d",
        "reward": "linear",
        "rewards": ["linear"],
        "seed": seed,
        "method": methods[method],
        "train": {"max_steps": updates, "effective_batch_size": 64, "micro_batch_size": 64,
                  "eval_every": updates, "checkpoint_every": updates, "log_every": updates,
                  "device": "cpu"},
        "sampler": {"num_steps": num_steps, "guidance_scale": 1.0},
        "eval": {"seed": 1234, "images_per_prompt": 16},
        "lora": {"rank": 8, "alpha": 8},
        "resources": {"base": {"means": [list(MEAN)], "stds": [STD]},
                      "rewards": {"linear": {"a": list(REWARD_A)}}},
    }


def train(cfg: dict, threads: int | None = None) -> Trainer:
    """Train a run config in a temporary state folder and return the trainer."""
    with tempfile.TemporaryDirectory() as state:
        trainer = Trainer(RunConfig.from_mapping(cfg), Path(state) / "state", threads=threads)
        trainer.run()
    return trainer


def measure(trainer: Trainer, samples: int = 4096, fine_steps: int = 400) -> dict:
    """Achieved vs exact control, value gradient (or costate) and terminal shift.

    Control and g are averaged over on-policy states at the grid times in [0.1, 0.9]; the shift
    compares the trained and base models' means, integrated with ``fine_steps`` Euler steps from
    the same noise.
    """
    model, method = trainer.model, trainer.method
    generator = torch.Generator().manual_seed(99)
    noise = torch.randn((samples, 2), generator=generator)
    prompts = ["a point"] * samples
    guidance = Guidance(model.encode_prompts(prompts), model.null_condition(samples), 1.0)
    rollout = euler_rollout(model.velocity, noise, trainer.times, guidance, prompts)
    keep = [k for k, t in enumerate(trainer.times.tolist()) if 0.1 - 1e-9 <= t <= 0.9 + 1e-9]
    times = trainer.times[keep].double()
    with torch.no_grad():
        control = torch.stack([
            (model.velocity(rollout.states[k], trainer.times[k].expand(samples), guidance.cond)
             - model.base_velocity(rollout.states[k], trainer.times[k].expand(samples),
                                   guidance.cond)).mean(0)
            for k in keep]).double()
    if trainer.cfg.method["name"] == "vggflow_pmp":
        gradient = method.costates(rollout)[keep].mean(1).double()
    else:
        gradients = []
        for k in keep:
            t = trainer.times[k].expand(samples)
            v = guidance.velocity(model.velocity, rollout.states[k], t).detach()
            g = method.value_gradient_fn(v, guidance, prompts)(rollout.states[k], t)
            gradients.append(g.detach().mean(0))
        gradient = torch.stack(gradients).double()
    fine = uniform_grid(fine_steps)
    tuned = euler_rollout(model.velocity, noise, fine, guidance, prompts, record=False).final
    base = euler_rollout(model.base_velocity, noise, fine, guidance, prompts, record=False).final
    shift = (tuned - base).mean(0).double()

    def relative(achieved, exact):
        return float(((achieved - exact).norm(dim=-1) / exact.norm(dim=-1)).max())

    name = trainer.cfg.method["name"]
    detail = trainer.cfg.method.get("consistency", f"{trainer.cfg.sampler.num_steps} steps")
    if trainer.cfg.method.get("fd_scheme", "central") != "central":  # finite differences only
        detail = f"{detail}, {trainer.cfg.method['fd_scheme']}"
    return {
        "method": name,
        "label": f"{name} ({detail})",
        "updates": trainer.step,
        "times": times.tolist(),
        "control": control.tolist(),
        "control_exact": optimal_control(times).tolist(),
        "value_gradient": gradient.tolist(),
        "value_gradient_exact": optimal_value_gradient(times).tolist(),
        "shift": shift.tolist(),
        "shift_exact": terminal_shift().tolist(),
        "control_rel_error": relative(control, optimal_control(times)),
        "value_gradient_rel_error": relative(gradient, optimal_value_gradient(times)),
        "shift_rel_error": relative(shift[None], terminal_shift()[None]),
    }


def check(updates: int, threads: int | None = None) -> list[dict]:
    """Train VGG-Flow (exact consistency, central and forward finite differences) and
    VGG-Flow-PMP (20 and 60 Euler steps: its costate is a discrete adjoint, off the continuous
    closed form by O(1/steps)); measure each against the closed form."""
    configs = [run_config("vggflow", updates, "exact"),
               run_config("vggflow", updates, "finite_difference"),
               run_config("vggflow", updates, "finite_difference", fd_scheme="forward"),
               run_config("vggflow_pmp", updates),
               run_config("vggflow_pmp", updates, num_steps=60)]
    return [measure(train(cfg, threads)) for cfg in configs]


def plot(results: list[dict], path: str | Path) -> None:
    """Achieved vs exact control and value gradient against t, and the terminal shifts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for result in results:
        tag = result["label"]
        t = result["times"]
        axes[0].plot(t, [c[0] for c in result["control"]], "o-", ms=3, label=tag)
        axes[1].plot(t, [g[0] for g in result["value_gradient"]], "o-", ms=3, label=tag)
    exact_t = results[0]["times"]
    axes[0].plot(exact_t, [c[0] for c in results[0]["control_exact"]], "k--", label="exact")
    axes[1].plot(exact_t, [g[0] for g in results[0]["value_gradient_exact"]], "k--",
                 label="exact")
    axes[0].set_title("control u_0(t) = (v_theta - v_base)_0")
    axes[1].set_title("value gradient g_0(t) (PMP: costate)")
    names = [r["label"].replace(" (", "\n(").replace("finite_difference", "finite diff.")
             .replace(", ", ",\n") for r in results]
    axes[2].bar(range(len(results)), [r["shift"][0] for r in results], color="#0173b2")
    axes[2].axhline(results[0]["shift_exact"][0], color="k", ls="--", label="exact")
    axes[2].set_xticks(range(len(results)), names, fontsize=7)
    axes[2].set_title("terminal mean shift (x_0 component)")
    for ax in axes[:2]:
        ax.set_xlabel("t")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"toy2d closed form: N(mu, {STD}^2 I), r = a.x, beta = {BETA}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

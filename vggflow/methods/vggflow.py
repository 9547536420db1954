"""VGG-Flow (Liu et al., NeurIPS 2025): match the finetuned velocity to a learned value gradient.

Paper convention (t = 1 is data). With g_phi ~ grad V and beta = 1 / lambda:

* value gradient (Eq. 16): g(x, t) = -eta_t * grad r(x1_hat) + nu_phi(x, t, c), where
  x1_hat = x + (1 - t) * stopgrad(v_theta(x, t)) and eta_t = t^2 (or t);
* consistency (Eq. 12): R = d_t g + (grad g) w + J_{v_base}^T stopgrad(g) with
  w = stopgrad(v_base - beta g), computed exactly with torch.func (a jvp of g along (w, 1) and a
  vjp of v_base); gradients reach phi only through the g evaluations;
* boundary (Eq. 13 with Eq. 16, eta_1 = 1): alpha * |nu_phi(x_1, 1)|^2 at the final state;
* matching (Eq. 14): |v_theta - v_base + beta * stopgrad(g)|^2 on the LoRA.

Algorithm 1's order: the value network steps first (consistency + alpha * boundary), then the LoRA
(matching) with the updated value network. Transitions: 5 bins of the 20 steps, one random
transition per bin (never the pure-noise state), plus the final state for the boundary loss.
Losses are means over samples and dimensions. Reward-gradient clipping and the finite-difference
consistency arrive with the toy2d suite (see the issue tracker).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import grad, jvp

from vggflow.config import RunConfig, from_dict, require
from vggflow.methods.base import METHODS, OptimizerSettings
from vggflow.sampling import Guidance, Rollout, subsample_steps
from vggflow.suites.base import Suite
from vggflow.timegrid import broadcast_time, one_step_prediction

ETA_SCHEDULES = {"quadratic": lambda t: t * t, "linear": lambda t: t}


@dataclasses.dataclass(frozen=True)
class VGGFlowSettings(OptimizerSettings):
    """VGG-Flow hyperparameters (units: beta multiplies the value gradient in sample units)."""

    name: str = "vggflow"
    beta: float = 1.0
    alpha: float = 1.0e4
    eta: str = "quadratic"
    num_bins: int = 5
    value_lr: float | None = None
    code_version: int = 1

    def check(self, where: str) -> None:
        require(self.beta > 0, f"{where}.beta", "must be positive")
        require(self.alpha >= 0, f"{where}.alpha", "must be >= 0")
        require(self.eta in ETA_SCHEDULES, f"{where}.eta",
                f"{self.eta!r} is not allowed; allowed values: {', '.join(ETA_SCHEDULES)}")
        require(self.num_bins >= 1, f"{where}.num_bins", "must be a positive integer")


@dataclasses.dataclass
class Transitions:
    """Sub-sampled transitions (x_t, t) of a rollout and its final states."""

    x: Tensor
    t: Tensor
    guidance: Guidance
    prompts: list[str]
    final: Tensor
    final_guidance: Guidance
    final_prompts: list[str]


@METHODS.register("vggflow")
class VGGFlow:
    name = "vggflow"

    def __init__(self, cfg: RunConfig, suite: Suite) -> None:
        self.settings = from_dict(VGGFlowSettings, cfg.method, "method (vggflow)")
        require(self.settings.num_bins <= cfg.sampler.num_steps - 1, "method (vggflow).num_bins",
                f"must be at most sampler.num_steps - 1 = {cfg.sampler.num_steps - 1}")
        self.model = suite.flow_model
        self.reward = suite.reward(cfg.reward)
        self.value_net = suite.value_network()
        self.eta = ETA_SCHEDULES[self.settings.eta]

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"value_net": self.value_net, "lora": self.model.adapter()}

    def optimizer_settings(self, module: str) -> OptimizerSettings:
        if module == "value_net" and self.settings.value_lr is not None:
            return self.settings.optimizer(lr=self.settings.value_lr)
        return self.settings.optimizer()

    def prepare(self, rollout: Rollout, generator: torch.Generator) -> Transitions:
        batch = rollout.final.shape[0]
        bins = self.settings.num_bins
        steps = subsample_steps(rollout.num_steps, bins, batch, generator).flatten()
        rows = torch.arange(batch).repeat_interleave(bins)
        device = rollout.states.device
        return Transitions(
            x=rollout.states[steps.to(device), rows.to(device)],
            t=rollout.times[steps.to(device)],
            guidance=rollout.guidance.repeat(bins),
            prompts=[p for p in rollout.prompts for _ in range(bins)],
            final=rollout.final,
            final_guidance=rollout.guidance,
            final_prompts=rollout.prompts,
        )

    # ------------------------------------------------------------------ the value gradient

    def value_gradient_fn(self, v_theta: Tensor, cond: Tensor,
                          prompts: list[str]) -> Callable[[Tensor, Tensor], Tensor]:
        """g(x, t) of Eq. 16 with the finetuned velocity frozen at ``v_theta`` (stop-gradient)."""

        def reward_of_sample(y: Tensor) -> Tensor:
            return self.reward(self.model.decode(y), prompts).sum()

        reward_gradient = grad(reward_of_sample)

        def g(x: Tensor, t: Tensor) -> Tensor:
            x1_hat = one_step_prediction(x, t, v_theta)
            eta = self.eta(broadcast_time(t, x))
            return -eta * reward_gradient(x1_hat) + self.value_net(x, t, cond)

        return g

    def _velocities(self, batch: Transitions) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            v_theta = batch.guidance.velocity(self.model.velocity, batch.x, batch.t)
            v_base = batch.guidance.velocity(self.model.base_velocity, batch.x, batch.t)
        return v_theta, v_base

    def loss(self, module: str, batch: Transitions, step: int) -> dict[str, Tensor]:
        if module == "value_net":
            return self.value_loss(batch)
        if module == "lora":
            return self.matching_loss(batch)
        raise KeyError(f"vggflow has no module {module!r}")

    def value_loss(self, batch: Transitions) -> dict[str, Tensor]:
        """Consistency (exact) + alpha * boundary; gradients reach the value network only."""
        beta = self.settings.beta
        x, t = batch.x, batch.t
        v_theta, v_base = self._velocities(batch)
        g_fn = self.value_gradient_fn(v_theta, batch.guidance.cond, batch.prompts)
        with torch.no_grad():
            direction = v_base - beta * g_fn(x, t)
        g, dg = jvp(g_fn, (x, t), (direction, torch.ones_like(t)))
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v_in = batch.guidance.velocity(self.model.base_velocity, x_in, t)
            (jtg,) = torch.autograd.grad(v_in, x_in, grad_outputs=g.detach())
        consistency = (dg + jtg).pow(2).mean()
        final = batch.final
        ones = torch.ones(final.shape[0], device=final.device, dtype=final.dtype)
        boundary = self.value_net(final, ones, batch.final_guidance.cond).pow(2).mean()
        return {
            "loss": consistency + self.settings.alpha * boundary,
            "consistency": consistency.detach(),
            "boundary": boundary.detach(),
            "value_gradient_norm": g.detach().flatten(1).norm(dim=1).mean(),
        }

    def matching_loss(self, batch: Transitions) -> dict[str, Tensor]:
        """|v_theta - (v_base - beta g)|^2 with g frozen; gradients reach the LoRA only."""
        x, t = batch.x, batch.t
        v = batch.guidance.velocity(self.model.velocity, x, t, detach_uncond=True)
        with torch.no_grad():
            v_base = batch.guidance.velocity(self.model.base_velocity, x, t)
            g = self.value_gradient_fn(v.detach(), batch.guidance.cond, batch.prompts)(x, t)
            target = v_base - self.settings.beta * g
        matching = (v - target).pow(2).mean()
        return {
            "loss": matching,
            "matching": matching.detach(),
            "control_norm": (v - v_base).detach().flatten(1).norm(dim=1).mean(),
        }

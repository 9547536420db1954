"""VGG-Flow-PMP (the paper's Sec. 6 variant): match the control to a costate instead of a learned
value gradient.

Along each on-policy trajectory the costate solves da/dt = -J_{v_base}(x_t, t)^T a backward from
a(1) = -grad r(x_1), discretised as the exact adjoint of the base's Euler step,
a_k = a_{k+1} + h_k J_{v_base}(x_k, t_k)^T a_{k+1} (one vector-Jacobian product per step; J of
the guided base velocity). The LoRA is trained on every transition with
|v_theta(x_k, t_k) - v_base(x_k, t_k) + beta a_k|^2; no value network. On toy2d with a Gaussian
base and a linear reward, a(t) = -a s / sigma_t, VGG-Flow's optimal g.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from vggflow.config import RunConfig, from_dict, require
from vggflow.methods.base import (
    METHODS,
    AdapterOnly,
    OptimizerSettings,
    discrete_adjoint,
    terminal_reward_gradient,
)
from vggflow.regions import region
from vggflow.sampling import Guidance, Rollout
from vggflow.suites.base import Suite


@dataclasses.dataclass(frozen=True)
class VGGFlowPMPSettings(OptimizerSettings):
    name: str = "vggflow_pmp"
    beta: float = 1.0
    code_version: int = 1

    def check(self, where: str) -> None:
        require(self.beta > 0, f"{where}.beta", "must be positive")


@dataclasses.dataclass
class Costates:
    """States x_k, times t_k and costates a_k of every transition k = 0..K-1, flattened."""

    x: Tensor
    t: Tensor
    costate: Tensor
    guidance: Guidance


@METHODS.register("vggflow_pmp")
class VGGFlowPMP(AdapterOnly):
    name = "vggflow_pmp"

    def __init__(self, cfg: RunConfig, suite: Suite) -> None:
        self.settings = from_dict(VGGFlowPMPSettings, cfg.method, "method (vggflow_pmp)")
        self.model = suite.flow_model
        self.reward = suite.reward(cfg.reward)

    def costates(self, rollout: Rollout) -> Tensor:
        """a_k for k = 0..K, shape (K + 1, B, ...), by the discrete adjoint of the base step."""
        terminal = -terminal_reward_gradient(self.model, self.reward, rollout.final,
                                             rollout.prompts)

        def base_velocity(x: Tensor, t: Tensor, k: int) -> Tensor:
            return rollout.guidance.velocity(self.model.base_velocity, x, t)

        with region("vggflow_pmp/costate_ode"), self.model.adjoint_vjps():
            return discrete_adjoint(rollout.states, rollout.times, terminal, base_velocity)

    def prepare(self, rollout: Rollout, generator: torch.Generator) -> Costates:
        costates = self.costates(rollout)[:-1]
        steps, batch = costates.shape[:2]
        times = rollout.times[:-1].repeat_interleave(batch)
        return Costates(
            x=rollout.states[:-1].flatten(0, 1),
            t=times,
            costate=costates.flatten(0, 1),
            guidance=rollout.guidance.tile(steps),
        )

    def loss(self, module: str, batch: Costates, step: int) -> dict[str, Tensor]:
        if module != "lora":
            raise KeyError(f"vggflow_pmp has no module {module!r}")
        v = batch.guidance.velocity(self.model.velocity, batch.x, batch.t, detach_uncond=True)
        with torch.no_grad():
            v_base = batch.guidance.velocity(self.model.base_velocity, batch.x, batch.t)
            target = v_base - self.settings.beta * batch.costate
        matching = (v - target).pow(2).mean()
        return {"loss": matching, "matching": matching.detach(),
                "costate_norm": batch.costate.flatten(1).norm(dim=1).mean()}

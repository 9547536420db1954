"""ReFL (Xu et al., 2023) for flow models: reward of the one-step prediction at a late step.

For each trajectory a stop step k is drawn uniformly from ``stop_steps`` (inclusive, 0-based on
the sampler grid; the paper: 15..19 of 20). The on-policy rollout (no gradient) gives x_k; one
forward pass with gradient gives x1_hat = x_k + (1 - t_k) v_theta(x_k, t_k), and the loss is
-mean(ReLU(r(x1_hat))) (ReLU on by default, as in the VGG-Flow paper; ``reward_relu: false`` uses
r). Gradients pass through the conditional branch of the guided velocity.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from vggflow.config import RunConfig, from_dict, require
from vggflow.methods.base import METHODS, AdapterOnly, OptimizerSettings
from vggflow.sampling import Guidance, Rollout
from vggflow.suites.base import Suite
from vggflow.timegrid import one_step_prediction


@dataclasses.dataclass(frozen=True)
class ReFLSettings(OptimizerSettings):
    name: str = "refl"
    stop_steps: tuple[int, int] = (15, 19)
    reward_relu: bool = True
    code_version: int = 1


@dataclasses.dataclass
class StopStates:
    x: Tensor
    t: Tensor
    guidance: Guidance
    prompts: list[str]


@METHODS.register("refl")
class ReFL(AdapterOnly):
    name = "refl"

    def __init__(self, cfg: RunConfig, suite: Suite) -> None:
        self.settings = from_dict(ReFLSettings, cfg.method, "method (refl)")
        low, high = self.settings.stop_steps
        last = cfg.sampler.num_steps - 1
        require(0 <= low <= high <= last, "method (refl).stop_steps",
                f"[{low}, {high}] must satisfy 0 <= low <= high <= sampler.num_steps - 1 = {last}")
        self.model = suite.flow_model
        self.reward = suite.reward(cfg.reward)

    def prepare(self, rollout: Rollout, generator: torch.Generator) -> StopStates:
        batch = rollout.final.shape[0]
        low, high = self.settings.stop_steps
        k = torch.randint(low, high + 1, (batch,), generator=generator).to(rollout.states.device)
        rows = torch.arange(batch, device=rollout.states.device)
        return StopStates(rollout.states[k, rows], rollout.times[k], rollout.guidance,
                          rollout.prompts)

    def loss(self, module: str, batch: StopStates, step: int) -> dict[str, Tensor]:
        if module != "lora":
            raise KeyError(f"refl has no module {module!r}")
        v = batch.guidance.velocity(self.model.velocity, batch.x, batch.t, detach_uncond=True)
        x1_hat = one_step_prediction(batch.x, batch.t, v)
        reward = self.reward(self.model.decode(x1_hat), batch.prompts)
        objective = torch.relu(reward) if self.settings.reward_relu else reward
        return {"loss": -objective.mean(), "predicted_reward": reward.detach().mean()}

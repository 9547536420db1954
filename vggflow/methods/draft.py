"""DRaFT (Clark et al., ICLR 2024) for flow models: back-propagate the reward through the last
K sampler steps.

``draft`` (DRaFT-K; K = ``truncation``, 1 by default: the tables' "DRaFT"): from the on-policy
rollout's state x_{N-K} (no gradient before it), the last K guided Euler steps are taken again
with gradient and the loss is -mean(ReLU(r(x_1))).

``draft_lv`` (DRaFT-LV, K = 1): after the DRaFT-1 sample, the detached x_1 is re-noised to the
last step's time, x' = t_{N-1} x_1 + (1 - t_{N-1}) eps, ``renoised_samples`` (n = 2) more times;
each takes one Euler step with gradient, and the loss averages over the 1 + n samples.
Gradients pass through the conditional branch of the guided velocity, as for the other methods;
with K >= 2 the steps after the first differentiate the unconditional branch too, whose input
then depends on the LoRA (detaching it there would drop its Jacobian from the chain).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from vggflow.config import RunConfig, from_dict, require
from vggflow.methods.base import METHODS, AdapterOnly, OptimizerSettings
from vggflow.sampling import Guidance, Rollout
from vggflow.suites.base import Suite
from vggflow.timegrid import interpolate


@dataclasses.dataclass(frozen=True)
class DRaFTSettings(OptimizerSettings):
    name: str = "draft"
    truncation: int = 1
    renoised_samples: int = 0
    reward_relu: bool = True
    code_version: int = 1

    def check(self, where: str) -> None:
        require(self.truncation >= 1, f"{where}.truncation", "must be at least 1")
        require(self.renoised_samples >= 0, f"{where}.renoised_samples", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class DRaFTLVSettings(DRaFTSettings):
    name: str = "draft_lv"
    renoised_samples: int = 2


@dataclasses.dataclass
class TruncatedStart:
    """The detached state K steps before the end, and the rollout's grid and conditions."""

    x: Tensor
    times: Tensor
    guidance: Guidance
    prompts: list[str]
    noise: list[Tensor]


class DRaFT(AdapterOnly):
    name = "draft"
    lv = False
    settings_class = DRaFTSettings

    def __init__(self, cfg: RunConfig, suite: Suite) -> None:
        where = f"method ({self.name})"
        self.settings = from_dict(self.settings_class, cfg.method, where)
        steps = cfg.sampler.num_steps
        require(self.settings.truncation <= steps, f"{where}.truncation",
                f"{self.settings.truncation} is larger than sampler.num_steps = {steps}")
        if self.lv:
            require(self.settings.truncation == 1, f"{where}.truncation", "DRaFT-LV uses K = 1")
            require(self.settings.renoised_samples >= 1, f"{where}.renoised_samples",
                    "DRaFT-LV needs n >= 1 re-noised samples")
        else:
            require(self.settings.renoised_samples == 0, f"{where}.renoised_samples",
                    "only draft_lv re-noises; use method draft_lv")
        self.model = suite.flow_model
        self.reward = suite.reward(cfg.reward)

    def prepare(self, rollout: Rollout, generator: torch.Generator) -> TruncatedStart:
        start = rollout.num_steps - self.settings.truncation
        x = rollout.states[start]
        noise = [torch.randn(x.shape, generator=generator).to(x.device)
                 for _ in range(self.settings.renoised_samples)]
        return TruncatedStart(x, rollout.times[start:], rollout.guidance, rollout.prompts, noise)

    def _steps(self, x: Tensor, times: Tensor, guidance: Guidance) -> Tensor:
        """Guided Euler steps along ``times`` with gradient, from a detached ``x``. The first
        step's unconditional branch is detached (its input carries no gradient, so only its
        LoRA gradient is dropped, as for the other methods); later steps differentiate both
        branches, since their input depends on the LoRA through the earlier steps."""
        for index, (t0, t1) in enumerate(zip(times[:-1], times[1:])):
            t = t0.expand(x.shape[0])
            x = x + (t1 - t0) * guidance.velocity(self.model.velocity, x, t,
                                                  detach_uncond=index == 0)
        return x

    def loss(self, module: str, batch: TruncatedStart, step: int) -> dict[str, Tensor]:
        if module != "lora":
            raise KeyError(f"{self.name} has no module {module!r}")
        samples = [self._steps(batch.x, batch.times, batch.guidance)]
        last = batch.times[-2:]
        for eps in batch.noise:
            renoised = interpolate(eps, samples[0].detach(), last[0].expand(eps.shape[0]))
            samples.append(self._steps(renoised, last, batch.guidance))
        rewards = torch.stack([self.reward(self.model.decode(x), batch.prompts) for x in samples])
        objective = torch.relu(rewards) if self.settings.reward_relu else rewards
        return {"loss": -objective.mean(), "sample_reward": rewards[0].detach().mean()}


METHODS.register("draft")(DRaFT)


@METHODS.register("draft_lv")
class DRaFTLV(DRaFT):
    name = "draft_lv"
    lv = True
    settings_class = DRaFTLVSettings

"""Adjoint Matching (Domingo-Enrich et al., ICLR 2025) on the shared Euler grid.

Target: p_base(x) exp(lambda r(x)) (``reward_scale`` = lambda). Paper convention (t = 1 data):

* rollouts: Euler-Maruyama of the current model with the memoryless schedule
  sigma(t)^2 = 2 (1 - t + h) / (t + h) (h = ``offset``, default 1 / num_steps) and drift
  b = v_cfg + (sigma^2 / 2) score(v_cfg);
* lean adjoint: a_N = -lambda grad r(x1_hat) with x1_hat = x_{N-1} + h v_base(x_{N-1}) (a final
  noiseless base step); then the exact discrete adjoint of the base's noiseless steps,
  a_k = a_{k+1} + h_k J^T a_{k+1}, with J the Jacobian of that step's base drift at x_k (the
  final ODE step for k = N - 1, the memoryless drift b_base before it): one vector-Jacobian
  product per step, no graph kept across steps;
* loss on the last quarter of the steps plus ``early_fraction`` x N random earlier ones (the
  paper: 10 of the first 30 of 40), each term min(LCT, |(2 / sigma)(v_theta - v_base) + sigma a|^2)
  summed over dimensions, LCT = ``loss_clip`` x lambda^2 (the paper: 1.6 lambda^2); with
  ``loss_chunk_steps`` the selected steps are back-propagated in chunks of that many steps, so
  peak memory does not grow with the grid.

The adjoint and control use the conditional velocity only (the official SOC code's default); the
rollouts use classifier-free guidance like every method's.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from vggflow.config import RunConfig, from_dict, require
from vggflow.methods.base import (
    METHODS,
    AdapterOnly,
    OptimizerSettings,
    WeightedChunks,
    discrete_adjoint,
    terminal_reward_gradient,
)
from vggflow.regions import region
from vggflow.sampling import Rollout, memoryless_sigma, sde_drift, sde_rollout
from vggflow.suites.base import Suite


@dataclasses.dataclass(frozen=True)
class AdjointMatchingSettings(OptimizerSettings):
    name: str = "adjoint_matching"
    reward_scale: float = 1.0
    offset: float | None = None
    early_fraction: float = 0.25
    loss_clip: float = 1.6
    loss_chunk_steps: int | None = None
    code_version: int = 1

    def check(self, where: str) -> None:
        require(self.reward_scale > 0, f"{where}.reward_scale", "lambda must be positive")
        require(self.offset is None or self.offset > 0, f"{where}.offset", "must be positive")
        require(0 <= self.early_fraction <= 0.75, f"{where}.early_fraction",
                "must lie in [0, 0.75]")
        require(self.loss_clip > 0, f"{where}.loss_clip", "must be positive")
        require(self.loss_chunk_steps is None or self.loss_chunk_steps >= 1,
                f"{where}.loss_chunk_steps", "must be at least 1 (or null: all steps at once)")


@dataclasses.dataclass
class AdjointTerms:
    """Selected steps of all trajectories: states, times, noise scales, adjoints, conditions."""

    x: Tensor
    t: Tensor
    sigma: Tensor
    adjoint: Tensor
    cond: Tensor


@METHODS.register("adjoint_matching")
class AdjointMatching(AdapterOnly):
    name = "adjoint_matching"

    def __init__(self, cfg: RunConfig, suite: Suite) -> None:
        self.settings = from_dict(AdjointMatchingSettings, cfg.method, "method (adjoint_matching)")
        self.model = suite.flow_model
        self.reward = suite.reward(cfg.reward)
        self.offset = self.settings.offset or 1.0 / cfg.sampler.num_steps

    def rollout(self, velocity_fn, noise, times, guidance, prompts, generator) -> Rollout:
        return sde_rollout(velocity_fn, noise, times, guidance, prompts, self.offset, generator)

    def base_drift(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        v = self.model.base_velocity(x, t, cond)
        return sde_drift(v, x, t, memoryless_sigma(t, self.offset))

    def lean_adjoint(self, rollout: Rollout) -> Tensor:
        """a_0..a_{N-1}, shape (N, B, ...), detached (see the module docstring)."""
        states, times, cond = rollout.states, rollout.times, rollout.guidance.cond
        last, t_last = states[-2], times[-2].expand(states.shape[1])
        with region("adjoint_matching/terminal_reward_grad"):
            with torch.no_grad():
                step = (times[-1] - times[-2]) * self.model.base_velocity(last, t_last, cond)
            terminal = -self.settings.reward_scale * terminal_reward_gradient(
                self.model, self.reward, last + step, rollout.prompts)
        final_step = rollout.num_steps - 1

        def drift(x: Tensor, t: Tensor, k: int) -> Tensor:
            # the last step is the noiseless base ODE step that produced x1_hat
            if k == final_step:
                return self.model.base_velocity(x, t, cond)
            return self.base_drift(x, t, cond)

        with region("adjoint_matching/adjoint_ode"), self.model.adjoint_vjps():
            return discrete_adjoint(states, times, terminal, drift)[:-1]

    def select_steps(self, steps: int, generator: torch.Generator) -> list[int]:
        """The last quarter of the steps, plus random earlier ones (without replacement)."""
        late = math.ceil(steps / 4)
        early = min(round(self.settings.early_fraction * steps), steps - late)
        picks = torch.randperm(steps - late, generator=generator)[:early].tolist()
        return sorted(picks) + list(range(steps - late, steps))

    def prepare(self, rollout: Rollout, generator: torch.Generator
                ) -> AdjointTerms | WeightedChunks:
        """The selected steps' terms; in chunks of ``loss_chunk_steps`` steps when set, so that
        the loss's activation memory does not grow with the number of selected steps."""
        adjoints = self.lean_adjoint(rollout)
        keep = self.select_steps(rollout.num_steps, generator)
        size = self.settings.loss_chunk_steps
        if size is None:
            return self._terms(rollout, adjoints, keep)
        groups = [keep[i:i + size] for i in range(0, len(keep), size)]
        return WeightedChunks([(len(group) / len(keep), self._terms(rollout, adjoints, group))
                               for group in groups])

    def _terms(self, rollout: Rollout, adjoints: Tensor, steps: list[int]) -> AdjointTerms:
        index = torch.tensor(steps, device=rollout.states.device)
        batch = rollout.states.shape[1]
        t = rollout.times[index].repeat_interleave(batch)
        return AdjointTerms(
            x=rollout.states[index].flatten(0, 1),
            t=t,
            sigma=memoryless_sigma(t, self.offset),
            adjoint=adjoints[index].flatten(0, 1),
            cond=rollout.guidance.tile(len(steps)).cond,
        )

    def loss(self, module: str, batch: AdjointTerms, step: int) -> dict[str, Tensor]:
        if module != "lora":
            raise KeyError(f"adjoint_matching has no module {module!r}")
        v = self.model.velocity(batch.x, batch.t, batch.cond)
        with torch.no_grad():
            v_base = self.model.base_velocity(batch.x, batch.t, batch.cond)
        sigma = batch.sigma.reshape(-1, *([1] * (v.ndim - 1)))
        residual = (2 / sigma) * (v - v_base) + sigma * batch.adjoint
        terms = residual.flatten(1).pow(2).sum(dim=1)
        limit = self.settings.loss_clip * self.settings.reward_scale**2
        return {"loss": torch.clamp(terms, max=limit).mean(),
                "clipped_fraction": (terms > limit).float().mean(),
                "adjoint_norm": batch.adjoint.flatten(1).norm(dim=1).mean()}

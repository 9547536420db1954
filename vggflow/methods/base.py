"""The method seam: a method turns on-policy rollouts into one loss per trainable module."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vggflow.distributed import Collective, SingleProcess
from vggflow.registry import Registry
from vggflow.sampling import Rollout, euler_rollout


@runtime_checkable
class Method(Protocol):
    """A finetuning method.

    The trainer calls :meth:`prepare` once per micro-batch of fresh rollouts, then, for each
    entry of :meth:`trainable_modules` in order, :meth:`loss` on every prepared micro-batch,
    back-propagates, clips and steps that module's optimizer. VGG-Flow returns
    ``{"value_net": ..., "lora": ...}`` and so updates the value network first (Algorithm 1).

    ``loss`` returns a dict with the scalar ``"loss"`` to minimise and any other scalars to log.
    ``prepare`` may return :class:`WeightedChunks` to bound memory: the trainer then calls ``loss``
    and back-propagates once per chunk, weighting each chunk's outputs.

    Example::

        method = METHODS.get("refl")(cfg, suite, reward)
        batch = method.prepare(rollout, generator)
        out = method.loss("lora", batch, step=0)
        out["loss"].backward()
    """

    name: str
    collective: Collective  # other processes of a data-parallel run (vggflow.distributed)

    def trainable_modules(self) -> dict[str, nn.Module]: ...

    def optimizer_settings(self, module: str) -> OptimizerSettings: ...

    def prepare(self, rollout: Rollout, generator: torch.Generator) -> Any: ...

    def loss(self, module: str, batch: Any, step: int) -> dict[str, Tensor]: ...

    def rollout(self, velocity_fn, noise: Tensor, times: Tensor, guidance, prompts: list[str],
                generator: torch.Generator) -> Rollout:
        """On-policy trajectories of the current model (no gradient); the Euler ODE by default."""
        ...

    def end_update(self) -> dict[str, float]:
        """Called after every optimizer update; returns scalars to log (e.g. a new threshold)."""
        ...

    def state_dict(self) -> dict:
        """Method state beyond its modules (saved with the run's state for exact resume)."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclasses.dataclass
class WeightedChunks:
    """A prepared micro-batch in pieces: its loss is sum_i weight_i * loss(chunk_i).

    The trainer back-propagates each chunk separately, so activation memory is one chunk's.
    """

    chunks: list[tuple[float, Any]]

    @staticmethod
    def of(batch: Any) -> WeightedChunks:
        """``batch`` itself if already chunked, else one chunk of weight 1."""
        return batch if isinstance(batch, WeightedChunks) else WeightedChunks([(1.0, batch)])


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """AdamW settings shared by every method's config block (the paper's defaults)."""

    lr: float = 1e-4
    weight_decay: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float = 1.0

    def optimizer(self, lr: float | None = None) -> OptimizerSettings:
        """The plain optimizer settings of a method's config, optionally with another lr."""
        return OptimizerSettings(lr=self.lr if lr is None else lr, weight_decay=self.weight_decay,
                                 adam_betas=self.adam_betas, grad_clip_norm=self.grad_clip_norm)


def terminal_reward_gradient(model, reward, x: Tensor, prompts: list[str]) -> Tensor:
    """grad_x r(decode(x)) of (detached) samples x at t = 1."""
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(reward(model.decode(x), prompts).sum(), x)
    return gradient


def discrete_adjoint(states: Tensor, times: Tensor, terminal: Tensor, drift) -> Tensor:
    """Adjoints a_0..a_K (shape (K + 1, B, ...), detached) of the Euler steps of ``drift``.

    a_K = ``terminal`` and a_k = a_{k+1} + h_k J_k^T a_{k+1}, J_k the Jacobian of
    ``drift(x, t, k)`` at the stored state x_k: the exact adjoint of x_{k+1} = x_k + h_k drift,
    one vector-Jacobian product per step, no graph kept across steps.
    """
    batch, last = states.shape[1], times.shape[0] - 1
    adjoints = terminal.new_empty((last + 1, *terminal.shape))
    adjoints[last] = terminal.detach()
    for k in range(last - 1, -1, -1):
        x = states[k].detach().requires_grad_(True)
        (jta,) = torch.autograd.grad(drift(x, times[k].expand(batch), k), x,
                                     grad_outputs=adjoints[k + 1])
        adjoints[k] = adjoints[k + 1] + (times[k + 1] - times[k]) * jta.detach()
    return adjoints


class MethodBase:
    """Defaults: Euler ODE rollouts, and no state beyond the modules and optimizers."""

    collective: Collective = SingleProcess()  # the trainer sets the run's process group

    def rollout(self, velocity_fn, noise: Tensor, times: Tensor, guidance, prompts: list[str],
                generator: torch.Generator) -> Rollout:
        return euler_rollout(velocity_fn, noise, times, guidance, prompts)

    def end_update(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class AdapterOnly(MethodBase):
    """Mixin for methods that train only the flow model's adapter, with their config's AdamW."""

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"lora": self.model.adapter()}

    def optimizer_settings(self, module: str) -> OptimizerSettings:
        return self.settings.optimizer()


METHODS: Registry[Method] = Registry("method")

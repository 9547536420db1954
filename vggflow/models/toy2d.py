"""The toy2d suite's flow model: the exact marginal velocity of a 2-D Gaussian mixture, plus a
zero-initialised residual network that finetuning trains (LoRA needs linear layers; the analytic
base has none).

Paper convention: x_0 ~ N(0, I) at t = 0, data at t = 1, x_t = t x_1 + (1 - t) x_0. For data
sum_k w_k N(mu_k, s_k^2 I), given component k, x_t ~ N(t mu_k, sigma_k(t)^2 I) with
sigma_k(t)^2 = t^2 s_k^2 + (1 - t)^2, and E[x_1 - x_0 | x_t = x, k] = mu_k + c_k(t) (x - t mu_k)
with c_k(t) = (t s_k^2 - (1 - t)) / sigma_k(t)^2. The marginal velocity averages these with the
posterior weights P(k | x_t = x).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vggflow.models.base import FLOW_MODELS, UniformGridDecoder
from vggflow.models.mlp import ConditionalMLP
from vggflow.timegrid import broadcast_time


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """sum_k weights[k] N(means[k], stds[k]^2 I) in 2-D."""

    means: tuple[tuple[float, float], ...]
    stds: tuple[float, ...]
    weights: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: dict) -> GaussianMixture:
        means = tuple(tuple(float(v) for v in m) for m in cfg["means"])
        stds = tuple(float(s) for s in cfg["stds"])
        weights = tuple(float(w) for w in cfg.get("weights") or [1.0] * len(means))
        if not (len(means) == len(stds) == len(weights)) or any(len(m) != 2 for m in means):
            raise ValueError("toy2d base: means (K x 2), stds (K) and weights (K) must agree")
        if min(stds) <= 0 or min(weights) <= 0:
            raise ValueError("toy2d base: stds and weights must be positive")
        total = sum(weights)
        return cls(means, stds, tuple(w / total for w in weights))

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """The exact marginal velocity at x (B, 2), t (B,)."""
        mu = torch.tensor(self.means, dtype=x.dtype, device=x.device)  # (K, 2)
        s2 = torch.tensor(self.stds, dtype=x.dtype, device=x.device) ** 2  # (K,)
        log_w = torch.tensor(self.weights, dtype=x.dtype, device=x.device).log()
        tb = broadcast_time(t, x)  # (B, 1)
        var = tb**2 * s2 + (1 - tb) ** 2  # (B, K)
        centred = x[:, None, :] - tb[:, :, None] * mu  # (B, K, 2)
        rate = (tb * s2 - (1 - tb)) / var  # (B, K)
        v_k = mu + rate[..., None] * centred
        log_post = log_w - (centred**2).sum(-1) / (2 * var) - torch.log(var)
        post = torch.softmax(log_post, dim=1)
        return (post[..., None] * v_k).sum(1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(torch.tensor(self.weights), n, replacement=True,
                              generator=generator)
        noise = torch.randn((n, 2), generator=generator)
        return torch.tensor(self.means)[k] + torch.tensor(self.stds)[k, None] * noise


def sigma_t(t: Tensor | float, s: float) -> Tensor:
    """Standard deviation of x_t for a N(mu, s^2 I) base: sqrt(t^2 s^2 + (1 - t)^2)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.sqrt(t**2 * s**2 + (1 - t) ** 2)


def inverse_variance_integral(s: float) -> float:
    """int_0^1 dt / sigma_t^2 = pi / (2 s) (pi / 2 for s = 1)."""
    return math.pi / (2 * s)


def residual_network() -> ConditionalMLP:
    """The trainable part: zero at initialisation, smooth in t."""
    return ConditionalMLP(dim=2, hidden=64, depth=2, time_dim=32, time_scale=10.0, out_scale=0.0)


class Toy2dFlowModel(UniformGridDecoder):
    """v_theta(x, t) = v_base(x, t) + residual(x, t); implements ``FlowModel``.

    toy2d is unconditional: every prompt maps to label 0 and guidance has no effect.
    """

    sample_shape = (2,)

    def __init__(self, base: GaussianMixture, device: str = "cpu") -> None:
        self.base = base
        self.residual = residual_network().to(device)

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        return torch.zeros(len(prompts), dtype=torch.long, device=self._device())

    def null_condition(self, batch_size: int) -> Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self._device())

    def velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.base.velocity(x, t) + self.residual(x, t, cond)

    def base_velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.base.velocity(x, t)

    def decode(self, x: Tensor) -> Tensor:
        """toy2d samples are points; their "images" are the points themselves."""
        return x

    def adapter(self) -> nn.Module:
        return self.residual

    def save_adapter(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(self.residual.state_dict(), str(Path(directory) / "residual.safetensors"))

    def load_adapter(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        self.residual.load_state_dict(load_file(str(Path(directory) / "residual.safetensors")))

    def _device(self) -> torch.device:
        return next(self.residual.parameters()).device


@FLOW_MODELS.register("toy2d")
def build_toy2d_flow_model(resources: dict, lora_rank: int, lora_alpha: float,
                           device: str) -> Toy2dFlowModel:
    return Toy2dFlowModel(GaussianMixture.from_config(resources["base"]), device)

"""The toy2d suite's analytic rewards of points x (B, 2); parameters from resources.rewards.<name>.

* ``linear``: r(x) = a . x (``a``: 2 numbers); the closed forms of design Part D use it.
* ``quadratic``: r(x) = -|x - center|^2 / 2 (``center``: 2 numbers), bounded above.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vggflow.rewards.base import REWARDS


class LinearReward:
    name = "linear"

    def __init__(self, a: Sequence[float], device: str = "cpu") -> None:
        self.a = torch.tensor([float(v) for v in a], device=device)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return images.float() @ self.a


class QuadraticReward:
    name = "quadratic"

    def __init__(self, center: Sequence[float], device: str = "cpu") -> None:
        self.center = torch.tensor([float(v) for v in center], device=device)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return -0.5 * ((images.float() - self.center) ** 2).sum(-1)


def _params(resources: dict, name: str) -> dict:
    rewards = resources.get("rewards", {})
    if name not in rewards:
        raise KeyError(f"toy2d reward {name!r} has no parameters in resources.rewards "
                       f"(known: {', '.join(rewards)})")
    return rewards[name]


@REWARDS.register("linear")
def build_linear(resources: dict, device: str) -> LinearReward:
    return LinearReward(_params(resources, "linear")["a"], device)


@REWARDS.register("quadratic")
def build_quadratic(resources: dict, device: str) -> QuadraticReward:
    return QuadraticReward(_params(resources, "quadratic")["center"], device)

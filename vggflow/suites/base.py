"""The suite seam: methods, trainer, sampler and metrics never know which suite they run on."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from vggflow.models.base import FlowModel
from vggflow.registry import Registry
from vggflow.rewards.base import Reward


@runtime_checkable
class Suite(Protocol):
    """A flow model + rewards + prompts + a feature network for the metrics.

    Built from the ``resources`` block of a resolved config by ``SUITES.get(name)``; parts load
    lazily, so the metrics job never loads the flow model.

    Example::

        suite = SUITES.get("digits")(resources, lora_rank=8, lora_alpha=8, device="cpu")
        prompts = suite.eval_prompts()
        scores = suite.reward("margin")(images, prompts)
    """

    name: str
    feature_backend: str

    @property
    def flow_model(self) -> FlowModel: ...

    def reward(self, name: str) -> Reward: ...

    def train_prompts(self) -> list[str]: ...

    def eval_prompts(self) -> list[str]: ...

    def value_network(self) -> nn.Module:
        """A fresh network nu(x, t, cond) with the shape of x (VGG-Flow's value correction)."""
        ...

    def features(self, images: Tensor) -> Tensor:
        """(N, D) evaluation features of [0, 1] images; never a reward model's."""
        ...

    def reference_images(self, prompt: str) -> Tensor | None:
        """Real images for ``prompt`` (the fd_ref reference set), or None."""
        ...

    def extra_metrics(self, images: Tensor) -> dict[str, float]:
        """Suite-specific metrics of one checkpoint's images (P, n, ...), e.g. toy2d's moments."""
        ...


SUITES: Registry[Suite] = Registry("suite")

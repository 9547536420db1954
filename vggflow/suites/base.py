"""The suite seam: methods, trainer, sampler and metrics never know which suite they run on."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from vggflow.models.base import FLOW_MODELS, FlowModel
from vggflow.registry import Registry
from vggflow.rewards.base import REWARDS, Reward

FeatureFn = Callable[[Tensor], Tensor]


@runtime_checkable
class Suite(Protocol):
    """A flow model + rewards + prompts + a feature network for the metrics.

    Built from the ``resources`` block of a resolved config by ``SUITES.get(name)``; parts load
    lazily, so `vggflow metrics` never loads the flow model.

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
        """(N, D) evaluation features of [0, 1] images in the suite's default backend
        (``feature_backend``); never a reward model's."""
        ...

    def feature_extractors(self, backends: Sequence[str] = ()) -> dict[str, FeatureFn]:
        """Backend name -> feature function for the metrics; () = the suite's default."""
        ...

    def reference_images(self, prompt: str) -> Tensor | None:
        """Real images for ``prompt`` (the fd_ref reference set), or None."""
        ...

    def extra_metrics(self, images: Tensor) -> dict[str, float]:
        """Suite-specific metrics of one checkpoint's images (P, n, ...), e.g. toy2d's moments."""
        ...


class RegisteredSuite:
    """Shared plumbing: the flow model and rewards come from the FLOW_MODELS / REWARDS registries
    under the suite's and the rewards' config names, loaded once, lazily."""

    name: str

    def __init__(self, resources: dict, lora_rank: int = 8, lora_alpha: float = 8.0,
                 device: str = "cpu", settings: Mapping | None = None) -> None:
        self.resources = resources
        self.settings = dict(settings or {})  # the config's `model` block (SD3 suites)
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.device = device
        self._rewards: dict[str, Reward] = {}

    @cached_property
    def flow_model(self) -> FlowModel:
        return FLOW_MODELS.get(self.name)(self.resources, self.lora_rank, self.lora_alpha,
                                          self.device)

    def feature_extractors(self, backends: Sequence[str] = ()) -> dict[str, FeatureFn]:
        unknown = sorted(set(backends) - {self.feature_backend})
        if unknown:
            raise ValueError(f"suite {self.name} has no feature backend {', '.join(unknown)}; "
                             f"it offers {self.feature_backend}")
        return {self.feature_backend: self.features}

    def reward(self, name: str) -> Reward:
        if name not in self._rewards:
            self._rewards[name] = REWARDS.get(name)(self.resources, self.device)
        return self._rewards[name]


SUITES: Registry[Suite] = Registry("suite")

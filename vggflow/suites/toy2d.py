"""The toy2d suite: analytic 2-D Gaussian(-mixture) base, analytic rewards, closed forms.

Resources (all in the config, nothing to train): ``base`` (means, stds, weights) and
``rewards.<name>`` (the reward's parameters). Samples are points; the metrics' features are the
points themselves, and :meth:`Toy2dSuite.extra_metrics` adds their moments.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vggflow.models import toy2d as _toy2d_model  # noqa: F401  (registers the flow model)
from vggflow.models.mlp import ConditionalMLP
from vggflow.rewards import toy2d as _toy2d_rewards  # noqa: F401  (registers the rewards)
from vggflow.suites.base import SUITES, RegisteredSuite

PROMPT = "a point"


def value_network() -> ConditionalMLP:
    """VGG-Flow's nu_phi on toy2d: an MLP with smooth time features and a tiny-init output."""
    return ConditionalMLP(dim=2, hidden=64, depth=2, time_dim=32, time_scale=10.0, out_scale=1e-3)


@SUITES.register("toy2d")
class Toy2dSuite(RegisteredSuite):
    """LoRA settings are ignored: the trainable part is a residual MLP."""

    name = "toy2d"
    feature_backend = "points"

    def train_prompts(self) -> list[str]:
        return [PROMPT]

    def eval_prompts(self) -> list[str]:
        return [PROMPT]

    def value_network(self) -> nn.Module:
        return value_network().to(self.device)

    def features(self, images: Tensor) -> Tensor:
        return images.reshape(images.shape[0], -1).float().cpu()

    def reference_images(self, prompt: str) -> None:
        return None

    def extra_metrics(self, images: Tensor) -> dict[str, float]:
        """Mean and covariance of the points (P, n, 2) -> mean_0, mean_1, var_0, var_1, cov_01."""
        points = images.reshape(-1, 2).double()
        cov = torch.cov(points.T)
        mean = points.mean(0)
        return {"mean_0": float(mean[0]), "mean_1": float(mean[1]), "var_0": float(cov[0, 0]),
                "var_1": float(cov[1, 1]), "cov_01": float(cov[0, 1])}

"""The digits suite: scikit-learn's 8x8 digits (shipped in its wheel), CPU-sized.

Resources (made by workflow rules, paths in the run config's ``resources`` block):
``data`` (train / held-out split), ``base_model`` (pretrained flow net), ``rewards.<name>``
(reward networks), ``eval_net`` (the metrics' feature network: a separate classifier with another
architecture and seed than any reward).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggflow.models.digits import (
    NUM_CLASSES,
    images_to_samples,
    label_for,
    prompt_for,
)
from vggflow.models.mlp import ConditionalMLP
from vggflow.rewards.digits import fit
from vggflow.suites.base import SUITES, RegisteredSuite
from vggflow.utils.io import torch_load


def load_split(path: str | Path, split: str) -> tuple[Tensor, Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"digits data not found at {path}; "
                                "it is made by the workflow rule prepare_digits")
    with np.load(path) as data:
        return torch.from_numpy(data[f"{split}_images"]), torch.from_numpy(data[f"{split}_labels"])


class EvalNet(nn.Module):
    """The metrics' feature network: an MLP classifier; features are its 64-d last hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64),
                                    nn.SiLU())
        self.head = nn.Linear(64, NUM_CLASSES)

    def features(self, images: Tensor) -> Tensor:
        return self.hidden(images_to_samples(images))

    def forward(self, samples: Tensor) -> Tensor:
        return self.head(self.hidden(samples))


def train_eval_net(images: Tensor, labels: Tensor, steps: int, seed: int) -> EvalNet:
    torch.manual_seed(seed)
    net = EvalNet()
    fit(net, images, labels, F.cross_entropy, steps, 128, 2e-3, seed, noise_std=0.1)
    return net.eval()


def value_network() -> ConditionalMLP:
    """VGG-Flow's nu_phi on digits: a smaller conditional MLP with a tiny-init output layer and
    smooth time features (its time derivative enters the consistency loss)."""
    return ConditionalMLP(hidden=128, depth=2, time_scale=10.0, out_scale=1e-3)


@SUITES.register("digits")
class DigitsSuite(RegisteredSuite):
    name = "digits"
    feature_backend = "evalnet"

    def train_prompts(self) -> list[str]:
        return [prompt_for(label) for label in range(NUM_CLASSES)]

    def eval_prompts(self) -> list[str]:
        return [prompt_for(label) for label in range(NUM_CLASSES)]

    def value_network(self) -> nn.Module:
        return value_network().to(self.device)

    @cached_property
    def _eval_net(self) -> EvalNet:
        blob = torch_load(self.resources["eval_net"], "digits evaluation network",
                          "it is made by the workflow rule train_digits_eval_net")
        net = EvalNet()
        net.load_state_dict(blob["state_dict"])
        return net.eval().requires_grad_(False).to(self.device)

    def features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self._eval_net.features(images.to(self.device))

    @cached_property
    def _heldout(self) -> tuple[Tensor, Tensor]:
        return load_split(self.resources["data"], "heldout")

    def reference_images(self, prompt: str) -> Tensor:
        images, labels = self._heldout
        return images[labels == label_for(prompt)]

    def extra_metrics(self, images: Tensor) -> dict[str, float]:
        return {}

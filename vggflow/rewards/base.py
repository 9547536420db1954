"""The reward seam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from vggflow.registry import Registry


@runtime_checkable
class Reward(Protocol):
    """A frozen, differentiable reward of images in [0, 1].

    ``__call__`` takes images of shape (B, C, H, W) and the B prompts and returns (B,) float32
    scores. Parameters are frozen (``requires_grad=False``) but nothing runs under ``no_grad``,
    so ``reward(images.requires_grad_(), prompts).sum().backward()`` reaches the images. ReFL and
    DRaFT's ``ReLU(r)`` is a method option, not a reward variant.

    Example (the digits suite)::

        reward = DigitsReward.load("resources/digits/rewards/margin.pt")
        scores = reward(torch.rand(2, 1, 8, 8), ["a handwritten 1", "a handwritten 2"])
    """

    name: str

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor: ...


# Reward names as used in config -> builder(resources: dict, device: str) -> Reward.
REWARDS: Registry[Reward] = Registry("reward")

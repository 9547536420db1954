"""The digits suite's rewards: small networks trained by workflow rules.

Two rewards mirror the paper's two kinds:

* ``thickness`` (prompt-independent, like the Aesthetic score): a learned stroke-thickness score,
  10 x the predicted fraction of ink in the image (0 = blank, 10 = all white). The regressor is
  trained on real digits and on dilated (thicker) and eroded (thinner) copies, so it extrapolates
  to strokes thicker than any real digit: there is headroom, and it can be hacked.
* ``margin`` (prompt-conditioned, like PickScore/HPSv2): a classifier's logit margin for the
  prompted digit, logit_y - max_{j != y} logit_j. Unlike a log-probability it keeps rising.

Both take [0, 1] images of shape (B, 1, 8, 8) and return (B,) float32; parameters are frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggflow.models.digits import NUM_CLASSES, images_to_samples, labels_for
from vggflow.rewards.base import REWARDS

REWARD_KINDS = ("thickness", "margin")
THICKNESS_SCALE = 10.0


class ConvNet(nn.Module):
    """Two 3x3 convolutions, average pooling and a two-layer head; smooth (SiLU) activations."""

    def __init__(self, outputs: int, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 16, 64)
        self.fc2 = nn.Linear(64, outputs)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.conv2(F.silu(self.conv1(x))))
        h = F.avg_pool2d(h, 2).flatten(1)
        return self.fc2(F.silu(self.fc1(h)))


def _dilate(images: Tensor) -> Tensor:
    return F.max_pool2d(F.pad(images, (0, 1, 0, 1)), 2, stride=1)


def _erode(images: Tensor) -> Tensor:
    return -_dilate(-images)


def thickness_training_set(images: Tensor) -> tuple[Tensor, Tensor]:
    """Real, dilated (once and twice) and eroded digits with their ink fraction x 10."""
    thick = _dilate(images)
    variants = torch.cat([images, thick, _dilate(thick), _erode(images)])
    return variants, THICKNESS_SCALE * variants.mean(dim=(1, 2, 3))


def fit(net: nn.Module, inputs: Tensor, targets: Tensor, loss_fn, steps: int, batch_size: int,
        lr: float, seed: int, noise_std: float = 0.0) -> list[dict]:
    """Minibatch AdamW on (inputs, targets); inputs are [0, 1] images, fed in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    samples = images_to_samples(inputs)
    log = []
    for step in range(steps):
        idx = torch.randint(0, samples.shape[0], (batch_size,), generator=generator)
        x = samples[idx]
        if noise_std:
            x = x + noise_std * torch.randn(x.shape, generator=generator)
        loss = loss_fn(net(x), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == steps - 1:
            log.append({"step": step, "loss": loss.item()})
            print(f"fit step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    return log


def train_reward_net(kind: str, images: Tensor, labels: Tensor, steps: int, seed: int) -> ConvNet:
    torch.manual_seed(seed)
    if kind == "thickness":
        net = ConvNet(outputs=1)
        inputs, targets = thickness_training_set(images)
        fit(net, inputs, targets, lambda out, y: F.mse_loss(out[:, 0], y), steps, 128, 2e-3, seed)
    elif kind == "margin":
        net = ConvNet(outputs=NUM_CLASSES)
        fit(net, images, labels, F.cross_entropy, steps, 128, 2e-3, seed, noise_std=0.1)
    else:
        raise ValueError(f"unknown digits reward {kind!r}; known: {', '.join(REWARD_KINDS)}")
    return net.eval()


class DigitsReward:
    """A trained digits reward network behind the ``Reward`` protocol."""

    def __init__(self, name: str, net: ConvNet) -> None:
        if name not in REWARD_KINDS:
            raise ValueError(f"unknown digits reward {name!r}; known: {', '.join(REWARD_KINDS)}")
        self.name = name
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def load(cls, path: str | Path) -> DigitsReward:
        from vggflow.utils.io import torch_load

        blob = torch_load(path, "digits reward network",
                          "it is made by the workflow rule train_digits_reward")
        net = ConvNet(outputs=blob["outputs"])
        net.load_state_dict(blob["state_dict"])
        return cls(blob["name"], net)

    def to(self, device: torch.device | str) -> DigitsReward:
        self.net.to(device)
        return self

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        out = self.net(images_to_samples(images.float()))
        if self.name == "thickness":
            return out[:, 0]
        labels = labels_for(prompts, device=out.device)
        target = out.gather(1, labels[:, None])[:, 0]
        others = out.masked_fill(F.one_hot(labels, NUM_CLASSES).bool(), float("-inf"))
        return target - others.amax(dim=1)


def _register(name: str) -> None:
    @REWARDS.register(name)
    def build(resources: dict, device: str) -> DigitsReward:
        paths = resources["rewards"]
        if name not in paths:
            raise KeyError(f"reward {name!r} has no weights path in resources.rewards "
                           f"(known: {', '.join(paths)})")
        reward = DigitsReward.load(paths[name])
        if reward.name != name:
            raise ValueError(f"{paths[name]} holds the {reward.name!r} reward, not {name!r}")
        return reward.to(device)


for _name in REWARD_KINDS:
    _register(_name)

"""A small conditional MLP f(x, t, label) with the shape of x, shared by the embedded suites."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_LABELS = 11  # digits 0-9 and the null label 10; other suites use label 0


def time_frequencies(dim: int) -> Tensor:
    """The ``dim // 2`` relative frequencies of :func:`time_features`, from 1 down to 1e-4."""
    half = dim // 2
    return torch.exp(-math.log(10_000.0) * torch.arange(half) / half)


def time_features(t: Tensor, freqs: Tensor, scale: float) -> Tensor:
    """Sinusoidal features of t in [0, 1]; angular frequencies ``scale * freqs``.

    The velocity net uses scale 1000 (like diffusion timesteps); the value net, whose time
    derivative enters VGG-Flow's consistency loss, uses a smooth scale of 10.
    """
    args = scale * t.to(freqs.dtype)[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ConditionalMLP(nn.Module):
    """f(x, t, label) with the shape of x: a residual MLP on the flattened sample.

    Used as the velocity net (and, with a small ``out_scale``, as VGG-Flow's value-gradient
    correction). Its linear layers are LoRA targets.
    """

    def __init__(self, dim: int = 64, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 time_scale: float = 1000.0, out_scale: float = 1.0) -> None:
        super().__init__()
        self.arch = {"dim": dim, "hidden": hidden, "depth": depth, "time_dim": time_dim,
                     "time_scale": time_scale}
        self.time_scale = time_scale
        # computed once rather than in every forward; not saved (a function of time_dim)
        self.register_buffer("time_freqs", time_frequencies(time_dim), persistent=False)
        self.in_proj = nn.Linear(dim, hidden)
        self.time_proj = nn.Linear(time_dim, hidden)
        self.label_embedding = nn.Embedding(NUM_LABELS, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out_proj = nn.Linear(hidden, dim)
        if out_scale != 1.0:
            with torch.no_grad():
                self.out_proj.weight.mul_(out_scale)
                self.out_proj.bias.zero_()

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        h = self.in_proj(x.flatten(1)) + self.label_embedding(labels)
        h = h + self.time_proj(time_features(t, self.time_freqs, self.time_scale))
        for block in self.blocks:
            h = h + block(F.silu(h))
        return self.out_proj(F.silu(h)).view_as(x)

    def lora_targets(self) -> list[str]:
        names = {name for name, module in self.named_modules() if isinstance(module, nn.Linear)}
        return sorted(names)

"""The digits suite's flow model: a class-conditional MLP velocity field on 8x8 digits.

Samples live in pixel space scaled to [-1, 1] (shape (1, 8, 8)); :meth:`DigitsFlowModel.decode`
maps them to [0, 1] images. Prompts are "a handwritten 7"; the null condition (label 10) is the
unconditional branch for classifier-free guidance, learned with label dropout in pretraining.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggflow.models.base import FLOW_MODELS
from vggflow.timegrid import interpolate, target_velocity

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES
SAMPLE_SHAPE = (1, 8, 8)
_PROMPT = re.compile(r"^a handwritten (\d)$")


def prompt_for(label: int) -> str:
    return f"a handwritten {int(label)}"


def label_for(prompt: str) -> int:
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"digits prompts look like 'a handwritten 7', got {prompt!r}")
    return int(match.group(1))


def labels_for(prompts: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
    return torch.tensor([label_for(p) for p in prompts], dtype=torch.long, device=device)


def images_to_samples(images: Tensor) -> Tensor:
    """[0, 1] images to the model's [-1, 1] sample space."""
    return images * 2.0 - 1.0


def time_features(t: Tensor, dim: int, scale: float) -> Tensor:
    """Sinusoidal features of t in [0, 1]; angular frequencies from ``scale`` down to scale/1e4.

    The velocity net uses scale 1000 (like diffusion timesteps); the value net, whose time
    derivative enters VGG-Flow's consistency loss, uses a smooth scale of 10.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
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
        self.time_dim = time_dim
        self.time_scale = time_scale
        self.in_proj = nn.Linear(dim, hidden)
        self.time_proj = nn.Linear(time_dim, hidden)
        self.label_embedding = nn.Embedding(NUM_CLASSES + 1, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out_proj = nn.Linear(hidden, dim)
        if out_scale != 1.0:
            with torch.no_grad():
                self.out_proj.weight.mul_(out_scale)
                self.out_proj.bias.zero_()

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        h = self.in_proj(x.flatten(1)) + self.label_embedding(labels)
        h = h + self.time_proj(time_features(t, self.time_dim, self.time_scale))
        for block in self.blocks:
            h = h + block(F.silu(h))
        return self.out_proj(F.silu(h)).view_as(x)

    def lora_targets(self) -> list[str]:
        names = {name for name, module in self.named_modules() if isinstance(module, nn.Linear)}
        return sorted(names)


def pretrain_flow(
    train_images: Tensor,
    train_labels: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    hidden: int,
    depth: int,
    label_dropout: float,
    ema_decay: float,
    seed: int,
    log_every: int = 500,
) -> tuple[ConditionalMLP, list[dict]]:
    """Conditional flow matching on [0, 1] digit images; returns the EMA net and a loss log."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ConditionalMLP(hidden=hidden, depth=depth)
    ema = ConditionalMLP(hidden=hidden, depth=depth)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=0.05)
    data = images_to_samples(train_images)
    log = []
    for step in range(steps):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        x1 = data[idx]
        labels = train_labels[idx].clone()
        drop = torch.rand(batch_size, generator=generator) < label_dropout
        labels[drop] = NULL_LABEL
        x0 = torch.randn(x1.shape, generator=generator)
        t = torch.rand(batch_size, generator=generator)
        loss = F.mse_loss(net(interpolate(x0, x1, t), t, labels), target_velocity(x0, x1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1.0 - ema_decay)
        if step % log_every == 0 or step == steps - 1:
            log.append({"step": step, "loss": loss.item()})
            print(f"pretrain step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    return ema, log


class DigitsFlowModel:
    """The pretrained digits net with a peft LoRA adapter; implements ``FlowModel``."""

    sample_shape = SAMPLE_SHAPE

    def __init__(self, net: ConditionalMLP, lora_rank: int, lora_alpha: float) -> None:
        from peft import LoraConfig, get_peft_model

        net.requires_grad_(False)
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
                            target_modules=net.lora_targets())
        self.net = get_peft_model(net, config)

    @classmethod
    def load(cls, path: str | Path, lora_rank: int, lora_alpha: float) -> DigitsFlowModel:
        from vggflow.utils.io import torch_load

        blob = torch_load(path, "digits base model",
                          "it is made by the workflow rule pretrain_digits")
        net = ConditionalMLP(**blob["arch"])
        net.load_state_dict(blob["state_dict"])
        return cls(net, lora_rank, lora_alpha)

    def to(self, device: torch.device | str) -> DigitsFlowModel:
        self.net.to(device)
        return self

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        return labels_for(prompts, device=self._device())

    def null_condition(self, batch_size: int) -> Tensor:
        return torch.full((batch_size,), NULL_LABEL, dtype=torch.long, device=self._device())

    def velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.net(x, t, cond)

    def base_velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        with self.net.disable_adapter():
            return self.net(x, t, cond)

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def adapter(self) -> nn.Module:
        return self.net

    def save_adapter(self, directory: str | Path) -> None:
        self.net.save_pretrained(str(directory))

    def load_adapter(self, directory: str | Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = Path(directory) / "adapter_model.safetensors"
        if not weights.exists():
            raise FileNotFoundError(f"no LoRA weights at {weights}")
        set_peft_model_state_dict(self.net, load_file(str(weights)))

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device


@FLOW_MODELS.register("digits")
def build_digits_flow_model(resources: dict, lora_rank: int, lora_alpha: float,
                            device: str) -> DigitsFlowModel:
    return DigitsFlowModel.load(resources["base_model"], lora_rank, lora_alpha).to(device)

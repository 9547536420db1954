"""The digits suite's flow model: a class-conditional MLP velocity field on 8x8 digits.

Samples live in pixel space scaled to [-1, 1] (shape (1, 8, 8)); :meth:`DigitsFlowModel.decode`
maps them to [0, 1] images. Prompts are "a handwritten 7"; the null condition (label 10) is the
unconditional branch for classifier-free guidance, learned with label dropout in pretraining.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggflow.models.base import FLOW_MODELS, UniformGridDecoder
from vggflow.models.lora import LoRAModel, load_lora, save_lora
from vggflow.models.mlp import ConditionalMLP
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


class DigitsFlowModel(UniformGridDecoder):
    """The pretrained digits net with a LoRA adapter (``models.lora``, peft's format);
    implements ``FlowModel``."""

    sample_shape = SAMPLE_SHAPE

    def __init__(self, net: ConditionalMLP, lora_rank: int, lora_alpha: float) -> None:
        self.net = LoRAModel(net, net.lora_targets(), lora_rank, lora_alpha)

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
        save_lora(self.net, directory)

    def load_adapter(self, directory: str | Path) -> None:
        load_lora(self.net, directory)

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device


@FLOW_MODELS.register("digits")
def build_digits_flow_model(resources: dict, lora_rank: int, lora_alpha: float,
                            device: str) -> DigitsFlowModel:
    return DigitsFlowModel.load(resources["base_model"], lora_rank, lora_alpha).to(device)

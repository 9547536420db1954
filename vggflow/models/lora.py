"""A minimal LoRA for the small suites' MLPs, without importing peft (about 2.5 s per process).

It reproduces peft's LoRA on ``nn.Linear`` layers exactly (``init_lora_weights="gaussian"``, no
dropout, no bias): the same random draws in the same order, the same forward arithmetic, and the
same file format (``adapter_model.safetensors`` with peft's key names plus an
``adapter_config.json``), so ``PeftModel.from_pretrained`` loads what :func:`save_lora` writes.
``tests/test_lora.py`` checks all three against peft. The SD3 suites keep peft and diffusers.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KEY_PREFIX = "base_model.model."  # peft's prefix for saved adapter weights


class LoRALinear(nn.Module):
    """``base(x) + B(A(x)) * alpha / rank`` with a frozen ``base``; B starts at zero.

    When ``alpha / rank`` is a power of two (the default alpha = rank gives 1), scaling is exact
    in floating point, so for a batch of vectors (2-d ``x``, as in the small suites' MLPs) the
    up-projection, the scaling and the sum are one ``addmm`` whose result and gradients equal
    peft's bit for bit (digits velocity net: 50 -> 44 operations per forward, 163 -> 151 with
    the backward; ``scripts/lora_forward.py``); other scalings keep peft's three operations.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base_layer = base
        # created as nn.Linear and then re-initialised, as peft does, to consume the same draws
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_A.weight, std=1 / rank)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank
        self.fused = math.frexp(self.scaling)[0] == 0.5
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if not self.enabled:
            return result
        down = F.linear(x, self.lora_A.weight)
        if not self.fused or down.dim() != 2:
            return result + F.linear(down, self.lora_B.weight) * self.scaling
        return torch.addmm(result, down, self.lora_B.weight.t(), alpha=self.scaling)


class LoRAModel(nn.Module):
    """``net`` with LoRA on the named ``nn.Linear`` layers; only the LoRA factors train."""

    def __init__(self, net: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> None:
        super().__init__()
        net.requires_grad_(False)
        self.targets, self.rank, self.alpha = sorted(targets), rank, alpha
        for name, module in list(net.named_modules()):  # peft's traversal order
            if name not in self.targets:
                continue
            if not isinstance(module, nn.Linear):
                raise TypeError(f"LoRA target {name} is a {type(module).__name__}, not nn.Linear")
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, LoRALinear(module, rank, alpha))
        self.model = net

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def lora_layers(self) -> Iterator[tuple[str, LoRALinear]]:
        for name, module in self.model.named_modules():
            if isinstance(module, LoRALinear):
                yield name, module

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """The base model inside the block (peft's ``disable_adapter``)."""
        layers = [layer for _, layer in self.lora_layers()]
        for layer in layers:
            layer.enabled = False
        try:
            yield
        finally:
            for layer in layers:
                layer.enabled = True

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The LoRA factors under peft's saved key names."""
        return {f"{KEY_PREFIX}{name}.lora_{factor}.weight":
                getattr(layer, f"lora_{factor}").weight.detach().cpu().contiguous()
                for name, layer in self.lora_layers() for factor in "AB"}

    def load_adapter_state_dict(self, weights: dict[str, Tensor]) -> None:
        own = self.adapter_state_dict()
        if set(weights) != set(own):
            raise ValueError(f"LoRA weights do not match the model: missing "
                             f"{sorted(set(own) - set(weights))}, unexpected "
                             f"{sorted(set(weights) - set(own))}")
        layers = dict(self.lora_layers())
        with torch.no_grad():
            for key, value in weights.items():
                name, factor = key[len(KEY_PREFIX):].rsplit(".lora_", 1)
                getattr(layers[name], f"lora_{factor.split('.')[0]}").weight.copy_(value)


def save_lora(model: LoRAModel, directory: str | Path) -> None:
    """Write peft's adapter files (weights and the LoRA fields of ``adapter_config.json``)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(model.adapter_state_dict(), str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": model.rank, "lora_alpha": model.alpha,
              "target_modules": model.targets, "init_lora_weights": "gaussian",
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "use_dora": False, "task_type": None, "base_model_name_or_path": None,
              "inference_mode": True}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_lora(model: LoRAModel, directory: str | Path) -> None:
    from safetensors.torch import load_file

    weights = Path(directory) / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no LoRA weights at {weights}")
    model.load_adapter_state_dict(load_file(str(weights)))

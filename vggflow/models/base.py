"""The flow-model seam.

Every suite's model (the digits net here; toy2d and SD3 adapters later) is used by the sampler,
the trainer and the methods only through this protocol, in the paper's time convention
(:mod:`vggflow.timegrid`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from vggflow.registry import Registry
from vggflow.timegrid import uniform_grid


@runtime_checkable
class FlowModel(Protocol):
    """A conditional velocity field v(x, t, c) with a trainable adapter and a frozen base.

    ``velocity`` is the finetuned model (adapter on), ``base_velocity`` the pretrained one (adapter
    off). Both take x of shape (B, *sample_shape), t of shape (B,) in [0, 1] (t = 1 is data) and a
    condition tensor from :meth:`encode_prompts` or :meth:`null_condition`, and return dx/dt.

    Example (the digits suite)::

        model = DigitsFlowModel.load("resources/digits/base_model.pt", lora_rank=8)
        cond = model.encode_prompts(["a handwritten 3"])
        v = model.velocity(torch.randn(1, 1, 8, 8), torch.zeros(1), cond)
    """

    sample_shape: tuple[int, ...]

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor: ...

    def null_condition(self, batch_size: int) -> Tensor: ...

    def velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...

    def base_velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...

    def adjoint_vjps(self) -> AbstractContextManager:
        """The context of an adjoint ODE's vector-Jacobian products, whose graphs are one
        velocity evaluation deep (a model may skip activation recomputation there)."""
        ...

    def time_grid(self, num_steps: int) -> Tensor:
        """The num_steps + 1 times, 0 to 1, that rollouts and evaluation sampling visit."""
        ...

    def decode(self, x: Tensor) -> Tensor:
        """Samples at t = 1 to images in [0, 1], shape (B, C, H, W); differentiable (the
        images that rewards see in training)."""
        ...

    def decode_for_evaluation(self, x: Tensor) -> Tensor:
        """Samples at t = 1 to the evaluation images in [0, 1] (SD3: the full VAE)."""
        ...

    def adapter(self) -> nn.Module:
        """The module whose trainable parameters finetuning updates (the LoRA)."""
        ...

    def save_adapter(self, directory: str | Path) -> None: ...

    def load_adapter(self, directory: str | Path) -> None: ...


class UniformGridDecoder:
    """For models that sample on a uniform grid, decode one way for training and evaluation and
    compute adjoints as any other graph (digits, toy2d)."""

    def time_grid(self, num_steps: int) -> Tensor:
        return uniform_grid(num_steps)

    def decode_for_evaluation(self, x: Tensor) -> Tensor:
        return self.decode(x)

    def adjoint_vjps(self) -> AbstractContextManager:
        return contextlib.nullcontext()


# Flow-model names (one per suite) -> builder(resources, lora_rank, lora_alpha, device).
FLOW_MODELS: Registry[FlowModel] = Registry("flow model")

"""The paper's time convention, defined once.

t lies in [0, 1]; t = 0 is Gaussian noise and t = 1 is data; the interpolant is
x_t = t * x_1 + (1 - t) * x_0 and velocities point from noise to data (dx/dt).

diffusers' SD3 uses sigma = 1 - t and predicts v_sd3 = noise - data = -v_paper; adapters for such
models convert with :func:`sigma_from_time` and :func:`velocity_from_sigma_convention` and nowhere
else.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_grid(num_steps: int, device: torch.device | str = "cpu") -> Tensor:
    """The num_steps + 1 times 0, 1/num_steps, ..., 1 of a uniform Euler grid."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    return torch.linspace(0.0, 1.0, num_steps + 1, device=device)


def broadcast_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) or scalar time to broadcast against x of shape (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def interpolate(noise: Tensor, data: Tensor, t: Tensor) -> Tensor:
    """x_t = t * data + (1 - t) * noise."""
    tb = broadcast_time(t, data)
    return tb * data + (1.0 - tb) * noise


def target_velocity(noise: Tensor, data: Tensor) -> Tensor:
    """The conditional flow-matching velocity d x_t / dt = data - noise."""
    return data - noise


def one_step_prediction(x: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
    """The Euler jump to t = 1: x1_hat = x_t + (1 - t) * v(x_t, t)."""
    return x + (1.0 - broadcast_time(t, x)) * velocity


def sigma_from_time(t: Tensor) -> Tensor:
    """diffusers' sigma (1 = noise, 0 = data) for the paper's t."""
    return 1.0 - t


def velocity_from_sigma_convention(v_sigma: Tensor) -> Tensor:
    """The paper's velocity from a model that predicts d x / d sigma (SD3: noise - data)."""
    return -v_sigma

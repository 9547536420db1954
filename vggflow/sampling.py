"""Euler sampling with classifier-free guidance, trajectories, and transition sub-sampling.

Time follows :mod:`vggflow.timegrid`: x_0 is noise, x_K (t = 1) the sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from vggflow.timegrid import broadcast_time

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclasses.dataclass
class Guidance:
    """Conditions for classifier-free guidance: v = v_u + scale * (v_c - v_u); scale 1 = no CFG."""

    cond: Tensor
    uncond: Tensor
    scale: float

    def velocity(
        self, fn: VelocityFn, x: Tensor, t: Tensor, detach_uncond: bool = False,
        uncond_velocity: Tensor | None = None,
    ) -> Tensor:
        """The guided velocity of ``fn`` at (x, t); t has shape (B,).

        ``detach_uncond`` stops gradients through the unconditional branch, as the official
        VGG-Flow code does for the finetuned model (gradients reach it through the conditional
        branch, scaled by ``scale``). The branch then runs without a graph, in its own call, so
        that no backward pass runs through it. ``uncond_velocity`` (that branch's value at the
        same inputs, computed before) skips it.
        """
        if self.scale != 1.0 and (detach_uncond or uncond_velocity is not None):
            v_cond = fn(x, t, self.cond)
            if uncond_velocity is None:
                with torch.no_grad():
                    uncond_velocity = fn(x, t, self.uncond)
            return self.combine(v_cond, uncond_velocity)
        return self.combine(*self.branches(fn, x, t))

    def branches(self, fn: VelocityFn, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(conditional, unconditional) velocities of ``fn`` at (x, t) in one call; the second is
        None when ``scale`` is 1 (no guidance)."""
        if self.scale == 1.0:
            return fn(x, t, self.cond), None
        both = fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.cond, self.uncond]))
        v_cond, v_uncond = both.chunk(2)
        return v_cond, v_uncond

    def combine(self, v_cond: Tensor, v_uncond: Tensor | None) -> Tensor:
        """The guided velocity from its two branches (``v_cond`` alone without guidance)."""
        if v_uncond is None:
            return v_cond
        return v_uncond + self.scale * (v_cond - v_uncond)

    def select(self, index: Tensor) -> Guidance:
        return Guidance(self.cond[index], self.uncond[index], self.scale)

    def tile(self, times: int) -> Guidance:
        """The whole batch repeated ``times`` times (matches flattening (times, B, ...))."""
        return Guidance(torch.cat([self.cond] * times), torch.cat([self.uncond] * times),
                        self.scale)

    def repeat(self, times: int) -> Guidance:
        """Each row repeated ``times`` times in a row (matches ``repeat_interleave``)."""
        return Guidance(
            self.cond.repeat_interleave(times, 0), self.uncond.repeat_interleave(times, 0),
            self.scale,
        )


@dataclasses.dataclass
class Rollout:
    """Trajectories of B samples on a grid of K steps.

    states: (K + 1, B, *shape), states[0] the noise and states[K] the samples at t = 1;
    times: (K + 1,) from 0 to 1. ``velocities`` (Euler rollouts with ``keep_velocities``): the
    conditional and unconditional (None without guidance) velocities at states[0..K-1], each
    (K, B, *shape), whose guided combination made each step.
    """

    states: Tensor
    times: Tensor
    guidance: Guidance
    prompts: list[str]
    velocities: tuple[Tensor, Tensor | None] | None = None

    @property
    def num_steps(self) -> int:
        return self.times.shape[0] - 1

    @property
    def final(self) -> Tensor:
        return self.states[-1]


def euler_rollout(
    velocity_fn: VelocityFn,
    noise: Tensor,
    times: Tensor,
    guidance: Guidance,
    prompts: list[str],
    record: bool = True,
    keep_velocities: bool = False,
) -> Rollout:
    """Integrate dx/dt = v_cfg(x, t) from ``noise`` along ``times`` with Euler steps, no gradient.

    With ``record=False`` only the first and last states are kept (evaluation sampling); with
    ``keep_velocities`` both guidance branches of every step are kept too.
    """
    kept: list[tuple[Tensor, Tensor | None]] = []

    def step(x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        branches = guidance.branches(velocity_fn, x, t)
        if keep_velocities:
            kept.append(branches)
        return x + h * guidance.combine(*branches)

    rollout = _integrate(step, noise, times, guidance, prompts, record)
    if keep_velocities:
        v_cond, v_uncond = zip(*kept)
        rollout.velocities = (torch.stack(v_cond),
                              None if v_uncond[0] is None else torch.stack(v_uncond))
    return rollout


def _integrate(step: Callable[[Tensor, Tensor, Tensor], Tensor], noise: Tensor, times: Tensor,
               guidance: Guidance, prompts: list[str], record: bool) -> Rollout:
    """Apply x <- step(x, t_i, t_{i+1} - t_i) along ``times`` without gradient."""
    x = noise
    states = [x]
    batch = noise.shape[0]
    with torch.no_grad():
        for i in range(times.shape[0] - 1):
            x = step(x, times[i].expand(batch), times[i + 1] - times[i])
            if record:
                states.append(x)
    if not record:
        states.append(x)
    return Rollout(torch.stack(states), times, guidance, list(prompts))


def memoryless_sigma(t: Tensor, offset: float) -> Tensor:
    """Adjoint Matching's memoryless noise scale, sqrt(2 (1 - t + h) / (t + h)) with offset h."""
    return torch.sqrt(2 * (1 - t + offset) / (t + offset))


def sde_drift(velocity: Tensor, x: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
    """v + (sigma^2 / 2) * score, with the score of a Gaussian-path flow s = (t v - x) / (1 - t).

    Finite for t < 1 (t = 0 gives s = -x); rollouts never evaluate it at t = 1.
    """
    tb = broadcast_time(t, x)
    sb = broadcast_time(sigma, x)
    return velocity + 0.5 * sb**2 * (tb * velocity - x) / (1 - tb)


def sde_rollout(
    velocity_fn: VelocityFn,
    noise: Tensor,
    times: Tensor,
    guidance: Guidance,
    prompts: list[str],
    offset: float,
    generator: torch.Generator,
) -> Rollout:
    """Euler-Maruyama with the memoryless schedule: x += h b(x, t) + sqrt(h) sigma(t) eps.

    b = v_cfg + (sigma^2 / 2) score(v_cfg); every state is kept; no gradient.
    """

    def step(x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        sigma = memoryless_sigma(t, offset)
        drift = sde_drift(guidance.velocity(velocity_fn, x, t), x, t, sigma)
        eps = torch.randn(x.shape, generator=generator).to(x.device)
        return x + h * drift + torch.sqrt(h) * broadcast_time(sigma, x) * eps

    return _integrate(step, noise, times, guidance, prompts, record=True)


def subsample_steps(
    num_steps: int, num_bins: int, batch: int, generator: torch.Generator
) -> Tensor:
    """One random transition index per bin for each trajectory, shape (batch, num_bins).

    The step indices 0..num_steps-1 are split into ``num_bins`` contiguous bins (20 steps, 5
    bins: {0-3}, ..., {16-19}); index 0, the pure-noise state, is never drawn.
    """
    if num_bins < 1 or num_bins > num_steps - 1:
        raise ValueError(f"num_bins must lie in [1, {num_steps - 1}], got {num_bins}")
    edges = torch.linspace(0, num_steps, num_bins + 1).round().long().tolist()
    picks = []
    for low, high in zip(edges[:-1], edges[1:]):
        low = max(low, 1)
        picks.append(torch.randint(low, max(high, low + 1), (batch,), generator=generator))
    return torch.stack(picks, dim=1)


def sample_images(
    velocity_fn: VelocityFn,
    model,
    prompts: list[str],
    images_per_prompt: int,
    num_steps: int,
    guidance_scale: float,
    seed: int,
    chunk_size: int = 256,
) -> Tensor:
    """Evaluation images, (P, n, C, H, W) in [0, 1], from noise fixed by ``seed``.

    The noise depends only on ``seed``, the prompts and the sample shape, so every method and
    checkpoint is compared on identical noise.
    """
    device = model.null_condition(1).device
    generator = torch.Generator().manual_seed(seed)
    all_prompts = [p for p in prompts for _ in range(images_per_prompt)]
    noise = torch.randn((len(all_prompts), *model.sample_shape), generator=generator)
    times = model.time_grid(num_steps).to(device)
    images = []
    for start in range(0, len(all_prompts), chunk_size):
        chunk = all_prompts[start:start + chunk_size]
        guidance = Guidance(model.encode_prompts(chunk), model.null_condition(len(chunk)),
                            guidance_scale)
        rollout = euler_rollout(velocity_fn, noise[start:start + chunk_size].to(device), times,
                                guidance, chunk, record=False)
        with torch.no_grad():
            images.append(model.decode_for_evaluation(rollout.final).float().cpu())
    stacked = torch.cat(images)
    return stacked.reshape(len(prompts), images_per_prompt, *stacked.shape[1:])


def images_for_storage(images: Tensor, dtype: str) -> Tensor:
    """[0, 1] images as stored: ``float32``, or ``uint8`` (round(255 x), as a PNG holds them)."""
    if dtype == "uint8":
        return images.mul(255).round().clamp(0, 255).to(torch.uint8)
    return images.float()


def stored_images_as_float(images: Tensor) -> Tensor:
    """Stored images (float32 or uint8) as float32 in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()

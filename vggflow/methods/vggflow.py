"""VGG-Flow (Liu et al., NeurIPS 2025): match the finetuned velocity to a learned value gradient.

Paper convention (t = 1 is data). With g_phi ~ grad V and beta = 1 / lambda:

* value gradient (Eq. 16): g(x, t) = -eta_t * grad r(x1_hat) + nu_phi(x, t, c), where
  x1_hat = x + (1 - t) * stopgrad(v_theta(x, t)) and eta_t = t^2 (or t). Where the consistency
  loss evaluates g away from the transition (its derivative), ``prediction_velocity: held``
  keeps the transition's v_theta (the stop-gradient read as a constant; a jvp through it
  computes exactly this) and ``evaluated`` takes v_theta at each point (the paper's finite
  differences);
* consistency (Eq. 12): R = d_t g + (grad g) w + J_{v_base}^T stopgrad(g) with
  w = stopgrad(v_base - beta g). ``consistency: exact`` differentiates exactly: g's derivative
  along (w, 1) is nu_phi's jvp plus, for the reward term, the reward's Hessian product along
  x1_hat's tangent taken reverse over reverse (``evaluated``: a jvp of the whole g), and J^T g
  is a vjp of v_base; ``finite_difference`` (the paper's form, for SD3) uses central
  differences [g(x + eps w, t + eps) - g(x - eps w, t - eps)] / (2 eps), evaluated with CUDA's
  TF32 off (a 1e-3 relative step is about two TF32 rounding units), and a J g product (equal to
  J^T g for exact Gaussian-path velocities) taken along g rescaled to unit RMS per sample:
  rms(g) [v_base(x + h u) - v_base(x - h u)] / (2 h), u = g / rms(g), h = ``fd_eps_base``. The
  matching target makes g = (v_base - v) / beta (1e-5 to 1e-8 per latent entry with the paper's
  betas and O(1) controls), so a step eps * g would vanish in the flow model's input rounding;
  h is chosen for the flow model's dtype (bf16 resolves about 4e-3 of an O(1) latent).
  ``fd_scheme: forward`` (the official code's) takes both as forward differences from the
  transition itself, [g(x + eps w, t + eps) - g(x, t)] / eps and rms(g) [v_base(x + h u) -
  v_base(x)] / h, whose centre values are computed for the update anyway: one reward-gradient
  pass and one guided v_base evaluation less per transition, first-order accurate instead of
  second; the reward gradient at the transitions then runs without TF32 too, as the point it is
  differenced with (``evaluated``: g at the transition is evaluated as at the shifted point,
  with the velocity taken there in full fp32, so only the v_base evaluation is saved). With a
  bf16 flow model the forward J g difference has about twice the central one's error (tiny-sd3:
  10% against 5% of the float64 product at h = 0.1). Gradients reach phi only through the g
  evaluations;
* boundary (Eq. 13 with Eq. 16, eta_1 = 1): alpha * |nu_phi(x_1, 1)|^2 at the final state;
* matching (Eq. 14): |v_theta - v_base + beta * stopgrad(g)|^2 on the LoRA.

Algorithm 1's order (``update_order: sequential``): the value network steps first (consistency +
alpha * boundary), then the LoRA (matching) with the updated value network; ``joint`` takes one
step on the sum, as the official code does. Transitions: 5 bins of the 20 steps, one random
transition per bin (never the pure-noise state), plus the final state for the boundary loss.
Losses are means over samples and dimensions.

Reward-gradient clipping (``reward_grad_clip``): each sample's grad r(x1_hat) is rescaled to norm
min(|grad|, tau). ``quantile``: tau is the ``reward_grad_quantile`` (0.8) quantile of the unclipped
norms of the previous update (the first update uses its own first micro-batch); ``fixed``: tau =
``reward_grad_max_norm``; ``none``: no clipping. ``reward_grad_chunk`` bounds the images per
reward-gradient pass (decoder and reward backward; memory at SD3 scale); the gradients are the same
up to floating-point rounding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import grad, jvp

from vggflow.config import RunConfig, from_dict, require
from vggflow.forkserver import TORCH_FUNC_IMPORTS
from vggflow.methods.base import METHODS, MethodBase, OptimizerSettings
from vggflow.regions import region
from vggflow.sampling import Guidance, Rollout, euler_rollout, subsample_steps
from vggflow.suites.base import Suite
from vggflow.timegrid import broadcast_time, one_step_prediction

ETA_SCHEDULES = {"quadratic": lambda t: t * t, "linear": lambda t: t}
CONSISTENCY = ("exact", "finite_difference")
FD_SCHEMES = ("central", "forward")
CLIP_MODES = ("quantile", "fixed", "none")
PREDICTION_VELOCITIES = ("held", "evaluated")
UPDATE_ORDERS = ("sequential", "joint")


@dataclasses.dataclass(frozen=True)
class VGGFlowSettings(OptimizerSettings):
    """VGG-Flow hyperparameters (units: beta multiplies the value gradient in sample units)."""

    name: str = "vggflow"
    beta: float = 1.0
    alpha: float = 1.0e4
    eta: str = "quadratic"
    num_bins: int = 5
    value_lr: float | None = None
    consistency: str = "exact"
    fd_eps: float = 1e-3
    fd_eps_base: float = 1e-2
    fd_scheme: str = "central"
    prediction_velocity: str = "held"
    reward_grad_clip: str = "quantile"
    reward_grad_quantile: float = 0.8
    reward_grad_max_norm: float = 1.0
    reward_grad_chunk: int | None = None
    update_order: str = "sequential"
    code_version: int = 3

    def check(self, where: str) -> None:
        require(self.beta > 0, f"{where}.beta", "must be positive")
        require(self.alpha >= 0, f"{where}.alpha", "must be >= 0")
        for key, allowed in (("eta", ETA_SCHEDULES), ("consistency", CONSISTENCY),
                             ("fd_scheme", FD_SCHEMES),
                             ("prediction_velocity", PREDICTION_VELOCITIES),
                             ("reward_grad_clip", CLIP_MODES), ("update_order", UPDATE_ORDERS)):
            value = getattr(self, key)
            require(value in allowed, f"{where}.{key}",
                    f"{value!r} is not allowed; allowed values: {', '.join(allowed)}")
        require(self.num_bins >= 1, f"{where}.num_bins", "must be a positive integer")
        require(self.fd_eps > 0, f"{where}.fd_eps", "must be positive")
        require(self.fd_eps_base > 0, f"{where}.fd_eps_base", "must be positive")
        require(self.fd_scheme == "central" or self.consistency == "finite_difference",
                f"{where}.fd_scheme", f"{self.fd_scheme!r} applies to consistency: "
                f"finite_difference only; with {self.consistency!r} set fd_scheme: central")
        require(0 < self.reward_grad_quantile <= 1, f"{where}.reward_grad_quantile",
                "must lie in (0, 1]")
        require(self.reward_grad_max_norm > 0, f"{where}.reward_grad_max_norm", "must be positive")
        require(self.reward_grad_chunk is None or self.reward_grad_chunk >= 1,
                f"{where}.reward_grad_chunk", "must be a positive integer or null (all at once)")


@dataclasses.dataclass
class Transitions:
    """Sub-sampled transitions (x_t, t) of a rollout and its final states.

    ``cache`` holds what is computed without gradients at the transitions and stays fixed through
    the update (the LoRA changes only at its optimizer step, after every loss of the update):
    both guided velocities, the finetuned model's unconditional branch and grad r(x1_hat). The
    finetuned model's velocities come from the rollout, which evaluated them at these states.
    """

    x: Tensor
    t: Tensor
    guidance: Guidance
    prompts: list[str]
    final: Tensor
    final_guidance: Guidance
    cache: dict[str, Tensor] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def full_fp32_precision() -> Iterator[None]:
    """CUDA's fp32 matrix products and cuDNN convolutions without TF32 inside the block (a no-op
    on the CPU, which has no TF32), then as before."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def unit_rms_difference(f: Callable[[Tensor], Tensor], x: Tensor, direction: Tensor,
                        step: float, f_at_x: Tensor | None = None) -> Tensor:
    """J_f(x) direction per sample (first dimension) by a difference of step ``step`` along the
    direction rescaled to unit root-mean-square, so that the perturbation has the same size in
    the dtype f runs in whatever the direction's scale; 0 for a zero direction. Central, or
    forward from ``f_at_x`` = f(x) where it is given."""
    shape = (-1, *([1] * (x.ndim - 1)))
    rms = direction.flatten(1).pow(2).mean(dim=1).sqrt().reshape(shape)
    unit = direction / rms.clamp_min(torch.finfo(direction.dtype).tiny)
    if f_at_x is not None:
        return rms * (f(x + step * unit) - f_at_x) / step
    return rms * (f(x + step * unit) - f(x - step * unit)) / (2 * step)


def clip_per_sample(grad: Tensor, max_norm: Tensor | float) -> Tensor:
    """Rescale each sample (first dimension) to norm min(|grad|, max_norm); differentiable."""
    norms = grad.flatten(1).norm(dim=1)
    scale = torch.clamp(max_norm / norms.clamp_min(1e-12), max=1.0)
    return grad * scale.reshape(-1, *([1] * (grad.ndim - 1)))


@METHODS.register("vggflow")
class VGGFlow(MethodBase):
    name = "vggflow"

    def __init__(self, cfg: RunConfig, suite: Suite) -> None:
        self.settings = from_dict(VGGFlowSettings, cfg.method, "method (vggflow)")
        require(self.settings.num_bins <= cfg.sampler.num_steps - 1, "method (vggflow).num_bins",
                f"must be at most sampler.num_steps - 1 = {cfg.sampler.num_steps - 1}")
        dtype = getattr(suite.flow_model, "dtype", torch.float32)
        require(not (self.settings.prediction_velocity == "evaluated"
                     and self.settings.consistency == "finite_difference"
                     and dtype not in (torch.float32, torch.float64)),
                "method (vggflow).prediction_velocity",
                f"'evaluated' with consistency: finite_difference re-evaluates the flow model at "
                f"steps of fd_eps ({self.settings.fd_eps:g}), which {dtype} does not resolve; use "
                f"model.dtype float32 or prediction_velocity: held")
        # what torch.func's transforms import at their first call (about 2.5 s on a 2-core CPU):
        # imported here, so that the first update's time does not include it
        for module in TORCH_FUNC_IMPORTS:
            importlib.import_module(module)
        self.model = suite.flow_model
        self.reward = suite.reward(cfg.reward)
        self.value_net = suite.value_network()
        self.eta = ETA_SCHEDULES[self.settings.eta]
        self.threshold: float | None = None  # reward-gradient clipping norm tau
        self._norms: list[Tensor] = []  # unclipped norms seen during the current update

    def trainable_modules(self) -> dict[str, nn.Module]:
        if self.settings.update_order == "joint":
            return {"joint": nn.ModuleDict({"value_net": self.value_net,
                                            "lora": self.model.adapter()})}
        return {"value_net": self.value_net, "lora": self.model.adapter()}

    def optimizer_settings(self, module: str) -> OptimizerSettings:
        if module == "value_net" and self.settings.value_lr is not None:
            return self.settings.optimizer(lr=self.settings.value_lr)
        return self.settings.optimizer()

    # ------------------------------------------------------------------ state

    def end_update(self) -> dict[str, float]:
        """Set the clipping threshold from this update's unclipped reward-gradient norms."""
        logs = {}
        if self._norms:
            norms = self.collective.all_gather(torch.cat(self._norms))  # every process's
            logs["reward_grad_norm_mean"] = float(norms.mean())
            if self.settings.reward_grad_clip == "quantile":
                logs["reward_grad_threshold"] = float(self.threshold)
                self.threshold = float(torch.quantile(norms, self.settings.reward_grad_quantile))
        self._norms = []
        return logs

    def state_dict(self) -> dict:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = state["threshold"]

    # ------------------------------------------------------------------ batches

    def rollout(self, velocity_fn, noise: Tensor, times: Tensor, guidance: Guidance,
                prompts: list[str], generator: torch.Generator) -> Rollout:
        """The Euler rollout, keeping its velocities: v_theta at the transitions is among them."""
        return euler_rollout(velocity_fn, noise, times, guidance, prompts, keep_velocities=True)

    def prepare(self, rollout: Rollout, generator: torch.Generator) -> Transitions:
        batch = rollout.final.shape[0]
        bins = self.settings.num_bins
        steps = subsample_steps(rollout.num_steps, bins, batch, generator).flatten()
        rows = torch.arange(batch).repeat_interleave(bins)
        device = rollout.states.device
        transitions = Transitions(
            x=rollout.states[steps.to(device), rows.to(device)],
            t=rollout.times[steps.to(device)],
            guidance=rollout.guidance.repeat(bins),
            prompts=[p for p in rollout.prompts for _ in range(bins)],
            final=rollout.final,
            final_guidance=rollout.guidance,
        )
        if rollout.velocities is not None:  # the finetuned model's, from self.rollout
            index = (steps.to(device), rows.to(device))
            self._cache_finetuned_velocity(transitions, *(
                None if v is None else v[index] for v in rollout.velocities))
        return transitions

    # ------------------------------------------------------------------ the value gradient

    def _summed_reward(self, y: Tensor, prompts: list[str]) -> Tensor:
        """The sum over samples of r(decode(y)): its gradient holds each sample's own."""
        return self.reward(self.model.decode(y), prompts).sum()

    def _chunks(self, size: int) -> Iterator[slice]:
        """Slices of at most ``reward_grad_chunk`` samples (all at once where it is null)."""
        step = self.settings.reward_grad_chunk or size
        return (slice(i, i + step) for i in range(0, size, step))

    def _reward_gradient(self, x: Tensor, t: Tensor, v_theta: Tensor,
                         prompts: list[str]) -> Tensor:
        """Unclipped grad r at x1_hat = x + (1 - t) v_theta (v_theta held fixed), computed
        ``reward_grad_chunk`` samples at a time (each sample's gradient is its own)."""
        x1_hat = one_step_prediction(x, t, v_theta)
        with region("vggflow/reward_grad"):
            return torch.cat([grad(self._summed_reward)(x1_hat[part], prompts[part])
                              for part in self._chunks(len(x1_hat))])

    def _reward_hessian_product(self, x: Tensor, t: Tensor, v_theta: Tensor, tangent: Tensor,
                                prompts: list[str]) -> Tensor:
        """(Hessian of r at x1_hat) tangent per sample, by reverse-over-reverse differentiation
        (on the digits ConvNet 2.4x faster on the CPU than a jvp through the reward gradient),
        ``reward_grad_chunk`` samples at a time."""
        x1_hat = one_step_prediction(x, t, v_theta).detach()
        products = []
        with region("vggflow/reward_hessian"), torch.enable_grad():
            for part in self._chunks(len(x1_hat)):
                y = x1_hat[part].requires_grad_(True)
                (reward_grad,) = torch.autograd.grad(self._summed_reward(y, prompts[part]), y,
                                                     create_graph=True)
                if reward_grad.requires_grad:
                    (product,) = torch.autograd.grad(reward_grad, y, grad_outputs=tangent[part],
                                                     materialize_grads=True)
                else:  # a linear reward: its gradient does not depend on y
                    product = torch.zeros_like(y)
                products.append(product.detach())
        return torch.cat(products)

    @property
    def _forward_differences(self) -> bool:
        return (self.settings.consistency == "finite_difference"
                and self.settings.fd_scheme == "forward")

    def _reward_gradient_at_transitions(self, batch: Transitions) -> Tensor:
        """Unclipped grad r(x1_hat) at the transitions themselves (cached for the update); without
        TF32 where forward differences take it as their centre (``held``)."""
        if "reward_grad" not in batch.cache:
            v_theta, _ = self._velocities(batch)
            differenced = (self._forward_differences
                           and self.settings.prediction_velocity == "held")
            precision = full_fp32_precision() if differenced else contextlib.nullcontext()
            with precision:
                batch.cache["reward_grad"] = self._reward_gradient(batch.x, batch.t, v_theta,
                                                                   batch.prompts)
        return batch.cache["reward_grad"]

    def _set_first_threshold(self, batch: Transitions) -> None:
        """The first update has no previous one: its clipping threshold comes from its own first
        micro-batch (the losses' first batch in every process; process 0's is micro-batch 0)."""
        if self.settings.reward_grad_clip == "quantile" and self.threshold is None:
            norms = self._reward_gradient_at_transitions(batch).flatten(1).norm(dim=1)
            threshold = float(torch.quantile(norms, self.settings.reward_grad_quantile))
            self.threshold = self.collective.broadcast_from_main(threshold)

    def _clip(self, reward_grad: Tensor) -> Tensor:
        mode = self.settings.reward_grad_clip
        if mode == "none":
            return reward_grad
        tau = self.settings.reward_grad_max_norm if mode == "fixed" else self.threshold
        return clip_per_sample(reward_grad, tau)

    def value_gradient_fn(self, v_theta: Tensor, guidance: Guidance,
                          prompts: list[str]) -> Callable[[Tensor, Tensor], Tensor]:
        """g(x, t) of Eq. 16. The one-step prediction's velocity is ``v_theta`` wherever g is
        evaluated (``prediction_velocity: held``), or the guided finetuned velocity at (x, t)
        itself, without gradients to theta (``evaluated``; a jvp still carries its tangent)."""

        def g(x: Tensor, t: Tensor) -> Tensor:
            velocity = v_theta
            if self.settings.prediction_velocity == "evaluated":
                with torch.no_grad():
                    velocity = guidance.velocity(self.model.velocity, x, t)
            return self._value_gradient(x, t, self._reward_gradient(x, t, velocity, prompts),
                                        guidance.cond)

        return g

    def _value_gradient(self, x: Tensor, t: Tensor, reward_grad: Tensor, cond: Tensor) -> Tensor:
        """g = -eta_t * clip(grad r) + nu_phi(x, t, c)."""
        return self._reward_term(t, reward_grad) + self.value_net(x, t, cond)

    def _reward_term(self, t: Tensor, reward_grad: Tensor) -> Tensor:
        """-eta_t * clip(grad r), g's part without parameters."""
        return -self.eta(broadcast_time(t, reward_grad)) * self._clip(reward_grad)

    def _value_gradient_jvp(
        self, batch: Transitions, direction: Tensor, reward_grad: Tensor,
        g_fn: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """g and d_t g + (grad g) direction at the transitions: the jvp of g along
        (direction, 1). ``held``: x1_hat's tangent is direction - v_theta, so the reward term's
        derivative needs grad r's Hessian along it (:meth:`_reward_hessian_product`) and only
        nu_phi's jvp carries phi's graph; ``evaluated`` also needs the velocity's tangent and
        takes the jvp of the whole g, ``g_fn``."""
        x, t, cond = batch.x, batch.t, batch.guidance.cond
        ones = torch.ones_like(t)
        v_theta, _ = self._velocities(batch)
        if self.settings.prediction_velocity == "evaluated":
            return jvp(g_fn, (x, t), (direction, ones))
        hessian_product = self._reward_hessian_product(x, t, v_theta, direction - v_theta,
                                                       batch.prompts)
        reward_term, reward_term_derivative = jvp(self._reward_term, (t, reward_grad),
                                                  (ones, hessian_product))
        nu, nu_derivative = jvp(lambda y, s: self.value_net(y, s, cond), (x, t),
                                (direction, ones))
        return reward_term + nu, reward_term_derivative + nu_derivative

    @staticmethod
    def _cache_finetuned_velocity(batch: Transitions, v_cond: Tensor,
                                  v_uncond: Tensor | None) -> None:
        batch.cache["v_theta"] = batch.guidance.combine(v_cond, v_uncond)
        if v_uncond is not None:
            batch.cache["v_theta_uncond"] = v_uncond

    def _velocities(self, batch: Transitions) -> tuple[Tensor, Tensor]:
        """Guided (v_theta, v_base) at the transitions, without gradients, cached for the update
        with v_theta's unconditional branch (v_theta is the rollout's when it kept them)."""
        with torch.no_grad():
            if "v_theta" not in batch.cache:
                with region("vggflow/v_theta"):
                    self._cache_finetuned_velocity(
                        batch, *batch.guidance.branches(self.model.velocity, batch.x, batch.t))
            if "v_base" not in batch.cache:
                with region("vggflow/v_base"):
                    batch.cache["v_base"] = batch.guidance.velocity(self.model.base_velocity,
                                                                    batch.x, batch.t)
        return batch.cache["v_theta"], batch.cache["v_base"]

    # ------------------------------------------------------------------ losses

    def loss(self, module: str, batch: Transitions, step: int) -> dict[str, Tensor]:
        if module == "value_net":
            return self.value_loss(batch)
        if module == "lora":
            return self.matching_loss(batch)
        if module == "joint":
            value, matching = self.value_loss(batch), self.matching_loss(batch)
            return {**value, **matching, "loss": value["loss"] + matching["loss"]}
        raise KeyError(f"vggflow has no module {module!r}")

    def consistency_residual(self, batch: Transitions) -> tuple[Tensor, Tensor]:
        """R = d_t g + (grad g) w + J_{v_base}^T sg(g) at the transitions; returns (R, g)."""
        self._set_first_threshold(batch)
        beta = self.settings.beta
        x, t = batch.x, batch.t
        v_theta, v_base = self._velocities(batch)
        g_fn = self.value_gradient_fn(v_theta, batch.guidance, batch.prompts)
        reward_grad = self._reward_gradient_at_transitions(batch)
        forward = self._forward_differences
        if forward:  # g at the transition is the differences' centre: phi's gradient, no TF32
            with region("vggflow/g_derivative"), full_fp32_precision():
                if self.settings.prediction_velocity == "evaluated":  # as at the other point
                    g_at_x = g_fn(x, t)
                else:
                    g_at_x = self._value_gradient(x, t, reward_grad, batch.guidance.cond)
        else:
            with torch.no_grad():
                g_at_x = self._value_gradient(x, t, reward_grad, batch.guidance.cond)
        g0 = g_at_x.detach()
        direction = v_base - beta * g0
        if self.settings.consistency == "exact":
            with region("vggflow/g_derivative"):
                g, dg = self._value_gradient_jvp(batch, direction, reward_grad, g_fn)
            x_in = x.detach().requires_grad_(True)
            with region("vggflow/base_jacobian"), torch.enable_grad():
                v_in = batch.guidance.velocity(self.model.base_velocity, x_in, t)
                (jg,) = torch.autograd.grad(v_in, x_in, grad_outputs=g.detach())
            return dg + jg, g
        eps = self.settings.fd_eps
        with region("vggflow/g_derivative"), full_fp32_precision():
            ahead = g_fn(x + eps * direction, t + eps)
            if forward:
                dg = (ahead - g_at_x) / eps
            else:
                dg = (ahead - g_fn(x - eps * direction, t - eps)) / (2 * eps)
        with region("vggflow/base_jacobian"), torch.no_grad():
            jg = unit_rms_difference(
                lambda y: batch.guidance.velocity(self.model.base_velocity, y, t), x, g0,
                self.settings.fd_eps_base, v_base if forward else None)
        return dg + jg, g0

    def value_loss(self, batch: Transitions) -> dict[str, Tensor]:
        """Consistency + alpha * boundary; gradients reach the value network only."""
        residual, g = self.consistency_residual(batch)
        consistency = residual.pow(2).mean()
        final = batch.final
        ones = torch.ones(final.shape[0], device=final.device, dtype=final.dtype)
        with region("vggflow/boundary"):
            boundary = self.value_net(final, ones, batch.final_guidance.cond).pow(2).mean()
        return {
            "loss": consistency + self.settings.alpha * boundary,
            "consistency": consistency.detach(),
            "boundary": boundary.detach(),
            "value_gradient_norm": g.detach().flatten(1).norm(dim=1).mean(),
        }

    def matching_loss(self, batch: Transitions) -> dict[str, Tensor]:
        """|v_theta - (v_base - beta g)|^2 with g frozen; gradients reach the LoRA only."""
        self._set_first_threshold(batch)
        x, t = batch.x, batch.t
        _, v_base = self._velocities(batch)
        with region("vggflow/v_theta_with_grad"):
            v = batch.guidance.velocity(self.model.velocity, x, t, detach_uncond=True,
                                        uncond_velocity=batch.cache.get("v_theta_uncond"))
        with torch.no_grad():
            reward_grad = self._reward_gradient_at_transitions(batch)
            self._norms.append(reward_grad.flatten(1).norm(dim=1))
            g = self._value_gradient(x, t, reward_grad, batch.guidance.cond)
            target = v_base - self.settings.beta * g
        matching = (v - target).pow(2).mean()
        return {
            "loss": matching,
            "matching": matching.detach(),
            "control_norm": (v - v_base).detach().flatten(1).norm(dim=1).mean(),
        }

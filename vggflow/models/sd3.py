"""Stable Diffusion 3 behind the flow-model protocol (the ``sd3`` and ``tiny-sd3`` suites).

diffusers components are loaded from a local diffusers-format directory (``local_files_only``):
the transformer in ``settings["dtype"]`` (bf16 for the paper's runs, fp32 in the CPU tests) with a
peft LoRA on ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` whose weights stay in fp32 (its products
run in the transformer's dtype unless ``lora_compute_dtype`` is ``float32``), the VAE and rewards
in fp32.

Conventions, converted here and nowhere else (:mod:`vggflow.timegrid`): SD3 integrates in
sigma = 1 - t from sigma = 1 (noise) to 0 and predicts dx/dsigma = noise - data; the paper's
velocity is its negative. The time grid is the SD3 scheduler's shifted sigmas for the configured
number of steps, so a 20-step rollout visits the sigmas diffusers' own sampler visits.

The condition tensor packs SD3's two text inputs into one (B, L + 1, D) tensor so that the
samplers and methods can treat it like any other: rows 0..L-1 are the token embeddings (CLIP-L,
CLIP-G and T5, as ``StableDiffusion3Pipeline.encode_prompt`` makes them), row L holds the pooled
CLIP embedding (P <= D entries, zero padded).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.nn import functional as F

from vggflow.models.sd3_attention import use_packed_joint_attention
from vggflow.timegrid import sigma_from_time, velocity_from_sigma_convention

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
PIPELINE_PARTS = ("scheduler", "transformer", "vae", "text_encoder", "tokenizer",
                  "text_encoder_2", "tokenizer_2")
FETCH_HINT = ("the SD3 files are fetched by `snakemake fetch_sd3_resources --cores 1 "
              "--configfile config/paper.yaml` (tiny-sd3 and random weights: made by the rule "
              "make_random_sd3)")
DEFAULT_SETTINGS = {
    "resolution": 1024,            # image side in pixels; latents are resolution / 8
    "dtype": "bfloat16",           # the transformer's and text encoders' weights
    "text_encoder_3": True,        # False: run without T5 (its embeddings become zeros)
    "max_sequence_length": 256,    # T5 tokens
    "train_decoder": "tiny",       # reward-gradient decoder: "tiny" (taesd3) or "full" VAE
    "gradient_checkpointing": False,
    "checkpoint_adjoint": False,   # True: recompute blocks in the adjoint ODE's one-step VJPs too
    "lora_compute_dtype": "model",  # "model": LoRA products in the transformer's dtype; "float32"
    "attention": "packed",         # joint attention: "packed" (sd3_attention.py) or "diffusers"
    "compile": "none",             # "blocks": torch.compile each transformer block
}
SETTING_CHOICES = {  # the allowed values of the settings that name a choice
    "train_decoder": ("tiny", "full"),
    "lora_compute_dtype": ("model", "float32"),
    "attention": ("diffusers", "packed"),
    "compile": ("none", "blocks"),
}
COMPILED_VARIANTS_PER_BLOCK = 64  # dynamo's cache entries for the block code (its default: 8)


def check_pipeline_dir(path: str | Path) -> Path:
    """``path`` if it is a diffusers StableDiffusion3Pipeline directory with every part we load;
    else a FileNotFoundError / ValueError that names the path and the problem."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"SD3 pipeline directory {path} is missing or has no "
                                f"model_index.json; {FETCH_HINT}")
    kind = json.loads(index.read_text()).get("_class_name")
    if kind != "StableDiffusion3Pipeline":
        raise ValueError(f"{path} holds a {kind} (model_index.json), not a "
                         f"StableDiffusion3Pipeline; point resources.*.pipeline at SD3 medium "
                         "in diffusers format")
    missing = [part for part in PIPELINE_PARTS if not (path / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"SD3 pipeline directory {path} is incomplete: no "
                                f"{', '.join(missing)}; {FETCH_HINT}")
    return path


def pack_condition(prompt_embeds: Tensor, pooled: Tensor) -> Tensor:
    """(B, L, D) token embeddings and (B, P) pooled embeddings -> (B, L + 1, D), P <= D."""
    width = prompt_embeds.shape[-1]
    if pooled.shape[-1] > width:
        raise ValueError(f"pooled width {pooled.shape[-1]} exceeds the token width {width}")
    row = torch.nn.functional.pad(pooled, (0, width - pooled.shape[-1]))
    return torch.cat([prompt_embeds, row[:, None]], dim=1)


def unpack_condition(cond: Tensor, pooled_width: int) -> tuple[Tensor, Tensor]:
    return cond[:, :-1], cond[:, -1, :pooled_width]


def decode_latents(vae: nn.Module, latents: Tensor) -> Tensor:
    """SD3 latents to [0, 1] images with ``vae`` (AutoencoderKL or AutoencoderTiny): undo the
    latent scaling and shift, decode in fp32, map [-1, 1] to [0, 1] with a hard clamp."""
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(vae.config, "shift_factor", 0.0) or 0.0
    images = vae.decode(latents.float() / scale + shift, return_dict=False)[0]
    return (images / 2 + 0.5).clamp(0, 1)


def lora_forward_in_input_dtype(layer: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    """A peft LoRA ``Linear``'s forward with its fp32 factors cast to the input's dtype (bf16):
    base(x) + (x A^T)(scaling B)^T, the sum fused into one matrix product. peft instead casts x
    to the factors' fp32, which moves several activation-sized fp32 tensors per layer. The
    factors stay fp32 (the optimizer's copy); their gradients arrive through the casts."""
    result = layer.base_layer(x, *args, **kwargs)
    if layer.disable_adapters or layer.merged:
        return result
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        down = layer.lora_A[name].weight.to(x.dtype)
        up = (layer.lora_B[name].weight * layer.scaling[name]).to(x.dtype)
        hidden = F.linear(x, down)
        result = torch.addmm(result.reshape(-1, result.shape[-1]),
                             hidden.reshape(-1, hidden.shape[-1]), up.t()).view(result.shape)
    return result


@functools.cache
def input_dtype_lora_class() -> type:
    """peft's LoRA ``Linear`` with :func:`lora_forward_in_input_dtype` as its forward (one class
    for every layer, so ``torch.compile`` compiles one block's code for all blocks)."""
    from peft.tuners.lora import Linear

    return type("InputDtypeLoraLinear", (Linear,), {"forward": lora_forward_in_input_dtype})


def compute_lora_in_input_dtype(module: nn.Module, enabled: bool = True) -> int:
    """Switch every peft LoRA ``Linear`` inside ``module`` to :func:`lora_forward_in_input_dtype`
    (``enabled``) or back to peft's forward; no dropout (rejected). Returns how many layers."""
    from peft.tuners.lora import Linear

    layers = [m for m in module.modules() if isinstance(m, Linear)]
    for layer in layers:
        if any(not isinstance(d, nn.Identity) for d in layer.lora_dropout.values()):
            raise ValueError("LoRA dropout is not supported by the input-dtype LoRA forward")
        layer.__class__ = input_dtype_lora_class() if enabled else Linear
    return len(layers)


def compile_transformer_blocks(transformer: nn.Module) -> None:
    """Regional compilation: every transformer block through ``torch.compile`` (compiled on its
    first call). The blocks share one class and code, so dynamo keeps one entry per variant
    (gradients or not, LoRA on or off, batch size, the last block's text-free output); its cache
    limit is raised to ``COMPILED_VARIANTS_PER_BLOCK`` so that none falls back to eager."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                COMPILED_VARIANTS_PER_BLOCK)
    for block in transformer.transformer_blocks:
        block.compile()


class SD3FlowModel:
    """SD3 (medium, or a tiny test model of the same classes) with a LoRA; implements
    ``FlowModel`` in the paper's time convention."""

    def __init__(self, pipeline_dir: str | Path, settings: Mapping, lora_rank: int,
                 lora_alpha: float, device: str = "cpu",
                 tiny_vae_dir: str | Path | None = None) -> None:
        from diffusers import AutoencoderTiny, StableDiffusion3Pipeline
        from peft import LoraConfig

        self.settings = {**DEFAULT_SETTINGS, **settings}
        unknown = sorted(set(self.settings) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown SD3 model setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(DEFAULT_SETTINGS)}")
        for key, allowed in SETTING_CHOICES.items():
            if self.settings[key] not in allowed:
                raise ValueError(f"model.{key} must be one of {', '.join(allowed)}, got "
                                 f"{self.settings[key]!r}")
        self.device = torch.device(device)
        self.dtype = getattr(torch, self.settings["dtype"])
        path = check_pipeline_dir(pipeline_dir)
        extra = {} if self.settings["text_encoder_3"] else {"text_encoder_3": None,
                                                             "tokenizer_3": None}
        pipe = StableDiffusion3Pipeline.from_pretrained(path, dtype=self.dtype,
                                                        local_files_only=True, **extra)
        pipe.vae.to(torch.float32)
        self.pipe = pipe.to(self.device)
        self.transformer = pipe.transformer.requires_grad_(False)
        for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            if part is not None:
                part.requires_grad_(False).eval()
        self.transformer.add_adapter(LoraConfig(
            r=lora_rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS)))
        for param in self.transformer.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        if self.settings["lora_compute_dtype"] == "model":
            compute_lora_in_input_dtype(self.transformer)
        if self.settings["attention"] == "packed":
            use_packed_joint_attention(self.transformer)
        if self.settings["compile"] == "blocks":
            compile_transformer_blocks(self.transformer)
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._lora_layers = [m for m in self.transformer.modules()
                             if isinstance(m, BaseTunerLayer)]
        self._block_lora_layers = {
            block: [m for m in block.modules() if isinstance(m, BaseTunerLayer)]
            for block in self.transformer.transformer_blocks}
        self._adapters_enabled = True
        if self.settings["gradient_checkpointing"]:
            self.transformer.enable_gradient_checkpointing(self._checkpoint)
        self.train_vae = pipe.vae
        if self.settings["train_decoder"] == "tiny":
            if tiny_vae_dir is None:
                raise ValueError("model.train_decoder is 'tiny' but resources has no tiny_vae")
            self.train_vae = AutoencoderTiny.from_pretrained(
                tiny_vae_dir, dtype=torch.float32, local_files_only=True
            ).requires_grad_(False).eval().to(self.device)
        latent_side, rest = divmod(self.settings["resolution"], pipe.vae_scale_factor)
        if rest:
            raise ValueError(f"model.resolution {self.settings['resolution']} is not a multiple "
                             f"of the VAE's factor {pipe.vae_scale_factor}")
        self.sample_shape = (self.transformer.config.in_channels, latent_side, latent_side)
        self.pooled_width = self.transformer.config.pooled_projection_dim
        self._embeddings: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------- conditions

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Packed conditions (B, L + 1, D), computed once per prompt and kept on the CPU."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if new:
            with torch.no_grad():
                embeds, _, pooled, _ = self.pipe.encode_prompt(
                    new, new, new, device=self.device, do_classifier_free_guidance=False,
                    max_sequence_length=self.settings["max_sequence_length"])
            for prompt, row in zip(new, pack_condition(embeds, pooled).cpu()):
                self._embeddings[prompt] = row
        return torch.stack([self._embeddings[p] for p in prompts]).to(self.device)

    def null_condition(self, batch_size: int) -> Tensor:
        """The empty prompt's condition, as the SD3 pipeline's default negative prompt."""
        return self.encode_prompts([""] * batch_size)

    # ------------------------------------------------------------------------- dynamics

    def time_grid(self, num_steps: int) -> Tensor:
        """t_i = 1 - sigma_i of the SD3 scheduler's ``num_steps`` shifted sigmas, then t = 1."""
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(num_steps)
        return (1.0 - scheduler.sigmas.double()).float().to(self.device)

    def _velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        embeds, pooled = unpack_condition(cond, self.pooled_width)
        sigma_steps = 1000.0 * sigma_from_time(t.double()).float()
        v_sigma = self.transformer(
            hidden_states=x.to(self.dtype), timestep=sigma_steps.expand(x.shape[0]),
            encoder_hidden_states=embeds.to(self.dtype), pooled_projections=pooled.to(self.dtype),
            return_dict=False)[0]
        return velocity_from_sigma_convention(v_sigma.to(x.dtype))

    def velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self._velocity(x, t, cond)

    def base_velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        with self._adapters(False):
            return self._velocity(x, t, cond)

    @contextlib.contextmanager
    def _adapters(self, enabled: bool):
        """The LoRA on or off inside the block, then as before."""
        previous = self._adapters_enabled
        self._set_adapters(enabled)
        try:
            yield
        finally:
            self._set_adapters(previous)

    def _set_adapters(self, enabled: bool) -> None:
        """Switch the LoRA layers themselves, and only on a change (the transformer-wide switch
        walks all of SD3 medium's 1788 modules, about 4 ms of Python)."""
        if enabled != self._adapters_enabled:
            for layer in self._lora_layers:
                layer.enable_adapters(enabled)
            self._adapters_enabled = enabled

    @contextlib.contextmanager
    def _block_adapters(self, block: nn.Module, enabled: bool):
        """One checkpointed block's recomputation: its own LoRA layers switched to ``enabled``
        (as in its forward) when the transformer's are not, then back; the other blocks' layers
        are not touched, since checkpointing enters this once per block and backward."""
        layers = self._block_lora_layers.get(block, self._lora_layers)
        switch = enabled != self._adapters_enabled
        for layer in layers if switch else ():
            layer.enable_adapters(enabled)
        try:
            yield
        finally:
            for layer in layers if switch else ():
                layer.enable_adapters(not enabled)

    @contextlib.contextmanager
    def adjoint_vjps(self):
        """The adjoint ODE's vector-Jacobian products (Adjoint Matching's lean adjoint,
        VGG-Flow-PMP's costates): each graph is one velocity evaluation deep, so with
        ``checkpoint_adjoint`` false the blocks keep their activations there instead of being
        recomputed (one forward less per step, for about 7.5 GiB of activations per 8
        unguided samples at 512 px for SD3 medium: ``scripts/activation_memory.py``)."""
        checkpointing = self.transformer.gradient_checkpointing
        if not self.settings["checkpoint_adjoint"]:
            self.transformer.gradient_checkpointing = False
        try:
            yield
        finally:
            self.transformer.gradient_checkpointing = checkpointing

    def _checkpoint(self, block: nn.Module, *args):
        """Non-reentrant gradient checkpointing of one transformer block whose recomputation (in
        the backward pass) runs with the LoRA as it was in the forward: a vector-Jacobian
        product through ``base_velocity`` (Adjoint Matching's adjoint, VGG-Flow-PMP's costate)
        runs its backward after the adapter is back on."""
        enabled = self._adapters_enabled
        return torch.utils.checkpoint.checkpoint(
            block.__call__, *args, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), self._block_adapters(block, enabled)))

    # ------------------------------------------------------------------------- images

    def decode(self, x: Tensor) -> Tensor:
        """Training-time images in [0, 1], differentiable (taesd3 or the full VAE, by config)."""
        return decode_latents(self.train_vae, x)

    def decode_for_evaluation(self, x: Tensor) -> Tensor:
        """Evaluation images in [0, 1] from the full SD3 VAE."""
        return decode_latents(self.pipe.vae, x)

    # ------------------------------------------------------------------------- adapter

    def adapter(self) -> nn.Module:
        return self.transformer

    def save_adapter(self, directory: str | Path) -> None:
        """diffusers-format LoRA: ``StableDiffusion3Pipeline.load_lora_weights(directory)``."""
        from diffusers import StableDiffusion3Pipeline
        from peft.utils import get_peft_model_state_dict

        StableDiffusion3Pipeline.save_lora_weights(
            directory, transformer_lora_layers=get_peft_model_state_dict(self.transformer))

    def load_adapter(self, directory: str | Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = Path(directory) / LORA_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"no LoRA weights {weights}")
        state = {key.removeprefix("transformer."): value
                 for key, value in load_file(str(weights)).items()}
        result = set_peft_model_state_dict(self.transformer, state)
        if result.unexpected_keys:
            raise ValueError(f"{weights} does not fit this SD3 transformer: unexpected keys "
                             f"{result.unexpected_keys[:3]}")

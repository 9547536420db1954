"""Activation memory that one SD3 transformer forward keeps for its backward, counted from shapes
alone on PyTorch's meta device (no weights, no compute, any machine):

    python scripts/activation_memory.py --shape medium --batch 8 --resolution 512
    python scripts/activation_memory.py --part reward --batch 8 --resolution 1024

It sums the bytes of the tensors autograd saves (each tensor once, parameters and their views
excluded) in a forward of ``batch`` samples with 333 text tokens (77 CLIP + 256 T5), the input
requiring grad, as in a vector-Jacobian product through the base model (no LoRA). Attention is
counted as flash attention saves it (queries, keys, values, output and fp32 log-sum-exp), not as
the meta device's math path would (the full attention matrices). This is the memory that block
checkpointing trades for one more forward (``model.gradient_checkpointing``,
``model.checkpoint_adjoint``).

``--part reward`` counts instead what a reward-gradient pass keeps (VGG-Flow's and ReFL's grad r
through taesd3): ``batch`` latents decoded in fp32 by taesd3 (SD3 medium's 16 latent channels),
resized to 224 px and embedded by a CLIP ViT-L/14 image tower (the Aesthetic reward's; its small
MLP head is left out), the latents requiring grad. Per image it grows with the pixels through the
decoder; the CLIP part does not (``reward_grad_chunk`` images are kept at a time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from unittest import mock

import torch
import torch.nn.functional as F

TEXT_TOKENS = 333


class _FlashAttentionSaves(torch.autograd.Function):
    """Shape stand-in for scaled-dot-product attention that saves what flash attention saves."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], device=q.device))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("shapes only")


@contextlib.contextmanager
def counting_saved_tensors(parameters: set[int], into: dict[int, torch.Tensor]):
    """Within the block, every tensor autograd saves (parameters and their views excluded) lands
    in ``into`` (by id, so each once); scaled-dot-product attention saves what flash attention
    saves."""

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base  # weights are saved transposed
        if id(base) not in parameters:
            into[id(tensor)] = tensor
        return tensor

    attention = lambda q, k, v, *args, **kwargs: _FlashAttentionSaves.apply(q, k, v)  # noqa: E731
    with mock.patch.object(F, "scaled_dot_product_attention", attention), \
            torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        yield


def total_bytes(tensors: dict[int, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def saved_activation_bytes(shape: str, batch: int, resolution: int) -> int:
    """Bytes autograd keeps from one forward of the ``shape`` SD3 transformer (meta device)."""
    from diffusers import SD3Transformer2DModel

    from vggflow.models.sd3_random import SHAPES, check_shape

    config, dtype = check_shape(shape)["transformer"], SHAPES[shape]["dtype"]
    with torch.device("meta"):
        model = SD3Transformer2DModel(**config).to(dtype).requires_grad_(False)
    kept: dict[int, torch.Tensor] = {}
    side = resolution // 8
    meta = {"device": "meta", "dtype": dtype}
    x = torch.empty(batch, config["in_channels"], side, side, requires_grad=True, **meta)
    text = torch.empty(batch, TEXT_TOKENS, config["joint_attention_dim"], **meta)
    pooled = torch.empty(batch, config["pooled_projection_dim"], **meta)
    with counting_saved_tensors({id(p) for p in model.parameters()}, kept):
        model(hidden_states=x, timestep=torch.full((batch,), 500.0, device="meta"),
              encoder_hidden_states=text, pooled_projections=pooled, return_dict=False)
    return total_bytes(kept)


def reward_pass_saved_bytes(batch: int, resolution: int) -> dict[str, int]:
    """Bytes autograd keeps from a reward-gradient pass of ``batch`` images (meta device), split
    into the taesd3 decode and the CLIP ViT-L/14 image embedding (resize included)."""
    from diffusers import AutoencoderTiny

    from vggflow.models.sd3 import decode_latents
    from vggflow.models.sd3_random import LATENT_SCALING, SHAPES
    from vggflow.rewards.sd3 import clip_image_embeds, random_clip_model

    with torch.device("meta"):
        decoder = AutoencoderTiny(**SHAPES["medium"]["tiny_vae"], **LATENT_SCALING)
        clip = random_clip_model("vit-l-14")
    parameters = {id(p) for module in (decoder, clip) for p in module.parameters()}
    for module in (decoder, clip):
        module.requires_grad_(False)
    decoded: dict[int, torch.Tensor] = {}
    embedded: dict[int, torch.Tensor] = {}
    latents = torch.empty(batch, 16, resolution // 8, resolution // 8, device="meta",
                          requires_grad=True)
    with counting_saved_tensors(parameters, decoded):
        images = decode_latents(decoder, latents)
    with counting_saved_tensors(parameters, embedded):
        clip_image_embeds(clip, images)
    return {"decoder": total_bytes(decoded), "clip": total_bytes(embedded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="medium", help="tiny or medium (SD3 medium)")
    parser.add_argument("--batch", type=int, default=8, help="samples in the forward")
    parser.add_argument("--resolution", type=int, default=512, help="image side in pixels")
    parser.add_argument("--out", help="also write the result as JSON here")
    parser.add_argument("--part", choices=["transformer", "reward"], default="transformer",
                        help="the transformer forward, or a reward-gradient pass (taesd3 + CLIP)")
    args = parser.parse_args()
    if args.part == "reward":
        parts = reward_pass_saved_bytes(args.batch, args.resolution)
        result = {"part": "reward", "batch": args.batch, "resolution": args.resolution,
                  **{f"{name}_gib": size / 2**30 for name, size in parts.items()}}
        print(f"reward pass, batch {args.batch}, {args.resolution} px: taesd3 decode "
              f"{result['decoder_gib']:.2f} GiB, CLIP ViT-L/14 {result['clip_gib']:.2f} GiB of "
              "saved activations")
    else:
        size = saved_activation_bytes(args.shape, args.batch, args.resolution)
        result = {"shape": args.shape, "batch": args.batch, "resolution": args.resolution,
                  "saved_activation_gib": size / 2**30}
        print(f"{args.shape}, batch {args.batch}, {args.resolution} px: "
              f"{result['saved_activation_gib']:.2f} GiB of saved activations")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

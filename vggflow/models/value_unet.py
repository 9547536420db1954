"""VGG-Flow's value network for latent-image suites (SD3): a scaled-down SD1.5-style U-Net.

As the paper describes ("a scaled-down version of the Stable Diffusion-v1.5 U-Net, initialized
with tiny weights in the final output layers") and the official code's 'small' option: a diffusers
``UNet2DConditionModel`` with 16 latent channels, block widths (64, 128, 256, 256), one layer per
block, cross-attention on the prompt's token embeddings, and ``conv_out.weight`` scaled by 1e-3.
Unlike the official code it is conditioned on the real prompt, not the empty one.
"""

from __future__ import annotations

from torch import Tensor, nn

SD3_VALUE_UNET = {
    "in_channels": 16,
    "out_channels": 16,
    "block_out_channels": (64, 128, 256, 256),
    "layers_per_block": 1,
    "cross_attention_dim": 4096,
}


class ValueUNet(nn.Module):
    """nu_phi(x, t, cond): x (B, C, H, W) latents, t (B,) in [0, 1], cond (B, L, D) embeddings."""

    def __init__(self, out_scale: float = 1e-3, **unet_config) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel(**{**SD3_VALUE_UNET, **unet_config})
        self.unet.conv_out.weight.data.mul_(out_scale)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Computed in the network's dtype (fp32), whatever the condition's (SD3's text
        encoders run in bf16); returned in ``x``'s dtype."""
        dtype = self.unet.dtype
        # diffusers' timestep embedding expects diffusion-style timesteps: 1000 t.
        out = self.unet(x.to(dtype), 1000.0 * t.to(dtype), encoder_hidden_states=cond.to(dtype))
        return out.sample.to(x.dtype)

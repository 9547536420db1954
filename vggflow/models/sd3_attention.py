"""SD3's joint attention with the image and text tokens joined before the heads are split.

diffusers' ``JointAttnProcessor2_0`` splits each projection into heads, (B, S, H * D) ->
(B, H, S, D) as a transposed view, and then concatenates image and text tokens along S of those
views: a strided copy of q, k and v per block (11% of the bf16 forward's GPU time on an H100,
``docs/bench_h100/run2/kernels_512.txt``). Here the tokens are joined in the projections' own
(B, S, H, D) layout, a contiguous copy, and the heads are a transposed view of that, the layout
flash attention reads natively. The arithmetic is the same; only memory layouts differ.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class PackedJointAttnProcessor:
    """diffusers' SD3 joint-attention processor (``attn.to_*`` on image tokens, ``attn.add_*``
    on text tokens, optional per-head q/k norms) with the token concatenation done before the
    head split. Attention without text tokens (SD3.5's second attention) is left to diffusers."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        self.image_only = JointAttnProcessor2_0()

    def __call__(self, attn: nn.Module, hidden_states: Tensor,
                 encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, *args, **kwargs):
        if encoder_hidden_states is None or attention_mask is not None:
            return self.image_only(attn, hidden_states, encoder_hidden_states, attention_mask,
                                   *args, **kwargs)
        batch, image_tokens = hidden_states.shape[:2]

        def joined_heads(image_proj, text_proj, image_norm, text_norm) -> Tensor:
            """(B, H, S_image + S_text, D), a transposed view of a contiguous (B, S, H, D)."""
            image = image_proj(hidden_states)
            text = text_proj(encoder_hidden_states)
            head_dim = image.shape[-1] // attn.heads
            image = image.view(batch, -1, attn.heads, head_dim)
            text = text.view(batch, -1, attn.heads, head_dim)
            if image_norm is not None:  # norms act on the last (head) dimension only
                image = image_norm(image)
            if text_norm is not None:
                text = text_norm(text)
            return torch.cat([image, text], dim=1).transpose(1, 2)

        query = joined_heads(attn.to_q, attn.add_q_proj, attn.norm_q, attn.norm_added_q)
        key = joined_heads(attn.to_k, attn.add_k_proj, attn.norm_k, attn.norm_added_k)
        value = joined_heads(attn.to_v, attn.add_v_proj, None, None)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        image, text = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        image = attn.to_out[1](attn.to_out[0](image))
        return image, text


def joint_attention_layers(transformer: nn.Module) -> list[nn.Module]:
    """The attention layers of an SD3 transformer that attend to text tokens too."""
    from diffusers.models.attention_processor import Attention

    return [m for m in transformer.modules()
            if isinstance(m, Attention) and getattr(m, "add_q_proj", None) is not None]


def use_packed_joint_attention(transformer: nn.Module) -> int:
    """Give every joint-attention layer of an SD3 transformer :class:`PackedJointAttnProcessor`;
    returns how many layers."""
    layers = joint_attention_layers(transformer)
    processor = PackedJointAttnProcessor()
    for layer in layers:
        layer.set_processor(processor)
    return len(layers)

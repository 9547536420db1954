"""The SD3 value network (a small UNet2DConditionModel) on small shapes, on CPU."""

import torch

from vggflow.models.value_unet import SD3_VALUE_UNET, ValueUNet

SMALL = {"in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64),
         "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
         "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 16,
         "attention_head_dim": 8, "sample_size": 16}


def test_paper_configuration_is_the_scaled_down_sd15_unet():
    assert SD3_VALUE_UNET["block_out_channels"] == (64, 128, 256, 256)
    assert SD3_VALUE_UNET["in_channels"] == SD3_VALUE_UNET["out_channels"] == 16
    assert SD3_VALUE_UNET["layers_per_block"] == 1


def test_small_value_unet_shapes_tiny_init_and_gradients():
    torch.manual_seed(0)
    net = ValueUNet(**SMALL)
    reference = ValueUNet(out_scale=1.0, **SMALL)
    x, t, cond = torch.randn(2, 4, 16, 16), torch.rand(2), torch.randn(2, 5, 16)
    out = net(x, t, cond)
    assert out.shape == x.shape
    assert out.abs().max() < 0.05 * reference(x, t, cond).abs().max() + 1e-3
    out.pow(2).mean().backward()
    assert net.unet.conv_out.weight.grad.abs().sum() > 0
    # depends on the prompt embeddings and on time
    with torch.no_grad():
        assert not torch.allclose(net(x, t, cond), net(x, t, torch.randn(2, 5, 16)))
        assert not torch.allclose(net(x, t, cond), net(x, t + 0.1, cond))


def test_bf16_condition_with_fp32_latents_computes_in_fp32():
    """SD3's text encoders run in bf16; the value network computes in its own fp32."""
    torch.manual_seed(0)
    net = ValueUNet(**SMALL)
    x, t = torch.randn(2, 4, 16, 16), torch.rand(2)
    cond = torch.randn(2, 5, 16).to(torch.bfloat16)
    with torch.no_grad():
        out = net(x, t, cond)
        assert out.dtype == torch.float32
        assert torch.equal(out, net(x, t, cond.float()))

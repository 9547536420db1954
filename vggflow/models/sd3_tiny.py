"""The ``tiny-sd3`` suite's files: SD3's classes with tiny configs and random weights, on disk in
the same formats as the real ones, so that the tiny suite exercises the real loading code.

Configs follow diffusers' own SD3 pipeline tests, with the real CLIP tokenizer (written offline,
:func:`vggflow.utils.clip_tokenizer.write_clip_tokenizer`) and no T5: a 32 x 32 image, 4 x 16 x 16
latents, one transformer block. The token width (joint_attention_dim 64) holds the pooled
embedding (2 x 32), as :func:`vggflow.models.sd3.pack_condition` requires.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_RESOLUTION = 32
TINY_PROMPTS = ("a cat", "a red apple", "a house by the sea", "a portrait of a dog",
                "a painting of a mountain", "a bowl of soup")


def write_tiny_sd3(directory: str | Path, seed: int = 0) -> dict[str, str]:
    """Write ``pipeline/`` (a StableDiffusion3Pipeline without T5) and ``taesd3/`` (an
    AutoencoderTiny) under ``directory``; return their paths as resources entries."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from vggflow.utils.clip_tokenizer import write_clip_tokenizer

    directory = Path(directory)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        joint_attention_dim=64, pooled_projection_dim=64)
    text = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, projection_dim=32, vocab_size=49408,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
                          max_position_embeddings=77, hidden_act="gelu")
    encoders = [CLIPTextModelWithProjection(text), CLIPTextModelWithProjection(text)]
    vae = AutoencoderKL(
        sample_size=TINY_RESOLUTION, in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305,
        shift_factor=0.0609)
    tokenizer_dir = write_clip_tokenizer(directory / "clip_tokenizer")
    tokenizers = [CLIPTokenizer.from_pretrained(tokenizer_dir) for _ in range(2)]
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders[0], tokenizer=tokenizers[0], text_encoder_2=encoders[1],
        tokenizer_2=tokenizers[1], text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(directory / "pipeline")
    taesd = AutoencoderTiny(
        latent_channels=4, encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), scaling_factor=1.5305,
        shift_factor=0.0609)
    taesd.save_pretrained(directory / "taesd3")
    return {"pipeline": str(directory / "pipeline"), "tiny_vae": str(directory / "taesd3")}


def write_tiny_sd3_suite(directory: str | Path, seed: int = 0) -> dict:
    """Every file of the tiny-sd3 suite under ``directory``: the pipeline and taesd3
    (:func:`write_tiny_sd3`), tiny versions of the three rewards under ``rewards/``, and
    ``prompts.txt``. Writes ``resources.yaml`` (the resources block) last and returns it."""
    from vggflow.config import write_yaml_atomic
    from vggflow.rewards.sd3 import REWARD_NAMES, write_tiny_reward_files

    directory = Path(directory)
    resources = write_tiny_sd3(directory, seed)
    resources["rewards"] = {name: write_tiny_reward_files(name, directory / "rewards", seed)
                            for name in REWARD_NAMES}
    (directory / "prompts.txt").write_text("\n".join(TINY_PROMPTS) + "\n")
    resources["prompts"] = {"files": [str(directory / "prompts.txt")], "heldout_per_file": 2,
                            "eval_count": 2}
    write_yaml_atomic(resources, directory / "resources.yaml")
    return resources

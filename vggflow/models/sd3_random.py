"""SD3 pipelines with random weights, on disk in the real files' formats, so that the real loading
code runs on them: the ``tiny-sd3`` suite's files (CPU tests) and SD3-medium-shaped files for GPU
benchmarks (``resources.sd3.random_weights: medium``; nothing is downloaded, no T5).

Shapes (:data:`SHAPES`):

* ``tiny``: configs after diffusers' own SD3 pipeline tests, with the real CLIP tokenizer (written
  offline, :func:`vggflow.utils.clip_tokenizer.write_clip_tokenizer`): a 32 x 32 image,
  4 x 16 x 16 latents, one transformer block. The token width (joint_attention_dim 64) holds the
  pooled embedding (2 x 32), as :func:`vggflow.models.sd3.pack_condition` requires. Saved in fp32.
* ``medium``: Stable Diffusion 3 medium's configs (stabilityai/stable-diffusion-3-medium-diffusers:
  a 24-block MMDiT of width 1536, 2.0 B parameters; CLIP-L and CLIP-G text encoders; the 16-channel
  VAE) and taesd3's, saved in bf16 like the real fp16 files. Same parameter counts and FLOPs as the
  real model, not its outputs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vggflow.rewards.sd3 import RANDOM_CLIP_CONFIGS

TINY_RESOLUTION = 32
TINY_PROMPTS = ("a cat", "a red apple", "a house by the sea", "a portrait of a dog",
                "a painting of a mountain", "a bowl of soup")

_CLIP_TOKENS = {"vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407,
                "pad_token_id": 0, "max_position_embeddings": 77}
SHAPES = {
    "tiny": {
        "transformer": dict(
            sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
            joint_attention_dim=64, pooled_projection_dim=64),
        "text_encoders": [dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                               num_hidden_layers=2, projection_dim=32, hidden_act="gelu")] * 2,
        "vae": dict(
            sample_size=TINY_RESOLUTION, latent_channels=4, block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4),
        "tiny_vae": dict(
            latent_channels=4, encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1)),
        "dtype": torch.float32,
    },
    "medium": {
        "transformer": dict(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
            attention_head_dim=64, num_attention_heads=24, caption_projection_dim=1536,
            joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=192),
        "text_encoders": [  # CLIP ViT-L/14's text tower (the Aesthetic CLIP's), OpenCLIP bigG's
            {**RANDOM_CLIP_CONFIGS["vit-l-14"]["text"], "projection_dim": 768},
            dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                 num_hidden_layers=32, projection_dim=1280, hidden_act="gelu")],
        "vae": dict(
            sample_size=1024, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=32),
        "tiny_vae": dict(latent_channels=16),  # taesd3: AutoencoderTiny's default blocks
        "dtype": torch.bfloat16,
    },
}
# SD3's latent normalisation, shared by its VAE and taesd3.
LATENT_SCALING = {"scaling_factor": 1.5305, "shift_factor": 0.0609}


def check_shape(shape: str) -> dict:
    if shape not in SHAPES:
        raise ValueError(f"unknown SD3 shape {shape!r}; known: {', '.join(SHAPES)}")
    return SHAPES[shape]


def build_random_sd3(shape: str = "tiny", tokenizer_dir: str | Path | None = None):
    """A ``StableDiffusion3Pipeline`` without T5 of the given shape with random weights (drawn
    from torch's global generator), and its taesd3 (``AutoencoderTiny``); both in fp32.

    ``tokenizer_dir``: a CLIP tokenizer directory; None builds the pipeline without tokenizers
    (enough for shape checks, e.g. on the meta device)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    spec = check_shape(shape)
    transformer = SD3Transformer2DModel(**spec["transformer"])
    encoders = [CLIPTextModelWithProjection(CLIPTextConfig(**tower, **_CLIP_TOKENS))
                for tower in spec["text_encoders"]]
    vae = AutoencoderKL(in_channels=3, out_channels=3, use_quant_conv=False,
                        use_post_quant_conv=False, **spec["vae"], **LATENT_SCALING)
    tokenizers = [None, None]
    if tokenizer_dir is not None:
        tokenizers = [CLIPTokenizer.from_pretrained(tokenizer_dir) for _ in range(2)]
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders[0], tokenizer=tokenizers[0], text_encoder_2=encoders[1],
        tokenizer_2=tokenizers[1], text_encoder_3=None, tokenizer_3=None)
    taesd = AutoencoderTiny(**spec["tiny_vae"], **LATENT_SCALING)
    return pipe, taesd


def write_random_sd3(directory: str | Path, shape: str = "tiny", seed: int = 0,
                     device: str = "cpu") -> dict[str, str]:
    """Write ``pipeline/`` (a StableDiffusion3Pipeline without T5) and ``taesd3/`` (an
    AutoencoderTiny) of ``shape`` under ``directory``; return their paths as resources entries.
    ``device``: where the weights are drawn (``cuda`` draws SD3 medium's in seconds, other
    values than on the CPU)."""
    from vggflow.utils.clip_tokenizer import write_clip_tokenizer

    directory = Path(directory)
    tokenizer_dir = write_clip_tokenizer(directory / "clip_tokenizer")
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        pipe, taesd = build_random_sd3(shape, tokenizer_dir)
    dtype = SHAPES[shape]["dtype"]
    for part in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        part.to(dtype)
    pipe.save_pretrained(directory / "pipeline")
    taesd.save_pretrained(directory / "taesd3")
    return {"pipeline": str(directory / "pipeline"), "tiny_vae": str(directory / "taesd3")}


def write_random_sd3_suite(directory: str | Path, shape: str = "tiny", seed: int = 0,
                           rewards: tuple[str, ...] | None = None, device: str = "cpu") -> dict:
    """Every file of an SD3 suite with random weights drawn on ``device`` under ``directory``:
    the pipeline and taesd3 (:func:`write_random_sd3`), random versions of ``rewards`` (default:
    all three) under ``rewards/``, and ``prompts.txt``. Writes ``resources.yaml`` (the resources
    block) last and returns it."""
    from vggflow.config import write_yaml_atomic
    from vggflow.rewards.sd3 import REWARD_NAMES, write_random_reward_files

    check_shape(shape)
    directory = Path(directory)
    resources = write_random_sd3(directory, shape, seed, device)
    resources["rewards"] = {
        name: write_random_reward_files(name, directory / "rewards", seed, shape, device)
        for name in (rewards or REWARD_NAMES)}
    (directory / "prompts.txt").write_text("\n".join(TINY_PROMPTS) + "\n")
    resources["prompts"] = {"files": [str(directory / "prompts.txt")], "heldout_per_file": 2,
                            "eval_count": 2}
    write_yaml_atomic(resources, directory / "resources.yaml")
    return resources

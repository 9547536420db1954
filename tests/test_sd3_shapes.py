"""The SD3-medium-shaped random pipeline (GPU benchmarks) has SD3 medium's sizes and wiring, checked
on the meta device (no memory, no arithmetic): parameter counts of every part, and a forward of
every part at 512 px whose output shapes fit the next part's input."""

from __future__ import annotations

import pytest
import torch

from vggflow.models.sd3 import pack_condition
from vggflow.models.sd3_random import SHAPES, build_random_sd3, check_shape
from vggflow.rewards.sd3 import RANDOM_CLIP_CONFIGS, random_clip_model


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def medium():
    with torch.device("meta"):
        return build_random_sd3("medium")


def test_medium_parts_have_sd3_mediums_parameter_counts(medium):
    pipe, taesd = medium
    # stabilityai/stable-diffusion-3-medium-diffusers' parts, and taesd3.
    assert count(pipe.transformer) == 2_028_328_000
    assert count(pipe.text_encoder) == 123_650_304
    assert count(pipe.text_encoder_2) == 694_659_840
    assert count(pipe.vae) == 83_819_683
    assert count(taesd) == 2_458_899
    assert len(pipe.transformer.transformer_blocks) == 24


def test_medium_parts_fit_together_at_512_px(medium):
    pipe, taesd = medium
    batch, tokens = 2, 77
    with torch.device("meta"):
        ids = torch.zeros(batch, tokens, dtype=torch.long)
        outputs = [encoder(ids, output_hidden_states=True)
                   for encoder in (pipe.text_encoder, pipe.text_encoder_2)]
        pooled = torch.cat([out.text_embeds for out in outputs], dim=-1)
        clip_tokens = torch.cat([out.hidden_states[-2] for out in outputs], dim=-1)
        width = pipe.transformer.config.joint_attention_dim
        t5_zeros = torch.zeros(batch, 256, width)
        embeds = torch.cat([torch.nn.functional.pad(clip_tokens, (0, width - 2048)), t5_zeros], 1)
        cond = pack_condition(embeds, pooled)
        latents = torch.zeros(batch, 16, 64, 64)
        velocity = pipe.transformer(
            hidden_states=latents, timestep=torch.zeros(batch), encoder_hidden_states=cond[:, :-1],
            pooled_projections=pooled, return_dict=False)[0]
        images = taesd.decode(velocity, return_dict=False)[0]
        full = pipe.vae.decode(velocity, return_dict=False)[0]
    assert pooled.shape == (batch, pipe.transformer.config.pooled_projection_dim)
    assert cond.shape == (batch, tokens + 256 + 1, width)
    assert velocity.shape == latents.shape
    assert images.shape == full.shape == (batch, 3, 512, 512)


@pytest.mark.parametrize(("kind", "params", "embed"), [("vit-l-14", 427_616_513, 768),
                                                        ("vit-h-14", 986_109_441, 1024)])
def test_random_reward_clips_have_the_real_shapes(kind, params, embed):
    """openai/clip-vit-large-patch14 (Aesthetic score) and CLIP ViT-H/14 (PickScore)."""
    with torch.device("meta"):
        clip = random_clip_model(kind)
        size = RANDOM_CLIP_CONFIGS[kind]["vision"]["image_size"]
        embeds = clip.get_image_features(pixel_values=torch.zeros(2, 3, size, size))
    assert count(clip) == params
    embeds = getattr(embeds, "pooler_output", embeds)
    assert embeds.shape == (2, embed)


def test_random_weights_are_drawn_on_the_requested_device(tmp_path, monkeypatch):
    """``make-random-sd3 --device cuda`` draws the weights on the GPU (seconds instead of about
    30 s for SD3 medium on 2 cores): the pipeline and every reward are built inside the device's
    context. Checked with the meta device standing in (the recorders build on the CPU)."""
    from vggflow.models import sd3_random
    from vggflow.rewards import sd3 as sd3_rewards

    seen = []

    def recording(build):
        def build_and_record(*args, **kwargs):
            seen.append((build.__name__, torch.empty(0).device.type))
            with torch.device("cpu"):
                return build(*args, **kwargs)
        return build_and_record

    monkeypatch.setattr(sd3_random, "build_random_sd3", recording(build_random_sd3))
    monkeypatch.setattr(sd3_rewards, "random_clip_model", recording(random_clip_model))
    monkeypatch.setattr(sd3_rewards, "AestheticMLP", recording(sd3_rewards.AestheticMLP))
    sd3_random.write_random_sd3_suite(tmp_path, "tiny", rewards=("aesthetic", "pickscore"),
                                      device="meta")
    assert seen == [("build_random_sd3", "meta"), ("random_clip_model", "meta"),
                    ("AestheticMLP", "meta"), ("random_clip_model", "meta")]
    assert (tmp_path / "resources.yaml").exists()


def test_unknown_shape_is_named():
    with pytest.raises(ValueError, match="unknown SD3 shape 'large'.*tiny, medium"):
        check_shape("large")
    assert set(SHAPES) == {"tiny", "medium"}


def activation_memory(tmp_path, *args: str) -> dict:
    """The JSON result of ``scripts/activation_memory.py ARGS``."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / f"{'_'.join(arg.strip('-') for arg in args)}.json"
    subprocess.run([sys.executable, "scripts/activation_memory.py", *args, "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.read_text())


def test_activation_memory_count_grows_with_samples_and_tokens_not_weights(tmp_path):
    """scripts/activation_memory.py on SD3 medium's shapes (meta device): the saved activations
    are proportional to the samples (no weights counted) and grow like the tokens, not their
    square (attention counted as flash attention saves it)."""
    def gib(batch: int, resolution: int) -> float:
        return activation_memory(tmp_path, "--shape", "medium", "--batch", str(batch),
                                 "--resolution", str(resolution))["saved_activation_gib"]

    one = gib(1, 512)
    assert one > 0 and gib(2, 512) == pytest.approx(2 * one, rel=1e-9)
    tokens = {512: 32 * 32 + 333, 1024: 64 * 64 + 333}
    assert gib(1, 1024) / one == pytest.approx(tokens[1024] / tokens[512], rel=0.2)


def test_reward_pass_memory_count_grows_with_pixels_in_the_decoder_only(tmp_path):
    """scripts/activation_memory.py --part reward (meta device): a reward-gradient pass keeps
    activations in proportion to its images; the taesd3 decode's grow with the pixels (4x from
    512 to 1024 px), the CLIP ViT-L/14 embedding's do not (its input is resized to 224 px)."""
    def parts(batch: int, resolution: int) -> dict:
        return activation_memory(tmp_path, "--part", "reward", "--batch", str(batch),
                                 "--resolution", str(resolution))

    one, two, large = parts(1, 512), parts(2, 512), parts(1, 1024)
    assert one["decoder_gib"] > 0 and one["clip_gib"] > 0
    for name in ("decoder_gib", "clip_gib"):
        assert two[name] == pytest.approx(2 * one[name], rel=1e-6)  # + a few fixed bytes
    assert large["decoder_gib"] / one["decoder_gib"] == pytest.approx(4, rel=0.02)
    assert large["clip_gib"] == pytest.approx(one["clip_gib"], rel=1e-9)


def test_bench_variants_apply_their_overlays_to_the_config_and_the_method(tmp_path):
    """scripts/bench_variants.py: each suffix overlays its block (``_diffusers_attention``: the
    model's, ``_forward_fd``: the method's settings, which the experiment config cannot hold);
    the plain variant keeps the defaults; an unknown one, and a method setting the method does
    not have, are refused by name."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_variants.py"
    subprocess.run([sys.executable, script, "--out-dir", str(tmp_path), "vggflow",
                    "vggflow_forward_fd_diffusers_attention"], check=True, timeout=120)
    plain = yaml.safe_load((tmp_path / "vggflow.yaml").read_text())
    both = yaml.safe_load((tmp_path / "vggflow_forward_fd_diffusers_attention.yaml").read_text())
    assert (plain["method"]["fd_scheme"], plain["model"]["attention"]) == ("central", "packed")
    assert (both["method"]["fd_scheme"], both["model"]["attention"]) == ("forward", "diffusers")
    unknown = subprocess.run([sys.executable, script, "--out-dir", str(tmp_path), "vggflow_bogus"],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode != 0 and "unknown variant 'vggflow_bogus'" in unknown.stderr
    foreign = subprocess.run([sys.executable, script, "--out-dir", str(tmp_path),
                              "adjoint_matching_forward_fd"], capture_output=True, text=True,
                             timeout=120)
    assert foreign.returncode != 0 and "unknown key(s) 'fd_scheme'" in foreign.stderr
    assert not (tmp_path / "adjoint_matching_forward_fd.yaml").exists()

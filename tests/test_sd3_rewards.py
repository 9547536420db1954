"""SD3 rewards: tiny random-weight stand-ins through the real builders; real weights when present.

Set VGGFLOW_SD3_RESOURCES to a directory with the real files (the layout of
``vggflow.rewards.sd3.reward_paths``) to run the real-weight checks too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from vggflow.rewards.base import REWARDS, Reward
from vggflow.rewards.sd3 import (
    REWARD_NAMES,
    resize_max_size,
    reward_paths,
    write_random_reward_files,
)

PROMPTS = ["a photo of a cat", "an oil painting of a lighthouse in a storm"]
REAL_ROOT = os.environ.get("VGGFLOW_SD3_RESOURCES")


def build(name: str, paths: dict) -> Reward:
    return REWARDS.get(name)({"rewards": {name: paths}}, "cpu")


def parameters(reward) -> list[nn.Parameter]:
    modules = [value for value in vars(reward).values() if isinstance(value, nn.Module)]
    return [p for module in modules for p in module.parameters()]


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("sd3_rewards")
    return {name: write_random_reward_files(name, root / name, seed=0) for name in REWARD_NAMES}


@pytest.fixture(scope="module")
def tiny_rewards(tiny_paths) -> dict[str, Reward]:
    return {name: build(name, paths) for name, paths in tiny_paths.items()}


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_scores_are_differentiable_and_parameters_frozen(tiny_rewards, name):
    reward = tiny_rewards[name]
    assert isinstance(reward, Reward) and reward.name == name
    images = torch.rand(2, 3, 24, 40, requires_grad=True)  # non-square: exercises the padding
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    params = parameters(reward)
    assert params and not any(p.requires_grad or p.grad is not None for p in params)


@pytest.mark.parametrize("name", ["hpsv2", "pickscore"])
def test_prompt_conditioned_scores_depend_on_the_prompt(tiny_rewards, name):
    reward = tiny_rewards[name]
    images = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)
    scores = reward(images, PROMPTS)
    assert (scores[0] - scores[1]).abs() > 1e-6
    # Cached text embeddings give the same scores again, one cache entry per distinct prompt.
    assert torch.equal(reward(images, PROMPTS), scores)
    assert len(reward.text.cache) == 2


def test_aesthetic_ignores_the_prompt(tiny_rewards):
    images = torch.rand(2, 3, 32, 32)
    reward = tiny_rewards["aesthetic"]
    assert torch.equal(reward(images, PROMPTS), reward(images, PROMPTS[::-1]))


def test_resize_max_size_matches_the_hpsv2_transform():
    """hpsv2's ResizeMaxSize(size, fill=0) on one tensor image, with torchvision."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    image = torch.rand(3, 30, 50)
    size = 24
    height, width = image.shape[1:]
    scale = size / max(height, width)
    new_size = [round(height * scale), round(width * scale)]
    expected = tvf.resize(image, new_size, tvf.InterpolationMode.BICUBIC)
    pad_h, pad_w = size - new_size[0], size - new_size[1]
    expected = tvf.pad(expected, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2],
                       fill=0)
    result = resize_max_size(image[None], size)[0]
    assert result.shape == (3, size, size)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, key", [("aesthetic", "clip"), ("aesthetic", "mlp"),
                                       ("hpsv2", "checkpoint"), ("hpsv2", "model_config"),
                                       ("pickscore", "model"), ("pickscore", "processor")])
def test_a_missing_path_is_named(tiny_paths, tmp_path, name, key):
    missing = tmp_path / "not-there"
    with pytest.raises(FileNotFoundError, match="fetch_sd3_resources") as error:
        build(name, {**tiny_paths[name], key: str(missing)})
    assert str(missing) in str(error.value)


def test_a_missing_resources_entry_is_named():
    with pytest.raises(KeyError, match="pickscore"):
        REWARDS.get("pickscore")({"rewards": {}}, "cpu")
    with pytest.raises(KeyError, match="mlp"):
        build("aesthetic", {"clip": "somewhere"})


def test_wrong_files_are_named(tiny_paths, tmp_path):
    not_clip = tmp_path / "t5"
    not_clip.mkdir()
    (not_clip / "config.json").write_text(json.dumps({"model_type": "t5"}))
    cases = [
        ("aesthetic", "clip", not_clip, "model_type 't5'"),
        ("pickscore", "model", not_clip, "model_type 't5'"),
        ("pickscore", "processor", not_clip, "tokenizer"),
        ("aesthetic", "mlp", Path(tiny_paths["hpsv2"]["checkpoint"]), "aesthetic MLP"),
        ("hpsv2", "checkpoint", Path(tiny_paths["aesthetic"]["mlp"]), "HPS v2.1"),
        ("hpsv2", "checkpoint", not_clip, "not a file"),
    ]
    for name, key, path, expected in cases:
        with pytest.raises(ValueError, match=expected) as error:
            build(name, {**tiny_paths[name], key: str(path)})
        assert str(path) in str(error.value), (name, key)


def test_clip_tokenizer_matches_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from transformers import CLIPTokenizer

    from vggflow.utils.clip_tokenizer import write_clip_tokenizer

    prompts = ["a photo of a cat", "An astronaut riding a HORSE, 4k, trending on artstation!!",
               "café  naïve — emoji 🐱, it's the dog's ball;\tthey've done it", "",
               " ".join(["word"] * 100)]
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "tok"),
                                              local_files_only=True)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    ours = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt")
    theirs = open_clip.get_tokenizer("ViT-H-14")(prompts)
    assert ours.input_ids.shape == theirs.shape == (len(prompts), 77)
    content = ours.attention_mask.bool()
    assert torch.equal(ours.input_ids[content], theirs[content])
    assert (theirs[~content] == 0).all()


@pytest.mark.skipif(not REAL_ROOT, reason="VGGFLOW_SD3_RESOURCES is not set (real reward weights)")
@pytest.mark.parametrize("name, low, high", [("aesthetic", 3.0, 8.0), ("hpsv2", 0.0, 0.5),
                                             ("pickscore", 10.0, 30.0)])
def test_real_weights_score_a_grey_image_plausibly(name, low, high):
    paths = reward_paths(REAL_ROOT)[name]
    absent = [p for key, p in paths.items() if key != "model" and not Path(p).exists()]
    if absent:
        pytest.skip(f"real {name} files absent: {', '.join(absent)}")
    reward = build(name, paths)
    images = torch.full((1, 3, 256, 256), 0.5, requires_grad=True)
    scores = reward(images, ["a photo of a cat"])
    assert scores.shape == (1,) and low < scores.item() < high, scores
    scores.sum().backward()
    assert images.grad.abs().sum() > 0

import math
import subprocess
import sys

import numpy as np
import torch

from vggflow.suites.digits import DigitsSuite


def test_prepare_digits_splits_by_class_without_torch(tmp_path):
    """The split's command (the first job of every digits run) writes a stratified split
    in [0, 1] and does not import torch (about 2.5 s of the benchmark's critical path)."""
    out = tmp_path / "data.npz"
    check = ("import sys; from vggflow.cli import main; "
             f"code = main(['prepare-digits', '--out', {str(out)!r}, '--holdout-fraction', "
             "'0.2', '--seed', '0']); print(code, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True)
    assert run.stdout.splitlines()[-1] == "0 False", run.stdout
    with np.load(out) as data:
        train, held = data["train_labels"], data["heldout_labels"]
        assert data["train_images"].shape == (len(train), 1, 8, 8)
        assert data["train_images"].dtype == np.float32
        assert 0 <= data["heldout_images"].min() and data["heldout_images"].max() == 1
    assert len(held) == math.ceil(0.2 * (len(train) + len(held)))  # scikit-learn's rounding
    train_share = np.bincount(train, minlength=10) / len(train)
    held_share = np.bincount(held, minlength=10) / len(held)
    assert np.abs(train_share - held_share).max() < 0.01  # stratified by class


def test_rewards_are_differentiable_and_frozen(digits_resources):
    suite = DigitsSuite(digits_resources)
    prompts = [f"a handwritten {d}" for d in range(4)]
    for name in ("thickness", "margin"):
        reward = suite.reward(name)
        images = torch.rand(4, 1, 8, 8, requires_grad=True)
        scores = reward(images, prompts)
        assert scores.shape == (4,) and scores.dtype == torch.float32
        scores.sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0
        assert not any(p.requires_grad for p in reward.net.parameters())


def test_margin_reward_depends_on_the_prompt(digits_resources):
    reward = DigitsSuite(digits_resources).reward("margin")
    images = torch.rand(2, 1, 8, 8)
    a = reward(images, ["a handwritten 1", "a handwritten 1"])
    b = reward(images, ["a handwritten 7", "a handwritten 7"])
    assert not torch.allclose(a, b)


def test_thickness_reward_prefers_thick_strokes(digits_resources):
    reward = DigitsSuite(digits_resources).reward("thickness")
    thin = torch.zeros(1, 1, 8, 8)
    thin[..., 1:7, 4] = 1.0
    thick = torch.zeros(1, 1, 8, 8)
    thick[..., 1:7, 3:6] = 1.0
    assert reward(thick, [""]) > reward(thin, [""])


def test_lora_starts_at_the_base_model_and_round_trips(digits_resources, tmp_path):
    suite = DigitsSuite(digits_resources, lora_rank=4, lora_alpha=4)
    model = suite.flow_model
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    cond = model.encode_prompts(["a handwritten 3"] * 3)
    assert torch.equal(model.velocity(x, t, cond), model.base_velocity(x, t, cond))
    trainable = [p for p in model.adapter().parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.adapter().named_parameters()
                             if p.requires_grad)
    with torch.no_grad():
        for p in trainable:
            p.add_(0.1 * torch.randn_like(p))
    tuned = model.velocity(x, t, cond)
    assert not torch.allclose(tuned, model.base_velocity(x, t, cond))
    model.save_adapter(tmp_path / "lora")
    fresh = DigitsSuite(digits_resources, lora_rank=4, lora_alpha=4).flow_model
    fresh.load_adapter(tmp_path / "lora")
    assert torch.allclose(fresh.velocity(x, t, cond), tuned)


def test_reference_images_and_features(digits_resources):
    suite = DigitsSuite(digits_resources)
    ref = suite.reference_images("a handwritten 5")
    assert ref.ndim == 4 and len(ref) > 20
    assert suite.features(ref).shape == (len(ref), 64)


def test_registries_name_what_config_names(digits_resources):
    import pytest

    from vggflow.models.base import FLOW_MODELS, FlowModel
    from vggflow.rewards.base import REWARDS, Reward
    from vggflow.suites import SUITES, Suite, load_builtin_suites

    load_builtin_suites()
    assert {"thickness", "margin"} <= set(REWARDS.names())
    assert "digits" in FLOW_MODELS and "digits" in SUITES
    suite = SUITES.get("digits")(digits_resources)
    assert isinstance(suite, Suite)
    assert isinstance(suite.flow_model, FlowModel)
    assert isinstance(suite.reward("margin"), Reward)
    with pytest.raises(KeyError, match="known rewards: .*margin.*thickness"):
        REWARDS.get("aesthetics")
    wrong = {**digits_resources, "rewards": {"margin": digits_resources["rewards"]["thickness"]}}
    with pytest.raises(ValueError, match="holds the 'thickness' reward"):
        REWARDS.get("margin")(wrong, "cpu")

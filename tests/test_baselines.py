"""ReFL, DRaFT-K and DRaFT-LV: they raise the reward, touch only trainable parameters, and reject
bad settings at validation."""

import pandas as pd
import pytest
import torch

from vggflow import closed_form
from vggflow.config import ConfigError, RunConfig
from vggflow.train import LOG_FILE, Trainer

BASELINES = {
    "refl": {"name": "refl"},
    "draft": {"name": "draft", "truncation": 2},
    "draft_lv": {"name": "draft_lv", "renoised_samples": 2},
}


def reward_gain(trainer) -> float:
    log = pd.read_csv(trainer.state_dir / LOG_FILE)
    return log["reward_mean"].iloc[-5:].mean() - log["reward_mean"].iloc[:5].mean()


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_raises_the_toy2d_reward(name, tmp_path):
    cfg = closed_form.run_config("vggflow", 40)
    cfg["method"] = {**BASELINES[name], "lr": 2e-3, "reward_relu": False}
    trainer = Trainer(RunConfig.from_mapping(cfg), tmp_path / "state", threads=1)
    trainer.run()
    assert reward_gain(trainer) > 0.1, (name, reward_gain(trainer))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_raises_the_digits_reward_and_touches_only_trainable_params(
        name, make_run_config, tmp_path):
    cfg = make_run_config(method_name=name, method={**BASELINES[name], "lr": 3e-3},
                          train={"max_steps": 40, "eval_every": 40, "checkpoint_every": 40})
    trainer = Trainer(RunConfig.from_mapping(cfg), tmp_path / "state", threads=1)
    trainer.run()
    assert reward_gain(trainer) > 0, name
    generator = torch.Generator().manual_seed(0)
    batch = trainer.method.prepare(trainer.rollout_batch(generator), generator)
    trainer.method.loss("lora", batch, 0)["loss"].backward()
    network = trainer.model.adapter()
    touched = {n for n, p in network.named_parameters() if p.grad is not None}
    assert touched and all(p.requires_grad for n, p in network.named_parameters() if n in touched)
    assert all("lora_" in n for n in touched)
    assert not any(p.grad is not None for p in trainer.reward.net.parameters())


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"name": "draft", "truncation": 21}, "truncation: 21 is larger than sampler.num_steps"),
        ({"name": "draft", "truncation": 0}, "truncation: must be at least 1"),
        ({"name": "draft_lv", "renoised_samples": 0}, "needs n >= 1"),
        ({"name": "draft_lv", "truncation": 2}, "DRaFT-LV uses K = 1"),
        ({"name": "refl", "stop_steps": [15, 20]}, "stop_steps"),
    ],
)
def test_bad_baseline_settings_name_the_key(method, message, make_run_config, tmp_path):
    cfg = make_run_config(method_name=method["name"], method=method)
    with pytest.raises(ConfigError, match=message):
        Trainer(RunConfig.from_mapping(cfg), tmp_path / "state", threads=1)


def test_draft_k_differentiates_the_whole_guided_chain(make_run_config):
    """DRaFT-K (K = 3, guidance 2): the LoRA gradient is that of the reward of the last K guided
    Euler steps from the detached start, written out here with both branches differentiated after
    the first step (whose input is detached; its unconditional branch gets no LoRA gradient). It
    differs from the chain with every unconditional branch detached, which drops the branch's
    Jacobian with respect to the state."""
    cfg = make_run_config(method_name="draft", method={"name": "draft", "truncation": 3})
    trainer = Trainer(RunConfig.from_mapping(cfg), "/nonexistent-state", threads=1)
    method, model = trainer.method, trainer.model
    generator = torch.Generator().manual_seed(0)
    batch = method.prepare(trainer.rollout_batch(generator), generator)
    guidance, prompts = batch.guidance, batch.prompts
    assert guidance.scale != 1.0
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a LoRA away from zero, so that both branches depend on it
        for name, param in model.adapter().named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    lora = [p for p in model.adapter().parameters() if p.requires_grad]

    def chain_gradient(detach_after_first: bool):
        x = batch.x
        for index, (t0, t1) in enumerate(zip(batch.times[:-1], batch.times[1:])):
            t = t0.expand(x.shape[0])
            v_cond = model.velocity(x, t, guidance.cond)
            v_uncond = model.velocity(x, t, guidance.uncond)
            if index == 0 or detach_after_first:
                v_uncond = v_uncond.detach()
            x = x + (t1 - t0) * (v_uncond + guidance.scale * (v_cond - v_uncond))
        reward = torch.relu(method.reward(model.decode(x), prompts)).mean()
        return torch.autograd.grad(-reward, lora)

    got = torch.autograd.grad(method.loss("lora", batch, 0)["loss"], lora)
    want, all_detached = chain_gradient(False), chain_gradient(True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    gap = max((a - b).norm() / b.norm() for a, b in zip(all_detached, want) if b.norm() > 0)
    assert gap > 1e-2, gap

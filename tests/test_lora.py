"""The small suites' LoRA (vggflow.models.lora) against peft, which it replaces there."""

from __future__ import annotations

import copy

import pytest
import torch

from vggflow.models.lora import LoRAModel, load_lora, save_lora
from vggflow.models.mlp import ConditionalMLP

RANK, ALPHA = 4, 8.0


def base_net() -> ConditionalMLP:
    torch.manual_seed(0)
    return ConditionalMLP(dim=64, hidden=32, depth=2)


def peft_model(net: ConditionalMLP, rank: int = RANK, alpha: float = ALPHA):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                        target_modules=net.lora_targets())
    return get_peft_model(net, config)


def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 8, 8, generator=generator)
    t = torch.rand(5, generator=generator)
    return x, t, torch.tensor([0, 3, 7, 10, 2])


def train_a_little(model) -> None:
    """Three AdamW steps, so that B is non-zero and the outputs depend on both factors."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(*inputs()).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize(("rank", "alpha", "fused"), [(RANK, ALPHA, True), (4, 6.0, False)])
def test_same_draws_forward_and_training_as_peft(rank, alpha, fused):
    """Bit for bit, with the one-addmm forward (scaling 2) and with peft's three operations
    (scaling 1.5, which is not exact in floating point)."""
    torch.manual_seed(3)
    ours = LoRAModel(base_net(), base_net().lora_targets(), rank, alpha)
    assert {layer.fused for _, layer in ours.lora_layers()} == {fused}
    torch.manual_seed(3)
    theirs = peft_model(base_net(), rank, alpha)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
        sum(p.numel() for p in theirs.parameters() if p.requires_grad) > 0
    train_a_little(ours)
    train_a_little(theirs)
    assert torch.equal(ours(*inputs()), theirs(*inputs()))  # bit for bit
    with ours.disable_adapter(), theirs.disable_adapter():
        assert torch.equal(ours(*inputs()), theirs(*inputs()))
        assert torch.equal(ours(*inputs()), base_net()(*inputs()))


def test_files_load_in_peft_and_back(tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    ours = LoRAModel(base_net(), base_net().lora_targets(), RANK, ALPHA)
    train_a_little(ours)
    save_lora(ours, tmp_path / "lora")
    theirs = PeftModel.from_pretrained(base_net(), str(tmp_path / "lora"))
    assert torch.equal(ours(*inputs()), theirs(*inputs()))
    peft_dir = tmp_path / "peft"
    theirs.save_pretrained(str(peft_dir))
    again = LoRAModel(base_net(), base_net().lora_targets(), RANK, ALPHA)
    load_lora(again, peft_dir)
    assert torch.equal(again(*inputs()), ours(*inputs()))
    assert set(get_peft_model_state_dict(theirs)) == set(ours.adapter_state_dict())


def test_wrong_files_and_targets_fail_clearly(tmp_path):
    small = LoRAModel(base_net(), ["in_proj"], RANK, ALPHA)
    save_lora(small, tmp_path)
    full = LoRAModel(base_net(), base_net().lora_targets(), RANK, ALPHA)
    with pytest.raises(ValueError, match="missing"):
        load_lora(full, tmp_path)
    with pytest.raises(FileNotFoundError, match="no LoRA weights"):
        load_lora(full, tmp_path / "absent")
    with pytest.raises(TypeError, match="not nn.Linear"):
        LoRAModel(copy.deepcopy(base_net()), [""], RANK, ALPHA)

"""vggflow.optim.AdamW: torch.optim.AdamW's updates bit for bit, its state dicts interchangeable,
and no torch._dynamo import in a training process."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from vggflow.config import write_yaml_atomic
from vggflow.optim import AdamW

SHAPES = [(5, 3), (7,), (2, 4, 3)]
SETTINGS = {"lr": 3e-3, "betas": (0.9, 0.98), "weight_decay": 0.01}


def _params(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def _set_grads(params: list[torch.Tensor], step: int) -> None:
    """Fresh gradients; the second parameter has none on every third step."""
    generator = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        p.grad = None if (i == 1 and step % 3 == 0) else torch.randn(p.shape, generator=generator)


def _run(optimizer, params, steps: range) -> None:
    for step in steps:
        _set_grads(params, step)
        optimizer.step()


def _assert_same(ours: AdamW, theirs: torch.optim.AdamW, ours_params, theirs_params) -> None:
    for a, b in zip(ours_params, theirs_params):
        assert torch.equal(a, b)
    theirs_state = theirs.state_dict()["state"]
    assert set(ours.state) == set(theirs_state)
    for i, state in ours.state.items():
        for key, value in state.items():
            assert torch.equal(value, theirs_state[i][key]), (i, key)
            assert value.dtype == theirs_state[i][key].dtype


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("fused", [False, True])
def test_updates_equal_torch_adamw_bit_for_bit(weight_decay, fused):
    settings = {**SETTINGS, "weight_decay": weight_decay}
    ours_params, theirs_params = _params(0), _params(0)
    ours = AdamW(ours_params, fused=fused, **settings)
    theirs = torch.optim.AdamW(theirs_params, fused=fused or None, **settings)
    for optimizer, params in ((ours, ours_params), (theirs, theirs_params)):
        _run(optimizer, params, range(12))
    _assert_same(ours, theirs, ours_params, theirs_params)
    assert not torch.equal(ours_params[0], _params(0)[0])  # it did move


@pytest.mark.parametrize("direction", ["torch to ours", "ours to torch"])
def test_state_dicts_are_interchangeable_with_torch_adamw(direction):
    """5 steps in one optimizer, its state loaded into the other on copies of the parameters,
    5 more steps in each: the same parameters and moments as 10 steps in one."""
    first_params = _params(0)
    first = (torch.optim.AdamW(first_params, **SETTINGS) if direction == "torch to ours"
             else AdamW(first_params, **SETTINGS))
    _run(first, first_params, range(5))
    second_params = [torch.nn.Parameter(p.detach().clone()) for p in first_params]
    second = (AdamW(second_params, **SETTINGS) if direction == "torch to ours"
              else torch.optim.AdamW(second_params, **SETTINGS))
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as saved and loaded
    _run(first, first_params, range(5, 10))
    _run(second, second_params, range(5, 10))
    ours, theirs = (second, first) if direction == "torch to ours" else (first, second)
    ours_params, theirs_params = ((second_params, first_params) if direction == "torch to ours"
                                  else (first_params, second_params))
    _assert_same(ours, theirs, ours_params, theirs_params)


def test_a_state_for_other_parameters_is_refused():
    optimizer = AdamW(_params(0), **SETTINGS)
    _run(optimizer, optimizer.params, range(2))
    with pytest.raises(ValueError, match="state for 3 parameters, this optimizer has 2"):
        AdamW(_params(0)[:2], **SETTINGS).load_state_dict(optimizer.state_dict())


NO_DYNAMO = """
import sys
from vggflow.cli import main
for config in sys.argv[2:]:
    code = main(["train", "--config", config, "--state-dir", config + ".state", "--lora-dir",
                 config + ".lora", "--log-csv", config + ".csv", "--samples", config + ".pt",
                 "--threads", "1"])
    assert code == 0, (config, code)
imported = sorted(m for m in sys.modules if m.startswith("torch._dynamo"))
open(sys.argv[1], "w").write("\\n".join(imported))
"""


def test_digits_training_does_not_import_torch_dynamo(make_run_config, tmp_path):
    """torch._dynamo's import costs 2-3.5 s per process on the 2-core CPU machine; the training
    loop does not pull it in (torch.optim.Optimizer would). VGG-Flow does (torch.func.grad, and
    its jvps' zero tangents, whose shapes torch infers with Python meta kernels): not checked."""
    configs = []
    for method in ("vggflow_pmp", "adjoint_matching", "refl", "draft", "draft_lv"):
        path = tmp_path / f"{method}.yaml"
        write_yaml_atomic(make_run_config(method_name=method, train={"max_steps": 2}), path)
        configs.append(str(path))
    report = tmp_path / "imported.txt"
    done = subprocess.run([sys.executable, "-c", NO_DYNAMO, str(report), *configs],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report.read_text() == "", report.read_text()

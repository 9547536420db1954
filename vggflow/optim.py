"""AdamW for the training loop: torch's own update, without torch.optim.Optimizer's start-up.

``torch.optim.Optimizer`` imports ``torch._dynamo`` on the first call of its constructor,
``step``, ``zero_grad`` or ``state_dict``: 2–3.5 s per process on the 2-core CPU machine, a
tenth of a digits ``train`` job. :class:`AdamW` calls the function that ``torch.optim.AdamW``'s
``step`` calls (``torch.optim.adam.adam`` with decoupled weight decay; single-tensor on the CPU,
fused where asked), with its state laid out as torch's, so the updates are torch's bit for bit
(``tests/test_optim.py``) and either optimizer loads the other's state dict.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim.adam import adam


class AdamW:
    """AdamW over one group of parameters (betas, eps and weight decay as ``torch.optim.AdamW``;
    ``fused`` runs torch's fused kernel, on CUDA)."""

    def __init__(self, params: Iterable[Tensor], *, lr: float, betas: tuple[float, float],
                 weight_decay: float, eps: float = 1e-8, fused: bool = False) -> None:
        self.params = list(params)
        self.group = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                      "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                      "differentiable": False, "fused": fused or None,
                      "decoupled_weight_decay": True}
        self.state: dict[int, dict[str, Tensor]] = {}

    def _step_device(self, param: Tensor) -> torch.device:
        """Where torch keeps a parameter's step count: on the CPU, on the parameter's device
        when fused."""
        return param.device if self.group["fused"] else torch.device("cpu")

    def _new_state(self, param: Tensor) -> dict[str, Tensor]:
        """torch's lazy initialisation: the step count a float32 zero, both moments zero."""
        return {"step": torch.zeros((), dtype=torch.float32, device=self._step_device(param)),
                "exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        indices = [i for i, p in enumerate(self.params) if p.grad is not None]
        for i in indices:
            if i not in self.state:
                self.state[i] = self._new_state(self.params[i])
        states = [self.state[i] for i in indices]
        beta1, beta2 = self.group["betas"]
        adam([self.params[i] for i in indices], [self.params[i].grad for i in indices],
             [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
             [s["step"] for s in states], foreach=False, fused=bool(self.group["fused"]),
             decoupled_weight_decay=True, amsgrad=False,
             beta1=beta1, beta2=beta2, lr=self.group["lr"],
             weight_decay=self.group["weight_decay"], eps=self.group["eps"], maximize=False)

    def state_dict(self) -> dict:
        """``torch.optim.AdamW.state_dict``'s layout (parameters by index)."""
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**self.group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads (copies of) this class's or ``torch.optim.AdamW``'s state dict for the same
        parameters: the moments on each parameter's device and dtype, the step count where
        torch keeps it."""
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"optimizer state for {len(group['params'])} parameters, this "
                             f"optimizer has {len(self.params)}: the state belongs to another "
                             "model")
        self.group.update({k: v for k, v in group.items() if k in self.group})
        self.group["betas"] = tuple(self.group["betas"])
        self.state = {}
        for position, saved in state_dict["state"].items():
            index = group["params"].index(position)
            param = self.params[index]
            self.state[index] = {
                key: (value.to(device=self._step_device(param), dtype=torch.float32, copy=True)
                      if key == "step" else
                      value.to(device=param.device, dtype=param.dtype, copy=True))
                for key, value in saved.items()}

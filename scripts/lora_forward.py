"""What the one-addmm LoRA forward saves on the digits velocity net, side by side in one process.

The net of the default benchmark (hidden 256, depth 3, LoRA rank 8 and alpha 8 on its six linear
layers) at batch 64 (32 trajectories with classifier-free guidance), one thread: blocks of 50
passes alternate between the fused forward (``LoRALinear.fused``, the default for scalings that
are powers of two) and peft's three operations, for a no-grad forward and for forward plus
backward. Writes per (mode, pass) the minimum and median microseconds per pass over the blocks
and the number of top-level aten operations, and checks that both modes give the same outputs
and gradients bit for bit.

    python scripts/lora_forward.py --out results/bench/lora_forward.csv
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from vggflow.models.lora import LoRAModel
from vggflow.models.mlp import ConditionalMLP

BATCH, PASSES_PER_BLOCK = 64, 50


def build() -> tuple[LoRAModel, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    net = ConditionalMLP(hidden=256, depth=3)
    model = LoRAModel(net, net.lora_targets(), rank=8, alpha=8)
    for _, layer in model.lora_layers():  # a trained-looking B, so the LoRA term is not zero
        torch.nn.init.normal_(layer.lora_B.weight, std=0.01)
    inputs = (torch.randn(BATCH, 1, 8, 8), torch.rand(BATCH), torch.randint(0, 11, (BATCH,)))
    return model, inputs


def set_fused(model: LoRAModel, fused: bool) -> None:
    for _, layer in model.lora_layers():
        layer.fused = fused


def one_pass(model: LoRAModel, inputs, backward: bool) -> None:
    if backward:
        model(*inputs).square().sum().backward()
    else:
        with torch.no_grad():
            model(*inputs)


def block_us(model: LoRAModel, inputs, backward: bool) -> float:
    start = time.perf_counter()
    for _ in range(PASSES_PER_BLOCK):
        one_pass(model, inputs, backward)
    return (time.perf_counter() - start) / PASSES_PER_BLOCK * 1e6


def top_level_ops(model: LoRAModel, inputs, backward: bool) -> int:
    with torch.profiler.profile() as prof:
        one_pass(model, inputs, backward)
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and
               (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def outputs_and_grads(model: LoRAModel, inputs) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    out.square().sum().backward()
    return [out.detach()] + [p.grad for p in model.parameters() if p.requires_grad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per mode and pass")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, inputs = build()
    results = {}
    for fused in (True, False):
        set_fused(model, fused)
        results[fused] = outputs_and_grads(model, inputs)
    same = all(torch.equal(a, b) for a, b in zip(results[True], results[False]))
    if not same:
        raise SystemExit("the fused and peft forwards differ: the fused path is not exact here")
    rows = []
    for backward in (False, True):
        times = {True: [], False: []}
        for fused in (True, False):  # warm-up
            set_fused(model, fused)
            block_us(model, inputs, backward)
        for _ in range(args.blocks):
            for fused in (True, False):
                set_fused(model, fused)
                times[fused].append(block_us(model, inputs, backward))
        for fused in (True, False):
            set_fused(model, fused)
            rows.append({
                "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "batch": BATCH,
                "mode": "fused" if fused else "peft",
                "pass": "forward_backward" if backward else "forward",
                "min_us": round(min(times[fused]), 1),
                "median_us": round(statistics.median(times[fused]), 1),
                "blocks": args.blocks, "top_level_ops": top_level_ops(model, inputs, backward),
                "bit_equal": same,
            })
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

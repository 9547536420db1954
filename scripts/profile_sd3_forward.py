"""Where an SD3 update's time goes: the transformer's guided forward (a rollout step) and its
training forward + backward, each in several variants, side by side in one process (GPU).

Variants: ``peft_fp32`` (peft's own LoRA forward, which casts each LoRA input to fp32),
``lora_model_dtype`` (the LoRA products in bf16, ``model.lora_compute_dtype: model``),
``no_lora`` (adapters off: the frozen base), all three with diffusers' joint attention
whatever the config says, ``packed_attention`` (the bf16 LoRA with ``model.attention: packed``,
the default: image and text tokens joined before the head split), and with
``--compile`` ``packed_attention_compiled`` (that, with every transformer block compiled by
``torch.compile`` as ``model.compile: blocks`` does; its compile time is the first call's extra
seconds).
FLOPs per call come from ``torch.utils.flop_counter``, MFU is against the measured bf16 matmul
throughput (:func:`vggflow.bench.matmul_throughput`). Writes one CSV row per (variant, pass)
and, with ``--profile-out``, the CUDA kernel tables of the bf16-LoRA forward from
``torch.profiler`` (diffusers' attention, then the packed one in ``<name>.packed``).

    python scripts/profile_sd3_forward.py --config run/config.yaml --out forward.csv --compile
"""

from __future__ import annotations

import argparse
import datetime
import time

import pandas as pd
import torch

from vggflow.bench import flop_counter, matmul_throughput, synchronize
from vggflow.config import RunConfig, load_yaml
from vggflow.models.sd3 import compile_transformer_blocks, compute_lora_in_input_dtype
from vggflow.models.sd3_attention import joint_attention_layers, use_packed_joint_attention
from vggflow.sampling import Guidance
from vggflow.train import build_suite


def timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, best seconds of ``repeats`` later calls)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return first, best


def joint_attention_processor(transformer: torch.nn.Module) -> str:
    """The class name of the first joint-attention layer's processor."""
    return type(joint_attention_layers(transformer)[0].processor).__name__


def counted_flops(fn) -> int:
    counter = flop_counter()
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a resolved SD3 run config")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also the compiled blocks")
    parser.add_argument("--profile-out", help="text file for the profiler's kernel table")
    args = parser.parse_args()

    raw = load_yaml(args.config)
    # diffusers' joint attention for the first variants, whatever the config's (default packed)
    raw["model"] = {**raw.get("model", {}), "attention": "diffusers", "compile": "none"}
    cfg = RunConfig.from_mapping(raw, source=args.config)
    device = cfg.train.device
    model = build_suite(cfg, device).flow_model
    torch.manual_seed(0)
    for name, param in model.transformer.named_parameters():  # B = 0 would make LoRA trivial
        if "lora_B" in name:
            param.data.normal_(std=1e-3)
    batch, transitions = cfg.train.micro_batch_size, cfg.train.micro_batch_size * 5
    prompts = ["a photo of a cat"] * transitions
    guidance = Guidance(model.encode_prompts(prompts[:batch]), model.null_condition(batch),
                        cfg.sampler.guidance_scale)
    x = torch.randn(batch, *model.sample_shape, device=device)
    t = torch.full((batch,), 0.4, device=device)
    x_train = torch.randn(transitions, *model.sample_shape, device=device)
    t_train = torch.full((transitions,), 0.4, device=device)
    cond_train = model.encode_prompts(prompts)

    def rollout_step(velocity=model.velocity):
        with torch.no_grad():
            guidance.velocity(velocity, x, t)

    def train_step():
        model.velocity(x_train, t_train, cond_train).float().square().mean().backward()

    peak = matmul_throughput(device, model.dtype)
    rows = []

    flops_of: dict[str, int] = {}

    def measure(variant: str, name: str, fn, images: int) -> None:
        first, best = timed(fn, device, args.repeats)
        # compiled code computes what the eager bf16-LoRA variant does: count that one's
        flops = flops_of[name] if variant.endswith("_compiled") else counted_flops(fn)
        if variant == "lora_model_dtype":
            flops_of[name] = flops
        rows.append({"variant": variant, "pass": name, "images": images,
                     "attention": joint_attention_processor(model.transformer),
                     "seconds": best, "first_call_s": first, "tflop": flops / 1e12,
                     "tflops": flops / best / 1e12, "mfu": flops / best / peak})
        print(f"{variant:28s} {name:8s} {best * 1e3:8.1f} ms  {flops / 1e12:7.2f} TFLOP  "
              f"MFU {flops / best / peak:6.1%}  first call {first:6.1f} s", flush=True)
        write(rows)  # after every row: a later variant may be stopped by a deadline

    def write(rows: list[dict]) -> None:
        table = pd.DataFrame(rows)
        table.insert(0, "date", datetime.date.today().isoformat())
        table.insert(1, "device", torch.cuda.get_device_name() if device.startswith("cuda")
                     else "cpu")
        table.insert(2, "torch", torch.__version__)
        table["resolution"] = cfg.model.get("resolution")
        table["matmul_tflops"] = peak / 1e12
        table.to_csv(args.out, index=False)

    compute_lora_in_input_dtype(model.transformer, enabled=False)  # peft's forward
    measure("peft_fp32", "forward", rollout_step, 2 * batch)
    measure("peft_fp32", "train", train_step, transitions)
    compute_lora_in_input_dtype(model.transformer)
    measure("lora_model_dtype", "forward", rollout_step, 2 * batch)
    measure("lora_model_dtype", "train", train_step, transitions)
    measure("no_lora", "forward", lambda: rollout_step(model.base_velocity), 2 * batch)

    def kernel_table(path: str) -> None:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                rollout_step()
            synchronize(device)
        with open(path, "w") as handle:
            handle.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))

    if args.profile_out:
        kernel_table(args.profile_out)
    use_packed_joint_attention(model.transformer)
    measure("packed_attention", "forward", rollout_step, 2 * batch)
    measure("packed_attention", "train", train_step, transitions)
    if args.profile_out:
        kernel_table(f"{args.profile_out}.packed")
    if args.compile:
        compile_transformer_blocks(model.transformer)
        measure("packed_attention_compiled", "forward", rollout_step, 2 * batch)
        measure("packed_attention_compiled", "train", train_step, transitions)
    print(pd.read_csv(args.out).to_string(index=False))


if __name__ == "__main__":
    main()

"""Where VGG-Flow's value-network update spends its low-FLOP seconds at SD3 scale: one
micro-batch's reward-gradient pass and the value U-Net's forward + backward, each in several
variants, side by side in one process (for the GPU; runs on the CPU too).

The H100 region table (README "Performance") put 7.2 s of an update in reward-gradient passes at
3.5% MFU (full fp32, inside g's difference) and 3.0 s in the value network's backward at 1.3%.
Variants, per pass over the micro-batch's transitions (``micro_batch_size * num_bins``):

* ``reward_grad``: grad r(x1_hat) as ``VGGFlow._reward_gradient`` computes it, for each
  precision (``tf32``: as at the transitions; ``fp32``: TF32 off, as inside the difference), each
  ``reward_grad_chunk`` of ``--chunks`` and cuDNN's autotuner off and on (``cudnn_benchmark``);
* ``reward_jvp``: the derivative of grad r along a tangent as a jvp of the gradient (forward over
  reverse, TF32 kept, PyTorch's math attention), which would replace g's two differenced passes;
  its error is recorded in ``note`` when it fails;
* ``value_net``: the value U-Net evaluated twice in full fp32 (the difference's two points) and
  backpropagated with TF32 (as the update does): as it runs, with ``cudnn_benchmark``, channels-last
  memory format, with attention heads of 64 channels (``head_dim`` 64: the same parameters,
  ``model.value_unet.attention_head_dim`` one head per 64 channels, against the default 8 heads
  per level) and ``torch.compile`` (``--compile``; the first call's extra seconds are its
  compile time).

Seconds are the best of ``--repeats`` calls after a first, FLOPs come from
``torch.utils.flop_counter``, MFU is against the measured bf16 matmul throughput (as the bench's).
With ``--profile-out`` the CUDA kernel tables of the fp32 reward pass and of the value network's
pass are written (``<name>.reward``, ``<name>.value_net``). One CSV row per variant, written after
every row.

    python scripts/profile_value_update.py --config run/config.yaml --out value_update.csv
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import traceback

import pandas as pd
import torch
from profile_sd3_forward import counted_flops, timed  # a sibling script
from torch.func import grad, jvp

from vggflow.bench import matmul_throughput, synchronize
from vggflow.config import RunConfig, load_yaml
from vggflow.methods.vggflow import full_fp32_precision
from vggflow.timegrid import one_step_prediction
from vggflow.train import build_method, build_suite


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """cuDNN's autotuner (algorithm chosen by timing; off by default for reproducibility)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def peak_memory_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a resolved VGG-Flow SD3 run config")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16],
                        help="reward_grad_chunk values to time")
    parser.add_argument("--compile", action="store_true", help="also the compiled value U-Net")
    parser.add_argument("--profile-out", help="prefix of the profiler's kernel tables")
    args = parser.parse_args()

    cfg = RunConfig.from_mapping(load_yaml(args.config), source=args.config)
    device = cfg.train.device
    torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
    suite = build_suite(cfg, device)
    method = build_method(cfg, suite)
    model = suite.flow_model
    torch.manual_seed(0)
    count = cfg.train.micro_batch_size * method.settings.num_bins
    prompts = ["a photo of a cat"] * count
    x = torch.randn(count, *model.sample_shape, device=device)
    t = torch.rand(count, device=device) * 0.9
    v_theta = torch.randn_like(x)
    tangent = torch.randn_like(x)
    cond = model.encode_prompts(prompts)
    peak = matmul_throughput(device, model.dtype)
    rows: list[dict] = []

    def measure(variant: str, fn, **labels) -> None:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        row = {"variant": variant, **labels, "samples": count}
        try:
            first, best = timed(fn, device, args.repeats)
            flops = counted_flops(fn)
            row.update(seconds=best, first_call_s=first, tflop=flops / 1e12,
                       tflops=flops / best / 1e12, mfu=flops / best / peak,
                       peak_gib=peak_memory_gib(device))
            print(f"{variant:12s} {labels} {best * 1e3:9.1f} ms  {flops / 1e12:7.3f} TFLOP  "
                  f"MFU {flops / best / peak:6.2%}  first {first:6.1f} s", flush=True)
        except Exception as error:  # an out-of-memory chunk or an unsupported jvp is a finding
            row["note"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print(f"{variant:12s} {labels} failed: {row['note']}", flush=True)
            traceback.print_exc()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        rows.append(row)
        table = pd.DataFrame(rows)
        table.insert(0, "date", datetime.date.today().isoformat())
        table.insert(1, "device", torch.cuda.get_device_name() if device.startswith("cuda")
                     else "cpu")
        table.insert(2, "torch", torch.__version__)
        table["matmul_tflops"] = peak / 1e12
        table.to_csv(args.out, index=False)

    def reward_pass(chunk: int):
        chunked = dataclasses.replace(method.settings, reward_grad_chunk=chunk)
        return lambda: _with_settings(method, chunked, lambda: method._reward_gradient(
            x, t, v_theta, prompts))

    def precision(name: str):
        return full_fp32_precision() if name == "fp32" else contextlib.nullcontext()

    for name in ("tf32", "fp32"):
        for autotune in (False, True):
            for chunk in args.chunks:
                pass_fn = reward_pass(chunk)

                def run(pass_fn=pass_fn, name=name, autotune=autotune):
                    with precision(name), cudnn_benchmark(autotune):
                        pass_fn()

                measure("reward_grad", run, precision=name, chunk=chunk,
                        cudnn_benchmark=autotune)

    def reward_jvp():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        x1_hat = one_step_prediction(x, t, v_theta)
        chunk = method.settings.reward_grad_chunk or count

        def reward_of(y, chunk_prompts):
            return method.reward(model.decode(y), chunk_prompts).sum()

        with sdpa_kernel(SDPBackend.MATH):
            for i in range(0, count, chunk):
                part = slice(i, i + chunk)
                jvp(lambda y, p=prompts[part]: grad(reward_of)(y, p), (x1_hat[part],),
                    (tangent[part],))

    measure("reward_jvp", reward_jvp, precision="tf32",
            chunk=method.settings.reward_grad_chunk or count, cudnn_benchmark=False)

    value_net = method.value_net

    def value_pass():
        with full_fp32_precision():  # as the difference evaluates it
            ahead = value_net(x + 1e-3 * tangent, t + 1e-3, cond)
            behind = value_net(x - 1e-3 * tangent, t - 1e-3, cond)
        ((ahead - behind) / 2e-3).pow(2).mean().backward()  # the backward with TF32, as there
        value_net.zero_grad(set_to_none=True)

    def autotuned_value_pass():
        with cudnn_benchmark(True):
            value_pass()

    measure("value_net", value_pass, layout="contiguous", compiled=False, cudnn_benchmark=False)
    measure("value_net", autotuned_value_pass, layout="contiguous", compiled=False,
            cudnn_benchmark=True)
    if args.profile_out:
        kernel_table(f"{args.profile_out}.value_net", value_pass, device)
        kernel_table(f"{args.profile_out}.reward", lambda: _in_fp32(reward_pass(
            method.settings.reward_grad_chunk or count)), device)
    value_net.to(memory_format=torch.channels_last)
    x_layout, tangent_layout = x, tangent
    x = x.contiguous(memory_format=torch.channels_last)
    tangent = tangent.contiguous(memory_format=torch.channels_last)
    measure("value_net", value_pass, layout="channels_last", compiled=False,
            cudnn_benchmark=False)
    value_net.to(memory_format=torch.contiguous_format)
    x, tangent = x_layout, tangent_layout
    # the same parameters with attention heads of 64 channels (the default has 8 heads per
    # level: heads of 8 channels at the latents' full resolution, where attention is quadratic)
    heads = [max(1, width // 64) for width in value_net.unet.config.block_out_channels]
    suite.settings = {**suite.settings, "value_unet": {**suite.settings.get("value_unet", {}),
                                                       "attention_head_dim": heads}}
    default_net, value_net = value_net, suite.value_network()
    measure("value_net", value_pass, layout="contiguous", compiled=False, cudnn_benchmark=False,
            head_dim=64)
    value_net = default_net
    if args.compile:
        value_net.unet.compile()
        measure("value_net", value_pass, layout="contiguous", compiled=True,
                cudnn_benchmark=False)
    print(pd.read_csv(args.out).to_string(index=False))


def _with_settings(method, settings, fn):
    """fn() with ``method.settings`` replaced for its duration."""
    before = method.settings
    method.settings = settings
    try:
        return fn()
    finally:
        method.settings = before


def _in_fp32(fn) -> None:
    with full_fp32_precision():
        fn()


def kernel_table(path: str, fn, device: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    sort = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    with open(path, "w") as handle:
        handle.write(prof.key_averages().table(sort_by=sort, row_limit=30))


if __name__ == "__main__":
    main()

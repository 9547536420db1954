"""``python -m vggflow <command>``: every step of the pipeline, without Snakemake.

Each command reads the files it is given and writes only the paths it is given, atomically.
Run ``python -m vggflow <command> --help`` for its options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vggflow.config import ConfigError


def _threads(args) -> None:
    from vggflow.utils.seeding import configure_torch

    configure_torch(args.threads)


def cmd_prepare_digits(args) -> None:
    import numpy as np

    from vggflow.digits_data import prepare_digits
    from vggflow.utils.io import atomic_path

    split = prepare_digits(args.holdout_fraction, args.seed)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **split)
    print(f"digits: {len(split['train_labels'])} train, {len(split['heldout_labels'])} held out "
          f"-> {args.out}")


def cmd_pretrain_digits(args) -> None:
    _threads(args)
    from vggflow.models.digits import pretrain_flow
    from vggflow.suites.digits import load_split
    from vggflow.utils.io import torch_save_atomic

    images, labels = load_split(args.data, "train")
    net, log = pretrain_flow(images, labels, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, hidden=args.hidden, depth=args.depth,
                             label_dropout=args.label_dropout, ema_decay=args.ema_decay,
                             seed=args.seed)
    torch_save_atomic({"arch": net.arch, "state_dict": net.state_dict(), "log": log}, args.out)


def cmd_train_digits_reward(args) -> None:
    _threads(args)
    import torch

    from vggflow.rewards.digits import train_reward_net
    from vggflow.suites.digits import load_split
    from vggflow.utils.io import torch_save_atomic

    images, labels = load_split(args.data, "train")
    net = train_reward_net(args.name, images, labels, args.steps, args.seed)
    held_images, held_labels = load_split(args.data, "heldout")
    with torch.no_grad():
        out = net(held_images * 2 - 1)
    if args.name == "margin":
        accuracy = float((out.argmax(1) == held_labels).float().mean())
        print(f"margin classifier: held-out accuracy {accuracy:.3f}")
    torch_save_atomic({"name": args.name, "outputs": out.shape[1],
                       "state_dict": net.state_dict()}, args.out)


def cmd_train_digits_evalnet(args) -> None:
    _threads(args)
    import torch

    from vggflow.suites.digits import load_split, train_eval_net
    from vggflow.utils.io import torch_save_atomic

    images, labels = load_split(args.data, "train")
    net = train_eval_net(images, labels, args.steps, args.seed)
    held_images, held_labels = load_split(args.data, "heldout")
    with torch.no_grad():
        accuracy = float((net(held_images * 2 - 1).argmax(1) == held_labels).float().mean())
    print(f"evaluation network: held-out accuracy {accuracy:.3f}")
    torch_save_atomic({"state_dict": net.state_dict(), "heldout_accuracy": accuracy}, args.out)


def cmd_sample_base(args) -> None:
    _threads(args)
    from vggflow.config import BaseSampleConfig
    from vggflow.sampling import images_for_storage, sample_images
    from vggflow.suites import SUITES, load_builtin_suites
    from vggflow.train import resolve_device
    from vggflow.utils.io import torch_save_atomic

    cfg = BaseSampleConfig.load(args.config)
    load_builtin_suites()
    suite = SUITES.get(cfg.suite)(cfg.resources, device=resolve_device("auto"),
                                  settings=cfg.model)
    model = suite.flow_model
    prompts = suite.eval_prompts()
    images = sample_images(model.base_velocity, model, prompts, cfg.eval.images_per_prompt,
                           cfg.sampler.num_steps, cfg.sampler.guidance_scale, cfg.eval.seed,
                           chunk_size=cfg.eval.batch_size)
    torch_save_atomic({"steps": [0], "prompts": prompts,
                       "images": images_for_storage(images, cfg.eval.image_dtype)[None]},
                      args.out)
    print(f"base samples: {len(prompts)} prompts x {cfg.eval.images_per_prompt} -> {args.out}")


def cmd_sample(args) -> None:
    """Images of a finetuned run (its exported LoRA) or of the base model, as a PNG grid."""
    _threads(args)
    from torchvision.utils import save_image

    from vggflow.config import RunConfig
    from vggflow.sampling import sample_images
    from vggflow.train import build_suite, resolve_device

    cfg = RunConfig.load(args.config)
    suite = build_suite(cfg, resolve_device(cfg.train.device))
    model = suite.flow_model
    if args.lora:
        model.load_adapter(args.lora)
    prompts = args.prompt or suite.eval_prompts()
    velocity = model.velocity if args.lora else model.base_velocity
    images = sample_images(velocity, model, prompts, args.images_per_prompt,
                           cfg.sampler.num_steps, cfg.sampler.guidance_scale,
                           cfg.eval.seed if args.seed is None else args.seed,
                           chunk_size=cfg.eval.batch_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # one row per prompt
    save_image(images.flatten(0, 1), args.out, nrow=args.images_per_prompt)
    print(f"{len(prompts)} prompts x {args.images_per_prompt} images -> {args.out}")


def cmd_train(args) -> int:
    from vggflow.config import RunConfig
    from vggflow.distributed import rank_from_environment
    from vggflow.train import (
        INTERRUPTED_EXIT_CODE,
        PUBLISHED_DIR,
        Interrupted,
        Outputs,
        Trainer,
        has_published,
        keep_published,
        republish,
        write_provenance,
    )

    if (args.metrics is None) != (args.base_samples is None):
        raise SystemExit("train: --metrics and --base-samples go together (the run's samples "
                         "are scored against the base model's)")
    outputs = Outputs(Path(args.lora_dir), Path(args.log_csv), Path(args.samples))
    published = {**vars(outputs),  # what a retry puts back: the outputs, by field name
                 **({"provenance": Path(args.provenance)} if args.provenance else {}),
                 **({"metrics": Path(args.metrics)} if args.metrics else {})}
    if args.attempt > 1 and has_published(args.state_dir, published):
        if rank_from_environment() == 0:
            republish(args.state_dir, published)
        print(f"attempt {args.attempt}: this run had finished; its outputs are published again "
              f"from {Path(args.state_dir) / PUBLISHED_DIR} (no training)", flush=True)
        return 0
    cfg = RunConfig.load(args.config)
    trainer = Trainer(cfg, args.state_dir, threads=args.threads)
    print(f"train {cfg.method['name']} on {cfg.suite}/{cfg.reward}, seed {cfg.seed}, "
          f"{cfg.train.max_steps} updates, device {trainer.device}, process "
          f"{trainer.collective.rank + 1} of {trainer.collective.world_size}", flush=True)
    diverged = {}
    try:
        trainer.run(stop_after_steps=args.stop_after)
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except FloatingPointError as error:
        if not args.record_divergence:
            raise
        print(f"{error}\nrecorded as diverged after update {trainer.step} "
              "(--record-divergence)", file=sys.stderr)
        diverged = {"diverged_after_update": trainer.step, "divergence": str(error)}
    if not trainer.is_main:  # data parallelism: rank 0 publishes
        return 0
    trainer.publish(outputs, diverged=bool(diverged))
    if args.metrics:  # in this process: a job of its own would spend seconds importing torch
        from vggflow.metrics.evaluate import score_run

        print(f"scoring the samples of every evaluation step -> {args.metrics}", flush=True)
        score_run(cfg, trainer.suite, args.samples, args.base_samples, args.metrics)
    if args.provenance:  # last: its host_peak_rss_mb covers the whole job
        write_provenance(cfg, trainer.device, args.provenance, **diverged)
    keep_published(args.state_dir, published)
    print(f"done: {trainer.step} updates in {trainer.elapsed:.1f} s of training", flush=True)
    return 0


def cmd_metrics(args) -> None:
    _threads(args)
    from vggflow.config import RunConfig
    from vggflow.metrics.evaluate import score_run
    from vggflow.train import build_suite, resolve_device

    cfg = RunConfig.load(args.config)
    score_run(cfg, build_suite(cfg, resolve_device("auto")), args.samples, args.base_samples,
              args.out)


def cmd_bench(args) -> None:
    from vggflow.bench import plot, side_by_side
    from vggflow.utils.io import atomic_path

    table, regions = side_by_side(args.configs, updates=args.updates, warmup=args.warmup,
                                  threads=args.threads)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    if args.regions_out:
        with atomic_path(args.regions_out) as tmp:
            regions.to_csv(tmp, index=False)
    if args.figure:
        plot(table, args.figure)
    print(f"{len(table)} methods -> {args.out}")


def cmd_closed_form(args) -> int:
    import json

    from vggflow import closed_form
    from vggflow.utils.io import atomic_path

    results = closed_form.check(args.updates, threads=args.threads)
    for r in results:
        print(f"{r['label']:36s} control {r['control_rel_error']:.2%}  "
              f"value gradient {r['value_gradient_rel_error']:.2%}  "
              f"shift {r['shift_rel_error']:.2%} (achieved {r['shift'][0]:.4f}, "
              f"{r['shift'][1]:.4f}; exact {r['shift_exact'][0]:.4f}, {r['shift_exact'][1]:.4f})")
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    with atomic_path(args.figure) as tmp:
        closed_form.plot(results, tmp)
    return 0


def cmd_fetch_sd3(args) -> int:
    from vggflow.config import load_yaml
    from vggflow.fetch import FetchError, fetch_resources, sd3_resources_from

    resources = sd3_resources_from(load_yaml(args.config), str(args.config))
    try:
        fetch_resources(resources, args.manifest, download=not args.no_download)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_make_random_sd3(args) -> None:
    from vggflow.models.sd3_random import write_random_sd3_suite

    print(f"writing {args.shape} SD3 files with random weights to {args.out_dir}", flush=True)
    resources = write_random_sd3_suite(args.out_dir, args.shape, args.seed,
                                       tuple(args.rewards) if args.rewards else None, args.device)
    print(f"{args.shape} SD3 files in {args.out_dir}: {', '.join(sorted(resources))} "
          f"(rewards: {', '.join(resources['rewards'])})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vggflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
        return p

    p = command("prepare-digits", cmd_prepare_digits, "split sklearn's digits into train/held-out")
    p.add_argument("--out", required=True)
    p.add_argument("--holdout-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)

    p = command("pretrain-digits", cmd_pretrain_digits, "pretrain the digits flow model")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--label-dropout", type=float, default=0.15)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)

    p = command("train-digits-reward", cmd_train_digits_reward, "train a digits reward network")
    p.add_argument("--name", required=True, choices=["thickness", "margin"])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=1)

    p = command("train-digits-evalnet", cmd_train_digits_evalnet,
                "train the digits evaluation (feature) network")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=2)

    p = command("make-random-sd3", cmd_make_random_sd3,
                "write an SD3 pipeline, rewards and prompts with random weights (tiny-sd3's files, "
                "or SD3-medium-shaped ones for GPU benchmarks)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--shape", choices=["tiny", "medium"], default="tiny")
    p.add_argument("--rewards", nargs="+", choices=["aesthetic", "hpsv2", "pickscore"],
                   help="rewards to write (default: all three)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="where the weights are drawn: cuda takes seconds for SD3 medium, whose "
                        "2 B parameters take about 30 s on 2 CPU cores (other values than cpu)")

    p = command("sample-base", cmd_sample_base, "evaluation samples of the base model")
    p.add_argument("--config", required=True, help="base-sample config written by the workflow")
    p.add_argument("--out", required=True)

    p = command("sample", cmd_sample,
                "images of a finetuned LoRA (or the base model) for prompts, as a PNG grid")
    p.add_argument("--config", required=True,
                   help="a run's config (results/runs/<reward>/<method>/seed<k>/config.yaml)")
    p.add_argument("--lora", help="a LoRA folder (results/runs/.../lora/step<k>); default: the "
                                  "base model")
    p.add_argument("--prompt", action="append",
                   help="a prompt (repeatable); default: the run's evaluation prompts")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: eval.seed)")
    p.add_argument("--out", required=True, help="PNG file: one row per prompt")

    p = command("train", cmd_train, "finetune one run (resumes from --state-dir)")
    p.add_argument("--config", required=True, help="the run's resolved config.yaml")
    p.add_argument("--state-dir", required=True, help="resumable state (kept between attempts)")
    p.add_argument("--lora-dir", required=True, help="output: LoRA exports, one per eval step")
    p.add_argument("--log-csv", required=True, help="output: per-update training log")
    p.add_argument("--samples", required=True, help="output: evaluation samples per eval step")
    p.add_argument("--provenance", help="output: provenance JSON")
    p.add_argument("--base-samples", help="the base model's evaluation samples (with --metrics)")
    p.add_argument("--metrics", help="output: every metric of the evaluation samples, as "
                                     "`vggflow metrics` writes it (with --base-samples)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="save the state and exit after this many updates (exit code 130)")
    p.add_argument("--attempt", type=int, default=1,
                   help="Snakemake's attempt number of this job: from 2 on, a run that had "
                        "finished (its job reported failed after publishing, e.g. SLURM's TIMEOUT "
                        "at the time limit) publishes its kept outputs again instead of training; "
                        "attempt 1 (a new job) trains from scratch")
    p.add_argument("--record-divergence", action="store_true",
                   help="on a non-finite loss, publish the evaluations made so far and exit 0 "
                        "(sweeps, where divergence is a result); default: fail")

    p = command("bench", cmd_bench,
                "seconds, FLOPs and memory per optimizer update of each run config, side by side")
    p.add_argument("--configs", nargs="+", required=True,
                   help="resolved run configs, one per method (each measured in a fresh process)")
    p.add_argument("--updates", type=int, default=3, help="timed updates per config")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates before measuring")
    p.add_argument("--out", required=True, help="output CSV (results/bench/<suite>.csv)")
    p.add_argument("--figure", help="output PNG (and PDF): seconds per update by phase")
    p.add_argument("--regions-out",
                   help="output CSV: seconds, FLOPs and MFU per named region of each update "
                        "(results/bench/update_regions_<suite>.csv)")

    p = command("closed-form", cmd_closed_form,
                "train VGG-Flow (exact, central and forward differences) and VGG-Flow-PMP on "
                "toy2d's closed form")
    p.add_argument("--updates", type=int, default=1500)
    p.add_argument("--out", required=True, help="JSON with achieved vs exact values")
    p.add_argument("--figure", required=True, help="PNG of achieved vs exact")

    p = command("metrics", cmd_metrics,
                "reward, diversity and FD of a run's samples (the train job writes them; this "
                "scores samples again, e.g. after a metric changed)")
    p.add_argument("--config", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--base-samples", required=True)
    p.add_argument("--out", required=True)

    p = command("fetch-sd3", cmd_fetch_sd3,
                "download the SD3 suite's weights and prompt files (needs internet; HF_TOKEN)")
    p.add_argument("--config", required=True,
                   help="YAML with the SD3 resources block (experiment config or resolved block)")
    p.add_argument("--manifest", required=True, help="output: JSON manifest (size, sha256)")
    p.add_argument("--no-download", action="store_true",
                   help="only record files already present (copied by hand); fail on missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ConfigError, FileNotFoundError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)

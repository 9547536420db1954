"""The generic trainer: on-policy rollout -> the method's losses -> one optimizer step per module.

Everything a run writes lives under its state folder while it runs (full state, CSV log, LoRA
exports, evaluation samples); the run resumes from there automatically and copies the declared
outputs into place, atomically, only when it has finished. ``python -m vggflow train`` then
replaces the state folder by hard links to the outputs (``published/``): a retry of the same job
(``--attempt`` 2 or more) publishes them again without training, a new job (attempt 1, e.g. a
forced rerun) trains from scratch. SIGINT / SIGTERM finish the current update, save the state and
exit, so a killed run continues where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import pickle
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml

from vggflow.config import ConfigError, RunConfig
from vggflow.distributed import collective_for, local_device, micro_batch_generator
from vggflow.methods import METHODS, load_builtin_methods
from vggflow.methods.base import Method, WeightedChunks
from vggflow.optim import AdamW
from vggflow.regions import region
from vggflow.sampling import Guidance, images_for_storage, sample_images
from vggflow.suites import SUITES, Suite, load_builtin_suites
from vggflow.utils.io import (
    atomic_path,
    copy_file_atomic,
    copy_tree_atomic,
    link_atomic,
    torch_save_atomic,
)
from vggflow.utils.provenance import host_peak_rss_mb, provenance
from vggflow.utils.seeding import (
    capture_rng_state,
    configure_torch,
    restore_rng_state,
    set_seed,
)

STATE_FILE = "state.pt"
LOG_FILE = "train_log.csv"
PUBLISHED_DIR = "published"
INTERRUPTED_EXIT_CODE = 130


class Interrupted(Exception):
    """Raised after the state was saved because of a signal or ``stop_after_steps``."""


@dataclasses.dataclass
class Outputs:
    """The declared outputs a finished run publishes."""

    lora_dir: Path
    log_csv: Path
    samples: Path


def keep_published(state_dir: str | Path, outputs: dict[str, Path]) -> None:
    """After a run published ``outputs`` (name -> path): keep them as hard links in
    ``<state_dir>/published`` and remove the rest of the state folder.

    A job can be reported failed after it published: SLURM reports TIMEOUT for one that ends at
    its time limit, and Snakemake then deletes its outputs and retries it. The retry publishes
    them again from here (:func:`republish`) instead of training from scratch.
    """
    state_dir = Path(state_dir)
    with atomic_path(state_dir / PUBLISHED_DIR) as kept:
        kept.mkdir()
        for name, path in outputs.items():
            link_atomic(path, kept / name)
    for entry in state_dir.iterdir():
        if entry.name != PUBLISHED_DIR:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def has_published(state_dir: str | Path, names: Iterable[str]) -> bool:
    """Whether ``state_dir`` keeps every one of the named outputs (:func:`keep_published`)."""
    return all((Path(state_dir) / PUBLISHED_DIR / name).exists() for name in names)


def republish(state_dir: str | Path, outputs: dict[str, Path]) -> None:
    """Put the outputs kept by :func:`keep_published` in place again (hard links, atomic)."""
    for name, path in outputs.items():
        link_atomic(Path(state_dir) / PUBLISHED_DIR / name, path)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def config_digest(cfg: RunConfig) -> str:
    return hashlib.sha256(yaml.safe_dump(cfg.raw, sort_keys=True).encode()).hexdigest()


def build_suite(cfg: RunConfig, device: str) -> Suite:
    load_builtin_suites()
    return SUITES.get(cfg.suite)(cfg.resources, lora_rank=cfg.lora.rank,
                                 lora_alpha=cfg.lora.alpha, device=device, settings=cfg.model)


def build_method(cfg: RunConfig, suite: Suite) -> Method:
    load_builtin_methods()
    return METHODS.get(cfg.method["name"])(cfg, suite)


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return host_peak_rss_mb()


def _write_csv_rows(path: Path, mode: str, rows: list[dict], fields: list[str],
                    header: bool) -> None:
    with path.open(mode, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if header:
            writer.writeheader()
        writer.writerows(rows)


class _StopFlag:
    """Turns SIGINT, SIGTERM or SIGUSR1 (SLURM's warning before the time limit, with
    ``sbatch --signal=USR1@<seconds>``) into a request to stop after the current update. Only a
    second SIGINT (Ctrl-C twice) stops at once: SLURM and the multi-GPU launcher both deliver
    SIGTERM to every process, so one process may see it twice and must still save."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT and self.signal == signal.SIGINT:  # Ctrl-C twice: now
                raise KeyboardInterrupt
            return
        self.signal = signum
        print(f"signal {signum}: saving state after the current update", file=sys.stderr,
              flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, cfg: RunConfig, state_dir: str | Path, threads: int | None = None) -> None:
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.device = local_device(resolve_device(cfg.train.device))
        self.collective = collective_for(self.device)
        self.is_main = self.collective.rank == 0
        accum, processes = cfg.train.accumulation_steps, self.collective.world_size
        if accum % processes:
            raise ConfigError(
                f"train: {accum} micro-batches per update (effective_batch_size / "
                f"micro_batch_size) cannot be split over {processes} processes; make it a "
                "multiple of the number of GPUs (lower micro_batch_size)")
        self.micro_batches = range(self.collective.rank * accum // processes,
                                   (self.collective.rank + 1) * accum // processes)
        configure_torch(threads)
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32  # cuDNN's convolutions already
        set_seed(cfg.seed)
        self.suite = build_suite(cfg, self.device)
        self.model = self.suite.flow_model
        self.reward = self.suite.reward(cfg.reward)
        self.method = build_method(cfg, self.suite)
        self.method.collective = self.collective
        self.modules = self.method.trainable_modules()
        self.optimizers = {}
        fused = cfg.train.fused_optimizer
        fused = self.device.startswith("cuda") if fused is None else fused
        for name, module in self.modules.items():
            settings = self.method.optimizer_settings(name)
            self.optimizers[name] = AdamW(
                trainable_parameters(module).values(), lr=settings.lr,
                betas=tuple(settings.adam_betas), weight_decay=settings.weight_decay,
                fused=fused)
        self.times = self.model.time_grid(cfg.sampler.num_steps).to(self.device)
        self.train_prompts = self.suite.train_prompts()
        self.step = 0
        self.elapsed = 0.0
        self.digest = config_digest(cfg)

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "config_digest": self.digest,
            "modules": {
                name: {k: v.detach().cpu() for k, v in trainable_parameters(m).items()}
                for name, m in self.modules.items()
            },
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "method": self.method.state_dict(),
            "rng": capture_rng_state(),
        }

    def save_state(self) -> None:
        if self.is_main:
            torch_save_atomic(self.state_dict(), self.state_dir / STATE_FILE)

    def try_resume(self) -> bool:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            # leftovers of an attempt stopped before its first save (log rows, samples) would
            # be duplicated or stale, and a finished run's kept outputs are not wanted by a new
            # job (see keep_published): start from an empty folder
            if self.is_main:
                if (self.state_dir / PUBLISHED_DIR).exists():
                    print(f"{self.state_dir} holds a finished run's outputs; a new job (not a "
                          "retry) trains from scratch", flush=True)
                shutil.rmtree(self.state_dir, ignore_errors=True)
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            return self._set_state_aside(".unreadable", f"cannot be read ({error})")
        if state["config_digest"] != self.digest:
            return self._set_state_aside(f".stale-{state['config_digest'][:8]}",
                                         "belongs to another config")
        for name, module in self.modules.items():
            params = trainable_parameters(module)
            saved = state["modules"][name]
            if set(saved) != set(params):
                raise RuntimeError(f"state for {name} in {path} does not match the model")
            with torch.no_grad():
                for key, value in saved.items():
                    params[key].copy_(value)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.method.load_state_dict(state["method"])
        restore_rng_state(state["rng"])
        self.step = state["step"]
        self.elapsed = state["elapsed_s"]
        self._truncate_log()
        print(f"resumed from {path} at update {self.step}", flush=True)
        return True

    def _set_state_aside(self, suffix: str, why: str) -> bool:
        """Move the state folder to ``<state><suffix>`` (kept, never reused) so that the run
        starts from scratch; returns False (nothing resumed)."""
        if self.is_main:
            aside = self.state_dir.with_name(self.state_dir.name + suffix)
            print(f"state in {self.state_dir} {why}; moved to {aside}; starting from scratch",
                  flush=True)
            shutil.rmtree(aside, ignore_errors=True)
            self.state_dir.rename(aside)
        return False

    def _truncate_log(self) -> None:
        """Drop log rows written after the saved state (they will be recomputed)."""
        path = self.state_dir / LOG_FILE
        if not path.exists():
            return
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        kept = [row for row in rows if int(row["step"]) <= self.step]
        if rows:
            self._write_log(kept, list(rows[0]), replace=True)

    def _write_log(self, rows: list[dict], fields: list[str], replace: bool = False) -> None:
        """Append rows to the training log (with a header if it is new), or ``replace`` it
        whole, atomically, so that a kill mid-way leaves the old file."""
        if not self.is_main:
            return
        path = self.state_dir / LOG_FILE
        if replace:
            with atomic_path(path) as tmp:
                _write_csv_rows(tmp, "w", rows, fields, header=True)
        else:
            _write_csv_rows(path, "a", rows, fields, header=not path.exists())

    # ---------------------------------------------------------------- evaluation

    def _eval_path(self, step: int) -> Path:
        return self.state_dir / "samples" / f"step{step}.pt"

    def evaluate(self, step: int) -> None:
        """Sample the evaluation prompts with the shared noise; export the LoRA (main process)."""
        if not self.is_main or self._eval_path(step).exists():
            return
        images = sample_images(self.model.velocity, self.model, self.suite.eval_prompts(),
                               self.cfg.eval.images_per_prompt, self.cfg.sampler.num_steps,
                               self.cfg.sampler.guidance_scale, self.cfg.eval.seed,
                               chunk_size=self.cfg.eval.batch_size)
        lora_dir = self.state_dir / "lora" / f"step{step}"
        shutil.rmtree(lora_dir, ignore_errors=True)
        self.model.save_adapter(lora_dir)
        torch_save_atomic({"step": step,
                           "images": images_for_storage(images, self.cfg.eval.image_dtype)},
                          self._eval_path(step))

    # ---------------------------------------------------------------- training

    def rollout_batch(self, generator: torch.Generator):
        """Fresh on-policy trajectories for one micro-batch (current model, no gradient)."""
        n = self.cfg.train.micro_batch_size
        idx = torch.randint(0, len(self.train_prompts), (n,), generator=generator)
        prompts = [self.train_prompts[i] for i in idx.tolist()]
        noise = torch.randn((n, *self.model.sample_shape), generator=generator)
        guidance = Guidance(self.model.encode_prompts(prompts), self.model.null_condition(n),
                            self.cfg.sampler.guidance_scale)
        return self.method.rollout(self.model.velocity, noise.to(self.device), self.times,
                                   guidance, prompts, generator)

    def update(self) -> dict:
        """One optimizer update of every trainable module, in the method's order.

        This process draws and trains its block of the update's micro-batches (all of them
        without data parallelism), each from its own generator (``micro_batch_generator``).
        Afterwards ``step`` (updates done, which also selects the generators) is one higher.
        """
        batches, rewards = [], []
        for index in self.micro_batches:
            generator = micro_batch_generator(self.cfg.seed, self.step, index)
            with region("rollout"):
                rollout = self.rollout_batch(generator)
            with region("reward"), torch.no_grad():
                rewards.append(self.reward(self.model.decode(rollout.final), rollout.prompts))
            with region("prepare"):
                batches.append(self.method.prepare(rollout, generator))
        rewards = self.collective.all_gather(torch.cat(rewards))
        row = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std())}
        for name, module in self.modules.items():
            with region(f"update_{name}"):
                row.update(self._update_module(name, module, batches))
        for module_ in self.modules.values():
            module_.zero_grad(set_to_none=True)
        row.update(self.method.end_update())
        self.step += 1
        return row

    def _update_module(self, name: str, module: torch.nn.Module, batches: list) -> dict:
        """Loss and backward over every micro-batch and chunk, clipping, one optimizer step.

        Logged scalars stay on the device until the end (float64, the same sums as Python
        floats), so the update synchronises with the host once, for the non-finite check.
        """
        accum = self.cfg.train.accumulation_steps
        for module_ in self.modules.values():
            module_.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor] = {}
        for batch in batches:
            for weight, chunk in WeightedChunks.of(batch).chunks:
                with region(f"{name}/loss"):
                    out = self.method.loss(name, chunk, self.step)
                with region(f"{name}/backward"):
                    (out["loss"] * weight / accum).backward()
                for key, value in out.items():
                    term = value.detach().double() * weight / accum
                    logs[key] = logs[key] + term if key in logs else term
        with region(f"{name}/step"):  # gradient all-reduce, clipping, the sync, AdamW
            params = list(trainable_parameters(module).values())
            self.collective.all_reduce_sum([*(p.grad for p in params if p.grad is not None),
                                            *logs.values()])
            settings = self.method.optimizer_settings(name)
            # the networks of a joint step (a ModuleDict) are clipped each to the norm, as the
            # official VGG-Flow code clips its transformer and value net; logged: the total
            groups = ([list(trainable_parameters(part).values()) for part in module.values()]
                      if isinstance(module, torch.nn.ModuleDict) else [params])
            grad_norm = torch.linalg.vector_norm(torch.stack([
                torch.nn.utils.clip_grad_norm_(group, settings.grad_clip_norm)
                for group in groups]))
            values = torch.stack([*logs.values(), grad_norm.double()]).tolist()  # the one sync
            if not math.isfinite(logs_loss := values[list(logs).index("loss")]):
                raise FloatingPointError(
                    f"{self.cfg.method['name']}: non-finite {name} loss ({logs_loss}) at update "
                    f"{self.step + 1}; the run diverged (lower the learning rate or beta)")
            self.optimizers[name].step()
        row = {f"grad_norm_{name}": values[-1]}
        for key, value in zip(logs, values):
            row[f"{name}_{key}" if key == "loss" else key] = value
        return row

    def run(self, stop_after_steps: int | None = None) -> None:
        """Train to ``max_steps`` (resuming if a state exists); raise Interrupted when stopped."""
        self.try_resume()
        self.state_dir.mkdir(parents=True, exist_ok=True)  # try_resume may set a stale one aside
        train = self.cfg.train
        eval_steps = set(train.eval_steps())
        if self.step in eval_steps:
            self.evaluate(self.step)
        session_updates = 0
        with _StopFlag() as stop:
            while self.step < train.max_steps:
                start = time.perf_counter()
                row = self.update()
                session_updates += 1
                self.elapsed += time.perf_counter() - start
                row = {"step": self.step, "elapsed_s": round(self.elapsed, 4), **row,
                       "peak_memory_mb": round(peak_memory_mb(self.device), 1),
                       "processes": self.collective.world_size}
                self._write_log([row], list(row))
                if self.step in eval_steps:
                    self.evaluate(self.step)
                stopping = ((self.collective.any(stop.signal is not None)
                             or session_updates == stop_after_steps)
                            and self.step < train.max_steps)  # else finish: publish comes next
                if (self.step % train.checkpoint_every == 0 or self.step in eval_steps
                        or self.step == train.max_steps or stopping):
                    self.save_state()
                if self.is_main and (self.step % train.log_every == 0
                                     or self.step == train.max_steps):
                    rate = self.elapsed / self.step
                    eta = rate * (train.max_steps - self.step)
                    print(f"update {self.step}/{train.max_steps} reward {row['reward_mean']:.4f} "
                          f"({rate:.3f} s/update, eta {eta:.0f} s)", flush=True)
                if stopping:
                    raise Interrupted(f"stopped after update {self.step}; state saved in "
                                      f"{self.state_dir}")

    def publish(self, outputs: Outputs, diverged: bool = False) -> None:
        """Copy the finished run's LoRA exports, log and evaluation samples to the outputs.

        ``diverged``: the run stopped on a non-finite loss; publish what it evaluated before
        (only for sweeps, where divergence is a result; see ``train --record-divergence``).
        """
        if self.step != self.cfg.train.max_steps and not diverged:
            raise RuntimeError("publish called before training finished")
        copy_tree_atomic(self.state_dir / "lora", outputs.lora_dir)
        copy_file_atomic(self.state_dir / LOG_FILE, outputs.log_csv)
        steps = [s for s in self.cfg.train.eval_steps() if s <= self.step]
        images = None  # filled step by step: one checkpoint's images in memory besides
        for index, step in enumerate(steps):
            step_images = torch.load(self._eval_path(step), weights_only=False)["images"]
            if images is None:
                images = step_images.new_empty((len(steps), *step_images.shape))
            images[index] = step_images
        torch_save_atomic({"steps": steps, "prompts": self.suite.eval_prompts(), "images": images},
                          outputs.samples)


def write_provenance(cfg: RunConfig, device: str, path: str | Path, **extra) -> None:
    info = {**provenance(cfg.seed, device), **extra}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(info, indent=2) + "\n")

"""Prompt sets of the SD3 suites: training and evaluation prompts read from prompt files.

Torch-free and cheap to import. A prompt set is configured as

    {files: [a.txt, b.json], heldout_per_file: 10, eval_count: 20}

* ``.txt``: one prompt per line; surrounding whitespace is stripped; blank lines and lines that
  start with ``#`` are ignored.
* ``.json``: a JSON list of strings (HPDv2's ``benchmark_<style>.json`` files).
* ``heldout_per_file`` (k >= 0): the first k prompts of each file are evaluation-only and never
  trained on (the official code holds out 10 per HPDv2 style); the rest of every file, in file
  order, are the training prompts.
* ``eval_count`` (n >= 1): the evaluation prompts are the first n held-out prompts in file order
  (all of file 1's, then file 2's, ...). With ``heldout_per_file: 0`` there is no held-out split
  (DDPO's 45 animals) and the evaluation prompts are the first n training prompts.

Duplicates are kept: a prompt listed twice is sampled twice as often. Unlike the official
``read_hpd`` (lru_cache'd list extended in place on every call), loading never mutates anything
and returns the same set every time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vggflow.config import ConfigError
from vggflow.fetch import FETCH_COMMAND


@dataclass(frozen=True)
class PromptSet:
    """Training prompts (sampled uniformly with replacement) and evaluation prompts (in order)."""

    train: tuple[str, ...]
    eval: tuple[str, ...]


def read_prompt_file(path: str | Path, where: str = "prompt file") -> list[str]:
    """The prompts of one ``.txt`` or ``.json`` file, in file order; ConfigError on problems."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{where}: {path} does not exist; prompt files of the sd3 suite are fetched by "
            f"`{FETCH_COMMAND}` (resources/prompts/*.txt ship with the repository)"
        )
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        prompts = [line for line in lines if line and not line.startswith("#")]
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: {path} is not valid JSON ({error}); a .json prompt "
                              "file must be a JSON list of strings") from None
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ConfigError(f"{where}: {path} is not a JSON list of strings; a .json prompt "
                              "file must look like [\"a photo of ...\", ...]")
        prompts = [p.strip() for p in data if p.strip()]
    else:
        raise ConfigError(f"{where}: {path} has extension {path.suffix!r}; prompt files must end "
                          "in .txt (one prompt per line) or .json (a list of strings)")
    if not prompts:
        raise ConfigError(f"{where}: {path} has no prompts; add prompts or remove it from 'files'")
    return prompts


def _int_key(spec: Mapping, key: str, minimum: int, where: str) -> int:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def load_prompt_set(spec: Mapping, where: str = "prompts") -> PromptSet:
    """Read a prompt set from ``spec`` = {files, heldout_per_file, eval_count} (see module doc).

    ``where`` names the config key in error messages (e.g. ``resources.sd3.prompts.hpsv2``).
    """
    unknown = sorted(set(spec) - {"files", "heldout_per_file", "eval_count"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: files, heldout_per_file, "
                          "eval_count")
    files = spec.get("files")
    if isinstance(files, str) or not isinstance(files, Sequence) or not files:
        raise ConfigError(f"{where}.files must be a non-empty list of prompt files, got {files!r}")
    heldout_per_file = _int_key(spec, "heldout_per_file", 0, where)
    eval_count = _int_key(spec, "eval_count", 1, where)

    train: list[str] = []
    heldout: list[str] = []
    for index, file in enumerate(files):
        prompts = read_prompt_file(file, f"{where}.files[{index}]")
        if len(prompts) <= heldout_per_file:
            raise ConfigError(
                f"{where}.files[{index}]: {file} has {len(prompts)} prompts, not more than "
                f"heldout_per_file={heldout_per_file}: no training prompts would remain; "
                "lower heldout_per_file"
            )
        heldout += prompts[:heldout_per_file]
        train += prompts[heldout_per_file:]

    pool, name = (heldout, "held-out") if heldout_per_file else (train, "training")
    if eval_count > len(pool):
        raise ConfigError(
            f"{where}.eval_count={eval_count} is larger than the {len(pool)} {name} prompts of "
            f"{', '.join(str(f) for f in files)}; lower eval_count"
            + (" or raise heldout_per_file" if heldout_per_file else "")
        )
    return PromptSet(train=tuple(train), eval=tuple(pool[:eval_count]))

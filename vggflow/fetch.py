"""Where every file of the SD3 suite comes from; fetching it; the missing-file check.

The one place that knows the sources. Torch-free and cheap to import (stdlib only at import time):
the workflow imports it when it parses the Snakefile. ``huggingface_hub`` is imported only when a
Hub file is downloaded.

Keys are key paths of the suite's ``resources`` block (``resources.sd3`` of the config):
``pipeline``, ``tiny_vae``, ``rewards.<reward>.<name>`` and ``prompts.<reward>.files[<i>]``.
Model entries take their source from :data:`SD3_SOURCES` (by key path); prompt files from
:data:`PROMPT_SOURCES` (by file name, so a reordered or extended ``files`` list still gets the
right source); ``resources/prompts/*.txt`` ship with the repository. Only the ``sd3`` suite is
fetched: the ``tiny-sd3`` suite's files are built locally.

Manifest (``resources/sd3/manifest.json``, written atomically)::

    {"format": 1, "date": "<UTC ISO 8601>", "suite": "sd3", "total_bytes": N,
     "entries": {"<key>": {"path", "source", "allow_patterns", "commit", "licence"}},
     "files": [{"key", "path", "source", "size", "sha256"}, ...]}

``size`` is in bytes; ``source`` of a file is the URL it was downloaded from (Hub files: the
``resolve/<revision>`` URL); ``commit`` is the Hub commit that was downloaded where known.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggflow.config import ConfigError

FETCH_COMMAND = "snakemake fetch_sd3_resources --cores 1 --configfile config/paper.yaml"
FETCH_HINT = (
    f"fetch them with `{FETCH_COMMAND}` on a machine with internet (e.g. the login node); the "
    "gated SD3 weights need a Hugging Face token (HF_TOKEN or `hf auth login`) of an account that "
    "accepted the licence at https://huggingface.co/stabilityai/stable-diffusion-3-medium-diffusers"
    " (config/README.md, 'SD3 suite: files, sources and licences')"
)
SD3_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"
_CHUNK = 1 << 20  # bytes read at a time when hashing or downloading


class FetchError(RuntimeError):
    """A download failed or its content did not verify; nothing was written at its destination."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub file (``filename``) or folder (``allow_patterns``, snapshot)."""

    repo_id: str
    filename: str | None = None
    allow_patterns: tuple[str, ...] = ()
    revision: str = "main"
    gated: bool = False
    weights: str | None = None  # glob a complete folder must match (e.g. "*.safetensors")
    licence: str = ""
    approx_size: str = ""

    def describe(self) -> str:
        name = f"/{self.filename}" if self.filename else ""
        return f"https://huggingface.co/{self.repo_id}{name} (revision {self.revision})"

    def file_url(self, relpath: str) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision}/{relpath}"


@dataclass(frozen=True)
class UrlSource:
    """A plain HTTPS file; ``sha256`` and ``size`` (bytes) are verified when given."""

    url: str
    sha256: str | None = None
    size: int | None = None
    licence: str = ""
    approx_size: str = ""
    url_verified: bool = False  # False: the URL could not be checked from an offline machine

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class RepoFile:
    """A file that ships with this repository (nothing to download)."""

    licence: str = ""

    def describe(self) -> str:
        return "repository"


@dataclass(frozen=True)
class DreamSimSource:
    """DreamSim's ensemble folder as the ``dreamsim`` package fills it: its GitHub release zip,
    and torch hub's facebookresearch/dino repository and DINO ViT-B/16 checkpoint (dreamsim uses
    the folder as torch hub's directory)."""

    url: str
    licence: str = ""
    approx_size: str = ""

    def describe(self) -> str:
        return f"{self.url} and torch hub's facebookresearch/dino, by the dreamsim package"


Source = HubSource | UrlSource | RepoFile | DreamSimSource


def _diffusers_folders(*folders: str) -> tuple[str, ...]:
    kinds = ("*.json", "*.txt", "*.model", "*.safetensors")
    return ("model_index.json",) + tuple(f"{f}/{k}" for f in folders for k in kinds)


# Hub folders hold configs, tokenizer files and safetensors weights; .bin/.h5/.msgpack duplicates
# and the single-file SD3 checkpoints (sd3_medium*.safetensors at the repo root) are not fetched.
_MODEL_FILES = ("*.json", "*.txt", "*.safetensors")
_PROCESSOR_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
_VGGFLOW_RAW = "https://raw.githubusercontent.com/lzzcd001/vggflow/main/lib/assets"
_HPD_LICENCE = ("HPDv2 benchmark prompts (HPSv2, Apache-2.0), copied from lzzcd001/vggflow "
                "(that repository's licence not verified)")

SD3_SOURCES: dict[str, Source] = {
    "pipeline": HubSource(
        SD3_REPO,
        allow_patterns=_diffusers_folders(
            "scheduler", "transformer", "vae", "text_encoder", "text_encoder_2",
            "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3"),
        gated=True, weights="transformer/*.safetensors",
        licence="Stability AI Community License; gated: accept it on the Hub, then use a token",
        approx_size="~15.5 GB (transformer 4.2, T5-XXL 9.5, CLIP-G 1.4, CLIP-L 0.25, VAE 0.17)"),
    "tiny_vae": HubSource(
        "madebyollin/taesd3", allow_patterns=("config.json", "*.safetensors"),
        weights="*.safetensors", licence="MIT", approx_size="~10 MB"),
    "rewards.aesthetic.clip": HubSource(
        "openai/clip-vit-large-patch14", allow_patterns=_MODEL_FILES, weights="*.safetensors",
        licence="MIT (OpenAI CLIP; see model card)", approx_size="~1.7 GB"),
    "rewards.aesthetic.mlp": UrlSource(
        "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
        "sac+logos+ava1-l14-linearMSE.pth",
        sha256="21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
        size=3714759, licence="Apache-2.0 (improved-aesthetic-predictor)",
        approx_size="3.7 MB"),
    "rewards.hpsv2.checkpoint": HubSource(
        "xswu/HPSv2", filename="HPS_v2.1_compressed.pt", licence="Apache-2.0",
        approx_size="~2 GB"),
    "rewards.pickscore.model": HubSource(
        "yuvalkirstain/PickScore_v1", allow_patterns=_MODEL_FILES, weights="*.safetensors",
        licence="see model card (not verified)", approx_size="~3.9 GB"),
    "features.inception": UrlSource(
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
        licence="Apache-2.0 (torch-fidelity's port of TensorFlow's FID Inception-v3)",
        approx_size="~92 MB"),
    "features.dreamsim": DreamSimSource(
        "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/"
        "dreamsim_ensemble_checkpoint.zip",
        licence="MIT (DreamSim); DINO Apache-2.0; CLIP and OpenCLIP MIT",
        approx_size="about 1 GB (not verified offline)"),
    "rewards.pickscore.processor": HubSource(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", allow_patterns=_PROCESSOR_FILES,
        licence="MIT", approx_size="~3 MB (processor and tokenizer files, no weights)"),
}

# Marker file of each folder entry: a folder without it is incomplete (downloads land in a
# staging folder and are renamed into place, so the marker appears only when all is there).
DIR_MARKERS: dict[str, str] = {
    "pipeline": "model_index.json",
    "tiny_vae": "config.json",
    "rewards.aesthetic.clip": "config.json",
    "rewards.pickscore.model": "config.json",
    "rewards.pickscore.processor": "preprocessor_config.json",
    "features.dreamsim": "ensemble_lora/adapter_config.json",
}

PROMPT_SOURCES: dict[str, Source] = {
    **{f"benchmark_{style}.json": UrlSource(f"{_VGGFLOW_RAW}/HPDv2/benchmark_{style}.json",
                                            licence=_HPD_LICENCE, approx_size="~0.1 MB")
       for style in ("photo", "paintings", "anime", "concept-art")},
    "pick_a_pic.txt": UrlSource(
        f"{_VGGFLOW_RAW}/pick_a_pic.txt", approx_size="unknown",
        licence="Pick-a-Pic prompts, copied from lzzcd001/vggflow; see the Pick-a-Pic dataset "
                "card (not verified)"),
    "simple_animals.txt": RepoFile("DDPO's animal list (ddpo-pytorch, MIT)"),
}

# Key paths of path-valued entries, in fetch order (small files first).
_PATH_KEYS = ("rewards.aesthetic.mlp", "tiny_vae", "rewards.pickscore.processor",
              "features.inception", "features.dreamsim",
              "rewards.aesthetic.clip", "rewards.hpsv2.checkpoint", "rewards.pickscore.model",
              "pipeline")


@dataclass(frozen=True)
class Entry:
    """One configured file or folder: its key path, where it goes, where it comes from."""

    key: str
    path: Path
    source: Source | None  # None: no known source (a user-supplied file)
    marker: str | None  # folders: the file that proves the folder is complete

    def present(self) -> bool:
        return (self.path / self.marker).is_file() if self.marker else self.path.is_file()

    def problem(self) -> str:
        if self.marker and self.path.is_dir():
            return f"folder lacks {self.marker}"
        return "missing"


def _lookup(mapping: Mapping, key: str) -> Any:
    value: Any = mapping
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def prompt_specs(resources: Mapping) -> dict[str, Any]:
    """The prompt sets of a resources block by key path: ``prompts.<reward>`` in the experiment
    config (keyed by reward), ``prompts`` in a resolved run config (the run's reward's set)."""
    prompts = resources.get("prompts") or {}
    if not isinstance(prompts, Mapping):
        raise ConfigError(f"resources key prompts must be a mapping, got {prompts!r}")
    if "files" in prompts:
        return {"prompts": prompts}
    return {f"prompts.{reward}": spec for reward, spec in prompts.items()}


def resource_entries(resources: Mapping) -> list[Entry]:
    """Every configured path of a suite's resources block (model entries, then prompt files)."""
    entries: list[Entry] = []
    for key in _PATH_KEYS:
        value = _lookup(resources, key)
        if value is None:
            continue
        if not isinstance(value, str | os.PathLike):
            raise ConfigError(f"resources key {key} must be a path, got {value!r}")
        entries.append(Entry(key, Path(value), SD3_SOURCES.get(key), DIR_MARKERS.get(key)))
    seen = {entry.path for entry in entries}
    for prefix, spec in prompt_specs(resources).items():
        files = spec.get("files") if isinstance(spec, Mapping) else None
        if isinstance(files, str) or not isinstance(files, list):
            raise ConfigError(f"resources key {prefix}.files must be a list of prompt files, "
                              f"got {files!r}")
        for index, file in enumerate(files):
            path = Path(file)
            if path not in seen:
                seen.add(path)
                entries.append(Entry(f"{prefix}.files[{index}]", path,
                                     PROMPT_SOURCES.get(path.name), None))
    return entries


def missing_resources(resources: Mapping) -> list[str]:
    """Configured paths that are missing (folders: missing or without their marker file)."""
    return [str(entry.path) for entry in resource_entries(resources) if not entry.present()]


def check_resources(resources: Mapping, hint: str = FETCH_HINT) -> None:
    """Raise ConfigError naming every missing file and how to fetch them (``hint``)."""
    missing = [e for e in resource_entries(resources) if not e.present()]
    if not missing:
        return
    lines = []
    for entry in missing:
        note = "" if entry.source is not None else "; no known source: provide this file yourself"
        if isinstance(entry.source, RepoFile):
            note = "; ships with the repository: restore it with `git restore`"
        lines.append(f"  resources.{entry.key}: {entry.path} ({entry.problem()}{note})")
    raise ConfigError(f"{len(missing)} file(s) of the suite are missing:\n" + "\n".join(lines)
                      + f"\n{hint[0].upper()}{hint[1:]}")


def sd3_resources_from(data: Any, source: str) -> dict:
    """The SD3 resources block of a YAML file: an experiment config (``resources.sd3``), a
    resolved run config (``resources`` with ``pipeline``) or the resources block itself (what
    rule resolve_sd3_resources writes: a mapping without ``suite`` and ``resources`` keys)."""
    if isinstance(data, Mapping):
        block = data.get("resources")
        if isinstance(block, Mapping):
            if isinstance(block.get("sd3"), Mapping):
                return dict(block["sd3"])
            if "pipeline" in block:
                return dict(block)
        elif "suite" not in data and set(data) & {"pipeline", "rewards", "prompts"}:
            return dict(data)
    raise ConfigError(f"{source} has no SD3 resources block: expected resources.sd3 (experiment "
                      "config), resources.pipeline (resolved config) or the block itself")


# ---------------------------------------------------------------------------------------------
# hashing and the manifest


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_files(entry: Entry) -> list[Path]:
    """Files of an entry; Hub download metadata (``.cache/``) is left out."""
    if not entry.marker:
        return [entry.path]
    return sorted(p for p in entry.path.rglob("*")
                  if p.is_file() and ".cache" not in p.relative_to(entry.path).parts)


def _file_source(entry: Entry, file: Path) -> str:
    source = entry.source
    if isinstance(source, HubSource):
        rel = source.filename or file.relative_to(entry.path).as_posix()
        return source.file_url(rel)
    return source.describe() if source is not None else "local (no known source)"


def _records(entry: Entry) -> list[dict]:
    return [{"key": entry.key, "path": str(file), "source": _file_source(entry, file),
             "size": file.stat().st_size, "sha256": sha256_file(file)}
            for file in _entry_files(entry)]


def _hub_commit(local_dir: Path, relpath: str) -> str | None:
    """The commit huggingface_hub recorded for a file downloaded into ``local_dir``."""
    meta = local_dir / ".cache" / "huggingface" / "download" / f"{relpath}.metadata"
    try:
        return meta.read_text().splitlines()[0].strip() or None
    except (OSError, IndexError):
        return None


def _sidecar(manifest_path: Path) -> Path:
    # Snakemake deletes a job's output before running it; this copy keeps the previous records.
    return manifest_path.with_name(f".{manifest_path.name}.last")


def _previous_manifest(manifest_path: Path) -> dict:
    for path in (manifest_path, _sidecar(manifest_path)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == 1:
            return data
    return {"entries": {}, "files": []}


def _still_valid(entry: Entry, previous: dict) -> list[dict] | None:
    """The previous records of ``entry`` if its files still match them (size and sha256)."""
    old = previous["entries"].get(entry.key)
    if not old or old.get("path") != str(entry.path) or entry.source is None:
        return None
    if old.get("source") != entry.source.describe() or not entry.present():
        return None
    if old.get("allow_patterns") != list(getattr(entry.source, "allow_patterns", ())):
        return None
    records = [r for r in previous["files"] if r.get("key") == entry.key]
    if [r["path"] for r in records] != [str(f) for f in _entry_files(entry)]:
        return None
    for record in records:
        path = Path(record["path"])
        if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
            return None
    return records


def _write_json(data: dict, path: Path) -> None:
    from vggflow.utils.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# downloads


def _hub_error(entry: Entry, source: HubSource, error: Exception) -> FetchError:
    from huggingface_hub.errors import GatedRepoError

    url = f"https://huggingface.co/{source.repo_id}"
    if isinstance(error, GatedRepoError) or (source.gated and "401" in str(error)):
        return FetchError(
            f"resources.{entry.key}: {source.repo_id} is gated. Log in at {url}, accept its "
            "licence, then give this machine a token with read access (export HF_TOKEN=... or "
            f"`hf auth login`) and rerun. ({type(error).__name__}: {error})")
    offline = " HF_HUB_OFFLINE is set: unset it." if os.environ.get("HF_HUB_OFFLINE") else ""
    return FetchError(
        f"resources.{entry.key}: downloading {source.describe()} into {entry.path} failed: "
        f"{type(error).__name__}: {error}.{offline} This needs internet access to {url}.")


def _fetch_hub(entry: Entry, source: HubSource, token: str | None) -> str | None:
    """Download a Hub file or folder to ``entry.path``; return the commit if known.

    A new folder is filled in a staging folder beside it and renamed into place; an existing
    (outdated or incomplete) folder is updated in place, reusing the files that are up to date.
    """
    import huggingface_hub

    entry.path.parent.mkdir(parents=True, exist_ok=True)
    staging = entry.path.parent / f".{entry.path.name}.partial"
    target = entry.path if source.filename is None and entry.path.is_dir() else staging
    try:
        if source.filename:
            local = huggingface_hub.hf_hub_download(
                source.repo_id, source.filename, revision=source.revision, local_dir=staging,
                token=token)
        else:
            huggingface_hub.snapshot_download(
                source.repo_id, revision=source.revision, local_dir=target,
                allow_patterns=list(source.allow_patterns), token=token)
    except Exception as error:  # hub, HTTP and OS errors: keep the staging folder to resume
        raise _hub_error(entry, source, error) from error
    if source.filename:
        commit = _hub_commit(staging, source.filename)
        os.replace(local, entry.path)
        shutil.rmtree(staging, ignore_errors=True)
        return commit
    problems = [f"no {entry.marker}"] if not (target / entry.marker).is_file() else []
    if source.weights and not any(target.glob(source.weights)):
        problems.append(f"no files matching {source.weights}")
    if problems:
        raise FetchError(f"resources.{entry.key}: {source.describe()} downloaded into {target} "
                         f"but has {' and '.join(problems)}; the Hub repository may have "
                         "changed: check it and update vggflow/fetch.py's SD3_SOURCES")
    if target == staging:
        os.replace(staging, entry.path)
    return _hub_commit(entry.path, entry.marker)


def _fetch_url(entry: Entry, source: UrlSource) -> None:
    """Download to a temporary file beside ``entry.path``, verify, rename into place."""
    import urllib.error
    import urllib.request

    entry.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=entry.path.parent, prefix=f".{entry.path.name}.",
                                    suffix=f".partial{entry.path.suffix}")
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        request = urllib.request.Request(source.url, headers={"User-Agent": "vggflow-fetch"})
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as resp:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        except (urllib.error.URLError, OSError) as error:
            raise FetchError(f"resources.{entry.key}: downloading {source.url} failed: {error}; "
                             "this needs internet access (run it on the login node)") from error
        if source.size is not None and size != source.size:
            raise FetchError(f"resources.{entry.key}: {source.url} gave {size} bytes, expected "
                             f"{source.size}; nothing was written to {entry.path}")
        if source.sha256 and digest.hexdigest() != source.sha256:
            raise FetchError(f"resources.{entry.key}: sha256 of {source.url} is "
                             f"{digest.hexdigest()}, expected {source.sha256}; the file changed "
                             f"or was corrupted in transit; nothing was written to {entry.path}")
        if entry.key.startswith("prompts."):
            from vggflow.prompts import read_prompt_file

            try:
                read_prompt_file(tmp, f"download of {source.url}")
            except ConfigError as error:
                raise FetchError(f"resources.{entry.key}: {error}") from None
        os.replace(tmp, entry.path)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_dreamsim(entry: Entry) -> None:
    """Let the dreamsim package download into a staging folder; check it; rename into place."""
    from dreamsim import dreamsim

    from vggflow.config import missing_feature_files
    from vggflow.metrics.features import torch_hub_dir_kept

    staging = entry.path.parent / f".{entry.path.name}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        with torch_hub_dir_kept():
            dreamsim(pretrained=True, device="cpu", cache_dir=str(staging),
                     dreamsim_type="ensemble")
    except Exception as error:  # HTTP, zip and OS errors: keep the staging folder to resume
        raise FetchError(f"resources.{entry.key}: the dreamsim package's download into "
                         f"{staging} failed: {error}; this needs internet access (GitHub and "
                         "dl.fbaipublicfiles.com)") from error
    missing = missing_feature_files("dreamsim", staging)
    if missing:
        raise FetchError(f"resources.{entry.key}: the DreamSim download in {staging} lacks "
                         f"{', '.join(missing)}; the dreamsim package's layout may have changed")
    (staging / "pretrained.zip").unlink(missing_ok=True)
    if entry.path.exists():
        shutil.rmtree(entry.path)
    os.replace(staging, entry.path)


def fetch_resources(resources: Mapping, manifest_path: str | os.PathLike,
                    token: str | None = None, download: bool = True) -> dict:
    """Download every file of the SD3 resources block into the path the config gives.

    Skips an entry whose files still match the size and sha256 recorded by the previous manifest
    (and a URL file that matches its expected sha256). ``token``: Hugging Face token (default:
    HF_TOKEN or the stored login). ``download=False`` records files that are present (copied by
    hand) and fails on missing ones. Checks that every prompt set loads, writes the manifest
    atomically (see module doc) and returns it. Raises FetchError or ConfigError.
    """
    from vggflow.prompts import load_prompt_set

    manifest_path = Path(manifest_path)
    previous = _previous_manifest(manifest_path)
    entries = resource_entries(resources)
    manifest: dict[str, Any] = {"format": 1, "date": "", "suite": "sd3", "total_bytes": 0,
                                "entries": {}, "files": []}
    for number, entry in enumerate(entries, 1):
        source = entry.source
        tag = f"[{number}/{len(entries)}] resources.{entry.key} ({entry.path})"
        commit = previous["entries"].get(entry.key, {}).get("commit")
        records = _still_valid(entry, previous)
        if records is not None:
            print(f"{tag}: present, matches the recorded sha256; skipped", flush=True)
        elif source is None or isinstance(source, RepoFile) or not download:
            if not entry.present():
                why = ("ships with the repository: restore it with `git restore`"
                       if isinstance(source, RepoFile) else
                       "not downloaded (--no-download)" if source is not None else
                       f"no known source for {entry.path.name}: provide it yourself")
                raise FetchError(f"resources.{entry.key}: {entry.path} is missing; {why}")
            print(f"{tag}: present; recording it", flush=True)
            commit = None
        elif (isinstance(source, UrlSource) and source.sha256 and entry.path.is_file()
              and sha256_file(entry.path) == source.sha256):
            print(f"{tag}: present, matches the expected sha256; skipped", flush=True)
        else:
            print(f"{tag}: downloading {source.describe()}"
                  + (f" ({source.approx_size})" if source.approx_size else ""), flush=True)
            if isinstance(source, HubSource):
                commit = _fetch_hub(entry, source, token)
            elif isinstance(source, DreamSimSource):
                _fetch_dreamsim(entry)
            else:
                _fetch_url(entry, source)
        if records is None:
            records = _records(entry)
        size = sum(r["size"] for r in records)
        print(f"{tag}: {len(records)} file(s), {size / 1e6:.1f} MB", flush=True)
        manifest["entries"][entry.key] = {
            "path": str(entry.path),
            "source": source.describe() if source is not None else "local (no known source)",
            "allow_patterns": list(getattr(source, "allow_patterns", ())),
            "commit": commit,
            "licence": getattr(source, "licence", ""),
        }
        manifest["files"] += records
        manifest["total_bytes"] += size
    for prefix, spec in prompt_specs(resources).items():
        prompts = load_prompt_set(spec, f"resources.{prefix}")
        print(f"{prefix}: {len(prompts.train)} training, {len(prompts.eval)} evaluation prompts",
              flush=True)
    manifest["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write_json(manifest, _sidecar(manifest_path))
    _write_json(manifest, manifest_path)
    print(f"manifest: {len(manifest['files'])} files, {manifest['total_bytes'] / 1e9:.2f} GB "
          f"-> {manifest_path}", flush=True)
    return manifest

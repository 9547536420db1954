"""Prompt sets, the SD3 source table, the missing-file check and fetching (network faked)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import huggingface_hub
import pytest

from vggflow import fetch
from vggflow.config import ConfigError
from vggflow.fetch import FETCH_COMMAND, FetchError, check_resources, fetch_resources
from vggflow.prompts import PromptSet, load_prompt_set, read_prompt_file

REPO = Path(__file__).resolve().parents[1]
ANIMALS = REPO / "resources" / "prompts" / "simple_animals.txt"


# ---------------------------------------------------------------------------------------------
# prompt sets


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_txt_skips_comments_and_blank_lines(tmp_path):
    path = write(tmp_path / "p.txt", "# header\n\n  a cat  \n#not a prompt\nb dog\n\n")
    assert read_prompt_file(path) == ["a cat", "b dog"]


def test_json_list_of_strings(tmp_path):
    path = write(tmp_path / "p.json", json.dumps(["x", "y", "z"]))
    assert load_prompt_set({"files": [str(path)], "heldout_per_file": 1, "eval_count": 1}) == \
        PromptSet(train=("y", "z"), eval=("x",))


def test_heldout_per_file_and_eval_order(tmp_path):
    a = write(tmp_path / "a.json", json.dumps([f"a{i}" for i in range(5)]))
    b = write(tmp_path / "b.txt", "\n".join(f"b{i}" for i in range(4)))
    spec = {"files": [str(a), str(b)], "heldout_per_file": 2, "eval_count": 3}
    prompts = load_prompt_set(spec)
    assert prompts.train == ("a2", "a3", "a4", "b2", "b3")
    assert prompts.eval == ("a0", "a1", "b0")  # held-out prompts in file order
    assert not set(prompts.eval) & set(prompts.train)
    assert load_prompt_set(spec) == prompts  # no state carried between calls (read_hpd bug)


def test_no_heldout_evaluates_first_training_prompts(tmp_path):
    path = write(tmp_path / "p.txt", "a\nb\nc\n")
    prompts = load_prompt_set({"files": [str(path)], "heldout_per_file": 0, "eval_count": 2})
    assert prompts == PromptSet(train=("a", "b", "c"), eval=("a", "b"))


@pytest.mark.parametrize("name, text, expected", [
    ("missing.txt", None, "snakemake fetch_sd3_resources"),
    ("p.csv", "a\nb\n", ".txt"),
    ("p.json", '{"a": 1}', "list of strings"),
    ("p.json", '["a", 3]', "list of strings"),
    ("p.json", "[oops", "not valid JSON"),
    ("p.txt", "# only a comment\n\n", "has no prompts"),
])
def test_prompt_file_errors_name_the_file(tmp_path, name, text, expected):
    path = tmp_path / name
    if text is not None:
        write(path, text)
    with pytest.raises(ConfigError, match=expected) as error:
        load_prompt_set({"files": [str(path)], "heldout_per_file": 0, "eval_count": 1})
    assert str(path) in str(error.value)


def test_count_errors(tmp_path):
    path = write(tmp_path / "p.txt", "a\nb\nc\n")
    with pytest.raises(ConfigError, match=r"eval_count=3 .* 2 held-out") as error:
        load_prompt_set({"files": [str(path)], "heldout_per_file": 2, "eval_count": 3})
    assert str(path) in str(error.value)
    with pytest.raises(ConfigError, match="no training prompts") as error:
        load_prompt_set({"files": [str(path)], "heldout_per_file": 3, "eval_count": 1})
    assert str(path) in str(error.value)
    with pytest.raises(ConfigError, match="eval_count must be an integer >= 1"):
        load_prompt_set({"files": [str(path)], "heldout_per_file": 0, "eval_count": 0})


def test_shipped_prompt_files():
    animals = read_prompt_file(ANIMALS)
    assert len(animals) == len(set(animals)) == 45
    assert (animals[0], animals[-1]) == ("cat", "kangaroo")
    prompts = load_prompt_set({"files": [str(ANIMALS)], "heldout_per_file": 0, "eval_count": 8})
    assert prompts.eval == tuple(animals[:8]) and len(prompts.train) == 45


# ---------------------------------------------------------------------------------------------
# missing-file check


def sd3_resources(root: Path) -> dict:
    """The paper's resources block with every path under ``root`` (the animals file: shipped)."""
    sd3, hpd = root / "sd3", root / "sd3" / "prompts" / "hpdv2"
    return {
        "pipeline": str(sd3 / "stable-diffusion-3-medium-diffusers"),
        "tiny_vae": str(sd3 / "taesd3"),
        "rewards": {
            "aesthetic": {"clip": str(sd3 / "clip-vit-large-patch14"),
                          "mlp": str(sd3 / "sac+logos+ava1-l14-linearMSE.pth")},
            "hpsv2": {"checkpoint": str(sd3 / "HPS_v2.1_compressed.pt"), "model": "ViT-H-14"},
            "pickscore": {"model": str(sd3 / "PickScore_v1"),
                          "processor": str(sd3 / "CLIP-ViT-H-14-laion2B-s32B-b79K")},
        },
        "prompts": {
            "aesthetic": {"files": [str(ANIMALS)], "heldout_per_file": 0, "eval_count": 8},
            "hpsv2": {"files": [str(hpd / "benchmark_photo.json"),
                                str(hpd / "benchmark_paintings.json")],
                      "heldout_per_file": 10, "eval_count": 20},
            "pickscore": {"files": [str(sd3 / "prompts" / "pick_a_pic.txt")],
                          "heldout_per_file": 20, "eval_count": 20},
        },
    }


def test_missing_and_check_resources(tmp_path):
    resources = sd3_resources(tmp_path)
    write(Path(resources["tiny_vae"]) / "config.json", "{}")  # complete folder
    write(Path(resources["pipeline"]) / "vae" / "config.json", "{}")  # folder without marker
    write(Path(resources["rewards"]["aesthetic"]["mlp"]), "x")
    missing = fetch.missing_resources(resources)
    expected = [resources["rewards"]["pickscore"]["processor"],
                resources["rewards"]["aesthetic"]["clip"],
                resources["rewards"]["hpsv2"]["checkpoint"],
                resources["rewards"]["pickscore"]["model"], resources["pipeline"],
                *resources["prompts"]["hpsv2"]["files"],
                *resources["prompts"]["pickscore"]["files"]]
    assert missing == expected
    with pytest.raises(ConfigError) as error:
        check_resources(resources)
    message = str(error.value)
    for path in expected:
        assert path in message
    assert FETCH_COMMAND in message and "HF_TOKEN" in message
    assert "folder lacks model_index.json" in message
    assert resources["tiny_vae"] not in message and str(ANIMALS) not in message


def test_source_table_covers_every_sd3_key(tmp_path):
    entries = fetch.resource_entries(sd3_resources(tmp_path))
    assert all(entry.source is not None for entry in entries)
    pipeline = fetch.SD3_SOURCES["pipeline"]
    assert pipeline.gated and pipeline.repo_id == "stabilityai/stable-diffusion-3-medium-diffusers"
    # diffusers folders only: no single-file checkpoints at the repository root
    assert all("/" in p or p == "model_index.json" for p in pipeline.allow_patterns)
    assert not any(p.endswith(".bin") for p in fetch.SD3_SOURCES["tiny_vae"].allow_patterns)


# ---------------------------------------------------------------------------------------------
# fetching, with the Hub and urllib faked


MLP_BYTES = b"fake aesthetic mlp"
HPD = {style: [f"{style} prompt {i}" for i in range(30)] for style in ("photo", "paintings")}
PAP = "\n".join(f"pick a pic {i}" for i in range(40))


class FakeNetwork:
    """Stands in for huggingface_hub's downloads and urllib.request.urlopen; counts calls."""

    def __init__(self, monkeypatch, mlp_bytes=MLP_BYTES):
        self.calls: list[str] = []
        self.mlp_bytes = mlp_bytes
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(urllib.request, "urlopen", self.urlopen)

    @staticmethod
    def _put(local_dir, relpath, text):
        write(Path(local_dir) / relpath, text)
        write(Path(local_dir) / ".cache/huggingface/download" / f"{relpath}.metadata",
              "c0ffee\netag\n0\n")

    def snapshot_download(self, repo_id, *, revision, local_dir, allow_patterns, token):
        self.calls.append(repo_id)
        if repo_id.startswith("stabilityai/"):
            files = ["model_index.json", "transformer/config.json",
                     "transformer/diffusion_pytorch_model.safetensors"]
        else:
            files = ["config.json", "preprocessor_config.json", "model.safetensors"]
        for relpath in files:
            self._put(local_dir, relpath, f"{repo_id}/{relpath}")
        return str(local_dir)

    def hf_hub_download(self, repo_id, filename, *, revision, local_dir, token):
        self.calls.append(f"{repo_id}/{filename}")
        self._put(local_dir, filename, "hps checkpoint")
        return str(Path(local_dir) / filename)

    def urlopen(self, request, timeout):
        url = request.full_url
        self.calls.append(url)
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".pth"):
            return io.BytesIO(self.mlp_bytes)
        if name.startswith("benchmark_"):
            return io.BytesIO(json.dumps(HPD[name[len("benchmark_"):-5]]).encode())
        if name == "pick_a_pic.txt":
            return io.BytesIO(PAP.encode())
        raise urllib.error.URLError(f"unexpected url {url}")


@pytest.fixture
def fake_mlp_hash(monkeypatch):
    """Expect the fake MLP's content instead of the real file's sha256 and size."""
    source = fetch.SD3_SOURCES["rewards.aesthetic.mlp"]
    fake = dataclasses.replace(source, sha256=hashlib.sha256(MLP_BYTES).hexdigest(),
                               size=len(MLP_BYTES))
    monkeypatch.setitem(fetch.SD3_SOURCES, "rewards.aesthetic.mlp", fake)


def test_fetch_writes_files_and_manifest_then_skips(tmp_path, monkeypatch, fake_mlp_hash):
    net = FakeNetwork(monkeypatch)
    resources = sd3_resources(tmp_path)
    manifest_path = tmp_path / "sd3" / "manifest.json"
    manifest = fetch_resources(resources, manifest_path)
    assert len(net.calls) == 10  # 5 folders, 1 Hub file, 1 MLP, 3 prompt files
    assert fetch.missing_resources(resources) == []
    check_resources(resources)
    assert Path(resources["rewards"]["hpsv2"]["checkpoint"]).read_text() == "hps checkpoint"
    assert Path(resources["rewards"]["aesthetic"]["mlp"]).read_bytes() == MLP_BYTES
    assert not list(tmp_path.rglob("*.partial*"))  # staging folders and temp files are gone

    assert json.loads(manifest_path.read_text()) == manifest
    assert manifest["date"] and manifest["entries"]["pipeline"]["commit"] == "c0ffee"
    recorded = {r["path"]: r for r in manifest["files"]}
    for path, record in recorded.items():
        data = Path(path).read_bytes()
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert not any(".cache" in path for path in recorded)
    assert str(ANIMALS) in recorded and recorded[str(ANIMALS)]["source"] == "repository"
    assert manifest["total_bytes"] == sum(r["size"] for r in manifest["files"])

    manifest_path.unlink()  # Snakemake removes the output before rerunning the rule
    again = fetch_resources(resources, manifest_path)
    assert len(net.calls) == 10 and again["files"] == manifest["files"]

    write(Path(resources["tiny_vae"]) / "model.safetensors", "corrupted")
    fetch_resources(resources, manifest_path)
    assert net.calls[10:] == ["madebyollin/taesd3"]  # only the changed entry is downloaded again


def test_fetch_rejects_a_wrong_sha256(tmp_path, monkeypatch):
    net = FakeNetwork(monkeypatch)  # real expected sha256: the fake bytes do not match it
    resources = sd3_resources(tmp_path)
    mlp = Path(resources["rewards"]["aesthetic"]["mlp"])
    with pytest.raises(FetchError, match="sha256|bytes, expected") as error:
        fetch_resources(resources, tmp_path / "manifest.json")
    assert fetch.SD3_SOURCES["rewards.aesthetic.mlp"].url in str(error.value)
    assert net.calls == [fetch.SD3_SOURCES["rewards.aesthetic.mlp"].url]
    assert not mlp.exists() and list(mlp.parent.iterdir()) == []
    assert not (tmp_path / "manifest.json").exists()


def test_gated_error_explains_the_licence_and_token(tmp_path, monkeypatch, fake_mlp_hash):
    from huggingface_hub.errors import GatedRepoError

    FakeNetwork(monkeypatch)

    def gated(repo_id, **kwargs):
        error = GatedRepoError.__new__(GatedRepoError)  # without an HTTP response object
        Exception.__init__(error, "401 Client Error: access to this repo is restricted")
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    resources = sd3_resources(tmp_path)
    with pytest.raises(FetchError, match="gated.*accept its licence.*HF_TOKEN"):
        fetch_resources({"pipeline": resources["pipeline"]}, tmp_path / "manifest.json")
    assert not Path(resources["pipeline"]).exists()


def test_cli_fetch_sd3_reads_the_experiment_config(tmp_path, monkeypatch, fake_mlp_hash, capsys):
    from vggflow.cli import main

    FakeNetwork(monkeypatch)
    config = write(tmp_path / "paper.yaml", json.dumps(
        {"suite": "sd3", "resources": {"sd3": sd3_resources(tmp_path)}}))
    assert main(["fetch-sd3", "--config", str(config), "--manifest",
                 str(tmp_path / "m.json")]) == 0
    assert "prompts.hpsv2: 40 training, 20 evaluation prompts" in capsys.readouterr().out
    assert main(["fetch-sd3", "--config", str(write(tmp_path / "x.yaml", "a: 1")),
                 "--manifest", str(tmp_path / "n.json")]) == 2
    assert "no SD3 resources block" in capsys.readouterr().err


def test_sd3_resources_from_accepts_config_resolved_config_and_block(tmp_path):
    block = sd3_resources(tmp_path)
    for data in ({"suite": "sd3", "resources": {"sd3": block, "digits": {}}},
                 {"suite": "sd3", "reward": "hpsv2", "resources": block}, block):
        assert fetch.sd3_resources_from(data, "x.yaml") == block
    with pytest.raises(ConfigError, match="x.yaml has no SD3 resources block"):
        fetch.sd3_resources_from({"suite": "digits", "resources": {"digits": {}}}, "x.yaml")


def test_check_accepts_a_resolved_run_block(tmp_path):
    """A run's resolved config holds only its reward's prompt set under ``prompts``."""
    block = sd3_resources(tmp_path)
    block["prompts"] = block["prompts"]["pickscore"]
    entries = fetch.resource_entries(block)
    assert entries[-1].key == "prompts.files[0]" and entries[-1].path.name == "pick_a_pic.txt"
    with pytest.raises(ConfigError, match=r"resources.prompts.files\[0\]: .*pick_a_pic.txt"):
        check_resources(block)


def test_fetch_dreamsim_uses_the_package_downloader_and_stages_the_folder(tmp_path, monkeypatch):
    """features.dreamsim is filled by dreamsim's own downloader in a staging folder, checked for
    every file DreamSimFeatures reads, and renamed into place; torch hub's directory is
    restored; a failed download leaves nothing at the path."""
    import dreamsim
    import torch

    from vggflow.config import DREAMSIM_FILES

    calls = []

    def fake_dreamsim(pretrained, device, cache_dir, dreamsim_type):
        calls.append((pretrained, dreamsim_type))
        torch.hub.set_dir(cache_dir)  # as dreamsim's extractor does
        for name in (*DREAMSIM_FILES, "pretrained.zip"):
            write(Path(cache_dir) / name, name)
        return None, None

    monkeypatch.setattr(dreamsim, "dreamsim", fake_dreamsim)
    hub_dir = torch.hub.get_dir()
    folder = tmp_path / "sd3" / "dreamsim"
    manifest = fetch_resources({"features": {"dreamsim": str(folder)}}, tmp_path / "m.json")
    assert calls == [(True, "ensemble")] and torch.hub.get_dir() == hub_dir
    assert all((folder / name).is_file() for name in DREAMSIM_FILES)
    assert not (folder / "pretrained.zip").exists() and not list(tmp_path.rglob("*.partial"))
    assert len(manifest["files"]) == len(DREAMSIM_FILES)
    assert "dreamsim" in manifest["entries"]["features.dreamsim"]["source"]

    def offline(**kwargs):
        raise OSError("no route to github.com")

    monkeypatch.setattr(dreamsim, "dreamsim", offline)
    other = tmp_path / "other" / "dreamsim"
    with pytest.raises(FetchError, match="dreamsim package's download.*internet"):
        fetch_resources({"features": {"dreamsim": str(other)}}, tmp_path / "m2.json")
    assert not other.exists()

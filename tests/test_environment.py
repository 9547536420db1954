"""environment.yml and workflow/envs/*.yaml pin the same versions as pyproject.toml."""

import os
import re
import shutil
import subprocess

import tomllib
import yaml
from conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = PIN.match(requirement.strip())
        if match:
            found[normalise(match.group(1))] = match.group(2)
    return found


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    unpinned = [r for r in requirements if not PIN.match(r)]
    assert not unpinned, f"unpinned requirements in pyproject.toml: {unpinned}"
    return pins(requirements)


def conda_pip_pins(path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return pins(pip)


def test_environment_yml_matches_pyproject():
    assert conda_pip_pins(REPO / "environment.yml") == pyproject_pins()


def test_workflow_envs_pin_the_same_versions():
    expected = pyproject_pins()
    for path in (REPO / "workflow/envs").glob("*.yaml"):
        found = conda_pip_pins(path)
        assert found, path
        for name, version in found.items():
            assert expected.get(name) == version, (path.name, name, version)


def test_setup_stops_before_installing_when_the_disk_is_too_full(tmp_path):
    """A new .venv that cannot fit fails at once with a message, and nothing is half-installed."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts/setup.sh", tmp_path / "scripts/setup.sh")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "VGGFLOW_SETUP_NEED_GIB": str(10**9)}
    done = subprocess.run(
        ["bash", str(tmp_path / "scripts/setup.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "MiB free on the disk" in done.stderr and "Free some space" in done.stderr
    assert not (tmp_path / ".venv").exists()

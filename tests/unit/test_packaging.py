"""The built wheel holds every package and the migration scripts, and its console script
names the command line: an editable install would hide a package left out."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "worker", "shared", "ops", "cli")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """Built as .ci/run builds it: offline, with the locked build backend."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (path,) = out.glob("eventpipe-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_package_module_and_migration(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts or any(
                (p / "__init__.py").exists() for p in [path.parent]
            ):
                assert str(path.relative_to(ROOT)) in names, f"{path} is not in the wheel"
    versions = sorted(p.name for p in (ROOT / "cli" / "migrations" / "versions").glob("*.py"))
    assert versions and all(f"cli/migrations/versions/{v}" in names for v in versions)
    assert "cli/migrations/script.py.mako" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_console_script_is_the_command_line(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "eventpipe = cli.main:main" in wheel.read(entry_points).decode()


def test_the_wheel_holds_the_console_templates_and_static_files(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    console = ROOT / "api" / "console"
    files = [*console.glob("templates/*"), *console.glob("static/*")]
    assert len(files) > 10
    for path in files:
        assert str(path.relative_to(ROOT)) in names, f"{path} is not in the wheel"

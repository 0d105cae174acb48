"""The built wheel holds every package and the migration scripts, and its console script
names the command line: an editable install would hide a package left out."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "worker", "shared", "ops", "cli")


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("eventpipe-*.whl")
    return wheel


def test_the_wheel_holds_every_package_module_and_migration(tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
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


def test_the_console_script_is_the_command_line(tmp_path: Path) -> None:
    wheel = zipfile.ZipFile(build_wheel(tmp_path))
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "eventpipe = cli.main:main" in wheel.read(entry_points).decode()

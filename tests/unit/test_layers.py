"""The layers point down: the command line on top, the operator tools below it and the API,
`api` and `worker` side by side, `shared` at the bottom importing nothing of ours.

Every import counts, those inside functions too: a lazy import that points up is still a
layer reaching up."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("cli", "api", "worker", "ops", "shared")
# What each package may import besides itself.
ALLOWED: dict[str, set[str]] = {
    "cli": {"api", "worker", "ops", "shared"},
    "api": {"ops", "shared"},
    "worker": {"shared"},
    "ops": {"shared"},
    "shared": set(),
}


def imported_packages(source: str) -> set[str]:
    """The top-level packages of ours that `source` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in OURS)
    return found


def violations(root: Path) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for target in imported_packages(path.read_text()) - allowed - {package}:
                found.append(f"{path.relative_to(root)} imports {target}")
    return found


def test_every_import_points_down() -> None:
    assert violations(ROOT) == []


def test_the_check_sees_an_import_that_points_up(tmp_path: Path) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "shared" / "bad.py").write_text("def f():\n    from api.app import create_app\n")
    (tmp_path / "worker" / "bad.py").write_text("import api.http\n")
    (tmp_path / "api" / "bad.py").write_text("from cli import main\n")
    (tmp_path / "ops" / "fine.py").write_text("from shared.db import transaction\n")
    assert violations(tmp_path) == [
        "api/bad.py imports cli",
        "worker/bad.py imports api",
        "shared/bad.py imports api",
    ]


@pytest.mark.parametrize("package", OURS)
def test_every_package_is_in_the_tree(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()


CLIENT = ROOT / "client" / "eventpipe_client"
# The client distribution's one dependency (client/pyproject.toml).
CLIENT_DEPENDENCIES = {"httpx2"}


def top_level_imports(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_client_imports_only_itself_the_stdlib_and_its_http_library() -> None:
    """`pip install ./client` on a producer's machine has no server: no import of ours and
    nothing beyond what client/pyproject.toml declares."""
    allowed = set(sys.stdlib_module_names) | CLIENT_DEPENDENCIES | {"eventpipe_client"}
    found = {
        f"{path.name} imports {name}"
        for path in sorted(CLIENT.rglob("*.py"))
        for name in top_level_imports(path.read_text()) - allowed
    }
    assert found == set()
    assert top_level_imports("import api.app\nfrom shared import ids\n") - allowed == {
        "api",
        "shared",
    }

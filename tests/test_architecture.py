"""The architecture as import contracts (pyproject.toml, [tool.importlinter]): the service
runs the engines and never the reverse, the team's tools and the test support stay out of
the product, and no package has an import cycle between its modules or subpackages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TESTS_DIR

REPO = TESTS_DIR.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # beside this interpreter


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the packages under `root` with the repository's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def copy_of_the_code(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "static")
    for package in ("daemon", "engines", "tests/thc_tools", "tests/thc_testing"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=ignore)
    return tmp_path


def add_import(module: Path, statement: str) -> None:
    text = module.read_text()
    anchor = "from __future__ import annotations\n"
    module.write_text(text.replace(anchor, anchor + statement + "\n", 1))


def test_an_engine_importing_the_service_breaks_the_layers(tmp_path):
    root = copy_of_the_code(tmp_path)
    add_import(root / "engines" / "facegeom.py", "import daemon.pipeline  # noqa")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "tools → test support → service → engines BROKEN" in result.stdout


def test_the_product_importing_test_support_breaks_a_contract(tmp_path):
    root = copy_of_the_code(tmp_path)
    add_import(root / "daemon" / "capture.py", "import thc_testing.faults  # noqa")
    result = lint_imports(root)
    assert "the product never imports the tools or the test support BROKEN" in result.stdout


def test_a_cycle_between_two_modules_breaks_the_acyclic_contract(tmp_path):
    root = copy_of_the_code(tmp_path)
    add_import(root / "daemon" / "stats.py", "import daemon.pipeline  # noqa")
    result = lint_imports(root)
    assert "no import cycle between sibling modules or subpackages BROKEN" in result.stdout

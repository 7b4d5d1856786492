"""`make install-service` / `uninstall-service` into a throwaway HOME (systemctl left out:
the user manager belongs to the real session, not to a test)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(target: str, home: Path) -> subprocess.CompletedProcess[str]:
    # -o install: the venv running these tests is the installed one; never rebuild it here
    return subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "-o",
            "install",
            target,
            f"HOME={home}",
            f"XDG_CONFIG_HOME={home / '.config'}",
            f"VENV={VENV}",
            "SYSTEMCTL=:",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_and_uninstall_the_user_service(tmp_path):
    result = make("install-service", tmp_path)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / ".config/systemd/user/talking-head-cam.service"
    assert unit.read_text() == (REPO / "systemd/talking-head-cam.service").read_text()
    link = tmp_path / ".local/bin/talking-head-cam"
    assert link.resolve() == (VENV / "bin/talking-head-cam").resolve()
    config = tmp_path / ".config/talking-head-cam/config.yaml"
    assert config.read_text() == (REPO / "config.yaml").read_text()
    assert "sudo cp systemd/v4l2loopback.conf /etc/modprobe.d/" in result.stdout

    config.write_text("log_level: debug\n")  # a user's own config is never overwritten
    assert make("install-service", tmp_path).returncode == 0
    assert config.read_text() == "log_level: debug\n"

    result = make("uninstall-service", tmp_path)
    assert result.returncode == 0, result.stderr
    assert not unit.exists() and not link.is_symlink()
    assert config.read_text() == "log_level: debug\n"


def planned_installs(venv: Path, target: str, *settings: str) -> list[str]:
    """The pip installs `make -n TARGET` would run against `venv` (nothing is run)."""
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), target, f"VENV={venv}", *settings],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [line.split("-q ", 1)[1] for line in result.stdout.splitlines() if "pip install" in line]


def test_each_install_set_has_its_own_stamp(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").symlink_to(sys.executable)  # an existing venv: only pip runs
    assert planned_installs(venv, "install", "ENGINES=") == ["-e ."]
    assert planned_installs(venv, "install", "ENGINES=1") == ["-e .", "-e '.[engines]'"]
    assert planned_installs(venv, "test") == ["-e '.[test,engines]'"]

    (venv / ".installed-core").touch()  # the core is in: the extras are still to install
    assert planned_installs(venv, "install", "ENGINES=") == []
    assert planned_installs(venv, "install", "ENGINES=1") == ["-e '.[engines]'"]
    assert planned_installs(venv, "engines") == ["-e '.[engines]'"]
    assert planned_installs(venv, "test") == ["-e '.[test,engines]'"]

    (venv / ".installed-dev").touch()  # what `make test` leaves: every set is in
    for name in (".installed-core", ".installed-engines"):
        (venv / name).touch()
    assert planned_installs(venv, "test") == []
    assert planned_installs(venv, "install", "ENGINES=1") == []

"""The wheel a user installs (`pipx install .`, or `pip install` of the built wheel): built from
this checkout, installed with the core dependencies from PyPI into a clean venv, and run from a
folder outside the checkout, so that everything `demo` and `doctor` read at runtime (the default
config, the web page's files, the embedded avatar) must come from the installed packages."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, pypi_reachable, read_video

pytestmark = [
    pytest.mark.skipif(not pypi_reachable(), reason="pypi.org is not reachable from here"),
    pytest.mark.skipif(
        shutil.which("git") is None or not (REPO / ".git").exists(),
        reason="needs git and a git checkout: the wheel is built from the files git knows",
    ),
]

# The interpreter's own settings and the checkout's venv stay out of the clean venv's processes.
LEAKS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKS and not k.startswith("THC_")}
    env.pop("TALKING_HEAD_CAM_TEST_SUPPORT", None)
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


def run(args: list[str | Path], cwd: Path, timeout_s: float, **env: str) -> str:
    """Runs a command to success and returns its stdout, or fails the test with its output."""
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, f"{args[:3]}: exit {result.returncode}\n{result.stderr[-4000:]}"
    return result.stdout


def source_copy(dest: Path) -> Path:
    """The checkout's files as a fresh clone with local edits has them (tracked and untracked,
    never the git-ignored: no venv, no stale build/ whose leftovers setuptools would ship)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted here is not part of the build
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel installed with its core dependencies (no extras: no torch) into a clean venv.
    pip's cache is kept (about 1.3 GB of wheels, downloaded once per machine)."""
    root = tmp_path_factory.mktemp("wheel")
    src = source_copy(root / "src")
    dist = root / "dist"
    pip = ["-m", "pip", "--disable-pip-version-check"]
    run([sys.executable, *pip, "wheel", "-q", "--no-deps", "-w", dist, src], root, 600)
    wheels = sorted(dist.glob("talking_head_cam-*.whl"))
    assert len(wheels) == 1, wheels

    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], root, 300)  # no system site packages
    python = venv / "bin" / "python"
    run([python, *pip, "install", "-q", wheels[0]], root, 1800)
    shutil.rmtree(src)  # nothing of the checkout is left to import from
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    for name in ("config", "cache", "data", "runtime"):  # no user config, no cached avatar
        (root / "xdg" / name).mkdir(parents=True)
    return {"root": root, "venv": venv, "python": python, "cwd": elsewhere}


def xdg(root: Path) -> dict[str, str]:
    return {
        f"XDG_{name.upper()}_HOME" if name != "runtime" else "XDG_RUNTIME_DIR": str(
            root / "xdg" / name
        )
        for name in ("config", "cache", "data", "runtime")
    }


WHERE = """
import importlib.util, json
from importlib import resources
import daemon
package = resources.files("daemon")
print(json.dumps({
    "daemon": daemon.__file__,
    "config": str(package / "default_config.yaml"),
    "static": sorted(f.name for f in (package / "static").iterdir())
    if (package / "static").is_dir() else [],
    "tools": [m for m in ("thc_tools", "thc_testing", "conftest") if importlib.util.find_spec(m)],
}))
"""


def test_the_installed_package_holds_its_files_and_no_tests(installed: dict[str, Path]) -> None:
    where = json.loads(run([installed["python"], "-c", WHERE], installed["cwd"], 120))
    site = installed["venv"] / "lib"
    assert Path(where["daemon"]).is_relative_to(site), where
    assert Path(where["config"]).read_text() == (REPO / "config.yaml").read_text()
    assert where["static"] == sorted(f.name for f in (REPO / "daemon/static").iterdir())
    assert where["tools"] == []


def test_demo_renders_a_real_video(installed: dict[str, Path]) -> None:
    out = installed["cwd"] / "demo.mp4"
    command = [installed["venv"] / "bin/talking-head-cam", "demo", "--out", out]
    size = ["--seconds", "1", "--width", "320", "--height", "240"]
    stdout = run([*command, *size], installed["cwd"], 300, **xdg(installed["root"]))
    assert stdout.strip() == f"wrote {out} (30 frames, 320x240 @ 30 fps)"
    frames, fps = read_video(out)
    assert (len(frames), fps) == (30, 30.0)
    assert {frame.shape for frame in frames} == {(240, 320, 3)}
    # a picture in every frame (a face on a background), never one flat colour
    assert min(float(np.std(frame)) for frame in frames) > 20.0


def test_doctor_finds_the_packaged_config_and_the_embedded_avatar(
    installed: dict[str, Path],
) -> None:
    result = subprocess.run(
        [installed["venv"] / "bin/talking-head-cam", "doctor"],
        cwd=installed["cwd"],
        env=clean_env(**xdg(installed["root"])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    config = json.loads(run([installed["python"], "-c", WHERE], installed["cwd"], 120))["config"]
    assert f"[  OK] config: {config} is valid" in lines, result.stdout
    avatar = next((line for line in lines if line.startswith("[  OK] avatar: ")), result.stdout)
    assert re.fullmatch(r"\[  OK\] avatar: default \((.+)\), 512x600", avatar), avatar
    assert Path(avatar.split("(")[1].split(")")[0]).is_relative_to(installed["venv"])
    assert any(line.startswith("[  OK] python: mediapipe 0.10.14") for line in lines), lines
    cuda = "[INFO] engine cuda: torch is not installed"  # the core alone, no engines extra
    assert any(line.startswith(cuda) for line in lines), result.stdout
    # what may fail is this machine's (no v4l2loopback, say), never the install
    verdict = lines[-1]
    failed = verdict.split(": ", 1)[1].split(", ") if "problem(s)" in verdict else []
    assert not {"python", "config", "avatar"} & set(failed), verdict
    assert result.returncode == (1 if failed else 0), result.stdout

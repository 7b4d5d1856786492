"""The core install (`make install` without a GPU) has no torch, ONNX or TFLite: the CPU
path's commands must work without them. Each runs in a child process whose import system
refuses those packages, as an interpreter without them installed would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# The `engines` extra's packages (tqdm is core: the progress bars).
ENGINES_ONLY = ("torch", "onnx", "onnxruntime", "tflite", "ai_edge_litert", "tensorrt")

WITHOUT_ENGINES = f"""
import atexit, sys
from importlib.abc import MetaPathFinder

tried = set()

class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {ENGINES_ONLY!r}:
            tried.add(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
atexit.register(lambda: print("engines imports tried:", sorted(tried), file=sys.stderr))
from daemon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_engines(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_ENGINES, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_demo_never_imports_the_engines_extra(tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    result = without_engines(
        "demo", "--out", str(out), "--seconds", "0.2", "--width", "160", "--height", "120"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} (6 frames, 160x120 @ 30 fps)"
    assert "engines imports tried: []" in result.stderr.splitlines(), result.stderr


def test_doctor_reports_the_gpu_path_as_not_installed(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("sinks: [{type: null}]\n")
    result = without_engines("doctor", "--config", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    assert "[  OK] python: mediapipe" in result.stdout, result.stdout
    assert f"[  OK] config: {config} is valid" in result.stdout, result.stdout
    assert "[INFO] engine cuda: torch is not installed" in result.stdout, result.stdout
    assert "engines: cpu" in result.stdout, result.stdout
    tried = next(line for line in result.stderr.splitlines() if line.startswith("engines imports"))
    assert "'torch'" in tried  # really refused, and said so

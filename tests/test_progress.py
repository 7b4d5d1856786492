"""Progress of the long commands: a tqdm bar on a terminal, plain log lines off one (journald,
a pipe). Through the real CLI, once under a pseudo-terminal and once with stderr to a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import cv2
from conftest import REPO, write_video

# tqdm's bar: `render:  40%|████      | 10/25 [00:01<00:02,  7.50frame/s]`
BAR = re.compile(r"render: +\d+%\|.*\| \d+/25 \[[\d:]+<[\d:?]+, +[\d.?]+frame/s\]")
PLAIN_LINE = re.compile(r"INFO engines\.progress: render: 25/25 frames \(100%\), [\d.]+frame/s")


def render_args(tmp_path: Path, face_image, other_face) -> list[str]:
    """`render` of a 25-frame clip with the still generator (the tracking runs: a real render)."""
    driver = write_video(tmp_path / "driver.mp4", other_face, frames=25, fps=25)
    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), cv2.resize(face_image, (160, 160)))
    config = tmp_path / "still.yaml"
    config.write_text("generator: {type: still}\n")
    out = tmp_path / "out.mp4"
    return [
        sys.executable,
        "-m",
        "daemon",
        "--config",
        str(config),
        "render",
        "--avatar",
        str(avatar),
        "--driver",
        str(driver),
        "--out",
        str(out),
    ]


def run_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """The command with stdout and stderr on a pseudo-terminal of 100x30; what it showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env, cwd=REPO
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=120), shown.decode(errors="replace")


def test_render_shows_a_bar_on_a_terminal(tmp_path, face_image, other_face):
    code, shown = run_on_a_terminal(render_args(tmp_path, face_image, other_face))
    assert code == 0, shown
    assert BAR.search(shown), shown
    assert "\r" in shown  # redrawn in place
    assert "100%|" in shown and "25/25" in shown
    assert "engines.progress" not in shown  # a bar, not log lines


def test_render_logs_plain_progress_lines_to_a_pipe(tmp_path, face_image, other_face):
    result = subprocess.run(
        render_args(tmp_path, face_image, other_face),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert not re.search(r"%\||[█▏▎▍▌▋▊▉]", result.stderr), result.stderr
    lines = [line for line in result.stderr.splitlines() if "engines.progress" in line]
    assert lines and PLAIN_LINE.search(lines[-1]), result.stderr
    assert result.stdout.startswith("wrote ")

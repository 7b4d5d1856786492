"""In the guest, inside the service's sandbox (test B's drop-in runs it as ExecStartPost=, so
it gets the unit's user, namespaces, seccomp filter and device policy): what may this
process do? Prints one `E2E-PROBE {json}` line to the journal and always exits 0."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

from guest_tools import find_device

STATE_DIR = Path("/var/lib/talking-head-cam")  # StateDirectory=: the one writable place
# A character device with no driver behind it (major 60: local/experimental use), made
# world-readable by the runner. Without a device policy opening it fails with ENXIO; a
# policy that does not allow it fails it with EPERM first.
UNLISTED_DEVICE = "/dev/e2e-unlisted"


def open_errno(path: str, flags: int) -> str:
    """'ok' when `path` opens with `flags`, else the errno name."""
    try:
        os.close(os.open(path, flags))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def status_fields() -> dict[str, str]:
    lines = Path("/proc/self/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def main() -> int:
    status = status_fields()
    write = os.O_WRONLY | os.O_CREAT
    result = {
        "uid": os.getuid(),
        "groups": os.getgroups(),
        "no_new_privs": status.get("NoNewPrivs", "").strip(),
        "cap_eff": status.get("CapEff", "").strip(),
        "seccomp": status.get("Seccomp", "").strip(),
        "etc_read_only": bool(os.statvfs("/etc").f_flag & os.ST_RDONLY),
        "etc_write": open_errno("/etc/e2e-probe", write),
        "usr_write": open_errno("/usr/e2e-probe", write),
        "state_write": open_errno(str(STATE_DIR / "e2e-probe"), write),
        "video_rw": open_errno(find_device() or "/dev/video-missing", os.O_RDWR | os.O_NONBLOCK),
        "unlisted_device": open_errno(UNLISTED_DEVICE, os.O_RDONLY | os.O_NONBLOCK),
    }
    print("E2E-PROBE " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # never fail the unit: the test reads what is missing
        print(f"E2E-PROBE-ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(0)

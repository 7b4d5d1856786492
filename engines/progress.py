"""Progress of a long command (render, demo, avatar prepare, engines, eval, soak): a tqdm bar
with the count, rate and time left when stderr is a terminal; elsewhere (journald, a pipe)
plain log lines every LOG_EVERY_S and at the end, with no carriage returns or bar characters
for a log to keep. Here, the lowest layer, so that the service and the tools both use it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
# tqdm's own fields, without the bar: `render: 120/300 frames (40%), 31.2frame/s, 00:05 left`
PLAIN_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} {unit}s ({percentage:.0f}%), {rate_fmt}, {remaining} left{postfix}"
)
PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit}s, {rate_fmt}, {elapsed} so far{postfix}"


class _LogLines:
    """The file tqdm writes to off a terminal: each refresh becomes one log line."""

    def __init__(self) -> None:
        self.last: str | None = None

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if self.last is None:  # tqdm's opening 0% says nothing a log needs
            self.last = line
        elif line and line != self.last:  # tqdm shows the last state again as it closes
            self.last = line
            log.info("%s", line)

    def flush(self) -> None:
        pass


def _size_fallback() -> dict[str, int]:
    """80x24 for a terminal that reports no size (a bare pty, a serial console), where tqdm
    would hide the bar; otherwise tqdm asks the terminal itself."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        columns = lines = 0
    return {} if columns and lines else {"ncols": 80, "nrows": 24}


@contextmanager
def progress(
    total: int | None, desc: str, unit: str = "frame", *, enabled: bool = True
) -> Iterator[tqdm]:
    """A tqdm to `update(n)` while the work runs (`set_postfix_str(s, refresh=False)` names
    the item), closed on leaving: its final state shown, or cleared when the work failed.
    `total` None when the count is unknown; `enabled` False: silent."""
    known = total if total and total > 0 else None
    if not enabled:
        bar = tqdm(total=known, disable=True)
    elif sys.stderr.isatty():
        bar = tqdm(total=known, desc=desc, unit=unit, file=sys.stderr, **_size_fallback())
    else:
        bar = tqdm(
            total=known,
            desc=desc,
            unit=unit,
            file=_LogLines(),
            mininterval=LOG_EVERY_S,
            bar_format=PLAIN_FORMAT if known else PLAIN_FORMAT_NO_TOTAL,
        )
    try:
        yield bar
    except BaseException:
        bar.leave = False  # a failure's one line stands alone: no bar, no last state
        raise
    finally:
        bar.close()

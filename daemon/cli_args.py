"""Command-line parsing that fails like the rest of the CLI: one line on stderr naming the
argument and the fix, exit 2, never argparse's usage block or a traceback. Shared by
`python -m daemon` and the team's tools (`python -m thc_tools`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

CONFIG_AFTER = "config_after_command"  # where `COMMAND --config FILE` lands before merging


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (its subcommands' parsers are too: argparse
    makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of {minimum} or more, got {text!r}"
            )
        return value

    return parse


def seconds(*, zero_ok: bool, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, above 0 (or 0 too) and at most `maximum`;
    float() alone would let nan, inf and negative durations through."""
    bounds = ("0 or more" if zero_ok else "above 0") + (
        f" and at most {maximum:g}" if math.isfinite(maximum) else ""
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        low_ok = value >= 0 if zero_ok else value > 0
        if not (math.isfinite(value) and low_ok and value <= maximum):
            raise argparse.ArgumentTypeError(f"expected seconds {bounds}, got {text!r}")
        return value

    return parse


def add_config_after(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` on a command as well, as people type it (`run --config x.yaml`)."""
    parser.add_argument(
        "--config",
        dest=CONFIG_AFTER,
        metavar="FILE",
        help="config file (may also go before the command)",
    )


def merge_config_after(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One `args.config`, from before or after the command; two different ones are an error."""
    after = getattr(args, CONFIG_AFTER, None)
    if after is None:
        return
    if args.config is not None and args.config != after:
        parser.error(
            f"argument --config: given twice ({args.config!r} and {after!r}); give it once"
        )
    args.config = after

"""The team's own tools, apart from the product (the service never imports them):

    python -m thc_tools eval --driver VIDEO [--avatar IMG] [--json]   one clip, scored
    python -m thc_tools bench [...]                                   `make bench`
    python -m thc_tools.evaluate --data DIR --out reports             `make eval`
    python -m thc_tools.soak [--frames N]                             `make soak`

Run from the repository with tests/ on the path (the Makefile sets PYTHONPATH=tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from daemon.capture import VideoFileReader
from daemon.cli import load_config_arg, override_output, setup_logging
from daemon.cli_args import (
    OneLineParser,
    add_config_after,
    merge_config_after,
    seconds,
    whole_number,
)
from daemon.errors import ConfigError, TalkingHeadCamError
from daemon.native_stderr import filter_native_stderr


def cmd_eval(args: argparse.Namespace) -> int:
    from thc_tools.evaluate import evaluate

    config = override_output(load_config_arg(args.config), args)
    VideoFileReader(args.driver, "--driver").close()  # a bad --driver named as such
    result = evaluate(config, args.driver)
    print(json.dumps(result.as_dict()) if args.json else result.format_table())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from thc_tools.bench import run_bench

    config = load_config_arg(args.config)
    result = run_bench(
        config,
        args.frames,
        paced_s=args.paced_s,
        warp_runs=args.warp_runs,
        skimage_runs=args.skimage_runs,
        engine_frames=args.engine_frames,
    )
    print(result.report(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m thc_tools", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", metavar="FILE", help="config file (default: the one `run` would use)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    evaluate = sub.add_parser(
        "eval", help="score how well the output follows a driver video (vs the still avatar)"
    )
    evaluate.add_argument("--avatar", help="avatar image (default: the config's)")
    evaluate.add_argument("--driver", required=True, help="driving video file")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--width", type=int, default=512, help="output width (default: 512)")
    evaluate.add_argument("--height", type=int, default=512, help="output height (default: 512)")
    add_config_after(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    bench = sub.add_parser(
        "bench",
        help="per-stage latency, loop fps and CPU use of the pipeline; our warp vs scikit-image's",
    )
    bench.add_argument(
        "--frames",
        type=whole_number(1),
        default=300,
        help="driver frames per unpaced run (default: %(default)s)",
    )
    bench.add_argument(
        "--paced-s",
        type=seconds(zero_ok=True),
        default=5.0,
        metavar="S",
        help="seconds of the daemon paced at the output rate, per thread setting "
        "(0: skip; default: %(default)s)",
    )
    bench.add_argument(
        "--warp-runs",
        type=whole_number(0),
        default=200,
        metavar="N",
        help="timed runs of our warp (0: skip the warp comparison; default: %(default)s)",
    )
    bench.add_argument(
        "--skimage-runs",
        type=whole_number(0),
        default=3,
        metavar="N",
        help="timed runs of scikit-image's warp, ~1 s each (0: skip; default: %(default)s)",
    )
    bench.add_argument(
        "--engine-frames",
        type=whole_number(0),
        default=100,
        metavar="N",
        help="frames per engine (cpu, cuda, tensorrt) at 720p and 1080p, side by side "
        "(0: skip; default: %(default)s)",
    )
    add_config_after(bench)
    bench.set_defaults(func=cmd_bench)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    filter_native_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    merge_config_after(parser, args)
    setup_logging("warning", progress_lines=True)
    try:
        return args.func(args)
    except (ConfigError, TalkingHeadCamError) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lumbar <command>`: one parser per command, each calling one function of the package.

Command functions live next to the code they drive and are imported only when their command runs,
so `python -m lumbar --help` stays fast and a command never pays for torch unless it needs it.
Each takes the parsed `argparse.Namespace` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

Register = Callable[[argparse.ArgumentParser], None]
_COMMANDS: dict[str, tuple[str, str, Register]] = {}


def command(name: str, target: str, help: str) -> Callable[[Register], Register]:
    """Register a command: `target` is "module:function", the decorated function adds its arguments."""

    def decorate(add_arguments: Register) -> Register:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        _COMMANDS[name] = (target, help, add_arguments)
        return add_arguments

    return decorate


@command("index", "lumbar.data.index:cli_index", "one row per DICOM file (headers only) -> parquet")
def _index(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="competition data folder (default: see lumbar.paths)")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--workers", type=int, default=1, help="processes reading headers")


@command("map-axial", "lumbar.localize.axial:cli_map_axial", "sagittal spinal-canal points -> nearest axial slice")
def _map_axial(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None)
    p.add_argument("--coords", required=True, help="coordinates CSV (train_label_coordinates format)")
    p.add_argument("--out", required=True, help="output CSV: study_id, level, axial_series_id, instance_number, distance_mm")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--max-distance-mm", type=float, default=10.0)
    p.add_argument("--index", default=None, help="header index parquet to reuse (built on the fly otherwise)")


@command(
    "preprocess",
    "lumbar.preprocess.cache:cli_preprocess",
    "ROI tensor cache from coordinates (ground truth or predicted)",
)
def _preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="competition data folder (default: see lumbar.paths)")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--coords", required=True, help="coordinates CSV (train_label_coordinates format)")
    p.add_argument("--out", required=True, help="cache root; the cache is <out>/<cache name>/")
    p.add_argument(
        "--mode", choices=["target_window", "full_series"], default=None, help="default target_window"
    )
    p.add_argument("--size", type=int, default=None, help="output height and width, px (default 128)")
    p.add_argument(
        "--before", type=int, default=None, help="target_window: slices before the labelled one (2)"
    )
    p.add_argument("--after", type=int, default=None, help="target_window: slices after the labelled one (2)")
    p.add_argument("--depth", type=int, default=None, help="full_series: output slices (15)")
    p.add_argument(
        "--filter", default=None, help="filter name (none, mean_median, median, gaussian, clahe, ...)"
    )
    p.add_argument(
        "--margin-mode", choices=["mm", "thesis_px"], default=None, help="crop margins (default mm)"
    )
    p.add_argument("--pad-px", type=int, default=None, help="jitter context stored per side, px (8)")
    p.add_argument("--pad-slices", type=int, default=None, help="jitter context stored per side, slices (1)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other RoiConfig field, e.g. spinal_mm=48,24,24,24",
    )
    p.add_argument("--workers", type=int, default=1, help="processes, each building whole studies")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered command."""
    parser = argparse.ArgumentParser(prog="lumbar", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target, help_text, add_arguments) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_target=target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    module_name, func_name = args._target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

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


@command("train-localizer", "lumbar.localize.train:cli_train_localizer",
         "train the level localizer (sagittal and axial keypoint models) from label coordinates")
def _train_localizer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="competition data folder (train split)")
    p.add_argument("--coords", required=True, help="train_label_coordinates.csv")
    p.add_argument("--run", required=True, help="run folder (checkpoints, cache, localizer.json)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="slices resized to SIZE x SIZE")
    p.add_argument("--slices", type=int, default=None, help="sagittal stacks resampled to this many slices")
    p.add_argument("--backbone", default=None, help="timm encoder name, e.g. resnet18")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default=None, help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--pretrained", default=None, help="local encoder weights file (never downloaded)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma-separated: sag_t2,sag_t1,axial")
    p.add_argument("--max-studies", type=int, default=None, help="train on the first N studies only")
    p.add_argument("--workers", type=int, default=None, help="processes reading headers for the index")
    p.add_argument("--index", default=None, help="header index parquet of the train split to reuse")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other LocalizerConfig field")


@command("localize", "lumbar.localize.predict:cli_localize", "predicted label coordinates for a split")
def _localize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--run", required=True, help="run folder with localizer.json")
    p.add_argument("--out", required=True, help="output CSV (train_label_coordinates format)")
    p.add_argument("--device", default="auto")
    p.add_argument("--index", default=None, help="header index parquet of the split to reuse")
    p.add_argument("--axial-max-distance-mm", type=float, default=float("inf"),
                   help="levels whose nearest axial slice is farther get no subarticular rows (default: none)")


@command("localize-eval", "lumbar.localize.evaluate:cli_localize_eval",
         "localization error of predicted coordinates against ground truth (mm, slices)")
def _localize_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="predicted coordinates CSV")
    p.add_argument("--truth", required=True, help="ground-truth coordinates CSV")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--index", default=None, help="header index parquet of the split to reuse")


@command("score", "lumbar.evaluate.metric:cli_score", "the competition metric of a submission or a baseline")
def _score(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="label CSV in train.csv format (train.csv, test_labels.csv)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--submission", help="submission CSV; the labels of its studies are scored")
    what.add_argument(
        "--baseline", choices=["uniform", "prior", "prior_condition"],
        help="score a baseline on every labelled study: uniform, condition x level prior, per-condition prior",
    )
    p.add_argument("--prior-labels", default=None, help="label CSV to fit the prior baselines on (default: --labels)")


@command("pipeline", "lumbar.pipeline:cli_pipeline", "run the numbered notebooks with papermill")
def _pipeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="configs/NAME.yaml")
    p.add_argument("--from", dest="start", default=None, help="start at this notebook (output name or prefix)")
    p.add_argument("--only", default=None, help="run just this notebook (output name or prefix)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="parameter for every notebook (YAML value)")


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

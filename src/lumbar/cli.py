"""`python -m lumbar <command>`: one parser per command, each calling one function of the package.

Command functions live next to the code they drive and are imported only when their command runs,
so `python -m lumbar --help` stays fast and a command never pays for torch unless it needs it.
Each takes the parsed `argparse.Namespace` and returns an exit code.

Bad input (a missing file, a malformed table, an unknown or mistyped setting: OSError, ValueError and its
subclasses) ends a command with one line, `lumbar <command>: error: <message>`, on stderr and exit code 2;
a failed notebook (`lumbar.pipeline.PipelineError`) the same way with exit code 1. `LUMBAR_DEBUG=1`
re-raises instead, for the full traceback. `--set KEY=VALUE` is read the same way wherever a command has
it (`add_set_argument`, `lumbar.core.settings.parse_assignments`): repeatable, the last of one key wins.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

Register = Callable[[argparse.ArgumentParser], None]
_COMMANDS: dict[str, tuple[str, str, Register]] = {}


def add_set_argument(p: argparse.ArgumentParser, what: str) -> None:
    """The `--set KEY=VALUE` option of every command that has one; `what` says which settings it takes."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"{what}; repeatable")


def command(name: str, target: str, help: str) -> Callable[[Register], Register]:
    """Register a command: `target` is "module:function", the decorated function adds its arguments."""

    def decorate(add_arguments: Register) -> Register:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        _COMMANDS[name] = (target, help, add_arguments)
        return add_arguments

    return decorate


@command(
    "synth",
    "lumbar.data.synthetic.generate:cli_synth",
    "write a synthetic data folder in the competition's layout",
)
def _synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="data folder to write")
    p.add_argument("--studies", type=int, default=60, help="training studies")
    p.add_argument("--test-studies", type=int, default=5, help="test studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--image-size", type=int, default=160, help="nominal image width in pixels (real files: 320-512)"
    )
    p.add_argument("--label-noise", type=float, default=0.05, help="share of grades written without looking")
    p.add_argument(
        "--stir-rate",
        type=float,
        default=0.25,
        help="share of Sagittal T2/STIR series rendered as fat-suppressed STIR",
    )
    p.add_argument(
        "--axial-slices",
        default="3,6",
        metavar="FEWEST,MOST",
        help="slices of each disc's axial stack (default 3,6: series of 15-30 slices; 6,12: 30-60)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes drawing studies (default 0 = one per core; the output does not depend on it)",
    )
    p.add_argument(
        "--oracle", default=None, help="also write the oracle submission for every study to this CSV"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing train_images/ and test_images/")


@command(
    "synth-figure",
    "lumbar.data.synthetic.figure:cli_synth_figure",
    "PNG of one study's three series with its label points",
)
def _synth_figure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="data folder in the competition's layout")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument(
        "--study-id", type=int, default=None, help="default: a complete study with many non-normal grades"
    )


@command("index", "lumbar.data.index:cli_index", "one row per DICOM file (headers only) -> parquet")
def _index(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default=None, help="competition data folder (default: see lumbar.core.paths)"
    )
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--workers", type=int, default=1, help="processes reading headers")


@command(
    "map-axial", "lumbar.localize.axial:cli_map_axial", "sagittal spinal-canal points -> nearest axial slice"
)
def _map_axial(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None)
    p.add_argument("--coords", required=True, help="coordinates CSV (train_label_coordinates format)")
    p.add_argument(
        "--out",
        required=True,
        help="output CSV: study_id, level, axial_series_id, instance_number, distance_mm",
    )
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--max-distance-mm", type=float, default=10.0)
    p.add_argument("--index", default=None, help="header index parquet to reuse (built on the fly otherwise)")


@command(
    "train-localizer",
    "lumbar.localize.train:cli_train_localizer",
    "train the level localizer (sagittal and axial keypoint models) from label coordinates",
)
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
    p.add_argument(
        "--pretrained",
        default=None,
        help="encoder weights: none, imagenet (timm's hub cache) or a weights file or folder",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma-separated: sag_t2,sag_t1,axial")
    p.add_argument("--max-studies", type=int, default=None, help="train on the first N studies only")
    p.add_argument("--workers", type=int, default=None, help="processes reading headers for the index")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)"
    )
    p.add_argument("--index", default=None, help="header index parquet of the train split to reuse")
    add_set_argument(p, "any other LocalizerConfig field")


def _place_foramina_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--place-foramina",
        action="store_true",
        help="a study without Sagittal T1 gets its foramina from its canal, cut from Sagittal T2/STIR "
        "(off: measured worse than the prior with Sagittal T1-trained classifiers, docs/localizer.md)",
    )


@command("localize", "lumbar.localize.predict:cli_localize", "predicted label coordinates for a split")
def _localize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--run", required=True, help="run folder with localizer.json")
    p.add_argument("--out", required=True, help="output CSV (train_label_coordinates format)")
    p.add_argument("--device", default="auto")
    p.add_argument("--index", default=None, help="header index parquet of the split to reuse")
    p.add_argument(
        "--axial-max-distance-mm",
        type=float,
        default=float("inf"),
        help="levels whose nearest axial slice is farther get no subarticular rows (default: none)",
    )
    _place_foramina_flag(p)


@command(
    "fresh-eval",
    "lumbar.analysis.fresh:cli_fresh_eval",
    "a run's test score and worst studies on fresh synthetic sets (new seeds, other image sizes)",
)
def _fresh_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder with localizer, classifiers and ensemble")
    p.add_argument("--out", required=True, help="folder for the sets and the reports (a subfolder per set)")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="one fresh set per seed")
    p.add_argument("--test-studies", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--stir-rate", type=float, default=0.25)
    p.add_argument(
        "--drop-series",
        nargs="+",
        metavar="SERIES=SHARE",
        help="a share of test studies without a series type, e.g. 'Sagittal T1=0.1' "
        "'Sagittal T1+Sagittal T2/STIR=0.05' (each study at most one entry; scores per group)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    _place_foramina_flag(p)


@command(
    "localize-eval",
    "lumbar.localize.evaluate:cli_localize_eval",
    "localization error of predicted coordinates against ground truth (mm, slices)",
)
def _localize_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="predicted coordinates CSV")
    p.add_argument("--truth", required=True, help="ground-truth coordinates CSV")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--index", default=None, help="header index parquet of the split to reuse")


@command("score", "lumbar.scoring.metric:cli_score", "the competition metric of a submission or a baseline")
def _score(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labels", required=True, help="label CSV in train.csv format (train.csv, test_labels.csv)"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--submission", help="submission CSV; the labels of its studies are scored")
    what.add_argument(
        "--baseline",
        choices=["uniform", "prior", "prior_condition"],
        help="score a baseline on every labelled study: uniform, condition x level prior, "
        "per-condition prior",
    )
    p.add_argument(
        "--prior-labels", default=None, help="label CSV to fit the prior baselines on (default: --labels)"
    )


@command(
    "label-noise",
    "lumbar.analysis.label_noise:cli_label_noise",
    "flag training grades the run's out-of-fold ensemble finds unlikely (the list a retrain excludes)",
)
def _label_noise(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder with an ensemble (04_ensemble)")
    p.add_argument("--data-dir", default=None, help="data folder with train.csv (default: lumbar.core.paths)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="flag when the out-of-fold probability of the written grade is at most this (0.2)",
    )


@command("pipeline", "lumbar.pipeline.command:cli_pipeline", "run the numbered notebooks with papermill")
def _pipeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="configs/NAME.yaml")
    p.add_argument(
        "--from", dest="start", default=None, help="start at this notebook (output name or prefix)"
    )
    p.add_argument("--only", default=None, help="run just this notebook (output name or prefix)")
    add_set_argument(p, "notebook parameter (YAML value) for the selected notebooks that declare it")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="notebooks of a parallel group run at once (default: the config's; 0 = one per core)",
    )
    p.add_argument("--data-dir", default=None, help="data folder, over the config's data_dir")
    p.add_argument(
        "--run-dir",
        default=None,
        help="run folder, over the config's run_dir (runs/<name>): put a real run on a big disk",
    )
    p.add_argument(
        "--allow-synthetic",
        action="store_true",
        help="let a config meant for the real data run on synthetic data (a dry run)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="train the selected steps again from scratch (= --set FRESH=true); by default a rerun "
        "reuses what was trained with the same settings and stops on other settings",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print each step's samples, disk, memory and time (estimates, each saying where it comes "
        "from) and the free disk; run nothing (the header index may be built and cached)",
    )


@command(
    "train", "lumbar.train.command:cli_train", "train one architecture on one task mode (also under torchrun)"
)
def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default=None, help="competition data folder with train.csv (default: lumbar.core.paths)"
    )
    p.add_argument("--cache", default=None, help="ROI tensor cache folder (lumbar preprocess)")
    p.add_argument("--arch", default=None, help="registered model name, e.g. cnn3d or timmseq:resnet18")
    p.add_argument(
        "--mode",
        default=None,
        help="competition | single_multiclass | single_binary | multi_multiclass | multi_binary",
    )
    p.add_argument(
        "--condition",
        action="append",
        default=None,
        help="condition (scs, lnfn, rnfn, ... or snake case); repeat or comma-separate; default: the mode's",
    )
    p.add_argument("--folds", default=None, help="folds to train, e.g. 0,1 (default: all)")
    p.add_argument("--epochs", default=None)
    p.add_argument(
        "--out",
        default=None,
        help="run folder, e.g. runs/NAME/cnn3d (folds.csv and manifest go to its parent)",
    )
    p.add_argument("--batch-size", dest="batch_size", default=None)
    p.add_argument("--lr", default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--workers", default=None, help="DataLoader worker processes")
    p.add_argument("--seed", default=None)
    p.add_argument("--config", default=None, help="YAML of config overrides (top level or under `train:`)")
    p.add_argument(
        "--run",
        default=None,
        help="a run folder: its crops, the localizer's crops and errors wired as 03_train does (needs "
        "--arch; out defaults to RUN/ARCH)",
    )
    p.add_argument(
        "--crops",
        choices=["gt", "oof", "both"],
        default="both",
        help="with --run: training crops (default both, as 03_train)",
    )
    add_set_argument(p, "any TrainConfig field, e.g. ema_decay=0.99")


@command(
    "weights",
    "lumbar.weights:cli_weights",
    "fetch every pretrained encoder a pipeline config names, once, into a folder (a Kaggle dataset)",
)
def _weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="pipeline config, e.g. configs/full.yaml")
    p.add_argument(
        "--out", required=True, help="weights folder (then: pretrained / PRETRAINED = this folder)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list every encoder, its weight tag and source; fetch nothing"
    )
    p.add_argument(
        "--user", default=None, help="Kaggle user name for dataset-metadata.json (default: $KAGGLE_USERNAME)"
    )
    p.add_argument(
        "--slug", default=None, help="Kaggle dataset slug, mounted at /kaggle/input/SLUG (lumbar-encoders)"
    )


@command(
    "kaggle-bundle",
    "lumbar.kaggle.bundle:cli_kaggle_bundle",
    "offline upload bundle: code/, weights/, kernel/",
)
def _kaggle_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder with a manifest (runs/NAME)")
    p.add_argument("--out", required=True, help="bundle folder (replaced)")
    p.add_argument("--user", default=None, help="Kaggle user name (default: $KAGGLE_USERNAME)")
    p.add_argument("--slug", default="lumbar", help="prefix of the dataset and kernel slugs")
    p.add_argument("--wheelhouse", default=None, help="take dependency wheels from this folder (offline)")
    p.add_argument("--no-dependencies", action="store_true", help="bundle only the lumbar wheel")


@command(
    "kaggle-wheels",
    "lumbar.kaggle.wheels:cli_kaggle_wheels",
    "download the dependency wheels the Kaggle bundle carries, once, for offline bundling",
)
def _kaggle_wheels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="wheelhouse folder (then: kaggle-bundle --wheelhouse OUT)")
    p.add_argument(
        "--python-version",
        action="append",
        default=None,
        help="Python version of the wheels, e.g. 3.11; repeatable (default: 3.10, 3.11 and 3.12)",
    )


@command(
    "preprocess",
    "lumbar.preprocess.cache:cli_preprocess",
    "ROI tensor cache from coordinates (ground truth or predicted)",
)
def _preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default=None, help="competition data folder (default: see lumbar.core.paths)"
    )
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
    add_set_argument(p, "any other RoiConfig field, e.g. spinal_mm=48,24,24,24")
    p.add_argument("--workers", type=int, default=1, help="processes, each building whole studies")


@command("demo", "lumbar.demo:cli_demo", "synthetic data + the whole pipeline + one line of results")
def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--workers", type=int, default=0, help="processes for data generation (0 = one per core)")


@command(
    "predict", "lumbar.inference.predict:cli_predict", "index, localize, crop, classify, blend: a submission"
)
def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--run", required=True, help="run folder (manifest with localizer, classifiers, ensemble)")
    p.add_argument("--out", required=True, help="submission CSV")
    p.add_argument("--work-dir", default=None, help="scratch folder for crops (default: a temporary folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--chunk-studies", type=int, default=16, help="studies per chunk (bounds memory)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--max-fallback-share",
        type=float,
        default=0.05,
        help="share of studies that may get rows from the class prior before the run fails (0.05)",
    )
    p.add_argument(
        "--max-folds", type=int, default=0, help="use the first K folds of every classifier (0 = all)"
    )
    p.add_argument(
        "--max-members",
        type=int,
        default=0,
        help="use the M ensemble members with the largest blend weights (0 = all)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds the whole predict may take: after timing the first chunk, fewer folds (then "
        "members) for the rest when the full ensemble would not fit; studies a chunk could not "
        "finish within it get prior rows (0 = no limit)",
    )
    p.add_argument(
        "--on-error",
        choices=["raise", "prior"],
        default="raise",
        help="an error that is not a data error: stop (raise), or give its chunk's studies prior rows "
        "(prior: the Kaggle kernel's choice, where a submission with prior rows beats none)",
    )


@command("validate-submission", "lumbar.scoring.submission:cli_validate_submission", "check a submission")
def _validate_submission(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", help="submission CSV")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", choices=["train", "test"], default="test")


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
    """Parse `argv`, run the command, return its exit code (bad input: one line on stderr, module
    docstring)."""
    args = build_parser().parse_args(argv)
    from lumbar.pipeline import PipelineError

    module_name, func_name = args._target.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except (OSError, ValueError, PipelineError) as e:
        if os.environ.get("LUMBAR_DEBUG") == "1":
            raise
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        print(f"lumbar {args.command}: error: {message}", file=sys.stderr)
        return 1 if isinstance(e, PipelineError) else 2


if __name__ == "__main__":
    sys.exit(main())

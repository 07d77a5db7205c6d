"""Write a synthetic data folder in the competition's exact layout (`python -m lumbar synth`).

Files: train.csv, train_label_coordinates.csv, train_series_descriptions.csv, test_series_descriptions.csv,
sample_submission.csv, train_images/, test_images/ (as the competition), plus test_labels.csv (the test
studies' grades in train.csv's format, to score a synthetic test submission), test_label_coordinates.csv
(their label points, to measure what localisation costs: the same models on ground-truth crops),
train_label_noise.csv (per labelled train target: row_id, grade, p_noise = the exact probability that the
written grade was a noise draw, `LabelModel.noise_posterior`), synthetic.json (the generator's parameters,
so a run can tell synthetic data apart) and, on request, the oracle submission.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lumbar.core.atomic import write_json
from lumbar.core.constants import (
    CONDITIONS,
    GRADES,
    LEVELS,
    SERIES_DESCRIPTIONS,
    condition_title,
    level_title,
    row_id,
)
from lumbar.core.paths import SYNTHETIC_MARKER
from lumbar.core.processes import ProcessPlan, available_cores, process_pool, split_cores
from lumbar.core.tables import (
    COORDINATE_COLUMNS,
    SUBMISSION_COLUMNS,
    labels_to_wide,
    submission_row_ids,
    write_coordinates,
    write_csv,
)
from lumbar.data.synthetic.labels import FACTOR_WEIGHTS, THRESHOLDS, LabelModel
from lumbar.data.synthetic.study import QUIRK_RATES, StudyResult, make_study, study_id_for

#: Name of the parameter file written next to the data; it also marks the folder as synthetic.
MANIFEST = SYNTHETIC_MARKER
#: Per labelled train target, the probability that its written grade was a noise draw (not a competition
#: file).
LABEL_NOISE_CSV = "train_label_noise.csv"


@dataclass(frozen=True)
class SynthConfig:
    """Everything that fixes a synthetic data set.

    Attributes:
        studies: training studies.
        test_studies: test studies.
        seed: the run's seed; with the other fields it fixes every byte written.
        image_size: nominal image width in pixels (the real files have 320-512; fields of view stay real).
        label_noise: share of grades written without looking (drawn from the real frequencies).
        reader_sd: the reader's error on the severity scale (grade thresholds are 1 apart).
        depth_samples: samples across each slice's thickness (partial volume).
        stir_rate: share of Sagittal T2/STIR series that are fat-suppressed STIR (other contrasts than
            training: a robustness check).
        axial_slices: (fewest, most) slices of each disc's oblique axial stack; (3, 6) gives axial series of
            15-30 slices, (6, 12) the 30-60 of the real data's longer series (neighbouring stacks then
            overlap).
    """

    studies: int = 60
    test_studies: int = 5
    seed: int = 0
    image_size: int = 160
    label_noise: float = 0.05
    reader_sd: float = 0.25
    depth_samples: int = 2
    stir_rate: float = QUIRK_RATES["stir"]
    axial_slices: tuple[int, int] = (3, 6)

    def __post_init__(self):
        if not 1 <= self.axial_slices[0] <= self.axial_slices[1]:
            raise ValueError(
                f"axial_slices must be (fewest, most) with 1 <= fewest <= most, got {self.axial_slices}"
            )
        if self.studies < 1 or self.test_studies < 0:
            raise ValueError(
                f"need at least 1 training study and >= 0 test studies, got {self.studies}, "
                f"{self.test_studies}"
            )
        if not 0.0 <= self.stir_rate <= 1.0:
            raise ValueError(f"stir_rate must be within [0, 1], got {self.stir_rate}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size}")


@dataclass(frozen=True)
class Summary:
    """What a generation run wrote."""

    out: Path
    studies: int
    test_studies: int
    files: int
    bytes: int
    seconds: float

    def line(self) -> str:
        return (
            f"synth: {self.studies} train + {self.test_studies} test studies, {self.files} DICOM files, "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s -> {self.out}"
        )


def _study_ids(config: SynthConfig) -> list[tuple[str, int, int]]:
    """(split, index, study_id) of every study; a clash moves the later study's id up by one."""
    tasks, seen = [], set()
    for split, count in (("train", config.studies), ("test", config.test_studies)):
        for index in range(count):
            study_id = study_id_for(config.seed, split, index)
            while study_id in seen:
                study_id += 1
            seen.add(study_id)
            tasks.append((split, index, study_id))
    return tasks


def _run_task(args: tuple) -> StudyResult:
    out, split, index, study_id, config = args
    labels = LabelModel(reader_sd=config.reader_sd, label_noise=config.label_noise)
    return make_study(
        out,
        split,
        index,
        study_id,
        config.seed,
        config.image_size,
        labels,
        config.depth_samples,
        config.stir_rate,
        tuple(config.axial_slices),
    )


def _long_labels(results: list[StudyResult]) -> pd.DataFrame:
    n = len(results)
    grades = np.concatenate([r.grades for r in results])
    return pd.DataFrame(
        {
            "study_id": np.repeat([r.study_id for r in results], len(CONDITIONS) * len(LEVELS)),
            "condition": np.tile(np.repeat(CONDITIONS, len(LEVELS)), n),
            "level": np.tile(LEVELS, n * len(CONDITIONS)),
            "grade": pd.array(np.where(np.isnan(grades), pd.NA, grades), dtype="Int8"),
        }
    )


def _wide(results: list[StudyResult]) -> pd.DataFrame:
    return labels_to_wide(_long_labels(results)).sort_values("study_id").reset_index(drop=True)


def _series_table(results: list[StudyResult]) -> pd.DataFrame:
    rows = [row for r in results for row in r.series]
    table = pd.DataFrame(rows, columns=["study_id", "series_id", "series_description"])
    return table.sort_values(["study_id", "series_id"]).reset_index(drop=True)


def _oracle_table(results: list[StudyResult]) -> pd.DataFrame:
    ids = [row_id(r.study_id, c, lv) for r in results for c in CONDITIONS for lv in LEVELS]
    probs = np.concatenate([r.oracle for r in results])
    table = pd.DataFrame(probs, columns=list(GRADES)).assign(row_id=ids)[SUBMISSION_COLUMNS]
    order = submission_row_ids(r.study_id for r in results)
    return table.set_index("row_id").loc[order].reset_index()


def _label_noise_table(results: list[StudyResult], model: LabelModel) -> pd.DataFrame:
    """row_id, grade, p_noise of every labelled target, in train.csv's study order."""
    results = sorted(results, key=lambda r: r.study_id)
    ids = [row_id(r.study_id, c, lv) for r in results for c in CONDITIONS for lv in LEVELS]
    grades = np.concatenate([r.grades for r in results])
    p_noise = np.concatenate([model.noise_posterior(r.oracle, r.grades) for r in results])
    table = pd.DataFrame({"row_id": ids, "grade": grades, "p_noise": p_noise})
    return table[table["grade"].notna()].astype({"grade": "int64"}).reset_index(drop=True)


def _coordinates(results: list[StudyResult]) -> pd.DataFrame:
    table = pd.DataFrame([row for r in results for row in r.coordinates], columns=COORDINATE_COLUMNS)
    key = table["condition"].map(condition_title), table["level"].map(level_title)
    table = table.assign(_c=key[0], _l=key[1]).sort_values(
        ["study_id", "series_id", "instance_number", "_c", "_l"]
    )
    return table.drop(columns=["_c", "_l"]).reset_index(drop=True)


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [out / f"{split}_images" for split in ("train", "test") if (out / f"{split}_images").exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    for folder in existing:
        shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)


def generate(
    out: str | Path,
    config: SynthConfig,
    oracle: str | Path | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Write a synthetic competition data folder.

    Args:
        out: the data folder to write.
        config: what to generate.
        oracle: also write the oracle submission (every train and test study) to this file.
        workers: processes drawing studies (the output does not depend on it), spawned as every pool of the
            package (`lumbar.core.processes.process_pool`); 0 = one per core (`available_cores`).
        overwrite: replace existing train_images/ and test_images/ in `out`.
        progress: show a progress bar.

    Returns:
        Counts, size and time of the run.
    """
    start = time.perf_counter()
    out = Path(out)
    workers = workers if workers > 0 else available_cores()
    _prepare(out, overwrite)
    tasks = [(out, split, index, study_id, config) for split, index, study_id in _study_ids(config)]
    bar = tqdm(total=len(tasks), desc="synth", unit="study", disable=not progress)
    results: list[StudyResult] = []
    if workers <= 1:
        for task in tasks:
            results.append(_run_task(task))
            bar.update()
    else:
        with process_pool(ProcessPlan(*split_cores(len(tasks), workers))) as pool:
            for result in pool.map(_run_task, tasks):
                results.append(result)
                bar.update()
    bar.close()

    train = [r for r in results if r.split == "train"]
    test = [r for r in results if r.split == "test"]
    write_csv(_wide(train), out / "train.csv")
    write_coordinates(_coordinates(train), out / "train_label_coordinates.csv")
    write_csv(_series_table(train), out / "train_series_descriptions.csv")
    write_csv(_series_table(test), out / "test_series_descriptions.csv")
    sample = pd.DataFrame({"row_id": submission_row_ids(r.study_id for r in test)})
    for grade in GRADES:
        sample[grade] = 1.0 / len(GRADES)
    write_csv(sample, out / "sample_submission.csv")
    write_csv(_wide(test) if test else pd.DataFrame(columns=_wide(train).columns), out / "test_labels.csv")
    write_coordinates(_coordinates(test), out / "test_label_coordinates.csv")
    model = LabelModel(reader_sd=config.reader_sd, label_noise=config.label_noise)
    write_csv(_label_noise_table(train, model), out / LABEL_NOISE_CSV)
    if oracle is not None:
        write_csv(_oracle_table(results), oracle)

    files, size = sum(r.files for r in results), sum(r.bytes for r in results)
    manifest = {
        "generator": "lumbar.data.synthetic",
        "config": asdict(config),
        "oracle": None if oracle is None else str(oracle),
        "label_noise_file": LABEL_NOISE_CSV,
        "label_model": {"thresholds": THRESHOLDS, "factor_weights": FACTOR_WEIGHTS},
        "quirk_rates": QUIRK_RATES,
        "series_descriptions": list(SERIES_DESCRIPTIONS),
        "files": files,
        "bytes": size,
    }
    write_json(manifest, out / MANIFEST)
    return Summary(out, len(train), len(test), files, size, time.perf_counter() - start)


def cli_synth(args: argparse.Namespace) -> int:
    """`python -m lumbar synth`: write the folder, print one summary line (bad arguments: exit 2,
    lumbar.cli)."""
    fewest, _, most = str(args.axial_slices).partition(",")
    config = SynthConfig(
        studies=args.studies,
        test_studies=args.test_studies,
        seed=args.seed,
        image_size=args.image_size,
        label_noise=args.label_noise,
        stir_rate=args.stir_rate,
        axial_slices=(int(fewest), int(most or fewest)),
    )
    LabelModel(reader_sd=config.reader_sd, label_noise=config.label_noise)  # validate before any work
    summary = generate(args.out, config, oracle=args.oracle, workers=args.workers, overwrite=args.overwrite)
    print(summary.line())
    return 0

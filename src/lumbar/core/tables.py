"""The competition's CSV files: schemas, loaders that validate, and writers in the same format.

Every loader raises `DataFormatError` naming the file, the (1-based, header = line 1) line and the
problem, so a user with a broken download knows where to look.

Tables inside the package:
    labels       study_id, condition, level, grade        (long; grade 0/1/2, nullable Int8)
    coordinates  study_id, series_id, instance_number, condition, level, x, y   (snake-case names)
    series       study_id, series_id, series_description
    submission   row_id, normal_mild, moderate, severe
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.core.atomic import atomic_path
from lumbar.core.constants import (
    CONDITIONS,
    GRADE_FROM_LABEL,
    GRADE_LABELS,
    GRADES,
    LABEL_COLUMNS,
    LEVELS,
    SERIES_DESCRIPTIONS,
    condition_title,
    level_title,
    normalize_condition,
    normalize_level,
    row_id,
)

COORDINATE_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
#: Optional columns of a coordinates table: the fold whose localizer predicted a point (out-of-fold), the
#: localizer's confidence in it and whether its study's level set is plausible
#: (`lumbar.localize.plausibility`).
COORDINATE_EXTRA = ["fold", "confidence", "plausible"]  # out-of-fold fold; the localizer's confidence
_FLOAT_EXTRA = ("confidence",)
SERIES_COLUMNS = ["study_id", "series_id", "series_description"]
SUBMISSION_COLUMNS = ["row_id", *GRADES]
LABEL_TABLE_COLUMNS = ["study_id", "condition", "level", "grade"]


class DataFormatError(ValueError):
    """A competition file that does not match its schema."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.problem, self.line = Path(path), problem, line


def _read_csv(path: str | Path, required: Iterable[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataFormatError(path, f"not a readable CSV ({e})") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataFormatError(path, f"missing column(s) {missing}; found {list(df.columns)}", line=1)
    return df


def _line(index: int) -> int:
    """CSV line of a 0-based data row (header is line 1)."""
    return int(index) + 2


def _integer_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(
            path, f"column {column!r} must hold integers, found {df[column].iloc[i]!r}", _line(i)
        )
    return values.astype("int64")


def _normalize_names(df: pd.DataFrame, column: str, normalize, path: Path) -> pd.Series:
    mapping = {}
    for value in pd.unique(df[column]):
        try:
            mapping[value] = normalize(value)
        except ValueError as e:
            i = int(np.flatnonzero((df[column] == value).to_numpy())[0])
            raise DataFormatError(path, str(e), _line(i)) from None
    return df[column].map(mapping)


def load_labels(path: str | Path, dropna: bool = True) -> pd.DataFrame:
    """Load `train.csv` (wide) as the long label table.

    Args:
        path: the wide label file (`study_id` + 25 target columns).
        dropna: drop targets without a grade (blank cells; not scored by the metric).

    Returns:
        `study_id, condition, level, grade` with grade 0/1/2 (nullable `Int8` when `dropna=False`),
        ordered by study, then condition and level in the competition's order.
    """
    path = Path(path)
    wide = _read_csv(path, ["study_id", *LABEL_COLUMNS])
    study = _integer_column(wide, "study_id", path)
    dup = study.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataFormatError(path, f"duplicate study_id {study.iloc[i]}", _line(i))
    codes = np.full((len(wide), len(LABEL_COLUMNS)), -1, dtype=np.int8)
    for j, col in enumerate(LABEL_COLUMNS):
        values = wide[col]
        present = values.notna().to_numpy()
        mapped = values.map(GRADE_FROM_LABEL)
        unknown = present & mapped.isna().to_numpy()
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataFormatError(
                path,
                f"unknown grade {values.iloc[i]!r} in column {col!r}; expected one of {GRADE_LABELS}",
                _line(i),
            )
        codes[present, j] = mapped[present].astype(np.int8)
    n = len(wide)
    long = pd.DataFrame(
        {
            "study_id": np.repeat(study.to_numpy(), len(LABEL_COLUMNS)),
            "condition": np.tile(np.repeat(CONDITIONS, len(LEVELS)), n),
            "level": np.tile(LEVELS, n * len(CONDITIONS)),
            "grade": pd.array(codes.reshape(-1), dtype="Int8"),
        }
    )
    long.loc[long["grade"] == -1, "grade"] = pd.NA
    if dropna:
        long = long[long["grade"].notna()].astype({"grade": "int8"}).reset_index(drop=True)
    return long


def labels_to_wide(labels: pd.DataFrame) -> pd.DataFrame:
    """The long label table back to train.csv's wide layout (grade names; blank where missing)."""
    table = labels.assign(column=labels["condition"] + "_" + labels["level"])
    names = np.asarray(GRADE_LABELS, dtype=object)
    grade = table["grade"]
    table = table.assign(value=[names[int(g)] if pd.notna(g) else np.nan for g in grade])
    wide = table.pivot(index="study_id", columns="column", values="value").reindex(
        columns=list(LABEL_COLUMNS)
    )
    return wide.reset_index().rename_axis(columns=None)


def load_coordinates(path: str | Path) -> pd.DataFrame:
    """Load `train_label_coordinates.csv` (or predicted coordinates in the same format).

    Conditions and levels are normalised to snake case; either spelling is accepted. Out-of-fold predicted
    coordinates keep their `fold` column, predicted ones their `confidence` (the heatmap's probability mass
    at the point) and `plausible` (1 when the study's level set passed `lumbar.localize.plausibility`).
    """
    path = Path(path)
    df = _read_csv(path, COORDINATE_COLUMNS)
    df = df[COORDINATE_COLUMNS + [c for c in COORDINATE_EXTRA if c in df]].copy()
    for col in ("study_id", "series_id", "instance_number", *(c for c in COORDINATE_EXTRA if c in df)):
        if col in _FLOAT_EXTRA:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        else:
            df[col] = _integer_column(df, col, path)
    df["condition"] = _normalize_names(df, "condition", normalize_condition, path)
    df["level"] = _normalize_names(df, "level", normalize_level, path)
    for col in ("x", "y"):
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            i = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataFormatError(
                path, f"column {col!r} must be a number, found {df[col].iloc[i]!r}", _line(i)
            )
        df[col] = values.astype("float64")
    return df


def write_coordinates(coords: pd.DataFrame, path: str | Path) -> Path:
    """Write coordinates exactly as `train_label_coordinates.csv` spells them ("Spinal Canal Stenosis",
    "L1/L2"),
    plus `fold`, `confidence` and `plausible` where the table has them."""
    out = coords[COORDINATE_COLUMNS + [c for c in COORDINATE_EXTRA if c in coords]].copy()
    out["condition"] = out["condition"].map(lambda c: condition_title(normalize_condition(c)))
    out["level"] = out["level"].map(lambda lv: level_title(normalize_level(lv)))
    return write_csv(out, path)


def load_series_descriptions(path: str | Path) -> pd.DataFrame:
    """Load `{train,test}_series_descriptions.csv`; unknown descriptions or duplicate series are errors."""
    path = Path(path)
    df = _read_csv(path, SERIES_COLUMNS)[SERIES_COLUMNS].copy()
    for col in ("study_id", "series_id"):
        df[col] = _integer_column(df, col, path)
    unknown = ~df["series_description"].isin(SERIES_DESCRIPTIONS)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataFormatError(
            path,
            f"unknown series_description {df['series_description'].iloc[i]!r}; expected one of "
            f"{SERIES_DESCRIPTIONS}",
            _line(i),
        )
    dup = df.duplicated(["study_id", "series_id"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataFormatError(
            path, f"duplicate series {df['series_id'].iloc[i]} of study {df['study_id'].iloc[i]}", _line(i)
        )
    return df


def load_submission(path: str | Path) -> pd.DataFrame:
    """Load a submission (or `sample_submission.csv`) without judging its values; see
    `inference.submission`."""
    path = Path(path)
    df = _read_csv(path, SUBMISSION_COLUMNS)
    extra = [c for c in df.columns if c not in SUBMISSION_COLUMNS]
    if extra:
        raise DataFormatError(
            path, f"unexpected column(s) {extra}; expected exactly {SUBMISSION_COLUMNS}", line=1
        )
    return df[SUBMISSION_COLUMNS].astype({"row_id": str})


def submission_row_ids(study_ids: Iterable[int]) -> list[str]:
    """All 25 row_ids of each study, in the sorted order of `sample_submission.csv`."""
    return sorted(row_id(s, c, lv) for s in study_ids for c in CONDITIONS for lv in LEVELS)


def table_row_ids(table: pd.DataFrame) -> pd.Series:
    """The row_id (`constants.row_id`) of each row of a table with `study_id, condition, level` columns."""
    ids = [row_id(s, c, lv) for s, c, lv in zip(table["study_id"], table["condition"], table["level"])]
    return pd.Series(ids, index=table.index, dtype=str)


def split_row_ids(row_ids: Iterable[str]) -> pd.DataFrame:
    """row_id -> study_id, condition, level (the inverse of `constants.row_id`)."""
    row_ids = pd.Series(list(row_ids), dtype=str)
    parts = row_ids.str.extract(r"^(?P<study_id>\d+)_(?P<condition>[a-z_]+)_(?P<level>l\d_[ls]\d)$")
    bad = parts["study_id"].isna()
    if bad.any():
        raise ValueError(f"malformed row_id {row_ids[bad].iloc[0]!r}")
    return parts.astype({"study_id": "int64"})


def row_study_ids(row_ids: Iterable[str]) -> np.ndarray:
    """The study id of each row_id (its leading digits), as int64."""
    return pd.Series(list(row_ids), dtype=str).str.split("_", n=1).str[0].astype("int64").to_numpy()


def rows_of_studies(table: pd.DataFrame, studies: Iterable[int]) -> pd.DataFrame:
    """The rows of a submission-format table whose row_id belongs to one of `studies` (index reset)."""
    keep = np.isin(row_study_ids(table["row_id"]), np.fromiter(studies, dtype="int64"))
    return table[keep].reset_index(drop=True)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (temp file then rename), so a killed run never leaves half a CSV."""
    return _write_atomic(df.to_csv, path)


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a parquet file atomically (temp file then rename)."""
    return _write_atomic(df.to_parquet, path)


def _write_atomic(writer, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp, index=False)
    return Path(path)


def read_flagged_ids(path: str | os.PathLike) -> set[str]:
    """The row_ids an exclusion list names (`TrainConfig.exclude`); a `flagged` column, when present, selects.

    Raises:
        FileNotFoundError: no such file; DataFormatError: not a CSV, or no `row_id` column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: exclusion list not found (write one with `python -m lumbar label-noise`)"
        )
    try:
        table = pd.read_csv(path, dtype={"row_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataFormatError(path, f"not a readable CSV ({e})") from e
    if "row_id" not in table.columns:
        raise DataFormatError(
            path, f"an exclusion list needs a row_id column; found {list(table.columns)}", line=1
        )
    if "flagged" in table.columns:
        table = table[table["flagged"].astype(str).str.lower().isin(("true", "1", "1.0"))]
    return set(table["row_id"].dropna())

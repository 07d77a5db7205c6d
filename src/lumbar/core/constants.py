"""Identifiers shared by every stage: conditions, levels, grades, series, and the row_id format.

The competition spells the same things two ways: snake case in `train.csv` and the submission
(`spinal_canal_stenosis`, `l1_l2`), title case in `train_label_coordinates.csv`
(`Spinal Canal Stenosis`, `L1/L2`). Everything inside the package uses the snake-case spelling;
`normalize_condition` / `normalize_level` accept either.
"""

from __future__ import annotations

CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")

#: Submission columns, in grade order (grade 0, 1, 2).
GRADES: tuple[str, ...] = ("normal_mild", "moderate", "severe")
#: Spelling of the grades in train.csv.
GRADE_LABELS: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
GRADE_FROM_LABEL: dict[str, int] = {label: i for i, label in enumerate(GRADE_LABELS)}
#: Metric weight of a row by its true grade.
GRADE_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)

SAGITTAL_T1 = "Sagittal T1"
SAGITTAL_T2 = "Sagittal T2/STIR"
AXIAL_T2 = "Axial T2"
SERIES_DESCRIPTIONS: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)

#: Condition groups of the metric (left and right pooled).
CONDITION_GROUP: dict[str, str] = {
    "spinal_canal_stenosis": "spinal",
    "left_neural_foraminal_narrowing": "foraminal",
    "right_neural_foraminal_narrowing": "foraminal",
    "left_subarticular_stenosis": "subarticular",
    "right_subarticular_stenosis": "subarticular",
}
GROUPS: tuple[str, ...] = ("spinal", "foraminal", "subarticular")

#: The series on which each condition is annotated and read.
CONDITION_SERIES: dict[str, str] = {
    "spinal_canal_stenosis": SAGITTAL_T2,
    "left_neural_foraminal_narrowing": SAGITTAL_T1,
    "right_neural_foraminal_narrowing": SAGITTAL_T1,
    "left_subarticular_stenosis": AXIAL_T2,
    "right_subarticular_stenosis": AXIAL_T2,
}

#: The side of a condition ("" for the midline spinal canal); a left-right flip swaps these.
CONDITION_SIDE: dict[str, str] = {
    c: c.split("_")[0] if c.split("_")[0] in ("left", "right") else "" for c in CONDITIONS
}

#: The thesis's short names.
CONDITION_ABBREV: dict[str, str] = {
    "spinal_canal_stenosis": "scs",
    "left_neural_foraminal_narrowing": "lnfn",
    "right_neural_foraminal_narrowing": "rnfn",
    "left_subarticular_stenosis": "lss",
    "right_subarticular_stenosis": "rss",
}

#: Slug of the competition's data folder on Kaggle and under input/.
COMPETITION_SLUG = "rsna-2024-lumbar-spine-degenerative-classification"


def _key(text: str) -> str:
    return "_".join(str(text).strip().lower().replace("/", " ").replace("-", " ").split())


_CONDITION_ALIASES = {_key(c): c for c in CONDITIONS}
_CONDITION_ALIASES.update({a: c for c, a in CONDITION_ABBREV.items()})
_LEVEL_ALIASES = {_key(lv): lv for lv in LEVELS}


def normalize_condition(name: str) -> str:
    """Return the snake-case condition for either spelling ("Spinal Canal Stenosis" or snake case).

    Raises:
        ValueError: for a name that is no competition condition.
    """
    try:
        return _CONDITION_ALIASES[_key(name)]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; expected one of {CONDITIONS}") from None


def normalize_level(name: str) -> str:
    """Return the snake-case level for either spelling ("L1/L2" or "l1_l2")."""
    try:
        return _LEVEL_ALIASES[_key(name)]
    except KeyError:
        raise ValueError(f"unknown level {name!r}; expected one of {LEVELS}") from None


def condition_title(condition: str) -> str:
    """The spelling of a condition in train_label_coordinates.csv ("Spinal Canal Stenosis")."""
    return " ".join(w.capitalize() for w in condition.split("_"))


def level_title(level: str) -> str:
    """The spelling of a level in train_label_coordinates.csv ("L1/L2")."""
    return level.upper().replace("_", "/")


def row_id(study_id: int | str, condition: str, level: str) -> str:
    """The submission's row identifier."""
    return f"{study_id}_{condition}_{level}"


def label_column(condition: str, level: str) -> str:
    """The train.csv column of one target."""
    return f"{condition}_{level}"


#: The 25 target columns of train.csv, in the file's order.
LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(c, lv) for c in CONDITIONS for lv in LEVELS)

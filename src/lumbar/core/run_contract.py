"""The run contract: every section of a run folder's `manifest.json` as a dataclass.

The stages hand each other a run folder, and the manifest says what is in it. When each stage read and wrote
raw keys, a renamed key broke a reader two stages away (or the Kaggle kernel) with no error where it was made.
Here the section and field names are written down once: a stage records a section with `save_record`
(`update_manifest` underneath, under its file lock) and reads the run with `RunManifest.read`.

`from_dict` / `to_dict` round-trip today's JSON exactly: the same keys in the same order, the same values; a
key this module does not know stays in `extra` and goes back out, so runs written before (or by a later
version) load and save unchanged. A field is None when its key is absent; `record.need.<field>` is the field,
or a `ManifestError` that names the manifest, the section, the key and the step that writes it.

`RunManifest.files()` is every file the records name (checkpoints, tables, parameters); on `for_inference()`
it is what a prediction needs with the run's tables beside it: exactly what the Kaggle bundle ships.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from lumbar.core.manifest import manifest_path, read_manifest, update_manifest

if TYPE_CHECKING:  # typing.Self is 3.11+: only the checker reads it
    from typing import Self

#: Field metadata of what is not a JSON key (the unknown keys, the order read, where the record came from).
_NOT_JSON = {"json": False}


class ManifestError(FileNotFoundError, KeyError):
    """A section or key the caller needs is not in the manifest: the step that writes it has not run.

    A FileNotFoundError for the callers that catch a missing step's output, a KeyError for those that catch a
    missing name; the message names the manifest, the section, the key and the step.
    """


def _leaves(value: Any) -> Iterator[str]:
    """Every string inside nested dicts and lists (the checkpoints of a classifier: unit -> fold -> path)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)


@dataclass
class Record:
    """One section (or one entry of a keyed section) of the manifest.

    Subclasses declare their keys as fields in the order the writers write them; `NESTED` names the fields
    that hold records (`(class, True)`: a name -> record map), `NULLS` the fields written as null rather than
    left out (`""`: always, else only when that other field is set), `STEP` what writes the section.
    """

    SECTION: ClassVar[str] = ""
    WHAT: ClassVar[str] = ""
    STEP: ClassVar[str] = ""
    KEYED: ClassVar[bool] = False
    NESTED: ClassVar[dict[str, tuple[type[Record], bool]]] = {}
    NULLS: ClassVar[dict[str, str]] = {}

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, metadata=_NOT_JSON)
    _keys: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False, metadata=_NOT_JSON)
    _where: str = field(default="", init=False, repr=False, compare=False, metadata=_NOT_JSON)

    @classmethod
    def json_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> Self:
        """The record of `data` (a section as JSON gives it); `where` names it in error messages."""
        where = where or cls.SECTION
        if not isinstance(data, Mapping):
            raise TypeError(f"{where}: expected a JSON object, got {type(data).__name__} {data!r:.80}")
        names = set(cls.json_fields())
        known = {k: cls._load(k, v, where) for k, v in data.items() if k in names}
        record = cls(**known, extra={k: v for k, v in data.items() if k not in names})
        record._keys, record._where = tuple(data), where
        return record

    @classmethod
    def _load(cls, key: str, value: Any, where: str) -> Any:
        if key not in cls.NESTED or value is None:
            return value
        kind, keyed = cls.NESTED[key]
        if not keyed:
            return kind.from_dict(value, cls._child(where, key))
        if not isinstance(value, Mapping):
            raise TypeError(f"{cls._child(where, key)}: expected a JSON object, got {type(value).__name__}")
        return {name: kind.from_dict(v, cls._child(where, key, name)) for name, v in value.items()}

    @classmethod
    def _child(cls, where: str, key: str, name: str | None = None) -> str:
        return f"{where}.{key}" + (f"[{name!r}]" if name is not None else "")

    def to_dict(self) -> dict[str, Any]:
        """The section as JSON: the keys read (in their order), then those set since, then unknown ones."""
        out = {}
        for name in self.json_fields():
            value = getattr(self, name)
            if value is not None or name in self._keys or self._writes_null(name):
                out[name] = self._dump(value)
        out.update(self.extra)
        if self._keys:
            first = {k: out[k] for k in self._keys if k in out}
            out = {**first, **{k: v for k, v in out.items() if k not in first}}
        return out

    def _writes_null(self, name: str) -> bool:
        """A field a writer writes even as null; a record read keeps to the keys it was read with."""
        when = self.NULLS.get(name)
        return not self._keys and when is not None and (when == "" or getattr(self, when) is not None)

    @staticmethod
    def _dump(value: Any) -> Any:
        if isinstance(value, Record):
            return value.to_dict()
        if isinstance(value, dict) and any(isinstance(v, Record) for v in value.values()):
            return {k: v.to_dict() if isinstance(v, Record) else v for k, v in value.items()}
        return value

    def copy(self, **changes: Any) -> Self:
        """A shallow copy with `changes` that keeps the key order read (`dataclasses.replace` drops it)."""
        new = dataclasses.replace(self, **changes)
        new._keys, new._where = self._keys, self._where
        return new

    def without(self, name: str) -> Self:
        """A copy with the key `name` left out (not written as null)."""
        new = self.copy(**{name: None})
        new._keys = tuple(k for k in self._keys if k != name)
        return new

    @property
    def need(self) -> Self:
        """This record, but a field that is None raises `ManifestError` (naming the run, the section, the key
        and the step that writes it) instead of handing None on to fail later, far from its cause."""
        return cast("Self", _Needed(self))

    def missing(self, name: str) -> str:
        return f"{self._where} has no {name!r}: {self.STEP}"

    def files(self) -> list[str]:
        """The files this record names, relative to the run folder (none by default)."""
        return []


class _Needed:
    """`Record.need`: a field's value, or a `ManifestError` when it is absent."""

    __slots__ = ("_record",)

    def __init__(self, record: Record):
        self._record = record

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._record, name)
        if value is None:
            raise ManifestError(self._record.missing(name))
        return value


def _present(*paths: str | None) -> list[str]:
    return [p for p in paths if p is not None]


@dataclass
class PipelineRecord(Record):
    """How the pipeline ran the run (`lumbar.pipeline.runner`): its config, data folder and jobs."""

    SECTION: ClassVar[str] = "pipeline"
    WHAT: ClassVar[str] = "pipeline record"
    STEP: ClassVar[str] = "run the pipeline first"

    config: str | None = None
    data_dir: str | None = None
    jobs: int | str | None = None


@dataclass
class NotebookRecord(Record):
    """One executed notebook of the pipeline (`notebooks[<output>]`): the executed copy is its log, not a file
    the run's models need, so it is not among `files()`."""

    SECTION: ClassVar[str] = "notebooks"
    WHAT: ClassVar[str] = "notebook record"
    STEP: ClassVar[str] = "run the pipeline first"
    KEYED: ClassVar[bool] = True
    OK: ClassVar[str] = "ok"
    FAILED: ClassVar[str] = "failed"

    status: str | None = None
    seconds: float | None = None
    error: str | None = None
    output: str | None = None


@dataclass
class PreprocessRecord(Record):
    """The ground-truth crop cache of 01_preprocess, with the header index and folds it wrote beside it."""

    SECTION: ClassVar[str] = "preprocess"
    WHAT: ClassVar[str] = "crop cache"
    STEP: ClassVar[str] = "run 01_preprocess first"

    cache: str | None = None
    index: str | None = None
    folds: str | None = None
    samples: int | None = None
    failed: int | None = None
    samples_per_s: float | None = None
    seconds: float | None = None

    def files(self) -> list[str]:
        return _present(self.index, self.folds)  # the cache: a folder of crops, training's, not prediction's


@dataclass
class LocalizerModelRecord(Record):
    """One trained model of a localizer (`models[<name>]`): a heatmap model or a slice scorer."""

    STEP: ClassVar[str] = "run 02_train_localizer (or `lumbar train-localizer`) first"
    HEATMAP: ClassVar[str] = "heatmap"
    SLICE_SCORER: ClassVar[str] = "slice_scorer"

    checkpoint: str | None = None
    kind: str | None = None
    series_description: str | None = None
    refines: str | None = None
    points: list | None = None
    samples: int | None = None
    loss_per_epoch: list[float] | None = None
    seconds: float | None = None

    def files(self) -> list[str]:
        return _present(self.checkpoint)


@dataclass
class LocalizerRecord(Record):
    """The run's localizer: one (`kind` ONE, from `lumbar.localize.train`) or one per fold (`kind` FOLDS, from
    `lumbar.localize.folds`: `folds` holds each fold's localizer, the section the out-of-fold points, errors).

    One class for both, with the fields of both in the writers' order, so readers take `members()` either way.
    """

    SECTION: ClassVar[str] = "localizer"
    WHAT: ClassVar[str] = "trained localizer"
    STEP: ClassVar[str] = "run 02_train_localizer (or `lumbar train-localizer`) first"
    ONE: ClassVar[str] = "lumbar-localizer"
    FOLDS: ClassVar[str] = "lumbar-localizer-folds"
    #: `status` of a set of fold localizers still training (a killed run's, resumed by the next).
    TRAINING: ClassVar[str] = "training"
    #: The member name of a single localizer (`members`).
    ALL: ClassVar[str] = "all"
    NULLS: ClassVar[dict[str, str]] = {  # written by every trained localizer
        "foramina_offset_mm": "models",
        "foramina_halfspan_mm": "models",
    }

    kind: str | None = None
    precision: str | None = None
    backbone: str | None = None
    size: int | None = None
    slices: int | None = None
    axial_neighbors: int | None = None
    config: dict[str, Any] | None = None
    train_studies: int | None = None
    device: str | None = None
    models: dict[str, LocalizerModelRecord] | None = None
    skipped: dict[str, str] | None = None
    problems: list[str] | None = None
    folds: dict[str, LocalizerRecord] | None = None
    fold_ids: list[int] | None = None
    coordinates_sha1: str | None = None
    status: str | None = None
    oof: str | None = None
    errors: str | None = None
    errors_table: str | None = None
    oof_points: int | None = None
    summary: str | None = None
    per_fold: dict[str, str] | None = None
    slice_histogram: dict[str, Any] | None = None
    implausible_studies: list[int] | None = None
    seconds: float | None = None
    foramina_offset_mm: list[float] | None = None
    foramina_halfspan_mm: list[float] | None = None
    fold: int | None = None

    def members(self) -> dict[str, LocalizerRecord]:
        """The trained localizers by name: each fold's (`fold0`, ...), or this one as `ALL`."""
        return dict(self.folds) if self.folds is not None else {self.ALL: self}

    def files(self) -> list[str]:
        models = [f for m in (self.models or {}).values() for f in m.files()]
        members = [f for m in (self.folds or {}).values() for f in m.files()]
        return models + members + _present(self.oof, self.errors, self.errors_table)


LocalizerRecord.NESTED = {"models": (LocalizerModelRecord, True), "folds": (LocalizerRecord, True)}


@dataclass
class OofCropsRecord(Record):
    """The classifiers' crop cache around the localizer's out-of-fold points (`build_oof_crops`)."""

    SECTION: ClassVar[str] = "oof_crops"
    WHAT: ClassVar[str] = "out-of-fold crops"
    STEP: ClassVar[str] = "run 02_train_localizer with HOLDOUT = 0 first"

    cache: str | None = None
    coords: str | None = None
    samples: int | None = None
    failed: int | None = None

    def files(self) -> list[str]:
        return _present(self.coords)


@dataclass
class LocalizerEvalRecord(Record):
    """02_train_localizer's evaluation against the ground truth (out of fold, or on a held-out share)."""

    SECTION: ClassVar[str] = "localizer_eval"
    WHAT: ClassVar[str] = "localizer evaluation"
    STEP: ClassVar[str] = "run 02_train_localizer first"

    studies: int | None = None
    summary: str | None = None
    out_of_fold: bool | None = None
    seconds: float | None = None


@dataclass
class ClassifierRecord(Record):
    """One trained classifier (`classifiers[<folder>]`, `lumbar.train.loop`): its folder, checkpoints per unit
    and fold, out-of-fold predictions, config and result (where predict finds the crop parameters, prior)."""

    SECTION: ClassVar[str] = "classifiers"
    WHAT: ClassVar[str] = "classifier"
    STEP: ClassVar[str] = "run 03_train first"
    KEYED: ClassVar[bool] = True
    NULLS: ClassVar[dict[str, str]] = {"oof_score": "", "oof_score_gt": "oof_gt"}  # thesis modes: no score

    path: str | None = None
    arch: str | None = None
    mode: str | None = None
    conditions: list[str] | None = None
    folds: list[int] | None = None
    checkpoints: dict[str, dict[str, str]] | None = None
    model: dict[str, Any] | None = None
    input_shape: list[int] | None = None
    oof: str | None = None
    config: str | None = None
    result: str | None = None
    oof_score: float | None = None
    precision: str | None = None
    oof_gt: str | None = None
    oof_score_gt: float | None = None

    def files(self) -> list[str]:
        return [*_leaves(self.checkpoints or {}), *_present(self.oof, self.config, self.result, self.oof_gt)]


@dataclass
class EnsembleRecord(Record):
    """The fitted ensemble of 04_ensemble (`lumbar.ensemble.runs`): the parameters predict applies, the chosen
    candidate and its out-of-fold predictions; `candidates` every candidate's, for the error analysis only."""

    SECTION: ClassVar[str] = "ensemble"
    WHAT: ClassVar[str] = "ensemble"
    STEP: ClassVar[str] = "run 04_ensemble (or the pipeline) first"

    models: list[str] | None = None
    params: str | None = None
    oof: str | None = None
    scores: str | None = None
    folds: str | None = None
    per_group: bool | None = None
    calibrate: bool | None = None
    chosen: str | None = None
    widening: bool | None = None
    stack: bool | None = None
    oof_score: float | None = None
    candidates: dict[str, str] | None = None

    def files(self) -> list[str]:
        return [*_present(self.params, self.oof, self.scores, self.folds), *(self.candidates or {}).values()]


@dataclass
class LabelNoiseRecord(Record):
    """The training grades the out-of-fold ensemble finds unlikely (`lumbar.analysis.label_noise`)."""

    SECTION: ClassVar[str] = "label_noise"
    WHAT: ClassVar[str] = "label-noise flags"
    STEP: ClassVar[str] = "run `lumbar label-noise` (04_ensemble) first"

    flags: str | None = None
    summary: str | None = None
    threshold: float | None = None
    flagged: int | None = None

    def files(self) -> list[str]:
        return _present(self.flags, self.summary)


@dataclass
class ErrorAnalysisRecord(Record):
    """06_error_analysis's figures and headline numbers."""

    SECTION: ClassVar[str] = "error_analysis"
    WHAT: ClassVar[str] = "error analysis"
    STEP: ClassVar[str] = "run 06_error_analysis first"

    predictions: str | None = None
    score: float | None = None
    figures: list[str] | None = None
    worst_studies: list[int] | None = None
    ece: dict[str, Any] | None = None
    label_noise_candidates: int | None = None
    seconds: float | None = None

    def headline(self) -> dict[str, Any]:
        """What the notebook prints at its end: the candidate analysed, its score, worst studies, the time."""
        shown = ("predictions", "score", "worst_studies", "seconds")
        return {k: v for k, v in self.to_dict().items() if k in shown}

    def files(self) -> list[str]:
        return list(self.figures or [])


@dataclass
class RunManifest(Record):
    """A run folder's whole manifest: one field per section (None: the step that writes it has not run), in
    the pipeline's order; sections this module does not know stay in `extra`."""

    STEP: ClassVar[str] = "run the pipeline first"

    pipeline: PipelineRecord | None = None
    notebooks: dict[str, NotebookRecord] | None = None
    preprocess: PreprocessRecord | None = None
    localizer: LocalizerRecord | None = None
    oof_crops: OofCropsRecord | None = None
    localizer_eval: LocalizerEvalRecord | None = None
    classifiers: dict[str, ClassifierRecord] | None = None
    ensemble: EnsembleRecord | None = None
    label_noise: LabelNoiseRecord | None = None
    error_analysis: ErrorAnalysisRecord | None = None
    run_dir: Path | None = field(default=None, kw_only=True, compare=False, metadata=_NOT_JSON)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunManifest:
        """The manifest of a run folder (every section None when none has been written yet)."""
        return cls.from_dict(read_manifest(run_dir), run_dir)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run_dir: str | os.PathLike | None = None) -> RunManifest:
        """The manifest of `data` (`read_manifest`'s dict); `run_dir` names it in error messages."""
        where = str(manifest_path(run_dir if run_dir is not None else ""))
        manifest = super().from_dict(data, where)
        manifest.run_dir = Path(run_dir) if run_dir is not None else None
        return manifest

    @classmethod
    def _child(cls, where: str, key: str, name: str | None = None) -> str:
        return f"{where}: {key}" + (f"[{name!r}]" if name is not None else "")

    def missing(self, name: str) -> str:
        if name not in self.NESTED:
            return super().missing(name)
        kind = self.NESTED[name][0]
        entry = f" (no {name!r} entry)" if kind.WHAT != name else ""
        return f"{self._where} has no {kind.WHAT}: {kind.STEP}{entry}"

    def is_empty(self) -> bool:
        """No section at all: not a run folder (or one no step has recorded anything in yet)."""
        return not self.to_dict()

    def classifier(self, name: str) -> ClassifierRecord:
        """The classifier recorded as `name`, or a `ManifestError` naming the ones the run has."""
        found = (self.classifiers or {}).get(name)
        if found is None:
            raise ManifestError(
                f"{self._where} has no classifier {name!r}: {ClassifierRecord.STEP} (it has "
                f"{sorted(self.classifiers or {})})"
            )
        return found

    def sections(self) -> Iterator[Record]:
        """Every section's record, the entries of keyed sections one by one."""
        for name in self.json_fields():
            value = getattr(self, name)
            yield from value.values() if isinstance(value, dict) else [value] if value is not None else []

    def files(self) -> list[str]:
        """Every file the records name, relative to the run folder, once each, sorted (a path outside the run,
        absolute, is not the run's to carry). On `for_inference()`: what the Kaggle bundle ships."""
        return sorted({f for record in self.sections() for f in record.files() if not os.path.isabs(f)})

    def for_inference(self, used: list[str] | None) -> RunManifest:
        """The manifest a copy of the run for prediction carries: without the error analysis, and, given the
        classifiers the ensemble's parameters use (`used`; None: no parameters yet), without the others (their
        weights stay home) and without every ensemble candidate's out-of-fold predictions."""
        kept = self.without("error_analysis")
        if used is None:
            return kept
        ensemble = (self.ensemble or EnsembleRecord()).without("candidates").copy(models=list(used))
        classifiers = {k: v for k, v in (self.classifiers or {}).items() if k in used}
        return kept.copy(ensemble=ensemble, classifiers=classifiers)


#: The sections by their key: each record's `SECTION`, a field of `RunManifest` of the same name.
RunManifest.NESTED = {
    kind.SECTION: (kind, kind.KEYED)
    for kind in (
        PipelineRecord,
        NotebookRecord,
        PreprocessRecord,
        LocalizerRecord,
        OofCropsRecord,
        LocalizerEvalRecord,
        ClassifierRecord,
        EnsembleRecord,
        LabelNoiseRecord,
        ErrorAnalysisRecord,
    )
}
if list(RunManifest.NESTED) != list(RunManifest.json_fields()):
    raise TypeError("RunManifest: a section without its field, or a field without its section")


def save_record(run_dir: str | os.PathLike, record: Record, item: str | None = None) -> Record:
    """Write `record` as its section of the run's manifest (under the manifest's file lock); as the entry
    `item` of a keyed section (a classifier's folder, a notebook's output). Returns the record."""
    if record.KEYED != (item is not None):
        what = "is an entry of a keyed section: give its name" if record.KEYED else "is a section: no item"
        raise ValueError(f"{type(record).__name__} {what} (`{record.SECTION}`)")
    update_manifest(run_dir, record.SECTION, record.to_dict(), item=item)
    return record

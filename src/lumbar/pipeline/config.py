"""The pipeline config: steps, their parameters checked against the notebooks, and a step's settings.

The rules: `lumbar.pipeline`'s docstring.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lumbar.core.manifest import manifest_path
from lumbar.core.paths import PROJECT_ROOT, SYNTHETIC_MARKER, data_root, is_synthetic
from lumbar.core.run_contract import RunManifest
from lumbar.core.settings import UnknownSettingError, unknown_setting

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
#: Each step's log of printed lines: `runs/<name>/logs/<output>.log`.
LOG_DIR = "logs"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names notebook, cell and error."""


@dataclass
class Step:
    notebook: str
    output: str
    parameters: dict[str, Any] = field(default_factory=dict)
    group: int = 0  # steps with the same group number form one `parallel:` block
    declared: dict[str, type | None] = field(default_factory=dict, repr=False)  # notebook_parameters()


@dataclass
class PipelineConfig:
    name: str
    run_dir: Path
    data_dir: Path
    steps: list[Step]
    source: Path | None = None
    notebook_dir: Path = NOTEBOOK_DIR
    jobs: int = 0  # 0: auto (`group_plan`)
    synthetic: dict[str, Any] | None = None  # the `synthetic:` block; None: a config for the real data


_TOP_KEYS = {
    "name",
    "run_dir",
    "data_dir",
    "parameters",
    "notebooks",
    "notebook_dir",
    "description",
    "synthetic",
    "jobs",
}
_STEP_KEYS = {"notebook", "output", "parameters"}


def load_config(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                run_dir: str | os.PathLike | None = None) -> PipelineConfig:
    """Read and check a pipeline config; paths in it are relative to the project root.

    Args:
        path: the YAML file.
        data_dir: the data folder, over the config's `data_dir` (the command line's `--data-dir`).
        run_dir: the run folder, over the config's `run_dir` and `name` (the command line's `--run-dir`: a run
            of the real data needs ~100 GB, which may not fit beside the checkout); relative to the current
            folder, as `data_dir` is.

    Raises:
        ValueError: naming the entry of the config that is wrong (an unknown parameter, a value of the wrong type).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}")
    if not raw.get("notebooks"):
        raise ValueError(f"{path}: `notebooks` must list at least one notebook")
    synthetic = (raw["synthetic"] or {}) if "synthetic" in raw else None
    if synthetic is not None and not isinstance(synthetic, dict):
        raise ValueError(f"{path}: `synthetic` must map generator settings to values, got {synthetic!r}")
    name = raw.get("name") or path.stem
    if run_dir:
        run_dir = Path(run_dir).absolute()
    else:
        run_dir = Path(raw.get("run_dir") or f"runs/{name}")
        run_dir = run_dir if run_dir.is_absolute() else PROJECT_ROOT / run_dir
    data_dir = data_root(data_dir or (raw.get("data_dir") and _project_path(raw["data_dir"]))).absolute()
    notebook_dir = _project_path(raw["notebook_dir"]) if raw.get("notebook_dir") else NOTEBOOK_DIR
    declared: dict[str, dict[str, type | None]] = {}
    steps = []
    for i, entry in enumerate(raw["notebooks"]):
        parallel = isinstance(entry, dict) and "parallel" in entry
        members = entry["parallel"] if parallel else [entry]
        if parallel and (set(entry) != {"parallel"} or not isinstance(members, list) or not members):
            raise ValueError(f"{path}: notebooks[{i}]: a `parallel:` entry holds only a non-empty list of steps")
        for j, member in enumerate(members):
            where = f"{path}: notebooks[{i}]" + (f".parallel[{j}]" if parallel else "")
            steps.append(_step(member, i, notebook_dir, where, declared))
    steps = spread_parameters(steps, raw.get("parameters") or {}, f"{path}: parameters", win=False)
    outputs = [s.output for s in steps]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"{path}: two steps write the same output name; give each an `output:`")
    jobs = raw.get("jobs", "auto")
    jobs = 0 if jobs == "auto" else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise ValueError(f"{path}: jobs must be `auto` or a whole number >= 1, got {jobs!r}")
    return PipelineConfig(name, run_dir, data_dir, steps, path, notebook_dir, jobs, synthetic)


def _step(entry: Any, group: int, notebook_dir: Path, where: str, declared: dict[str, dict]) -> Step:
    """One notebook run with its own parameters, checked against the notebook's (`declared` caches them)."""
    entry = {"notebook": entry} if isinstance(entry, str) else dict(entry)
    bad = set(entry) - _STEP_KEYS
    if bad or "notebook" not in entry:
        raise ValueError(f"{where} has unknown key(s) {sorted(bad)} or no `notebook`")
    nb = entry["notebook"].removesuffix(".ipynb")
    if not (notebook_dir / f"{nb}.ipynb").is_file():
        raise ValueError(f"{where}: {notebook_dir / nb}.ipynb does not exist")
    if nb not in declared:
        declared[nb] = notebook_parameters(notebook_dir / f"{nb}.ipynb")
    step = Step(nb, entry.get("output", nb), group=group, declared=declared[nb])
    return spread_parameters([step], entry.get("parameters") or {}, where)[0]


_KINDS = {kind.__name__: kind for kind in (bool, int, float, str, list, dict)}

#: Parameters the pipeline sets itself, and where a user sets them instead.
_RESERVED = {"RUN_DIR": "--run-dir (or the config's `run_dir`)", "DATA_DIR": "--data-dir (or the config's `data_dir`)",
             "CONFIG": "--config (CONFIG is for a notebook opened by hand)", "STEP": "the config's steps"}


def notebook_parameters(path: Path) -> dict[str, type | None]:
    """The parameters a notebook declares, each with the type a value must fit (None: any).

    From papermill's inspection of the `parameters` cell: the annotation's type where it names one,
    else the type of the default literal.
    """
    import papermill as pm

    declared = {}
    for name, p in pm.inspect_notebook(str(path)).items():
        kind = _KINDS.get(p["inferred_type_name"])
        if kind is None:
            try:
                kind = type(ast.literal_eval(p["default"]))
            except (ValueError, SyntaxError, TypeError):
                kind = None  # an expression: nothing to check against
        declared[name] = kind if kind in _KINDS.values() else None
    return declared


def notebook_defaults(path: Path) -> dict[str, Any]:
    """The values of a notebook's `parameters` cell (papermill's inspection; an expression gives None)."""
    import papermill as pm

    values = {}
    for name, p in pm.inspect_notebook(str(path)).items():
        try:
            values[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError, TypeError):
            values[name] = None
    return values


def _fit(value: Any, kind: type | None) -> Any:
    """`value` as a parameter whose default has type `kind` (rules: module docstring); TypeError if it does not fit."""
    if kind is None:
        return value
    if kind is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if kind is str and not isinstance(value, (list, dict)):
        return "" if value is None else str(value)
    if isinstance(value, (int, float) if kind is float else kind) and (kind is bool or not isinstance(value, bool)):
        return float(value) if kind is float else value
    raise TypeError(f"{value!r} is no {kind.__name__}")


def spread_parameters(steps: list[Step], values: Mapping[str, Any], owner: str, win: bool = True) -> list[Step]:
    """`steps` with `values` added to each step whose notebook declares the name, cast by `_fit`.

    Args:
        owner: where the values come from, for errors ("--set", "configs/demo.yaml: notebooks[2]").
        win: the values replace the steps' own (`--set`); otherwise the steps' own win (top-level parameters).

    Raises:
        ValueError: `RUN_DIR` or `DATA_DIR`; a name no step declares (`UnknownSettingError`, suggesting the
            closest declared one); a value that does not fit the type of a declared default.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{owner}: parameters must map names to values, got {values!r}")  # noqa: TRY004 - bad input
    added: list[dict[str, Any]] = [{} for _ in steps]
    for key, value in values.items():
        if key in _RESERVED:
            raise ValueError(f"{owner}: the pipeline sets {key}; use {_RESERVED[key]}")
        declaring = [i for i, step in enumerate(steps) if key in step.declared]
        if not declaring:
            notebooks = ", ".join(dict.fromkeys(f"{step.notebook}.ipynb" for step in steps))
            where = where_setting_lives(key, steps)
            if where:
                raise UnknownSettingError(f"{owner} ({notebooks}): {key!r} is no notebook parameter; {where}")
            raise unknown_setting(f"{owner} ({notebooks})", key, sorted({n for s in steps for n in s.declared}))
        misfits: dict[str, dict[str, None]] = {}
        for i in declaring:
            kind = steps[i].declared[key]
            try:
                added[i][key] = _fit(value, kind)
            except TypeError:
                misfits.setdefault(kind.__name__, {})[f"{steps[i].notebook}.ipynb"] = None
        if misfits:
            expected = "; ".join(f"the {kind} default of {', '.join(nbs)}" for kind, nbs in misfits.items())
            raise ValueError(f"{owner}: {key}={value!r} does not fit {expected}")
    return [replace(step, parameters=_merged(step.parameters, new) if win else _merged(new, step.parameters))
            for step, new in zip(steps, added)]  # fmt: skip


def _merged(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """`high` over `low`; a mapping parameter (`EXTRA`) is merged key by key, so `--set EXTRA={resume: false}` adds
    to a step's EXTRA instead of dropping the rest of it."""
    out = dict(low)
    for key, value in high.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = {**out[key], **value} if both else value
    return out


#: Which typed config each notebook's `EXTRA` feeds (its fields are settings there, not notebook parameters).
EXTRA_CONFIGS = {"01_preprocess": "lumbar.preprocess.config:RoiConfig",
                 "02_train_localizer": "lumbar.localize.config:LocalizerConfig",
                 "03_train": "lumbar.train.config:TrainConfig"}  # fmt: skip


def where_setting_lives(key: str, steps: list[Step]) -> str:
    """For a name that is no notebook parameter but a field of a step's typed config (`lr`, `ema_decay`): where to
    set it, per notebook ("" when it is no field of any)."""
    places = []
    for notebook in dict.fromkeys(s.notebook for s in steps):
        if notebook not in EXTRA_CONFIGS:
            continue
        module, _, name = EXTRA_CONFIGS[notebook].partition(":")
        fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
        if key in fields:
            declared = next(s.declared for s in steps if s.notebook == notebook)
            also = f" or the parameter {key.upper()}" if key.upper() in declared else ""
            places.append(f"{notebook}: EXTRA={{{key}: ...}}{also} (a field of {name})")
    return "set it as " + "; ".join(places) if places else ""


def _project_path(p: str) -> Path:
    p = Path(p)
    return p if p.is_absolute() else PROJECT_ROOT / p


def select_steps(steps: list[Step], start: str | None = None, only: str | None = None) -> list[Step]:
    """Steps from `start` on, or just `only`; each matched by output name or notebook name prefix ("03")."""

    def matches(step: Step, key: str) -> bool:
        return step.output == key or step.notebook == key or step.output.startswith(key)

    if only:
        chosen = [s for s in steps if matches(s, only)]
        if not chosen:
            raise ValueError(f"--only {only!r} matches no step of {[s.output for s in steps]}")
        return chosen
    if start:
        for i, s in enumerate(steps):
            if matches(s, start):
                return steps[i:]
        raise ValueError(f"--from {start!r} matches no step of {[s.output for s in steps]}")
    return steps


def check_data_kind(config: PipelineConfig, allow_synthetic: bool = False) -> None:
    """Stop a config before it runs on the other kind of data (module docstring: Data kind).

    Args:
        allow_synthetic: let a real-data config run on synthetic data (a dry run).

    Raises:
        ValueError: naming the config, the data folder and the way out.
    """
    folder, synthetic = config.data_dir, is_synthetic(config.data_dir)
    if config.synthetic is None and not folder.is_dir():
        raise ValueError(
            f"{config.source} is meant for the real data, but its data folder {folder} does not exist; put the "
            "competition data there (README: Using the real competition data) or give --data-dir / LUMBAR_DATA_DIR"
        )
    if config.synthetic is None and synthetic and not allow_synthetic:
        raise ValueError(
            f"{config.source} is meant for the real data, but {folder} holds synthetic data ({SYNTHETIC_MARKER}); "
            "give the competition data's folder (--data-dir, LUMBAR_DATA_DIR or the config's data_dir), or pass "
            "--allow-synthetic for a dry run on synthetic data"
        )
    if config.synthetic is not None and not synthetic and (folder / "train.csv").is_file():
        raise ValueError(
            f"{config.source} is a synthetic-data config (it has a `synthetic:` block), but {folder} holds "
            f"competition data (train.csv, no {SYNTHETIC_MARKER}); give the config a data_dir of its own"
        )


def plan_steps(
    config: PipelineConfig, start: str | None = None, only: str | None = None, overrides: Mapping[str, Any] | None = None
) -> list[Step]:
    """The steps `run_pipeline` runs: `select_steps`, then the `--set` values spread over them."""
    return spread_parameters(select_steps(config.steps, start, only), overrides or {}, "--set")


def step_settings(notebook: str, chosen: str, step: str = "") -> dict[str, Any]:
    """The parameters a notebook opened by hand takes: those the pipeline gives it in a config, or those it ran
    with in a run folder. A notebook never silently falls back to its own (demo) defaults.

    Args:
        notebook: the notebook's name (`03_train`).
        chosen: a config (`full`, `demo`, or a YAML path: that config's step, with `RUN_DIR` and `DATA_DIR` as the
            pipeline sets them) or a run folder (the parameters of its executed copy `<run>/<step>.ipynb`, `--set`
            values included; or, for a step it has not run, its config's).
        step: which of the config's steps of this notebook (its output name, e.g. `03_train_timm25d_resnet34`);
            default: the first.

    Raises:
        ValueError: nothing chosen (names how to choose), or no such config, run or step.
    """
    if not chosen:
        raise ValueError(f"{notebook} opened by hand: choose its settings in the first cell: CONFIG = 'full' (or "
                         "'demo', a config's path, or a run folder such as '../runs/full'); the pipeline sets "
                         "RUN_DIR itself")  # fmt: skip
    run = _project_path(chosen) if not Path(chosen).is_absolute() else Path(chosen)
    if manifest_path(run).is_file():
        executed = _executed_parameters(run, notebook, step)
        if executed is not None:
            return executed
        pipeline = RunManifest.read(run).pipeline
        chosen = (pipeline.config if pipeline else None) or ""
        if not chosen:
            raise ValueError(f"{run}: no executed {notebook} and no pipeline config in its manifest")
    path = _config_path(chosen)
    config = load_config(path)
    steps = [s for s in config.steps if s.notebook == notebook and (not step or s.output == step)]
    if not steps:
        raise ValueError(f"{path}: no step {step or notebook!r} (steps: {[s.output for s in config.steps]})")
    others = [s.output for s in config.steps if s.notebook == notebook and s is not steps[0]]
    print(f"{notebook}: the settings of {steps[0].output} in {path}"
          + (f" (others: {', '.join(others)}; STEP chooses)" if others else ""))  # fmt: skip
    return {**steps[0].parameters, "RUN_DIR": str(config.run_dir), "DATA_DIR": str(config.data_dir)}


def _config_path(chosen: str) -> Path:
    path = Path(chosen)
    for candidate in (path, PROJECT_ROOT / path, PROJECT_ROOT / "configs" / f"{chosen}.yaml"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"no config {chosen!r} (configs/: {sorted(p.stem for p in (PROJECT_ROOT / 'configs').glob('*.yaml'))})")


def _executed_parameters(run: Path, notebook: str, step: str) -> dict[str, Any] | None:
    """The parameters papermill injected into `<run>/<step>.ipynb` (the first executed copy of `notebook` when no
    step is named), read as literals; None when the run has no such copy."""
    import nbformat

    names = [step] if step else sorted(p.stem for p in run.glob(f"{notebook}*.ipynb"))
    path = next((run / f"{n}.ipynb" for n in names if (run / f"{n}.ipynb").is_file()), None)
    if path is None:
        return None
    cells = [c for c in nbformat.read(path, as_version=4).cells if "injected-parameters" in c.metadata.get("tags", [])]
    values = {}
    for node in ast.parse(cells[0].source if cells else "").body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    print(f"{notebook}: the settings {path} ran with")
    return values

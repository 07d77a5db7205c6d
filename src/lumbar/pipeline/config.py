"""The pipeline config: steps, their parameters checked against the notebooks, and a step's settings.

The rules: `lumbar.pipeline`'s docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lumbar.core.manifest import manifest_path
from lumbar.core.paths import PROJECT_ROOT, SYNTHETIC_MARKER, data_root, is_synthetic
from lumbar.core.run_contract import RunManifest
from lumbar.core.settings import UnknownSettingError, cast_setting, merge_layers, unknown_setting

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


def load_config(
    path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
) -> PipelineConfig:
    """Read and check a pipeline config; paths in it are relative to the project root.

    Args:
        path: the YAML file.
        data_dir: the data folder, over the config's `data_dir` (the command line's `--data-dir`).
        run_dir: the run folder, over the config's `run_dir` and `name` (the command line's `--run-dir`: a run
            of the real data needs ~100 GB, which may not fit beside the checkout); relative to the current
            folder, as `data_dir` is.

    Raises:
        ValueError: naming the entry of the config that is wrong (an unknown parameter, a value of the wrong
        type).
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
            raise ValueError(
                f"{path}: notebooks[{i}]: a `parallel:` entry holds only a non-empty list of steps"
            )
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
_RESERVED = {
    "RUN_DIR": "--run-dir (or the config's `run_dir`)",
    "DATA_DIR": "--data-dir (or the config's `data_dir`)",
    "CONFIG": "--config (CONFIG is for a notebook opened by hand)",
    "STEP": "the config's steps",
}


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


#: The notebook parameter that carries a step's other typed-config fields.
EXTRA = "EXTRA"


@dataclass(frozen=True)
class TypedStep:
    """A notebook that builds a typed config from its parameters: the config, and which parameter sets which
    field.

    Attributes:
        config: "module:Class" of the typed config.
        own: field -> the notebook parameter that sets it to the same value (`epochs` -> EPOCHS).
        wired: field -> what the notebook makes it from (a parameter, the run folder); no name reaches it.
    """

    config: str
    own: dict[str, str]
    wired: dict[str, str] = field(default_factory=dict)

    @property
    def cls(self) -> type:
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)

    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.cls)]


#: The notebooks whose `EXTRA` feeds a typed config, as their code builds it (tests/test_settings.py holds the
#: table to the notebooks' code).
TYPED_STEPS = {
    "01_preprocess": TypedStep(
        "lumbar.preprocess.config:RoiConfig",
        {
            "mode": "MODE",
            "size": "SIZE",
            "before": "BEFORE",
            "after": "AFTER",
            "depth": "DEPTH",
            "filter": "FILTER",
            "margin_mode": "MARGIN_MODE",
        },
    ),
    "02_train_localizer": TypedStep(
        "lumbar.localize.config:LocalizerConfig",
        {
            "backbone": "BACKBONE",
            "pretrained": "PRETRAINED",
            "size": "SIZE",
            "epochs": "EPOCHS",
            "device": "DEVICE",
            "seed": "SEED",
        },
    ),
    "03_train": TypedStep(
        "lumbar.train.config:TrainConfig",
        {
            "arch": "ARCH",
            "mode": "MODE",
            "conditions": "CONDITIONS",
            "folds": "FOLDS",
            "n_folds": "N_FOLDS",
            "epochs": "EPOCHS",
            "batch_size": "BATCH_SIZE",
            "lr": "LR",
            "pretrained": "PRETRAINED",
            "device": "DEVICE",
            "threads": "THREADS",
            "train_crops": "CROPS",
        },
        {
            "out": "NAME (the folder RUN_DIR/NAME)",
            "resume": "FRESH (resume = not FRESH)",
            "jitter": "JITTER (localizer: the localizer's errors)",
            "exclude": "EXCLUDE (a file of RUN_DIR)",
            "cache": "RUN_DIR (its crop cache)",
            "oof_cache": "RUN_DIR (its out-of-fold crop cache)",
            "data_dir": "DATA_DIR (--data-dir)",
        },
    ),
}


def _route(key: str, step: Step, owner: str) -> str | None:
    """The parameter of `step` that `key` reaches: the notebook's own (EPOCHS), or for a lower-case field of
    its typed config the parameter that sets the field (`epochs` -> EPOCHS), else `EXTRA`; None: no such name.

    Raises:
        ValueError: `key` is a field the step's notebook makes from something else (`TypedStep.wired`).
    """
    if key in step.declared:
        return key
    typed = TYPED_STEPS.get(step.notebook)
    if typed is None or key != key.lower() or key not in typed.fields():
        return None
    if key in typed.wired:
        raise ValueError(f"{owner}: {step.notebook}.ipynb makes {key} from {typed.wired[key]}; set that")
    param = typed.own.get(key, EXTRA)
    return param if param in step.declared else None


def _check_extra(extra: Any, step: Step, owner: str, names_only: bool = False) -> None:
    """Each field of a step's `EXTRA` a field of its typed config that no parameter sets, with a value of the
    field's type: a config's mistake stops the pipeline before it starts, not the step's notebook later.

    Args:
        names_only: only the fields a parameter sets (checked over every step first: the error that names
            the parameter beats one step's "unknown setting").
    """
    typed = TYPED_STEPS.get(step.notebook)
    if typed is None or not isinstance(extra, Mapping):
        return
    hints = typing.get_type_hints(typed.cls)
    for key, value in extra.items():
        if key in typed.own:
            param = typed.own[key]
            raise ValueError(
                f"{owner}: EXTRA={{{key}: ...}}: {step.notebook}.ipynb has the parameter "
                f"{param} for {key}; give {param}: {value!r} (or {key}: {value!r}) instead"
            )
        if key in typed.wired:
            raise ValueError(
                f"{owner}: EXTRA={{{key}: ...}}: {step.notebook}.ipynb makes {key} from "
                f"{typed.wired[key]}; set that"
            )
        if names_only:
            continue
        if key not in hints:
            raise unknown_setting(f"{owner} ({step.notebook}.ipynb EXTRA)", str(key), typed.fields())
        cast_setting(f"{owner}: {step.notebook}.ipynb EXTRA", key, value, hints[key])


def spread_parameters(
    steps: list[Step], values: Mapping[str, Any], owner: str, win: bool = True
) -> list[Step]:
    """`steps` with `values` added to each step that takes the name (`_route`), cast to the parameter's type
    (`lumbar.core.settings.cast_setting`) and merged by `merge_layers` (an `EXTRA` key by key).

    Args:
        owner: where the values come from, for errors ("--set", "configs/demo.yaml: notebooks[2]").
        win: the values replace the steps' own (`--set`); otherwise the steps' own win (top-level parameters).

    Raises:
        ValueError: `RUN_DIR` or `DATA_DIR`; a name no step takes (`UnknownSettingError`, suggesting the
            closest one); two names of one setting; a value that does not fit the type of a declared
            default; an `EXTRA` field that is no field, or one a parameter sets (`_check_extra`).
    """
    if not isinstance(values, Mapping):
        # a bad input, not a wrong type in the code
        raise ValueError(f"{owner}: parameters must map names to values, got {values!r}")  # noqa: TRY004
    added: list[dict[str, Any]] = [{} for _ in steps]
    given: list[dict[str, str]] = [{} for _ in steps]  # per step: a setting ("EPOCHS", "EXTRA.lr") -> name
    for key, value in values.items():
        if key in _RESERVED:
            raise ValueError(f"{owner}: the pipeline sets {key}; use {_RESERVED[key]}")
        routes = {i: param for i, step in enumerate(steps) if (param := _route(key, step, owner))}
        if not routes:
            notebooks = ", ".join(dict.fromkeys(f"{step.notebook}.ipynb" for step in steps))
            where = where_setting_lives(key, steps)
            if where:
                raise UnknownSettingError(f"{owner} ({notebooks}): {key!r} is no notebook parameter; {where}")
            raise unknown_setting(
                f"{owner} ({notebooks})", key, sorted({n for s in steps for n in s.declared})
            )
        misfits: dict[str, dict[str, None]] = {}
        extras = []
        for i, param in routes.items():
            step, kind = steps[i], steps[i].declared[param]
            new = {key: value} if param == EXTRA and key != EXTRA else value
            try:
                new = cast_setting(step.notebook, param, new, kind)
            except ValueError:
                misfits.setdefault(kind.__name__, {})[f"{step.notebook}.ipynb"] = None
                continue
            if param == EXTRA:
                extras.append((new, step))
            names = [f"{EXTRA}.{k}" for k in new] if param == EXTRA and isinstance(new, Mapping) else [param]
            for name in names:
                if given[i].setdefault(name, key) != key:
                    raise ValueError(
                        f"{owner}: {given[i][name]} and {key} both set {name} of "
                        f"{step.notebook}.ipynb; give one"
                    )
            added[i] = merge_layers(added[i], {param: new}, bags=[EXTRA])
        if misfits:
            expected = "; ".join(f"the {kind} default of {', '.join(nbs)}" for kind, nbs in misfits.items())
            raise ValueError(f"{owner}: {key}={value!r} does not fit {expected}")
        for names_only in (True, False):
            for extra, step in extras:
                _check_extra(extra, step, owner, names_only)
    layered = [(step.parameters, new) if win else (new, step.parameters) for step, new in zip(steps, added)]
    return [
        replace(step, parameters=merge_layers(*low_high, bags=[EXTRA]))
        for step, low_high in zip(steps, layered)
    ]


def where_setting_lives(key: str, steps: list[Step]) -> str:
    """For a name no step takes: the name that reaches the setting it means (`EMA_DECAY` -> `ema_decay`), or
    the notebook whose typed config has it when no selected step runs that notebook ("" when none has it)."""
    places = []
    name = key.lower()
    selected = {s.notebook for s in steps}
    for notebook, typed in TYPED_STEPS.items():
        if name not in typed.fields():
            continue
        cls = typed.config.partition(":")[2]
        if name in typed.wired:
            what = f"{typed.wired[name]} ({cls}.{name} is made from it)"
        else:
            what = f"{typed.own.get(name, name)} (a field of {cls})"
        if notebook in selected and name != key:
            places.append(f"{notebook}: {what}")
        elif notebook not in selected:
            places.append(f"{notebook}, not selected: {what}")
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
            f"{config.source} is meant for the real data, but its data folder {folder} does not "
            "exist; put the "
            "competition data there (README: Using the real competition data) or give --data-dir / "
            "LUMBAR_DATA_DIR"
        )
    if config.synthetic is None and synthetic and not allow_synthetic:
        raise ValueError(
            f"{config.source} is meant for the real data, but {folder} holds synthetic data "
            f"({SYNTHETIC_MARKER}); "
            "give the competition data's folder (--data-dir, LUMBAR_DATA_DIR or the config's data_dir), "
            "or pass "
            "--allow-synthetic for a dry run on synthetic data"
        )
    if config.synthetic is not None and not synthetic and (folder / "train.csv").is_file():
        raise ValueError(
            f"{config.source} is a synthetic-data config (it has a `synthetic:` block), but {folder} holds "
            f"competition data (train.csv, no {SYNTHETIC_MARKER}); give the config a data_dir of its own"
        )


def plan_steps(
    config: PipelineConfig,
    start: str | None = None,
    only: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Step]:
    """The steps `run_pipeline` runs: `select_steps`, then the `--set` values spread over them."""
    return spread_parameters(select_steps(config.steps, start, only), overrides or {}, "--set")


def step_settings(notebook: str, chosen: str, step: str = "") -> dict[str, Any]:
    """The parameters a notebook opened by hand takes: those the pipeline gives it in a config, or those it
    ran
    with in a run folder. A notebook never silently falls back to its own (demo) defaults.

    Args:
        notebook: the notebook's name (`03_train`).
        chosen: a config (`full`, `demo`, or a YAML path: that config's step, with `RUN_DIR` and `DATA_DIR` as
        the
            pipeline sets them) or a run folder (the parameters of its executed copy `<run>/<step>.ipynb`,
            `--set` values included; or, for a step it has not run, its config's).
        step: which of the config's steps of this notebook (its output name, e.g.
        `03_train_timm25d_resnet34`);
            default: the first.

    Raises:
        ValueError: nothing chosen (names how to choose), or no such config, run or step.
    """
    if not chosen:
        raise ValueError(
            f"{notebook} opened by hand: choose its settings in the first cell: CONFIG = 'full' (or "
            "'demo', a config's path, or a run folder such as '../runs/full'); the pipeline sets "
            "RUN_DIR itself"
        )
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
    print(
        f"{notebook}: the settings of {steps[0].output} in {path}"
        + (f" (others: {', '.join(others)}; STEP chooses)" if others else "")
    )
    return {**steps[0].parameters, "RUN_DIR": str(config.run_dir), "DATA_DIR": str(config.data_dir)}


def _config_path(chosen: str) -> Path:
    path = Path(chosen)
    for candidate in (path, PROJECT_ROOT / path, PROJECT_ROOT / "configs" / f"{chosen}.yaml"):
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"no config {chosen!r} (configs/: "
        f"{sorted(p.stem for p in (PROJECT_ROOT / 'configs').glob('*.yaml'))})"
    )


def _executed_parameters(run: Path, notebook: str, step: str) -> dict[str, Any] | None:
    """The parameters papermill injected into `<run>/<step>.ipynb` (the first executed copy of `notebook` when
    no
    step is named), read as literals; None when the run has no such copy."""
    import nbformat

    names = [step] if step else sorted(p.stem for p in run.glob(f"{notebook}*.ipynb"))
    path = next((run / f"{n}.ipynb" for n in names if (run / f"{n}.ipynb").is_file()), None)
    if path is None:
        return None
    cells = [
        c
        for c in nbformat.read(path, as_version=4).cells
        if "injected-parameters" in c.metadata.get("tags", [])
    ]
    values = {}
    for node in ast.parse(cells[0].source if cells else "").body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    print(f"{notebook}: the settings {path} ran with")
    return values

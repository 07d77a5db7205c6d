"""Run the numbered notebooks in order with papermill, parameters from a YAML pipeline config.

Config (`configs/NAME.yaml`)::

    name: demo                    # run folder: runs/<name>/ (or `run_dir:`)
    notebook_dir: notebooks       # default
    data_dir: null                # null: lumbar.core.paths.data_root() decides; `pipeline --data-dir`
    overrides
    synthetic: {studies: 60}      # only in a synthetic-data config: the generator's settings (`lumbar demo`)
    parameters: {DEVICE: auto}    # for every notebook that declares the parameter
    jobs: auto                    # notebooks of a `parallel:` group run at most this many at once
    notebooks:
      - notebook: 00_eda          # notebooks/00_eda.ipynb
      - parallel:                 # independent notebooks: side by side when jobs > 1, else in order
          - notebook: 02_train_localizer
          - notebook: 03_train    # one notebook run once per architecture,
            output: 03_train_cnn3d  # each under its own name
            parameters: {ARCH: cnn3d}

Every notebook also receives `RUN_DIR` and `DATA_DIR` (from `run_dir`/`--run-dir` and `data_dir`/`--data-dir`;
a parameter or `--set` of either name is refused); every notebook writes only under `RUN_DIR` (05 also its
`OUT`), so `--run-dir` moves a whole run onto another disk. `--plan` prints what the run would cost (samples,
disk, memory, time per step: `lumbar.pipeline.cost`) and runs nothing. `jobs` (default `auto`) follows the
machine: a parallel group runs one notebook per core at most, or, when its notebooks train on the GPU
(`DEVICE` auto or cuda) and GPUs are visible, one notebook per GPU, each pinned to its own (`group_plan`,
`lumbar.core.processes.plan_processes`); a number pins it (never more than one notebook per GPU). Each
notebook of a parallel group runs in its own process and kernel with `OMP_NUM_THREADS` = CPU cores // jobs
(unless the environment sets it), which is also torch's thread count there when the notebook's own thread
setting is 0, so the group shares the cores instead of fighting over them; the manifest is updated under a
file lock. Executed copies are saved as `runs/<name>/<output>.ipynb`; the manifest's `notebooks` entry records
status and seconds of each. On a failing cell the pipeline stops and names the notebook, the cell and the
error.

Progress: every line a step's notebook prints (stdout and stderr streams, its processes' included; not
displayed tables or figures) goes, as it arrives, to `runs/<name>/logs/<output>.log` (each line with its time,
between a line saying when the step started and one saying how it ended; a rerun appends) and to the console
prefixed with `[<output>]`, one `print` per line, so the lines of a parallel group's notebooks interleave
whole. The training notebooks print one line per epoch (`lumbar.core.progress`), so `tail -f
runs/<name>/logs/*.log` shows how far each step is and how long it has left. What a step's kernel process says
outside the notebook's streams (its start-up warnings, why it failed to start) goes to
`logs/kernel/<output>.log` (`kernel_manager`).

Settings, one name each: in a config's `parameters:` (top level or a step's) and in `--set` alike, a step's
setting is written by its own name. A notebook parameter by its name (EPOCHS, ARCH); a field of the typed
config the step's notebook builds (`TYPED_STEPS`: 01 `RoiConfig`, 02 `LocalizerConfig`, 03 `TrainConfig`) by
the field's name (`ema_decay`, `lr`). A field's name reaches the parameter that sets it where the notebook has
one (`epochs` -> EPOCHS, `lr` -> 03's LR) and the notebook's `EXTRA` otherwise (`lr` -> 02's EXTRA,
`ema_decay` -> 03's); a field the notebook makes from something else (03's `out` from NAME, `resume` from
FRESH) is refused, naming that. `EXTRA` is the carrier the pipeline fills (an executed notebook records it;
written out it still merges, key by key): a field inside it that has a parameter of its own is an error naming
the parameter (`EXTRA: {epochs: 3}` -> `... 02_train_localizer.ipynb has the parameter EPOCHS for epochs; give
EPOCHS: 3 (or epochs: 3) instead`), and each of its fields is checked against the typed config, name and
value, before anything runs.

Parameters are checked before the first notebook runs, against the `parameters` cell of each notebook
(papermill's `inspect_notebook`). A name must be taken by the step's notebook (a step's `parameters:`), by
some notebook of the config (top-level `parameters:`) or by some selected notebook (`--set`); otherwise the
error names the closest declared name. Top-level parameters and `--set` go only to the notebooks that take
them, in the one precedence of every command (`lumbar.core.settings.merge_layers`): notebook default <
top-level < step < command-line flag (`--fresh`: FRESH) < `--set`. A value is cast to the type of the declared
default (or of the annotation, `LR: float = 1e-3`) by the one rule of the typed configs
(`lumbar.core.settings.cast_setting`): int takes a whole number (3, 3.0, "3"), never a bool; float a number or
a string float() reads (PyYAML reads `1e-3` as a string), never a bool; bool true/false, 0/1, yes/no, on/off;
str any scalar, passed as its string (null as ""); list a list, a comma-separated string or one scalar; dict a
mapping or a YAML string; a default of None, or one that is no literal, anything.

Data kind: a config with a `synthetic:` block is meant for synthetic data, any other for the real data.
Before anything runs, `check_data_kind` stops a real-data config whose data folder holds `synthetic.json`
(unless `--allow-synthetic`, for a dry run of a real config on synthetic data) and a synthetic config whose
folder holds competition data (`train.csv` without `synthetic.json`), so the demo never runs on, or writes
into, the real data.

The package: `config` (the YAML config, its steps and their checked parameters), `runner` (papermill, logs,
parallel groups), `cost` (`--plan`) and `command` (the CLI); the names below are the ones notebooks and
scripts use.
"""

from lumbar.pipeline.config import (
    LOG_DIR,
    NOTEBOOK_DIR,
    TYPED_STEPS,
    PipelineConfig,
    PipelineError,
    Step,
    check_data_kind,
    load_config,
    notebook_parameters,
    plan_steps,
    select_steps,
    step_settings,
    where_setting_lives,
)
from lumbar.pipeline.runner import StepLog, group_plan, log_path, run_pipeline, run_step

__all__ = [
    "LOG_DIR",
    "NOTEBOOK_DIR",
    "TYPED_STEPS",
    "PipelineConfig",
    "PipelineError",
    "Step",
    "StepLog",
    "check_data_kind",
    "group_plan",
    "load_config",
    "log_path",
    "notebook_parameters",
    "plan_steps",
    "run_pipeline",
    "run_step",
    "select_steps",
    "step_settings",
    "where_setting_lives",
]

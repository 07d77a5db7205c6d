"""The Kaggle submission notebook: `notebooks/05_submission.ipynb` with an install cell before it, Kaggle's
values in its parameters cell, and the first check (`lumbar.kaggle.preflight`) before any prediction.

Kaggle runs it on the hidden test set with the internet off and nobody watching, so its parameters differ from
a local run's in what a failure costs: prior rows never fail the run (`MAX_FALLBACK_SHARE = 1.0`), an error in
a chunk of studies gives that chunk prior rows (`ON_ERROR = "prior"`), and the time budget leaves Kaggle's
9-hour limit an hour of slack. Papermill can still override any of them (`-p NAME VALUE`), as the tests do.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from lumbar.core.paths import PROJECT_ROOT

SUBMISSION_NOTEBOOK = "05_submission"

#: The parameters the kernel sets otherwise than 05's defaults: name -> (Python expression, comment).
KERNEL_PARAMETERS = {
    "RUN_DIR": ('""', "empty: the weights dataset's run, found under /kaggle/input by the first check"),
    "DATA_DIR": ('""', "empty: the competition's folder under /kaggle/input"),
    "OUT": ("os.path.join(KAGGLE, 'working', 'submission.csv')", "what Kaggle scores"),
    "WORK_DIR": (
        "os.path.join(KAGGLE, 'working', 'lumbar')",
        "scratch crops (only /kaggle/working is writable)",
    ),
    "MAX_FALLBACK_SHARE": ("1.0", "never fail on prior rows: on the hidden test set a submission beats none"),
    "ON_ERROR": (
        '"prior"',
        "an error in a chunk of studies gives them prior rows (named in submission.json)",
    ),
    "TIME_BUDGET_S": (
        "8 * 3600",
        "Kaggle stops the notebook at 9 h: the rest of the studies get prior rows by 8",
    ),
}

_INSTALL = """\
# Offline install from the attached code dataset (internet is off on Kaggle; /kaggle/input is read-only).
import glob, os, subprocess, sys
KAGGLE = os.environ.get('LUMBAR_KAGGLE_ROOT', '/kaggle')
CODE = os.path.join(KAGGLE, 'input', {code_slug!r})
if not os.path.isfile(os.path.join(CODE, 'requirements.txt')):  # attached, but mounted somewhere else?
    found = [os.path.dirname(p) for depth in (1, 2, 3)
             for p in sorted(glob.glob(os.path.join(KAGGLE, 'input', *['*'] * depth, 'lumbar-*.whl')))]
    if not found:
        raise FileNotFoundError(f"the code dataset {code_slug!r} is not attached: Add Input -> Your Datasets "
                                f"-> {code_slug} (or push the kernel with kernel-metadata.json's "
                                "dataset_sources)")
    CODE = found[0]
subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--find-links', CODE,
                '-r', os.path.join(CODE, 'requirements.txt')], check=True)
from lumbar.kaggle import check_environment
check_environment(CODE);"""

_PREFLIGHT = """\
# The first check, before any prediction: the GPU and its precision, the run's every file, the data.
from lumbar.kaggle.preflight import preflight
RUN_DIR, DATA_DIR = preflight(KAGGLE, WEIGHTS, run_dir=RUN_DIR, data_dir=DATA_DIR, device=DEVICE)"""


def set_parameter(source: str, name: str, value: str, comment: str = "") -> str:
    """The parameters cell `source` with `NAME = value  # comment`, replacing the line that assigns NAME or
    appending one."""
    line = f"{name} = {value}" + (f"  # {comment}" if comment else "")
    pattern = re.compile(rf"^{re.escape(name)}\s*=.*$", re.MULTILINE)
    if pattern.search(source):
        return pattern.sub(lambda _: line, source, count=1)
    return source.rstrip("\n") + "\n" + line


def kernel_notebook(code_slug: str, weights_slug: str, source: Path | None = None) -> nbformat.NotebookNode:
    """The submission notebook for Kaggle: install, parameters (Kaggle's values), the first check, then 05.

    The install takes exactly the code dataset's requirements.txt (`--no-deps`: everything else comes from
    Kaggle's image, whose distribution names need not match ours, e.g. opencv-python for cv2), then
    `check_environment` says where each package came from and which image modules differ from the bundle's.
    """
    source = source or PROJECT_ROOT / "notebooks" / f"{SUBMISSION_NOTEBOOK}.ipynb"
    nb = nbformat.read(source, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{source}: no cell tagged `parameters`")
    i = tagged[0]
    params = nb.cells[i]
    for name, (value, comment) in KERNEL_PARAMETERS.items():
        params.source = set_parameter(params.source, name, value, comment)
    params.source = set_parameter(
        params.source, "WEIGHTS", repr(weights_slug), "the attached weights dataset"
    )
    install = nbformat.v4.new_code_cell(_INSTALL.format(code_slug=code_slug))
    check = nbformat.v4.new_code_cell(_PREFLIGHT)
    nb.cells = nb.cells[:i] + [install, params, check] + nb.cells[i + 1 :]
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return nb

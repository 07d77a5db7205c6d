"""Committed notebooks are clean front ends: no outputs, no execution counts, one `parameters` cell first."""

import re

import nbformat
import pytest

from lumbar.core.paths import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebook under {PROJECT_ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs or execution counts (clear them)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_code_cell_is_the_only_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: code cells tagged `parameters`: {tagged}; expected exactly the first"
    assignments = re.findall(r"^(\w+)\s*=", code[0].source, flags=re.MULTILINE)
    assert {"RUN_DIR", "DATA_DIR"} <= set(assignments), f"{path.name}: parameters lack RUN_DIR / DATA_DIR"
    lower = [name for name in assignments if not name.isupper()]
    assert not lower, f"{path.name}: parameters must be UPPER_CASE constants, found {lower}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_papermill_reads_every_parameter(path):
    """papermill's parser skips a line it cannot read (a quote in a comment, a multi-line value): that
    parameter then vanishes from `papermill --help-notebook` and from the pipeline's documentation."""
    from papermill.translators import PythonTranslator

    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assignments = re.findall(r"^(\w+)\s*=", cell.source, flags=re.MULTILINE)
    assert [p.name for p in PythonTranslator.inspect(cell)] == assignments

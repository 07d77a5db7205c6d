import json

import nbformat
import pytest

from lumbar.cli import main
from lumbar.manifest import read_manifest
from lumbar.pipeline import PipelineError, load_config, run_pipeline


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("RUN_DIR = ''\nDATA_DIR = ''\nVALUE = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def project(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(
        nbdir / "00_ok.ipynb",
        "import pathlib, json\npathlib.Path(RUN_DIR, f'value_{VALUE}.json').write_text(json.dumps(VALUE))",
    )
    _notebook(nbdir / "01_fail.ipynb", "x = 1\nraise ValueError(f'broken on purpose {VALUE}')")
    return tmp_path, nbdir


def _config(tmp_path, nbdir, steps):
    cfg = {"name": "t", "run_dir": str(tmp_path / "run"), "data_dir": str(tmp_path), "notebook_dir": str(nbdir),
           "parameters": {"VALUE": 2}, "notebooks": steps}  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def test_runs_notebooks_with_parameters_and_records_them(project):
    tmp_path, nbdir = project
    path = _config(
        tmp_path, nbdir, ["00_ok", {"notebook": "00_ok", "output": "00_ok_again", "parameters": {"VALUE": 5}}]
    )
    seconds = run_pipeline(load_config(path))
    assert set(seconds) == {"00_ok", "00_ok_again"}
    run = tmp_path / "run"
    assert json.loads((run / "value_2.json").read_text()) == 2 and (run / "value_5.json").is_file()
    executed = nbformat.read(run / "00_ok_again.ipynb", as_version=4)
    assert any("VALUE = 5" in c.source for c in executed.cells)
    assert read_manifest(run)["notebooks"]["00_ok"]["status"] == "ok"


def test_failing_notebook_stops_and_names_cell(project, capsys):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, ["01_fail", "00_ok"])
    with pytest.raises(PipelineError, match=r"01_fail.*cell .*ValueError: broken on purpose 2"):
        run_pipeline(load_config(path))
    assert not (tmp_path / "run" / "value_2.json").exists()  # stopped before the next notebook
    assert read_manifest(tmp_path / "run")["notebooks"]["01_fail"]["status"] == "failed"
    assert main(["pipeline", "--config", str(path)]) == 1
    assert "FAILED: notebook 01_fail" in capsys.readouterr().out


def test_from_and_only_select_steps(project):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, ["01_fail", "00_ok"])
    assert set(run_pipeline(load_config(path), only="00_ok")) == {"00_ok"}
    with pytest.raises(ValueError, match="matches no step"):
        run_pipeline(load_config(path), start="99")


def test_config_errors_are_named(project):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, ["00_missing"])
    with pytest.raises(ValueError, match="00_missing.ipynb does not exist"):
        load_config(path)
    path.write_text("name: x\nnotebooks: [00_ok]\ntypo_key: 1\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_config(path)


@pytest.mark.parametrize("name", ["demo", "full"])
def test_shipped_configs_name_real_notebook_parameters(name):
    """Every parameter a config passes must be one its notebook declares (a typo would be silently ignored)."""
    from lumbar.paths import PROJECT_ROOT

    config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml")
    for step in config.steps:
        nb = nbformat.read(config.notebook_dir / f"{step.notebook}.ipynb", as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        declared = {line.split("=")[0].strip() for line in params.source.splitlines() if "=" in line}
        assert set(step.parameters) <= declared, (step.output, set(step.parameters) - declared)
        assert {"RUN_DIR", "DATA_DIR"} <= declared

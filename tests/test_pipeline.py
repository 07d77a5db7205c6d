import json
import os

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


RENDEZVOUS = """import json, os, pathlib, time
run = pathlib.Path(RUN_DIR)
(run / f"here_{VALUE}").write_text(os.environ.get("OMP_NUM_THREADS", ""))
deadline = time.time() + 120
while not (run / f"here_{3 - VALUE}").exists():  # the other notebook of the group (VALUE 1 <-> 2)
    assert time.time() < deadline, "the other notebook never ran beside this one"
    time.sleep(0.2)
"""


def test_parallel_group_runs_side_by_side_with_shared_cores(project, monkeypatch):
    tmp_path, nbdir = project
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _notebook(nbdir / "02_meet.ipynb", RENDEZVOUS)
    group = {"parallel": [{"notebook": "02_meet", "output": "meet_1", "parameters": {"VALUE": 1}},
                          {"notebook": "02_meet", "output": "meet_2", "parameters": {"VALUE": 2}}]}
    path = _config(tmp_path, nbdir, ["00_ok", group])
    config = load_config(path)
    assert [s.group for s in config.steps] == [0, 1, 1]
    seconds = run_pipeline(config, jobs=2)  # sequentially the first notebook would wait for the second forever
    assert set(seconds) == {"00_ok", "meet_1", "meet_2"}
    run = tmp_path / "run"
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert (run / "here_1").read_text() == (run / "here_2").read_text() == threads
    manifest = read_manifest(run)
    assert {k: v["status"] for k, v in manifest["notebooks"].items()} == {"00_ok": "ok", "meet_1": "ok", "meet_2": "ok"}
    assert manifest["pipeline"]["jobs"] == 2


def test_failure_in_a_parallel_group_is_raised_after_the_group(project):
    tmp_path, nbdir = project
    group = {"parallel": ["01_fail", {"notebook": "00_ok", "parameters": {"VALUE": 7}}]}
    path = _config(tmp_path, nbdir, [group, {"notebook": "00_ok", "output": "after"}])
    with pytest.raises(PipelineError, match=r"notebook 01_fail .*ValueError: broken on purpose 2"):
        run_pipeline(load_config(path), jobs=2)
    run = tmp_path / "run"
    assert (run / "value_7.json").is_file() and not (run / "after.ipynb").exists()
    assert {k: v["status"] for k, v in read_manifest(run)["notebooks"].items()} == {"01_fail": "failed", "00_ok": "ok"}


@pytest.mark.parametrize("entry, match", [({"parallel": []}, "non-empty list"),
                                          ({"parallel": ["00_ok"], "output": "x"}, "non-empty list"),
                                          ({"parallel": [{"notebook": "00_ok", "typo": 1}]}, r"parallel\[0\]")])
def test_parallel_config_errors_are_named(project, entry, match):
    tmp_path, nbdir = project
    with pytest.raises(ValueError, match=match):
        load_config(_config(tmp_path, nbdir, [entry]))


def _write_items(run_dir, prefix, n):
    from lumbar.manifest import update_manifest

    for i in range(n):
        update_manifest(run_dir, "items", i, item=f"{prefix}{i}")


def test_concurrent_manifest_updates_keep_every_entry(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_items, args=(tmp_path, p, 25)) for p in "abc"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert len(read_manifest(tmp_path)["items"]) == 75
    assert not list(tmp_path.glob(".*.tmp*"))


def test_command_line_parameters_win_over_the_config(project):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, [{"notebook": "00_ok", "parameters": {"VALUE": 5}}])
    assert load_config(path).steps[0].parameters["VALUE"] == 5
    assert load_config(path, {"VALUE": 9}).steps[0].parameters["VALUE"] == 9
    assert main(["pipeline", "--config", str(path), "--set", "VALUE=9"]) == 0
    assert (tmp_path / "run" / "value_9.json").is_file() and not (tmp_path / "run" / "value_5.json").exists()

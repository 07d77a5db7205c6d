import json
import shlex

import nbformat
import pytest

from lumbar.cli import build_parser, main
from lumbar.core.manifest import read_manifest
from lumbar.core.paths import PROJECT_ROOT, SYNTHETIC_MARKER, data_root, default_input_dir
from lumbar.core.processes import available_cores
from lumbar.pipeline import PipelineError, check_data_kind, load_config, plan_steps, run_pipeline
from lumbar.pipeline.command import _parse_overrides
from lumbar.pipeline.config import spread_parameters


def _notebook(path, body, params="VALUE = 1"):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(f"RUN_DIR = ''\nDATA_DIR = ''\n{params}")
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


def _config(tmp_path, nbdir, steps, **keys):
    cfg = {"name": "t", "run_dir": str(tmp_path / "run"), "data_dir": str(tmp_path), "notebook_dir": str(nbdir),
           "parameters": {"VALUE": 2}, "notebooks": steps, **keys}  # fmt: skip
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
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lumbar pipeline: error: notebook 01_fail (01_fail.ipynb) failed")
    assert "broken on purpose 2; executed copy:" in err[0]


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
def test_shipped_configs_pass_the_parameter_check(name):
    """load_config checks every parameter against the real notebooks; it raises on a typo or a wrong type."""
    config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml")
    assert all(set(s.parameters) <= set(s.declared) for s in config.steps)
    assert all({"RUN_DIR", "DATA_DIR"} <= set(s.declared) for s in config.steps)
    assert any(s.parameters for s in config.steps)


def _readme_dry_run() -> list[str]:
    """The README's CPU dry run of configs/full.yaml, as arguments of `lumbar.cli.main`."""
    text = (PROJECT_ROOT / "README.md").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if "configs/full.yaml" in ln and "--allow-synthetic" in ln)
    return shlex.split(line.split("-m lumbar", 1)[1])


def test_readme_dry_run_passes_the_checks_and_reads_the_demo_data():
    args = build_parser().parse_args(_readme_dry_run())
    demo = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    assert args.allow_synthetic and PROJECT_ROOT / args.data_dir == demo.data_dir
    steps = plan_steps(load_config(PROJECT_ROOT / args.config), args.start, args.only, _parse_overrides(args.set))
    params = {s.output: s.parameters for s in steps}
    assert params["03_train_timmseq_hgnetv2_b5"]["EPOCHS"] == params["02_train_localizer"]["EPOCHS"] == 1
    trained = [p for name, p in params.items() if name.startswith(("02", "03"))]
    assert len(trained) == 5 and all(p["PRETRAINED"] == "none" for p in trained)  # random init: no download
    assert all("PRETRAINED" not in p for name, p in params.items() if not name.startswith(("02", "03")))
    full = {s.output: s.parameters for s in load_config(PROJECT_ROOT / args.config).steps}
    assert {p["PRETRAINED"] for name, p in full.items() if name.startswith(("02", "03"))} == {"imagenet"}
    assert params["05_submission"]["DEVICE"] == "cpu" and "EPOCHS" not in params["00_eda"]
    assert "DEVICE" not in params["04_ensemble"] and params["05_submission"]["OUT"] == "../runs/full/submission.csv"
    assert params["06_error_analysis"]["DEVICE"] == "cpu"  # --set reaches the error analysis's test-study viewer


@pytest.mark.parametrize("name", ["demo", "full"])
def test_shipped_configs_analyse_errors_after_the_submission(name):
    """06 reads only the run; placed after 05, an analysis that fails never costs the submission."""
    outputs = [s.output for s in load_config(PROJECT_ROOT / "configs" / f"{name}.yaml").steps]
    assert outputs[-2:] == ["05_submission", "06_error_analysis"]


def test_demo_data_folder_is_not_the_real_data_folder():
    demo = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    full = load_config(PROJECT_ROOT / "configs" / "full.yaml")
    assert demo.synthetic is not None and full.synthetic is None
    assert demo.data_dir not in (default_input_dir(), data_root(), full.data_dir)
    assert demo.data_dir.is_relative_to(PROJECT_ROOT / "input")  # git-ignored


def _data_folder(path, synthetic):
    path.mkdir()
    (path / "train.csv").write_text("study_id\n")
    if synthetic:
        (path / SYNTHETIC_MARKER).write_text("{}")
    return path


def test_a_real_data_config_refuses_synthetic_data_unless_allowed(project, capsys):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, ["00_ok"])
    data = _data_folder(tmp_path / "synthetic", synthetic=True)
    args = ["pipeline", "--config", str(path), "--data-dir", str(data)]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"lumbar pipeline: error: {path} is meant for the real data")
    assert f"{data} holds synthetic data" in err[0] and "--allow-synthetic" in err[0]
    assert not (tmp_path / "run").exists()  # no notebook ran, no manifest was written
    assert main([*args, "--allow-synthetic"]) == 0
    assert (tmp_path / "run" / "value_2.json").is_file()
    assert read_manifest(tmp_path / "run")["pipeline"]["data_dir"] == str(data)
    check_data_kind(load_config(path, data_dir=_data_folder(tmp_path / "real", synthetic=False)))


def test_a_real_data_config_without_its_data_folder_stops_at_once(project, capsys):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, ["00_ok"])
    assert main(["pipeline", "--config", str(path), "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"its data folder {tmp_path / 'nowhere'} does not exist" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_synthetic_config_refuses_the_competition_data(project):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, ["00_ok"], synthetic={"studies": 2})
    real = load_config(path, data_dir=_data_folder(tmp_path / "real", synthetic=False))
    with pytest.raises(ValueError, match=r"is a synthetic-data config .* holds competition data \(train.csv, no"):
        run_pipeline(real, allow_synthetic=True)  # the flag opens synthetic data to real configs, not the reverse
    assert not (tmp_path / "run").exists()
    check_data_kind(load_config(path, data_dir=_data_folder(tmp_path / "synthetic", synthetic=True)))
    check_data_kind(load_config(path, data_dir=tmp_path / "empty"))  # nothing there yet: the demo writes it


def test_the_demo_never_writes_into_real_data(project, capsys):
    tmp_path, nbdir = project
    real = _data_folder(tmp_path / "real", synthetic=False)
    for keys, message in [({"synthetic": {"studies": 2}, "data_dir": str(real)}, "holds competition data"),
                          ({"data_dir": str(tmp_path / "empty")}, "runs only a synthetic-data config")]:
        assert main(["demo", "--config", str(_config(tmp_path, nbdir, ["00_ok"], **keys))]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("lumbar demo: error: ") and message in err[0]
    assert sorted(p.name for p in real.iterdir()) == ["train.csv"] and not (tmp_path / "empty").exists()


TYPES = "I = 20\nF = 0.5\nB = True\nS = 'x'\nL = [1]\nD = {}\nN = None\nX = len('ab')\nA: float = 1"


@pytest.fixture()
def typed(project):
    tmp_path, nbdir = project
    _notebook(nbdir / "02_types.ipynb", "pass", params=TYPES)
    return load_config(_config(tmp_path, nbdir, ["00_ok", "02_types"]))


@pytest.mark.parametrize("key, value, passed", [
    ("I", 3, 3), ("I", 3.0, 3), ("I", "3", 3), ("F", 3, 3.0), ("F", "1e-3", 0.001), ("B", False, False),
    ("B", 1, True), ("B", "yes", True), ("S", 3, "3"), ("S", None, ""), ("S", True, "True"), ("L", [2], [2]),
    ("L", "x,y", ["x", "y"]), ("D", {"a": 1}, {"a": 1}), ("D", "{a: 1}", {"a": 1}), ("N", [1], [1]),
    ("X", "y", "y"), ("A", 2, 2.0),  # the annotation (float), not the default literal (int)
])  # fmt: skip
def test_set_values_that_fit_the_declared_default(typed, key, value, passed):
    steps = plan_steps(typed, overrides={key: value})
    assert steps[1].parameters == {key: passed} and type(steps[1].parameters[key]) is type(passed)
    assert steps[0].parameters == {"VALUE": 2}  # 00_ok does not declare it: not passed there


@pytest.mark.parametrize("key, value, kind", [
    ("I", "abc", "int"), ("I", 2.5, "int"), ("I", True, "int"), ("F", "abc", "float"), ("F", True, "float"),
    ("B", 2, "bool"), ("B", "maybe", "bool"), ("S", [1], "str"), ("S", {"a": 1}, "str"),
    ("L", {"a": 1}, "list"), ("D", [1], "dict"), ("D", "x", "dict"), ("A", "x", "float"),
])  # fmt: skip
def test_set_values_that_do_not_fit_name_notebook_and_type(typed, key, value, kind):
    with pytest.raises(ValueError, match=rf"^--set: {key}=.* does not fit the {kind} default of 02_types.ipynb$"):
        plan_steps(typed, overrides={key: value})


def test_set_goes_only_to_the_selected_notebooks_that_declare_it(typed):
    steps = plan_steps(typed, overrides={"VALUE": 9, "I": 4})
    assert [s.parameters for s in steps] == [{"VALUE": 9}, {"I": 4}]
    with pytest.raises(ValueError, match=r"^--set \(02_types.ipynb\): unknown setting 'VALUE'$"):
        plan_steps(typed, only="02_types", overrides={"VALUE": 9})
    with pytest.raises(ValueError, match=r"unknown setting 'VALU'; did you mean 'VALUE'\?"):
        plan_steps(typed, overrides={"VALU": 9})
    with pytest.raises(ValueError, match=r"the pipeline sets DATA_DIR; use --data-dir"):
        plan_steps(typed, overrides={"DATA_DIR": "x"})
    with pytest.raises(ValueError, match=r"the pipeline sets RUN_DIR; use --run-dir \(or the config's `run_dir`\)"):
        spread_parameters(typed.steps, {"RUN_DIR": "x"}, "--set")


def test_a_bad_set_stops_before_any_notebook_with_one_line(project, capsys):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, ["00_ok"])
    for value, message in [("VALUE=abc", "--set: VALUE='abc' does not fit the int default of 00_ok.ipynb"),
                           ("VALU=3", "did you mean 'VALUE'?"), ("DATA_DIR=/x", "use --data-dir")]:
        assert main(["pipeline", "--config", str(path), "--set", value]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("lumbar pipeline: error: --set") and message in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("keys, match", [
    ({"notebooks": ["00_ok", {"notebook": "00_ok", "output": "b", "parameters": {"VALU": 5}}]},
     r"cfg.yaml: notebooks\[1\] \(00_ok.ipynb\): unknown setting 'VALU'; did you mean 'VALUE'\?"),
    ({"notebooks": [{"parallel": [{"notebook": "00_ok", "parameters": {"VALUE": "five"}}]}]},
     r"cfg.yaml: notebooks\[0\].parallel\[0\]: VALUE='five' does not fit the int default of 00_ok.ipynb"),
    ({"parameters": {"NOPE": 1}}, r"cfg.yaml: parameters \(00_ok.ipynb\): unknown setting 'NOPE'"),
    ({"parameters": {"DATA_DIR": "x"}}, r"cfg.yaml: parameters: the pipeline sets DATA_DIR"),
    ({"synthetic": [1]}, r"`synthetic` must map generator settings"),
])  # fmt: skip
def test_config_parameters_are_checked_against_the_notebooks(project, keys, match):
    tmp_path, nbdir = project
    with pytest.raises(ValueError, match=match):
        load_config(_config(tmp_path, nbdir, keys.pop("notebooks", ["00_ok"]), **keys))


def test_top_level_parameters_yield_to_the_steps_own(typed):
    assert [s.parameters for s in typed.steps] == [{"VALUE": 2}, {}]  # 02_types does not declare VALUE


RENDEZVOUS = """import json, os, pathlib, time
run = pathlib.Path(RUN_DIR)
(run / f"here_{VALUE}").write_text(os.environ.get("OMP_NUM_THREADS", ""))
deadline = time.time() + 300  # a hang guard, not a speed claim: sequential runs would wait here forever
while not (run / f"here_{3 - VALUE}").exists():  # the other notebook of the group (VALUE 1 <-> 2)
    assert time.time() < deadline, "the other notebook never ran beside this one (hang guard, 300 s)"
    time.sleep(0.2)
"""


@pytest.mark.slow
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
    threads = str(max(1, available_cores() // 2))
    assert (run / "here_1").read_text() == (run / "here_2").read_text() == threads
    manifest = read_manifest(run)
    assert {k: v["status"] for k, v in manifest["notebooks"].items()} == {"00_ok": "ok", "meet_1": "ok", "meet_2": "ok"}
    assert manifest["pipeline"]["jobs"] == 2


@pytest.mark.slow
def test_jobs_follow_the_cores_unless_the_config_pins_them(project, monkeypatch):
    import lumbar.core.processes

    tmp_path, nbdir = project
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(lumbar.core.processes, "available_cores", lambda: 8)  # an 8-core laptop
    _notebook(nbdir / "02_meet.ipynb", RENDEZVOUS)
    group = {"parallel": [{"notebook": "02_meet", "output": "meet_1", "parameters": {"VALUE": 1}},
                          {"notebook": "02_meet", "output": "meet_2", "parameters": {"VALUE": 2}}]}
    config = load_config(_config(tmp_path, nbdir, [group]))  # no `jobs`: auto
    assert config.jobs == 0 and load_config(_config(tmp_path, nbdir, [group], jobs="auto")).jobs == 0
    run_pipeline(config)  # both at once (else the rendezvous would wait forever), 8 // 2 threads each
    assert (tmp_path / "run" / "here_1").read_text() == (tmp_path / "run" / "here_2").read_text() == "4"
    assert read_manifest(tmp_path / "run")["pipeline"]["jobs"] == "auto"
    assert load_config(_config(tmp_path, nbdir, [group], jobs=3)).jobs == 3
    with pytest.raises(ValueError, match="jobs must be `auto` or a whole number"):
        load_config(_config(tmp_path, nbdir, [group], jobs="many"))


@pytest.mark.slow
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
    from lumbar.core.manifest import update_manifest

    for i in range(n):
        update_manifest(run_dir, "items", i, item=f"{prefix}{i}")


@pytest.mark.slow
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


@pytest.mark.slow
def test_command_line_parameters_win_over_the_config(project):
    tmp_path, nbdir = project
    path = _config(tmp_path, nbdir, [{"notebook": "00_ok", "parameters": {"VALUE": 5}}])
    assert load_config(path).steps[0].parameters["VALUE"] == 5
    assert plan_steps(load_config(path), overrides={"VALUE": 9})[0].parameters["VALUE"] == 9
    assert main(["pipeline", "--config", str(path), "--set", "VALUE=9"]) == 0
    assert (tmp_path / "run" / "value_9.json").is_file() and not (tmp_path / "run" / "value_5.json").exists()


def test_set_merges_into_a_steps_extra_and_a_lower_case_setting_reaches_its_field():
    config = load_config(PROJECT_ROOT / "configs" / "full.yaml")
    for overrides in ({"EXTRA": {"keep_last": True}}, {"keep_last": True}):  # the same setting, merged alike
        extra = plan_steps(config, only="03_train_timm25d", overrides=overrides)[0].parameters["EXTRA"]
        assert extra["keep_last"] is True and extra["ema_decay"] == 0.99
        assert extra["views"] == ["axial_canal", "parasagittal_recess"]
    steps = {s.output: s.parameters for s in plan_steps(config, overrides={"lr": 0.1})}
    assert steps["02_train_localizer"]["EXTRA"]["lr"] == 0.1  # no LR parameter in 02: its EXTRA
    classifier = steps["03_train_timm25d_resnet34"]
    assert classifier["LR"] == 0.1 and "lr" not in classifier["EXTRA"]  # 03 has LR: the parameter
    with pytest.raises(ValueError, match="did you mean 'EPOCHS'"):
        plan_steps(config, overrides={"EPOCH": 1})  # a typo of a parameter is still named as before
    with pytest.raises(ValueError, match="'EMA_DECAY' is no notebook parameter; set it as 03_train: ema_dec"):
        plan_steps(config, overrides={"EMA_DECAY": 1})


def test_fresh_reaches_every_step_that_trains(monkeypatch):
    from lumbar.pipeline import command

    seen = {}
    monkeypatch.setattr(command, "run_pipeline", lambda config, start, only, jobs, overrides, allow_synthetic:
                        seen.update(overrides=overrides) or {})
    assert main(["pipeline", "--config", str(PROJECT_ROOT / "configs" / "demo.yaml"), "--fresh"]) == 0
    steps = plan_steps(load_config(PROJECT_ROOT / "configs" / "demo.yaml"), overrides=seen["overrides"])
    fresh = {s.output for s in steps if s.parameters.get("FRESH") is True}
    assert {s.output for s in steps if s.notebook in ("02_train_localizer", "03_train")} == fresh and fresh


@pytest.mark.parametrize("gpus, devices, jobs, pinned", [
    (2, ["cuda"] * 4, 2, (0, 1)),      # four architectures on two GPUs: two at a time, one per GPU
    (1, ["auto"] * 4, 1, (0,)),        # one GPU: in turn
    (4, ["cuda"] * 4, 4, (0, 1, 2, 3)),
    (0, ["auto"] * 4, 2, ()),          # no GPU: by the cores (2 here)
    (2, ["cpu"] * 4, 2, ()),           # a CPU dry run on a GPU machine
    (2, ["cuda:0", "cuda:1"], 2, ()),  # devices placed by the config: not pinned again
])  # fmt: skip
def test_a_parallel_group_of_gpu_notebooks_runs_one_per_gpu(gpus, devices, jobs, pinned, monkeypatch):
    import lumbar.core.processes
    from lumbar.pipeline import Step, group_plan

    monkeypatch.setattr(lumbar.core.processes, "available_cores", lambda: 2)
    group = [Step("03_train", f"03_{i}", {"DEVICE": d}, declared={"DEVICE": str}) for i, d in enumerate(devices)]
    plan = group_plan(group, gpus=gpus)
    assert (plan.jobs, plan.gpus) == (jobs, pinned)


def test_a_notebook_opened_by_hand_takes_the_settings_of_a_config_or_a_run(tmp_path, capsys):
    from lumbar.pipeline import step_settings

    with pytest.raises(ValueError, match=r"03_train opened by hand: choose its settings in the first cell: CONFIG"):
        step_settings("03_train", "")
    full = step_settings("03_train", "full", "03_train_timm25d_resnet34")
    assert full["ARCH"] == "timm25d:resnet34.a1_in1k" and full["PRETRAINED"] == "imagenet"
    assert full["RUN_DIR"] == str(PROJECT_ROOT / "runs" / "full") and full["EXTRA"]["fusion"] == "late"
    assert step_settings("03_train", "full")["ARCH"] == "timmseq:convnext_small.fb_in22k"  # the first step
    assert "others: 03_train_timmseq_efficientnetv2_s" in capsys.readouterr().out
    run = tmp_path / "run"  # a run folder: the parameters its executed copy ran with (papermill's injected cell)
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell("# Parameters\nEPOCHS = 3\nEXTRA = {'lr': 0.5}\nRUN_DIR = '/x/run'\n")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells = [nbformat.v4.new_code_cell("EPOCHS = 10"), injected]
    nbformat.write(nb, run / "03_train_cnn3d.ipynb")
    assert step_settings("03_train", str(run)) == {"EPOCHS": 3, "EXTRA": {"lr": 0.5}, "RUN_DIR": "/x/run"}


@pytest.mark.slow
def test_eda_opened_by_hand_with_a_config_writes_into_that_configs_run(synthetic_dir, tmp_path):
    import papermill as pm
    import yaml

    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"name": "mine", "run_dir": str(tmp_path / "run"), "data_dir": str(synthetic_dir),
                                      "synthetic": {}, "notebooks": [{"notebook": "00_eda",
                                                                       "parameters": {"MAX_EXAMPLE_STUDIES": 1}}]}))
    pm.execute_notebook(str(PROJECT_ROOT / "notebooks" / "00_eda.ipynb"), str(tmp_path / "by_hand.ipynb"),
                        parameters={"CONFIG": str(config)}, kernel_name="python3", progress_bar=False,
                        cwd=str(PROJECT_ROOT / "notebooks"))  # fmt: skip
    assert json.loads((tmp_path / "run" / "eda" / "summary.json").read_text())
    with pytest.raises(Exception, match="opened by hand: choose its settings"):  # nothing chosen: no silent demo
        pm.execute_notebook(str(PROJECT_ROOT / "notebooks" / "00_eda.ipynb"), str(tmp_path / "none.ipynb"),
                            kernel_name="python3", progress_bar=False, cwd=str(PROJECT_ROOT / "notebooks"))

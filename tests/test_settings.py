"""One settings dialect: one precedence in every command (defaults < YAML config < flags < `--set`), one
casting rule for typed fields and notebook parameters, and one name per step setting."""

from __future__ import annotations

import ast
import inspect
import json

import nbformat
import pytest
import yaml

from lumbar.cli import main
from lumbar.core.paths import PROJECT_ROOT
from lumbar.core.settings import merge_layers
from lumbar.localize.config import LocalizerConfig
from lumbar.pipeline import TYPED_STEPS, load_config, plan_steps
from lumbar.pipeline.config import notebook_parameters
from lumbar.preprocess.config import RoiConfig
from lumbar.train.config import make_config
from lumbar.train.member import member_overrides

NOTEBOOKS = PROJECT_ROOT / "notebooks"


class _Stop(Exception):
    """Raised by a stand-in for the work a command would do, once its settings are seen."""


def _capture(monkeypatch, module, name):
    """Replace `module.name` by a stand-in that records its arguments and stops the command."""
    seen = {}

    def stand_in(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise _Stop

    monkeypatch.setattr(module, name, stand_in)
    return seen


# ---------------------------------------------------------------------------------------------- precedence
def test_train_set_beats_its_flag_and_the_flag_beats_the_yaml(monkeypatch, tmp_path):
    import lumbar.train.command

    seen = _capture(monkeypatch, lumbar.train.command, "train")
    config = tmp_path / "train.yaml"
    config.write_text("train: {epochs: 3, lr: 0.1, batch_size: 4}\n")
    with pytest.raises(_Stop):
        main(["train", "--config", str(config), "--epochs", "5", "--lr", "0.2", "--set", "epochs=7"])
    resolved = seen["args"][0]
    assert resolved.epochs == 7  # --set over the flag
    assert resolved.lr == 0.2  # the flag over the YAML
    assert resolved.batch_size == 4  # the YAML over the default
    assert resolved.weight_decay == make_config().weight_decay


def test_train_localizer_set_beats_its_flag_and_the_flag_beats_the_default(monkeypatch, tmp_path):
    import lumbar.localize.train

    seen = _capture(monkeypatch, lumbar.localize.train, "train_localizer")
    argv = ["train-localizer", "--coords", "c.csv", "--run", str(tmp_path), "--epochs", "5", "--size", "64"]
    with pytest.raises(_Stop):
        main([*argv, "--set", "epochs=7", "--set", "slices=4"])
    resolved = seen["args"][0]
    assert (resolved.epochs, resolved.size, resolved.slices) == (7, 64, 4)
    assert resolved.batch_size == LocalizerConfig().batch_size


def test_preprocess_set_beats_its_flag_and_the_flag_beats_the_default(monkeypatch, tmp_path):
    import lumbar.preprocess.cache

    monkeypatch.setattr(lumbar.preprocess.cache, "load_coordinates", lambda path: None)
    seen = _capture(monkeypatch, lumbar.preprocess.cache, "build_cache")
    argv = ["preprocess", "--coords", "c.csv", "--out", str(tmp_path), "--size", "64", "--pad-px", "2"]
    with pytest.raises(_Stop):
        main([*argv, "--set", "size=96", "--set", "depth=9"])
    resolved = seen["args"][4]
    assert (resolved.size, resolved.pad_px, resolved.depth) == (96, 2, 9)
    assert resolved.before == RoiConfig().before


def test_pipeline_set_beats_its_flag_and_the_flag_beats_the_config(monkeypatch, tmp_path):
    import lumbar.pipeline.command

    seen = _capture(monkeypatch, lumbar.pipeline.command, "run_pipeline")
    demo = str(PROJECT_ROOT / "configs" / "demo.yaml")
    with pytest.raises(_Stop):
        main(["pipeline", "--config", demo, "--fresh", "--set", "FRESH=false", "--data-dir", str(tmp_path),
              "--jobs", "1", "--set", "EPOCHS=2"])
    config, _start, _only, jobs = seen["args"]
    assert seen["kwargs"]["overrides"] == {"FRESH": False, "EPOCHS": 2}  # --set over --fresh
    assert config.data_dir == tmp_path and jobs == 1  # --data-dir and --jobs over the config's
    steps = {s.output: s.parameters for s in plan_steps(config, overrides=seen["kwargs"]["overrides"])}
    assert steps["03_train_cnn3d"]["EPOCHS"] == 2 and steps["03_train_cnn3d"]["FRESH"] is False
    with pytest.raises(_Stop):
        main(["pipeline", "--config", demo, "--fresh"])
    assert seen["kwargs"]["overrides"] == {"FRESH": True}


def test_one_merge_later_layers_win_and_a_bag_merges_key_by_key():
    low, high = {"A": 1, "EXTRA": {"x": 1, "y": 1}, "D": {"p": 1}}, {"A": 2, "EXTRA": {"y": 2}, "D": {"q": 2}}
    assert merge_layers(low, None, high, bags=["EXTRA"]) == {"A": 2, "EXTRA": {"x": 1, "y": 2}, "D": {"q": 2}}


def test_each_layer_of_a_command_is_named_in_its_error(monkeypatch, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: abc\n")
    assert main(["train", "--config", str(config)]) == 2
    assert f"{config}: TrainConfig.epochs: expected int, got 'abc'" in capsys.readouterr().err
    assert main(["train", "--set", "epoch=3"]) == 2
    assert "--set: TrainConfig: unknown setting 'epoch'; did you mean 'epochs'?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- casting
@pytest.mark.parametrize("value", [3, 3.0, "3", "1e-3", 2.5, True, "abc", None, [3]])
def test_a_notebook_parameter_casts_as_its_field_does(value):
    """EPOCHS (an int parameter of 03) and `epochs` (an int field) accept and refuse the same values."""
    config = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    try:
        field = make_config({"epochs": value}).epochs
    except ValueError:
        with pytest.raises(ValueError, match=r"does not fit the int default of 02_train_localizer.ipynb"):
            plan_steps(config, overrides={"EPOCHS": value})
        return
    steps = plan_steps(config, only="03_train_cnn3d", overrides={"EPOCHS": value})
    assert steps[0].parameters["EPOCHS"] == field and type(field) is int


def test_a_float_takes_the_string_pyyaml_makes_of_1e_3():
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"
    config = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    assert plan_steps(config, only="03_train_cnn3d", overrides={"LR": "1e-3"})[0].parameters["LR"] == 0.001
    assert make_config({"lr": "1e-3"}).lr == 0.001 and LocalizerConfig.from_overrides(lr="1e-3").lr == 0.001


# ---------------------------------------------------------------------------------------------- one name
def _pipeline_config(tmp_path, steps) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({"name": "t", "run_dir": str(tmp_path / "run"), "data_dir": str(tmp_path),
                                "notebooks": steps}))
    return str(path)


def test_a_field_with_its_own_parameter_inside_extra_is_refused_naming_the_parameter(tmp_path, capsys):
    def load(notebook, extra):
        step = {"notebook": notebook, "parameters": {"EXTRA": extra}}
        return load_config(_pipeline_config(tmp_path, [step]))

    with pytest.raises(ValueError) as info:
        load("02_train_localizer", {"epochs": 3})
    assert str(info.value) == (
        f"{tmp_path / 'cfg.yaml'}: notebooks[0]: EXTRA={{epochs: ...}}: 02_train_localizer.ipynb has the "
        "parameter EPOCHS for epochs; give EPOCHS: 3 (or epochs: 3) instead")
    demo = str(PROJECT_ROOT / "configs" / "demo.yaml")
    assert main(["pipeline", "--config", demo, "--plan", "--set", "EXTRA={epochs: 3}"]) == 2
    err = capsys.readouterr().err
    assert "--set: EXTRA={epochs: ...}: 02_train_localizer.ipynb has the parameter EPOCHS" in err
    for extra, param in [({"arch": "cnn3d"}, "ARCH"), ({"batch_size": 8}, "BATCH_SIZE"), ({"lr": 1}, "LR")]:
        with pytest.raises(ValueError, match=f"has the parameter {param} for"):
            load("03_train", extra)
    with pytest.raises(ValueError, match="01_preprocess.ipynb has the parameter SIZE for size"):
        load("01_preprocess", {"size": 8})


def test_a_lower_case_field_reaches_its_parameter_or_extra(tmp_path):
    steps = [{"notebook": "02_train_localizer", "parameters": {"epochs": 3, "lr": 0.01}},
             {"notebook": "03_train", "parameters": {"epochs": 4, "lr": 0.02, "ema_decay": 0.9}}]
    localizer, train = load_config(_pipeline_config(tmp_path, steps)).steps
    assert localizer.parameters == {"EPOCHS": 3, "EXTRA": {"lr": 0.01}}
    assert train.parameters == {"EPOCHS": 4, "LR": 0.02, "EXTRA": {"ema_decay": 0.9}}
    config = load_config(_pipeline_config(tmp_path, steps))
    planned = plan_steps(config, overrides={"epochs": 9, "ema_decay": 0.5})
    assert [s.parameters["EPOCHS"] for s in planned] == [9, 9]
    assert planned[1].parameters["EXTRA"]["ema_decay"] == 0.5


@pytest.mark.parametrize("parameters, match", [
    ({"EPOCHS": 3, "epochs": 4}, "EPOCHS and epochs both set EPOCHS of 03_train.ipynb; give one"),
    ({"EXTRA": {"ema_decay": 0.9}, "ema_decay": 0.8}, "EXTRA and ema_decay both set EXTRA.ema_decay"),
    ({"resume": False}, r"03_train.ipynb makes resume from FRESH \(resume = not FRESH\); set that"),
    ({"EXTRA": {"out": "x"}}, r"EXTRA=\{out: ...\}: 03_train.ipynb makes out from NAME"),
    ({"EXTRA": {"ema_decai": 0.9}}, r"\(03_train.ipynb EXTRA\): unknown setting 'ema_decai'; did you mean"),
    ({"ema_decay": "abc"}, r"03_train.ipynb EXTRA.ema_decay: expected float, got 'abc'"),
])
def test_a_step_setting_has_one_name_and_a_checked_value(tmp_path, parameters, match):
    with pytest.raises(ValueError, match=match):
        load_config(_pipeline_config(tmp_path, [{"notebook": "03_train", "parameters": parameters}]))


@pytest.mark.parametrize("name", ["demo", "full"])
def test_shipped_configs_write_each_setting_by_its_own_name(name):
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / f"{name}.yaml").read_text())
    entries = [e["parallel"] if isinstance(e, dict) and "parallel" in e else [e] for e in raw["notebooks"]]
    steps = [step for entry in entries for step in entry if isinstance(step, dict)]
    assert all("EXTRA" not in (step.get("parameters") or {}) for step in steps) and len(steps) > 4


@pytest.mark.parametrize("notebook", sorted(TYPED_STEPS))
def test_the_typed_steps_table_follows_the_notebooks_code(notebook):
    """Every `field=PARAMETER` the notebook passes to its typed config is in `own` (or `wired`), and each
    `own` entry is passed so: a parameter added to a notebook cannot leave a second spelling through EXTRA."""
    typed, declared = TYPED_STEPS[notebook], notebook_parameters(NOTEBOOKS / f"{notebook}.ipynb")
    cells = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4).cells
    source = next(c.source for c in cells if c.cell_type == "code" and "**EXTRA" in c.source)
    passed = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            named = [(k.arg, k.value) for k in node.keywords if k.arg]
            if getattr(node.func, "id", "") == "member_overrides":  # positional: run_dir, arch, name
                named += list(zip(inspect.signature(member_overrides).parameters, node.args))
            passed |= {k: v.id for k, v in named if isinstance(v, ast.Name) and v.id in declared}
    aliases = {"crops": "train_crops", "name": "out"}  # member_overrides' names of the fields
    passed = {aliases.get(k, k): v for k, v in passed.items()}
    fields = typed.fields()
    assert {k: v for k, v in passed.items() if k in fields and k not in typed.wired} == typed.own
    assert set(typed.own.values()) <= set(declared) and set(typed.own) | set(typed.wired) <= set(fields)

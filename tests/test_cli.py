"""`python -m lumbar`: bad input ends with one line on stderr, and `--set` reads the same in every command."""

import argparse

import pytest

from lumbar.cli import build_parser, main
from lumbar.core.settings import parse_assignments


def _one_error_line(capsys, command):
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"lumbar {command}: error: "), err
    return err[0]


def test_predict_on_an_empty_folder_is_one_line(tmp_path, capsys):
    """The data folder is checked before the run is read: an empty test folder says so, whatever the run."""
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["predict", "--data-dir", str(empty), "--split", "test", "--run", str(tmp_path / "run"),
            "--out", str(tmp_path / "x.csv")]  # fmt: skip
    assert main(argv) == 2
    assert "neither test_series_descriptions.csv nor test_images/ lists any study" in _one_error_line(capsys, "predict")
    assert not (tmp_path / "x.csv").exists()
    assert main([*argv[:2], str(tmp_path / "missing"), *argv[3:]]) == 2
    assert f"data folder {tmp_path / 'missing'} does not exist" in _one_error_line(capsys, "predict")
    (empty / "test_images" / "7").mkdir(parents=True)  # a study, but no run to predict it with
    assert main(argv) == 2
    assert "manifest.json has no ensemble" in _one_error_line(capsys, "predict")


def test_validate_submission_against_an_empty_folder_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    sub = tmp_path / "sub.csv"
    sub.write_text("row_id,normal_mild,moderate,severe\n")
    assert main(["validate-submission", str(sub), "--data-dir", str(empty)]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "lists any study" in err[0], err


def test_lumbar_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LUMBAR_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["predict", "--data-dir", str(tmp_path / "missing"), "--run", str(tmp_path), "--out", "x.csv"])


def test_a_malformed_table_is_one_line(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("study_id\n1\n2\n")
    assert main(["score", "--labels", str(labels), "--baseline", "uniform"]) == 2
    assert "labels.csv, line 1: missing column(s)" in _one_error_line(capsys, "score")


def _set_actions() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: a for name, p in sub.choices.items() for a in p._actions if a.dest == "set"}


def test_set_is_one_repeatable_option_in_every_command_that_has_it():
    actions = _set_actions()
    assert set(actions) == {"train-localizer", "preprocess", "train", "pipeline"}
    assert all(isinstance(a, argparse._AppendAction) and a.metavar == "KEY=VALUE" for a in actions.values())
    required = {"train-localizer": ["--coords", "c", "--run", "r"], "preprocess": ["--coords", "c", "--out", "o"],
                "train": [], "pipeline": ["--config", "c"]}  # fmt: skip
    for command, argv in required.items():
        args = build_parser().parse_args([command, *argv, "--set", "a=1", "--set", "b=x=y"])
        assert parse_assignments(args.set) == {"a": "1", "b": "x=y"}, command


def test_train_localizer_keeps_every_set(tmp_path, capsys):
    argv = ["train-localizer", "--coords", "c.csv", "--run", str(tmp_path), "--set", "epochs=1", "--set", "sizes=3"]
    assert main(argv) == 2  # the second --set is read (it used to replace the first) and is a typo
    assert "LocalizerConfig: unknown setting 'sizes'; did you mean 'size'?" in _one_error_line(capsys, "train-localizer")

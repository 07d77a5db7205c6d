"""The run contract (`lumbar.core.run_contract`): each manifest section as a dataclass that gives back
exactly the JSON it was read from, one clear error for what a run lacks, the Kaggle bundle's files from the
records."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from lumbar.core.atomic import write_json
from lumbar.core.manifest import MANIFEST_NAME, read_manifest, update_manifest
from lumbar.core.run_contract import (
    ClassifierRecord,
    LocalizerModelRecord,
    LocalizerRecord,
    ManifestError,
    NotebookRecord,
    Record,
    RunManifest,
    save_record,
)
from lumbar.ensemble.runs import run_oof_predictions
from lumbar.inference.predict import ensemble_members
from lumbar.kaggle.bundle import _write_weights, inference_manifest, inference_run, referenced_files
from lumbar.kaggle.layout import RUN_FOLDER
from lumbar.kaggle.preflight import check_run
from lumbar.localize.predict import Localizer, localizer_members

#: A run's manifest as the writers left it (01 to 06, a localizer per fold, two classifiers on both crop
#: caches, the ensemble, label-noise flags, the pipeline's records), with every section the contract knows.
EVERY_SECTION = Path(__file__).parent / "data" / "manifest_every_section.json"


def _every_section() -> dict:
    return json.loads(EVERY_SECTION.read_text())


def _records(value) -> list[Record]:
    """Every record inside a value (nested sections, name -> record maps), itself included."""
    if isinstance(value, dict):
        return [r for v in value.values() for r in _records(v)]
    if not isinstance(value, Record):
        return []
    return [value, *(r for name in value.json_fields() for r in _records(getattr(value, name)))]


PATTERN = r"\.(pt|pth|json|csv|parquet|yaml)$"


def _pattern_files(manifest: dict) -> list[str]:
    """What the bundle shipped before the contract: every relative path in the manifest (the pipeline's
    records aside) with the extension of a checkpoint or a table: runs bundled before and after hold these."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and not os.path.isabs(x) and re.search(PATTERN, x):
            found.append(x)

    walk({k: v for k, v in manifest.items() if k not in ("notebooks", "pipeline")})
    return sorted(set(found))


def test_a_manifest_with_every_section_round_trips_unchanged():
    data = _every_section()
    manifest = RunManifest.from_dict(data, "runs/x")
    assert json.dumps(manifest.to_dict()) == json.dumps(data)  # the same keys, in the same order, same values
    assert list(data) == list(manifest.json_fields())  # all the contract's sections, in the pipeline's order
    unknown = {r._where: r.extra for r in _records(manifest) if r.extra}
    assert not unknown, f"keys the writers write that the contract does not declare: {unknown}"
    assert isinstance(manifest.localizer.folds["fold2"].models["sag_t1_slices"], LocalizerModelRecord)
    assert manifest.localizer.kind == LocalizerRecord.FOLDS
    assert manifest.localizer.members()["fold1"].fold == 1
    assert manifest.classifiers["cnn3d"].checkpoints["spinal"]["0"] == "cnn3d/spinal/fold0/final.pt"
    assert manifest.notebooks["06_error_analysis"].status == NotebookRecord.FAILED
    assert RunManifest.from_dict(manifest.to_dict()) == manifest  # and the records compare by their content


def test_keys_the_contract_does_not_know_stay_where_they_were():
    """A run written by a later version (or by hand) loads and saves without losing anything."""
    data = _every_section()
    data = {"future_section": {"a": [1, 2]}, **data}
    data["classifiers"]["cnn3d"] = {"calibrated": True, **data["classifiers"]["cnn3d"]}
    data["localizer"]["folds"]["fold1"]["models"]["axial"]["flops"] = None
    manifest = RunManifest.from_dict(data)
    assert manifest.extra == {"future_section": {"a": [1, 2]}} and manifest.classifiers["cnn3d"].extra
    assert json.dumps(manifest.to_dict()) == json.dumps(data)


def test_a_manifest_written_before_later_keys_comes_back_without_them():
    """No precision, no axial anchors (`foramina_offset_mm`, `foramina_halfspan_mm`), no candidates: nothing
    added, not even null."""
    old = {
        "preprocess": {"cache": "cache/gt"},
        "localizer": {"kind": LocalizerRecord.ONE, "backbone": "resnet18", "config": {"size": 96},
                      "models": {"sag_t2": {"checkpoint": "localizer/sag_t2.pt", "kind": "heatmap"}},
                      "skipped": {}, "problems": [], "seconds": 3.0},
        "classifiers": {"cnn3d": {"path": "cnn3d", "mode": "competition", "oof": "cnn3d/oof.csv",
                                  "oof_score": None, "checkpoints": {"spinal": {"0": "cnn3d/spinal/fold0/final.pt"}}}},
        "ensemble": {"models": ["cnn3d"], "params": "ensemble/params.json", "oof": "ensemble/oof.csv",
                     "chosen": "cnn3d"},
    }
    manifest = RunManifest.from_dict(old)
    assert json.dumps(manifest.to_dict()) == json.dumps(old)
    assert manifest.localizer.members() == {LocalizerRecord.ALL: manifest.localizer}
    assert manifest.files() == ["cnn3d/oof.csv", "cnn3d/spinal/fold0/final.pt", "ensemble/oof.csv",
                                "ensemble/params.json", "localizer/sag_t2.pt"]


def test_a_fresh_record_is_written_as_the_writers_wrote_it(tmp_path):
    """Keys in the writers' order; null only where a writer writes null (a thesis-mode classifier's score, the
    axial anchors a localizer could not measure), the rest left out."""
    thesis = ClassifierRecord(path="t", arch="cnn3d", mode="spinal", folds=[0], oof="t/oof.csv",
                              oof_score=None, precision="float32 (cpu)")
    save_record(tmp_path, thesis, item="t")
    written = read_manifest(tmp_path)["classifiers"]["t"]
    assert list(written) == ["path", "arch", "mode", "folds", "oof", "oof_score", "precision"]
    assert written["oof_score"] is None
    both = thesis.copy(oof_gt="t/oof_gt.csv")
    assert list(both.to_dict())[-2:] == ["oof_gt", "oof_score_gt"] and both.to_dict()["oof_score_gt"] is None
    one = LocalizerRecord(kind=LocalizerRecord.ONE, models={}, skipped={}, problems=[])
    assert one.to_dict() == {"kind": LocalizerRecord.ONE, "models": {}, "skipped": {}, "problems": [],
                             "foramina_offset_mm": None, "foramina_halfspan_mm": None}
    folds = LocalizerRecord(kind=LocalizerRecord.FOLDS, folds={}).to_dict()
    assert "foramina_offset_mm" not in folds and "foramina_halfspan_mm" not in folds
    with pytest.raises(ValueError, match="entry of a keyed section"):
        save_record(tmp_path, thesis)


def test_what_a_run_lacks_is_one_error_naming_the_run_the_section_and_the_step(tmp_path):
    run = tmp_path / "run"
    update_manifest(run, "preprocess", {"cache": "cache/gt"})
    manifest = RunManifest.read(run)
    path = f"{run}/{MANIFEST_NAME}"
    with pytest.raises(ManifestError, match=re.escape(f"{path} has no ensemble: run 04_ensemble")):
        _ = manifest.need.ensemble
    with pytest.raises(FileNotFoundError, match=r"has no trained localizer: run 02_train_localizer .*"):
        localizer_members(run)  # a FileNotFoundError, as the callers that catch a step not yet run expect
    with pytest.raises(KeyError, match=re.escape("has no classifier 'cnn3d': run 03_train first (it has [")):
        manifest.classifier("cnn3d")  # and a KeyError for those that look a name up
    with pytest.raises(FileNotFoundError, match="manifest.json has no ensemble"):
        run_oof_predictions(run)
    update_manifest(run, "ensemble", {"models": ["cnn3d"]})
    with pytest.raises(ManifestError, match=re.escape(f"{path}: ensemble has no 'params': run 04_ensemble")):
        ensemble_members(run, RunManifest.read(run))
    update_manifest(run, "classifiers", {"oof": "cnn3d/oof.csv"}, item="cnn3d")
    with pytest.raises(ManifestError, match=re.escape(f"{path}: classifiers['cnn3d'] has no 'path': run 03")):
        _ = RunManifest.read(run).classifier("cnn3d").need.path
    assert RunManifest.read(tmp_path / "nothing").is_empty() and not manifest.is_empty()


def test_the_bundle_ships_exactly_the_files_the_contract_lists(tiny_run, tmp_path):
    manifest = inference_run(tiny_run, RunManifest.read(tiny_run))
    _write_weights(tiny_run, manifest, tmp_path / "weights", "tester/lumbar-weights")
    run = tmp_path / "weights" / RUN_FOLDER
    shipped = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    shipped.remove(MANIFEST_NAME)
    as_json = inference_manifest(tiny_run, read_manifest(tiny_run))
    assert shipped == manifest.files() == referenced_files(as_json)
    assert set(check_run(run)) == {MANIFEST_NAME, *shipped}  # the kernel's check reads the same list
    assert shipped == _pattern_files(as_json)  # what the bundle shipped before the contract
    assert sum(f.endswith(".pt") for f in shipped) >= 9 and "ensemble/params.json" in shipped


def test_every_section_bundles_the_files_the_pattern_found(tmp_path):
    """On a run with every section: the classifiers the ensemble uses, the localizer's folds and out-of-fold
    tables, the caches' index and folds, the label-noise flags; no candidate, figure or executed notebook."""
    data = _every_section()
    (tmp_path / "ensemble").mkdir()
    write_json({"models": ["timm25d_test_resnet"]}, tmp_path / "ensemble" / "params.json")
    kept = inference_manifest(tmp_path, data)
    files = RunManifest.from_dict(kept).files()
    assert files == _pattern_files(kept) == referenced_files(kept)
    assert {"label_noise/flags.csv", "index_train.parquet", "localizer_oof.csv"} <= set(files)
    assert not [f for f in files if f.startswith(("cnn3d/", "ensemble/candidates/", "error_analysis/"))]
    everything = RunManifest.from_dict(data).files()  # the whole run's: the candidates and figures too
    assert "ensemble/candidates/cnn3d.csv" in everything and "error_analysis/reliability.png" in everything


def test_a_run_whose_manifest_predates_later_keys_loads_and_predicts_as_before(tiny_run, tmp_path):
    """The tiny run's manifest without what later versions added (precision, the axial anchors, the ensemble's
    candidates, widening and stack): the same members, parameters and prior; the localizer falls back to the
    canal for the axial slices; the out-of-fold predictions are each classifier's and the chosen one's."""
    run = tmp_path / "old"
    run.mkdir()
    for path in tiny_run.iterdir():
        if path.name != MANIFEST_NAME:
            os.symlink(path, run / path.name)
    data = read_manifest(tiny_run)
    for key in ("precision", "foramina_offset_mm", "foramina_halfspan_mm"):
        del data["localizer"][key]
    for classifier in data["classifiers"].values():
        del classifier["precision"]
    for key in ("candidates", "widening", "stack"):
        del data["ensemble"][key]
    write_json(data, run / MANIFEST_NAME)
    manifest = RunManifest.read(run)
    assert json.dumps(manifest.to_dict()) == json.dumps(data)
    then, now = ensemble_members(tiny_run, read_manifest(tiny_run)), ensemble_members(run, manifest)
    assert [(m.name, m.roi) for m in now[0]] == [(m.name, m.roi) for m in then[0]] and now[1] == then[1]
    pd.testing.assert_frame_equal(now[2], then[2])
    old = Localizer(run, "cpu", place_foramina=True)
    assert old.foramina_offset_mm is None and old.foramina_halfspan_mm is None and not old.places_foramina
    assert set(run_oof_predictions(run)) == {*data["classifiers"], data["ensemble"]["chosen"]}
    assert referenced_files(inference_manifest(run, data)) == _pattern_files(inference_manifest(run, data))

"""The study viewer on a tiny trained run: a synthetic train study (out-of-fold pieces), a test study without
labels (localized and predicted now), a study without a run, and the real sample's label points."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lumbar.analysis.viewer import LOCALIZER, TRUTH, interactive_viewer, load_study_view, plot_study
from lumbar.core.constants import CONDITIONS, GRADES, LEVELS
from lumbar.core.manifest import read_manifest, update_manifest
from lumbar.core.tables import load_coordinates, write_coordinates
from lumbar.ensemble.blend import CALIBRATED
from lumbar.ensemble.runs import fit_run_ensemble
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.train import train_localizer
from lumbar.preprocess.cache import build_cache
from lumbar.preprocess.config import RoiConfig
from lumbar.train import train

pytestmark = pytest.mark.slow

SHIFT_PX = 3.0  # the stand-in localizer's points: the label points moved this far along the image columns


@pytest.fixture(scope="module")
def run(synthetic_dir, tmp_path_factory):
    """A run trained for one epoch: crops, a localizer, cnn3d, the ensemble; the out-of-fold localizer points
    are the label points moved by SHIFT_PX (known errors), with their own crop cache, as 02 records them."""
    run = tmp_path_factory.mktemp("run")
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    roi = RoiConfig.from_overrides({"size": 16, "before": 1, "after": 1, "pad_px": 2})
    truth = build_cache(coords, synthetic_dir, "train", run / "cache", roi, progress=False)
    update_manifest(run, "preprocess", {"cache": str(truth.cache_dir.relative_to(run))})
    write_coordinates(coords.assign(x=coords["x"] + SHIFT_PX), run / "localizer_oof.csv")
    oof = build_cache(load_coordinates(run / "localizer_oof.csv"), synthetic_dir, "train", run / "cache_oof", roi,
                      progress=False)  # fmt: skip
    update_manifest(run, "oof_crops", {"cache": str(oof.cache_dir.relative_to(run)), "coords": "localizer_oof.csv"})
    config = LocalizerConfig.from_dict({"backbone": "test_resnet", "size": 32, "slices": 4, "epochs": 1,
                                        "axial_epochs": 1, "refine_tasks": "", "device": "cpu",
                                        "decoder_channels": 8, "batch_size": 4})  # fmt: skip
    train_localizer(config, synthetic_dir, coords, run, progress=False)
    train({"data_dir": str(synthetic_dir), "cache": str(truth.cache_dir), "out": str(run / "cnn3d"), "arch": "cnn3d",
           "n_folds": 2, "epochs": 1, "batch_size": 16, "device": "cpu", "progress": False, "threads": 1})  # fmt: skip
    fit_run_ensemble(run, synthetic_dir)
    return run


def _study(data_dir, split):
    return int(pd.read_csv(data_dir / f"{split}_series_descriptions.csv")["study_id"].min())


def test_a_train_study_shows_truth_beside_the_out_of_fold_points_crops_and_predictions(run, synthetic_dir):
    study = _study(synthetic_dir, "train")
    view = load_study_view(study, run, synthetic_dir)
    assert [p.group.name for p in view.panels][:3] == ["spinal canal", "left foramina", "right foramina"]
    assert len(view.panels) == 8 and all({TRUTH, LOCALIZER} <= set(p.points["source"]) for p in view.panels)
    # the known shift, measured through DICOM geometry: SHIFT_PX columns times the column spacing, on the slice
    spacing = {p.group.name: p.stack.headers[p.slice_index].pixel_spacing[1] for p in view.panels}
    errors = view.errors.set_index(["condition", "level"])
    spinal = errors.loc["spinal_canal_stenosis"]
    assert spinal["error_mm"].to_numpy() == pytest.approx(SHIFT_PX * spacing["spinal canal"], rel=1e-6)
    assert (spinal["slice_shift"] == 0).all()
    # a point drawn on its own slice lands on its own pixel, with no distance to the plane
    panel = view.panels[0]
    image, points, index, _ = panel.image()
    truth = points[(points["source"] == TRUTH) & (points["off_mm"] < 1e-6)]
    assert len(truth) and index == panel.slice_index
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv").set_index(["study_id", "condition", "level"])
    for row in truth.itertuples():
        assert (row.x, row.y) == pytest.approx(tuple(coords.loc[(study, row.condition, row.level), ["x", "y"]]), abs=1e-6)
    assert image.min() >= 0 and image.max() <= 1
    # crops around both points, the run's out-of-fold predictions (the chosen one first), the labels
    assert set(view.crops) == {LOCALIZER, TRUTH} and len(view.crops[TRUTH]) == 25
    assert next(iter(view.predictions)).endswith("(chosen)")
    first = next(iter(view.predictions.values()))
    assert len(first) == 25 and first[list(GRADES)].sum(axis=1).to_numpy() == pytest.approx(1.0)
    assert len(view.labels) == 25 and set(view.labels["condition"]) == set(CONDITIONS)
    fig = plot_study(view)
    assert isinstance(fig, Figure) and len(fig.axes) >= 8 + 5 * 10 + 5  # images, crops (2 per target), bars
    calibrated = load_study_view(study, run, synthetic_dir, candidate=CALIBRATED)  # drawn first, then each model
    chosen = read_manifest(run)["ensemble"]["chosen"]
    assert list(calibrated.predictions) == [n + " (chosen)" * (n == chosen) for n in (CALIBRATED, "cnn3d")]


def test_a_test_study_without_labels_is_localized_cropped_and_predicted(run, synthetic_dir):
    study = _study(synthetic_dir, "test")
    view = load_study_view(study, run, synthetic_dir, split="test", device="cpu")
    assert view.labels is None and view.errors is None and not view.has_truth
    assert view.panels and all(set(p.points["source"]) == {LOCALIZER} for p in view.panels)
    assert list(view.predictions) == ["ensemble"]
    pred = view.predictions["ensemble"]
    assert len(pred) == 25 and set(pred["level"]) == set(LEVELS)
    assert pred[list(GRADES)].sum(axis=1).to_numpy() == pytest.approx(1.0)
    assert set(view.crops) == {LOCALIZER} and view.crops[LOCALIZER]
    assert all(np.isfinite(c).all() for c in view.crops[LOCALIZER].values())
    assert isinstance(plot_study(view, offset=1), Figure)


def test_without_a_run_the_label_points_and_labels_are_shown(synthetic_dir):
    study = _study(synthetic_dir, "train")
    view = load_study_view(study, None, synthetic_dir)
    assert view.panels and all(set(p.points["source"]) == {TRUTH} for p in view.panels)
    assert not view.predictions and not view.crops and len(view.labels) == 25
    assert isinstance(plot_study(view), Figure)
    with pytest.raises(FileNotFoundError, match="give run_dir"):
        load_study_view(_study(synthetic_dir, "test"), None, synthetic_dir, split="test")


def test_the_interactive_viewer_loads_each_study_once(synthetic_dir):
    widgets = pytest.importorskip("ipywidgets")
    study = _study(synthetic_dir, "train")
    calls = []

    def load(study_id):
        calls.append(study_id)
        return load_study_view(study_id, None, synthetic_dir)

    box = interactive_viewer([study], load, max_offset=2)
    slider = box.children[0].children[1]
    assert isinstance(box, widgets.VBox) and (slider.min, slider.max) == (-2, 2)
    slider.value = 1  # redraws the same study one slice further
    assert calls == [study]


def test_the_real_sample_studies_are_drawn_on_the_slices_of_their_label_points(sample_dir):
    for study in (100206310, 1002894806):
        view = load_study_view(study, None, sample_dir)
        assert len(view.panels) == 8 and not view.notes
        spinal = view.panels[0]
        instance = spinal.stack.headers[spinal.slice_index].instance_number
        assert instance == {100206310: 9, 1002894806: 10}[study]  # every spinal point is marked on it
        _, points, _, _ = spinal.image()
        assert points["off_mm"].max() < 1e-3 and len(points) == 5
        # the right foramina of 100206310 are marked on instances 4, 4, 5, 6, 6: the panel shows the median
        right = view.panels[2]
        if study == 100206310:
            assert right.stack.headers[right.slice_index].instance_number == 5


def test_a_test_study_of_a_widening_ensemble_is_blended_as_the_submission_blends_it(run, synthetic_dir, tmp_path):
    """A run whose ensemble widens doubtful rows towards the prior (04 chose widening) draws a test study too:
    the viewer blends through the submission's own function, prior and confidences included. With the widening
    at its most doubtful setting every row is the training prior."""
    import json
    import shutil

    from lumbar.inference.predict import ensemble_members

    widened = tmp_path / "run"
    shutil.copytree(run, widened)
    params_file = widened / read_manifest(widened)["ensemble"]["params"]
    params = json.loads(params_file.read_text())
    params["widening"] = {g: [-50.0, 0.0] for g in ("spinal", "foraminal", "subarticular")}
    params_file.write_text(json.dumps(params))
    view = load_study_view(_study(synthetic_dir, "test"), widened, synthetic_dir, split="test", device="cpu")
    prior = ensemble_members(widened, read_manifest(widened))[2].set_index(["condition", "level"])[list(GRADES)]
    pred = view.predictions["ensemble"].set_index(["condition", "level"])[list(GRADES)]
    assert len(pred) == 25
    assert pred.to_numpy() == pytest.approx(prior.loc[pred.index].to_numpy(), abs=1e-6)

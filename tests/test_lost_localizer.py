"""A localizer that knows when it is lost: a study whose Sagittal T2/STIR is noise or a flipped copy.

A small localizer is trained for real on synthetic studies; one test study's Sagittal T2 is then replaced by
noise and another's by its front-to-back mirror (the headers kept, so the geometry lies), and the study as it
was stays as the control. The noise must lower the points' heatmap confidence, the mirror (sure, and wrong)
must fail the level-set check or, repaired to where the foramina put the canal (`lumbar.localize.repair`),
find little support there in its own heatmaps; a fitted widening must then bring the corrupted studies'
predictions to about what the prior costs, where the classifier was confidently wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from lumbar.analysis.robustness import target_losses
from lumbar.core.constants import GRADES, SAGITTAL_T2
from lumbar.core.tables import load_labels, submission_row_ids
from lumbar.data.index import load_or_build_index
from lumbar.data.synthetic import SynthConfig, generate
from lumbar.ensemble.widen import fit_widening, widen_arrays
from lumbar.localize.confidence import row_confidence
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.predict import localize
from lumbar.localize.train import train_localizer
from lumbar.scoring.baselines import prior_submission

pytestmark = pytest.mark.slow  # a localizer trained for real on 32 studies: a minute or two

SPINAL = "spinal_canal_stenosis"
#: Big enough that every clean test study's level set is plausible and sure (median canal confidence 0.74-0.91
#: when tuned; 20 epochs on 16 studies placed half the points 5 mm off and flagged clean studies), small enough
#: for a test (about a minute on 2 cores).
SMALL = {"backbone": "test_resnet", "size": 64, "slices": 4, "epochs": 40, "batch_size": 4,
         "decoder_channels": 16, "tasks": "sag_t2,sag_t1", "refine_tasks": "", "device": "cpu", "lr": 0.003}


def _rewrite_series(series_dir, change) -> None:
    for path in sorted(series_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PixelData = change(ds.pixel_array).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(path)


@pytest.fixture(scope="module")
def lost(tmp_path_factory):
    root = tmp_path_factory.mktemp("lost")
    data = root / "data"
    generate(data, SynthConfig(studies=32, test_studies=3, seed=23, image_size=64), oracle=data / "oracle.csv",
             progress=False)  # fmt: skip
    run = root / "run"
    train_localizer(LocalizerConfig().with_overrides(SMALL), data, data / "train_label_coordinates.csv", run,
                    progress=False)  # fmt: skip
    clean, _ = localize(data, "test", run, progress=False)
    index = load_or_build_index(data, "test")
    control, noisy, mirrored = sorted(index["study_id"].unique())
    rng = np.random.default_rng(0)
    for study, change in ((noisy, lambda a: rng.integers(0, max(int(a.max()), 1) + 1, a.shape)),
                          (mirrored, lambda a: a[:, ::-1])):  # fmt: skip
        rows = index[(index["study_id"] == study) & (index["series_description"] == SAGITTAL_T2)]
        folder = data / "test_images" / str(study) / str(rows["series_id"].iloc[0])
        _rewrite_series(folder, change)
    coords, _ = localize(data, "test", run, progress=False)
    return data, clean, coords, {"control": control, "noise": noisy, "mirror": mirrored}


def _canal(coords):
    spinal = coords[coords["condition"] == SPINAL].groupby("study_id")
    return spinal["confidence"].median(), spinal["plausible"].min()


def test_a_noise_or_mirrored_sagittal_t2_gives_doubtful_canal_points(lost):
    _, clean, coords, study = lost
    confidence_before, plausible_before = _canal(clean)
    assert plausible_before.eq(1).all() and confidence_before.min() > 0.5  # the precondition: sure when clean
    confidence, plausible = _canal(coords)
    assert plausible[study["control"]] == 1 and confidence[study["control"]] == confidence_before[study["control"]]
    for corrupted in (study["noise"], study["mirror"]):  # doubtful: flagged, or the canal maps have little mass there
        assert confidence[corrupted] < 0.5 * confidence_before[corrupted] or plausible[corrupted] == 0
    foramina = coords[coords["condition"].str.contains("foraminal")]
    assert foramina.groupby("study_id")["plausible"].min().eq(1).all()  # the series that lies is the one named


def test_widened_predictions_of_the_lost_studies_cost_about_the_prior(lost):
    """Classifiers that are confidently wrong everywhere; widening fitted on out-of-fold rows in which low
    confidence meant wrong. On the corrupted studies' canal rows it must land near the prior's loss; on the
    control it must keep most of the classifier (right or wrong, the control's crops are sure)."""
    data, _, coords, study = lost
    labels = load_labels(data / "test_labels.csv")
    train_labels = load_labels(data / "train.csv")
    ids = submission_row_ids(sorted(study.values()))
    rows = pd.DataFrame({"row_id": ids})
    truth = labels.assign(row_id=labels["study_id"].astype(str) + "_" + labels["condition"] + "_" + labels["level"])
    grade = rows["row_id"].map(truth.set_index("row_id")["grade"]).fillna(0).astype(int).to_numpy()
    wrong = np.full((len(ids), 3), 0.005)
    wrong[np.arange(len(ids)), (grade + 1) % 3] = 0.99
    classifier = rows.assign(**{g: wrong[:, i] for i, g in enumerate(GRADES)})

    # out-of-fold rows: crops with less than half the typical clean confidence (the first test's margin) wrong
    rng = np.random.default_rng(1)
    n = 600
    conf_oof = np.where(rng.random(n) < 0.2, rng.uniform(0.0005, 0.45, n), rng.uniform(0.5, 0.95, n))
    true_oof = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    probs_oof = np.full((n, 3), 0.005)
    probs_oof[np.arange(n), np.where(conf_oof < 0.47, (true_oof + 1) % 3, true_oof)] = 0.99
    prior_oof = np.tile([0.7, 0.2, 0.1], (n, 1))
    groups_oof = np.full(n, "spinal")

    def score(p):
        w = np.array([1.0, 2.0, 4.0])[true_oof]
        return float((w * -np.log(np.clip(p[np.arange(n), true_oof], 1e-15, 1))).sum() / w.sum())

    params = fit_widening(probs_oof, prior_oof, conf_oof, groups_oof, score)
    prior = prior_submission(train_labels, sorted(study.values()), smoothing=1.0)
    confidence = row_confidence(coords).set_index("row_id")["confidence"].reindex(ids).fillna(1.0).to_numpy()
    spinal = rows["row_id"].str.contains(SPINAL).to_numpy()
    widened = classifier.copy()
    prior_probs = prior.set_index("row_id").loc[ids, list(GRADES)].to_numpy()
    widened.loc[spinal, list(GRADES)] = widen_arrays(wrong[spinal], prior_probs[spinal], confidence[spinal],
                                                     np.full(spinal.sum(), "spinal"), params)  # fmt: skip

    def canal_loss(submission, which):
        t = target_losses(labels[labels["study_id"] == study[which]], submission)
        return t[t["condition"] == SPINAL]["loss"].sum()

    for which in ("noise", "mirror"):
        assert canal_loss(widened, which) < 1.5 * canal_loss(prior, which) + 1.0
        assert canal_loss(classifier, which) > 3 * canal_loss(widened, which)
    assert canal_loss(widened, "control") > 0.5 * canal_loss(classifier, "control")

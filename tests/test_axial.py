import numpy as np
import pandas as pd
from conftest import SYNTHETIC_SMALL

from lumbar.cli import main
from lumbar.core.constants import LEVELS
from lumbar.core.tables import load_coordinates
from lumbar.data.geometry import points_mm
from lumbar.data.index import build_index
from lumbar.data.synthetic import LabelModel, SynthConfig
from lumbar.data.synthetic.anatomy import draw_phantom
from lumbar.data.synthetic.study import study_streams
from lumbar.localize.axial import (
    FORAMINA,
    foramina_from_canal,
    foramina_halfspan_mm,
    foramina_offset_mm,
    map_axial,
)
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.roi import build_study

SAMPLE_STUDIES = [100206310, 1002894806]


def _subarticular_instances(coords):
    sub = coords[coords["condition"].str.endswith("subarticular_stenosis")]
    return sub.groupby(["study_id", "level"])["instance_number"].agg(set)


def test_map_axial_hits_annotated_subarticular_slices(sample_dir):
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    coords = coords[coords["study_id"].isin(SAMPLE_STUDIES)]
    index, _ = build_index(sample_dir, "train", studies=SAMPLE_STUDIES, progress=False)
    mapped = map_axial(coords, index)
    assert len(mapped) == 10 and mapped["instance_number"].notna().all()
    truth = _subarticular_instances(coords)
    hits = sum(
        any(abs(int(r.instance_number) - t) <= 1 for t in truth[(r.study_id, r.level)])
        for r in mapped.itertuples()
    )
    assert hits >= 9
    assert (mapped["distance_mm"] < 5).all()


def test_max_distance_leaves_instance_empty(sample_dir):
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    coords = coords[coords["study_id"].isin(SAMPLE_STUDIES)]
    index, _ = build_index(sample_dir, "train", studies=SAMPLE_STUDIES, progress=False)
    mapped = map_axial(coords, index, max_distance_mm=0.5)
    far = mapped["distance_mm"] > 0.5
    assert far.any() and mapped.loc[far, "instance_number"].isna().all()
    assert mapped.loc[~far, "instance_number"].notna().all()


def test_map_axial_cli(sample_dir, tmp_path, capsys):
    coords = pd.read_csv(sample_dir / "train_label_coordinates.csv")
    coords[coords["study_id"].isin(SAMPLE_STUDIES)].to_csv(tmp_path / "c.csv", index=False)
    rc = main(["map-axial", "--data-dir", str(sample_dir), "--coords", str(tmp_path / "c.csv"),
               "--out", str(tmp_path / "ax.csv")])  # fmt: skip
    assert rc == 0 and "10/10" in capsys.readouterr().out
    out = pd.read_csv(tmp_path / "ax.csv")
    assert list(out.columns[:5]) == ["study_id", "level", "axial_series_id", "instance_number", "distance_mm"]
    assert out["axial_series_id"].dtype.kind == "i"


def test_foramina_anchor_the_axial_slice_when_the_canal_column_is_a_level_off(synthetic_dir):
    """The canal column shifted by one level (a lost Sagittal T2): its own points pick the neighbouring disc's
    axial slices; the median of the canal and the offset foramina (Sagittal T1) still picks the right ones."""
    train = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    offset = foramina_offset_mm(train, build_index(synthetic_dir, "train", progress=False)[0])
    assert offset is not None and 2.0 < -offset[2] < 10.0  # the foramina sit a few mm above the disc (head: +z)
    coords = load_coordinates(synthetic_dir / "test_label_coordinates.csv")
    index, _ = build_index(synthetic_dir, "test", progress=False)
    truth = _subarticular_instances(coords)

    def hits(table, offset_mm):
        mapped = map_axial(table, index, foramina_offset_mm=offset_mm).dropna(subset=["instance_number"])
        return sum(any(abs(int(r.instance_number) - t) <= 1 for t in truth[(r.study_id, r.level)])
                   for r in mapped.itertuples() if (r.study_id, r.level) in truth.index)  # fmt: skip

    levels = sorted(truth.index)
    assert hits(coords, None) == hits(coords, offset) == len(levels)  # true points: both right everywhere
    shifted = coords.copy()
    for _, spinal in shifted[shifted["condition"] == "spinal_canal_stenosis"].groupby("study_id"):
        spinal = spinal.sort_values("level")  # each level takes the next one's point; L5/S1 keeps its own
        shifted.loc[spinal.index[:-1], ["instance_number", "x", "y"]] = spinal.iloc[1:][["instance_number", "x", "y"]].to_numpy()
    assert hits(shifted, None) <= 1 and hits(shifted, offset) >= len(levels) - 1


def test_without_canal_points_the_foramina_place_every_level_on_its_axial_slice(synthetic_dir):
    """A study without Sagittal T2/STIR (no canal points): with the learned offset its two foramina still put
    each level on the right axial slice, so its subarticular targets need not fall back to the prior; without
    the offset (or with one foramen) the level is left out, as before."""
    train = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    offset = foramina_offset_mm(train, build_index(synthetic_dir, "train", progress=False)[0])
    coords = load_coordinates(synthetic_dir / "test_label_coordinates.csv")
    index, _ = build_index(synthetic_dir, "test", progress=False)
    truth = _subarticular_instances(coords)
    no_canal = coords[coords["condition"] != "spinal_canal_stenosis"]
    assert map_axial(no_canal, index).empty
    mapped = map_axial(no_canal, index, foramina_offset_mm=offset).dropna(subset=["instance_number"])
    found = {(r.study_id, r.level): int(r.instance_number) for r in mapped.itertuples()}
    placed = [key for key in found if key in truth.index]
    hits = sum(any(abs(found[key] - t) <= 1 for t in truth[key]) for key in placed)
    assert len(placed) >= len(truth) - 1 and hits >= len(placed) - 1
    one_side = no_canal[no_canal["condition"] != "left_neural_foraminal_narrowing"]
    assert map_axial(one_side, index, foramina_offset_mm=offset).empty


def _true_halfspans(split, count):
    """Each level's (left foramen - right foramen) / 2 (mm) of the generator's own anatomy, before any slice
    or click moves it."""
    config = SynthConfig(**SYNTHETIC_SMALL)
    halves = []
    for i in range(count):
        r_labels, r_anatomy, _, _ = study_streams(config.seed, split, i)
        labels = LabelModel(reader_sd=config.reader_sd, label_noise=config.label_noise)
        marks = draw_phantom(r_anatomy, labels.draw_latent(r_labels)).landmarks()
        halves += [(marks[(FORAMINA[0], lv)] - marks[(FORAMINA[1], lv)]) / 2 for lv in LEVELS]
    return np.asarray(halves)


def test_the_learned_halfspan_is_the_generators_left_right_half_distance(synthetic_dir):
    """The median (left - right) / 2 of the labelled foramina is the phantom's, to the left (+x in LPS)."""
    train = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    index = build_index(synthetic_dir, "train", progress=False)[0]
    half = foramina_halfspan_mm(train, index)
    truth = _true_halfspans("train", SYNTHETIC_SMALL["studies"])
    assert 10.0 < truth[:, 0].min() and np.abs(truth[:, 1:]).max() < 2.0  # left is +x, a few degrees of roll
    assert half is not None and np.linalg.norm(np.subtract(half, np.median(truth, axis=0))) < 1.0
    assert foramina_halfspan_mm(train[train["condition"] != FORAMINA[1]], index) is None  # one side only


def _without_sagittal_t1(synthetic_dir):
    """The test split's label points and header index, and both with its Sagittal T1 series removed."""
    coords = load_coordinates(synthetic_dir / "test_label_coordinates.csv")
    index, _ = build_index(synthetic_dir, "test", progress=False)
    t1 = set(index.loc[index["series_description"] == "Sagittal T1", "series_id"])
    return coords, index, coords[~coords["series_id"].isin(t1)], index[~index["series_id"].isin(t1)]


def test_without_sagittal_t1_the_canal_places_both_foramina_on_sagittal_t2_slices(synthetic_dir, tmp_path):
    """A study without Sagittal T1: its canal points, the learned offset and half-span put each foramen within
    a few mm of the labelled one (patient mm), on an instance of its Sagittal T2/STIR series, where the crop
    code cuts it like any other row."""
    train = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    train_index = build_index(synthetic_dir, "train", progress=False)[0]
    offset, half = foramina_offset_mm(train, train_index), foramina_halfspan_mm(train, train_index)
    coords, index, no_t1, no_t1_index = _without_sagittal_t1(synthetic_dir)
    assert not no_t1["condition"].isin(FORAMINA).any()
    placed = foramina_from_canal(no_t1, no_t1_index, offset, half)
    t2 = index[index["series_description"] == "Sagittal T2/STIR"]
    assert len(placed) == 2 * len(no_t1[no_t1["condition"] == "spinal_canal_stenosis"]) == 10
    assert set(placed["series_id"]) == set(t2["series_id"]) and (placed["distance_mm"] < 3.0).all()
    instances = set(zip(t2["series_id"], t2["instance_number"]))
    assert set(zip(placed["series_id"], placed["instance_number"])) <= instances
    keys = ["study_id", "condition", "level"]
    both = points_mm(placed, index).merge(points_mm(coords, index), on=keys, suffixes=("", "_true"))
    xyz, true_xyz = both[["px", "py", "pz"]].to_numpy(), both[["px_true", "py_true", "pz_true"]].to_numpy()
    error = np.linalg.norm(xyz - true_xyz, axis=1)
    assert len(both) == 10 and np.median(error) < 4.0 and error.max() < 6.0, error.round(1)
    study = int(placed["study_id"].iloc[0])
    crops = tmp_path / "crops"
    built = build_study(study, placed.to_dict("records"), str(synthetic_dir), "test", str(crops), RoiConfig())
    assert not built.failures and len(built.samples) == 10
    assert {int(s["series_id"]) for s in built.samples} == set(t2["series_id"])


def test_without_either_sagittal_series_the_foramina_stay_with_the_prior(synthetic_dir):
    """No canal point (no Sagittal T2/STIR either): nothing is placed, so the foramina keep their prior rows;
    a placed foramen that no slice holds within the limit is left out rather than guessed."""
    train = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    train_index = build_index(synthetic_dir, "train", progress=False)[0]
    offset, half = foramina_offset_mm(train, train_index), foramina_halfspan_mm(train, train_index)
    _, _, no_t1, no_t1_index = _without_sagittal_t1(synthetic_dir)
    no_sagittal = no_t1[no_t1["condition"] != "spinal_canal_stenosis"]
    assert foramina_from_canal(no_sagittal, no_t1_index, offset, half).empty
    assert foramina_from_canal(no_t1, no_t1_index, offset, [200.0, 0.0, 0.0]).empty

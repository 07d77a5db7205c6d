import pandas as pd

from lumbar.cli import main
from lumbar.core.tables import load_coordinates
from lumbar.data.index import build_index
from lumbar.localize.axial import foramina_offset_mm, map_axial

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

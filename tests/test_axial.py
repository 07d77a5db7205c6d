import pandas as pd

from lumbar.cli import main
from lumbar.data.index import build_index
from lumbar.data.tables import load_coordinates
from lumbar.localize.axial import map_axial

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

"""A canal point that the foramina contradict moves to their level; one that agrees stays."""

import numpy as np

from lumbar.core.tables import load_coordinates
from lumbar.data.geometry import points_mm
from lumbar.data.index import build_index
from lumbar.localize.axial import foramina_offset_mm
from lumbar.localize.repair import repair_canal

SPINAL = "spinal_canal_stenosis"


def test_a_canal_column_a_level_off_is_moved_back_and_a_right_one_is_kept(synthetic_dir):
    train = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    offset = foramina_offset_mm(train, build_index(synthetic_dir, "train", progress=False)[0])
    index, _ = build_index(synthetic_dir, "test", progress=False)
    truth = load_coordinates(synthetic_dir / "test_label_coordinates.csv").assign(confidence=0.9)
    study = truth["study_id"].iloc[0]
    rows, geometry = truth[truth["study_id"] == study].reset_index(drop=True), index[index["study_id"] == study]
    rows = rows[~rows["condition"].str.contains("subarticular")].reset_index(drop=True)

    kept, notes = repair_canal(rows, geometry, offset)
    assert not notes and kept[["instance_number", "x", "y"]].equals(rows[["instance_number", "x", "y"]])

    lost = rows.copy()  # the canal's points one level lower, and sure of themselves
    canal = lost.index[lost["condition"] == SPINAL]
    ordered = lost.loc[canal].sort_values("level").index
    lost.loc[ordered[:-1], ["instance_number", "x", "y"]] = lost.loc[ordered[1:], ["instance_number", "x", "y"]].to_numpy()
    repaired, notes = repair_canal(lost, geometry, offset)
    assert len(notes) == 4 and all("moved" in n for n in notes)  # L5/S1 kept its own (true) point

    def canal_mm(table):
        return points_mm(table[table["condition"] == SPINAL].sort_values("level"), geometry)[["px", "py", "pz"]].to_numpy()

    true_mm = canal_mm(rows)
    assert np.linalg.norm(canal_mm(lost) - true_mm, axis=1)[:4].min() > 15  # a disc spacing off
    assert np.linalg.norm(canal_mm(repaired) - true_mm, axis=1).max() < 6  # back on its disc
    lost.loc[lost["condition"] != SPINAL, "confidence"] = 0.6  # the foramina's confidence goes to a moved point
    repaired, _ = repair_canal(lost, geometry, offset)
    moved = repaired["condition"].eq(SPINAL) & repaired["x"].ne(lost["x"])
    assert moved.sum() == 4 and repaired.loc[moved, "confidence"].eq(0.6).all()
    doubted, _ = repair_canal(lost, geometry, offset, evidence=lambda moved: np.full(len(moved), 0.05))
    assert doubted.loc[moved, "confidence"].eq(0.05).all()  # the canal series' own support caps it
    nothing, notes = repair_canal(lost, geometry, None)  # no learned offset (an older run): nothing repaired
    assert not notes and nothing[["x", "y"]].equals(lost[["x", "y"]])

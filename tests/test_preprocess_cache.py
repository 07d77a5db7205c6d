import json
import shutil

import numpy as np
import pandas as pd
import pytest

from lumbar.cli import main
from lumbar.core.constants import row_id
from lumbar.core.fallback import FallbackLimitError
from lumbar.core.tables import load_coordinates, write_coordinates
from lumbar.preprocess.cache import Rows, build_cache, cache_name, load_cache, load_sample
from lumbar.preprocess.config import RoiConfig

STUDY_A, STUDY_B = 100206310, 1002894806
CONTRACT_COLUMNS = [
    "sample_id", "study_id", "condition", "level", "series_id", "instance_number", "x", "y", "file",
    "depth", "height", "width", "pad_slices", "pad_px",
]  # fmt: skip


def _coords(sample_dir, *studies):
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    return coords[coords["study_id"].isin(studies)].reset_index(drop=True)


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*/*.npy")}


def test_cache_holds_every_condition_and_level_and_resumes(sample_dir, tmp_path):
    coords = _coords(sample_dir, STUDY_A)
    cfg = RoiConfig(pad_slices=1, pad_px=8)
    report = build_cache(coords, sample_dir, "train", tmp_path, cfg, progress=False)
    folder = tmp_path / "target_window_128x128_5D_B2A2_none"
    assert report.cache_dir == folder and report.built == 25 and len(report.failures) == 0
    params, samples = load_cache(folder)
    assert params["config"]["pad_px"] == 8 and params["coordinates_rows"] == 25 and params["split"] == "train"
    assert list(samples.columns[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert samples.groupby("condition")["level"].nunique().eq(5).all() and samples["condition"].nunique() == 5
    assert set(samples["sample_id"]) == {row_id(STUDY_A, c, lv) for c, lv in zip(coords["condition"], coords["level"])}
    for row in samples.itertuples():
        arr = load_sample(folder, row._asdict())
        assert arr.dtype == np.float16 and arr.shape == (7, 144, 144)
        assert 0 <= arr.min() and arr.max() <= 1 and arr.astype(np.float32).std() > 0.05
    assert pd.read_csv(folder / "failures.csv").empty
    # the axial (subarticular) samples come from the coordinates' own axial instance, left and right apart
    sub = samples[samples["condition"].str.endswith("subarticular_stenosis")]
    assert sub.groupby("level")["instance_number"].first().tolist() == [20, 28, 37, 46, 55]

    before = _mtimes(folder)
    again = build_cache(coords, sample_dir, "train", tmp_path, cfg, progress=False)
    assert (
        again.built == 0 and again.skipped == 25 and again.studies_opened == 0 and _mtimes(folder) == before
    )
    assert again.samples.equals(samples)

    victim = folder / f"{STUDY_A}" / "left_neural_foraminal_narrowing_l4_l5.npy"
    original = np.load(victim)
    victim.unlink()
    third = build_cache(coords, sample_dir, "train", tmp_path, cfg, progress=False)
    assert third.built == 1 and third.skipped == 24
    after = _mtimes(folder)
    assert {k for k in after if after[k] != before[k]} == {victim.name}
    np.testing.assert_array_equal(np.load(victim), original)  # rebuilt identically
    assert not list(folder.rglob("*.tmp"))


def test_failing_series_and_files_fail_only_their_rows(sample_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_dir / "train_images" / str(STUDY_B), data / "train_images" / str(STUDY_B))
    shutil.rmtree(data / "train_images" / str(STUDY_B) / "1252873726")  # the Axial T2 series
    bad = data / "train_images" / str(STUDY_B) / "866293114" / "12.dcm"  # a Sagittal T1 slice, left side
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    coords = _coords(sample_dir, STUDY_A, STUDY_B)  # study A has no images in this data folder
    coords = pd.concat([coords, coords[coords["study_id"] == STUDY_B].head(1)], ignore_index=True)

    with pytest.raises(FallbackLimitError, match=r"41 of 51 coordinate rows \(samples\) of .* fell back, more than the 2"):
        build_cache(coords, data, "train", tmp_path / "cache", RoiConfig(), progress=False)  # default: 5 % may fail
    report = build_cache(coords, data, "train", tmp_path / "cache", RoiConfig(), progress=False, max_failed_share=1.0)
    failures = pd.read_csv(report.cache_dir / "failures.csv")
    assert len(failures) == len(report.failures) == 25 + 10 + 5 + 1
    assert len(report.samples) + len(failures) == len(coords)  # nothing dropped silently
    by_reason = failures.groupby(failures["error"].str.extract(r"(study folder not found|series folder not found|"
                                                                  r"cannot decode|duplicate)")[0])  # fmt: skip
    counts = by_reason.size().to_dict()
    assert counts == {
        "study folder not found": 25,
        "series folder not found": 10,
        "cannot decode": 5,
        "duplicate": 1,
    }
    decode = failures[failures["error"].str.contains("cannot decode")]
    assert (
        set(decode["condition"]) == {"left_neural_foraminal_narrowing"}
        and decode["error"].str.contains("12.dcm").all()
    )
    built = report.samples
    assert len(built) == 10 and set(built["condition"]) == {
        "spinal_canal_stenosis",
        "right_neural_foraminal_narrowing",
    }
    summary = report.summary()
    assert "41 failed" in summary and "failures.csv" in summary


def test_other_parameters_never_reuse_a_cache(sample_dir, tmp_path):
    coords = _coords(sample_dir, STUDY_A).head(2)
    first = build_cache(coords, sample_dir, "train", tmp_path, RoiConfig(pad_px=8), progress=False)
    other = build_cache(coords, sample_dir, "train", tmp_path, RoiConfig(pad_px=4), progress=False)
    assert other.cache_dir != first.cache_dir and other.built == len(other.samples) > 0
    moved = coords.assign(x=coords["x"] + 1)
    with pytest.raises(ValueError, match="coordinates_sha1 differ"):
        build_cache(moved, sample_dir, "train", tmp_path, RoiConfig(pad_px=8), progress=False)


@pytest.mark.slow
def test_cli_ground_truth_and_predicted_coordinates_give_the_same_format(sample_dir, tmp_path, capsys):
    truth = _coords(sample_dir, STUDY_A, STUDY_B)
    write_coordinates(truth, tmp_path / "truth.csv")
    rng = np.random.default_rng(0)
    predicted = truth.assign(
        x=truth["x"] + rng.normal(0, 3, len(truth)), y=truth["y"] + rng.normal(0, 3, len(truth))
    )
    write_coordinates(predicted, tmp_path / "pred.csv")
    args = ["preprocess", "--data-dir", str(sample_dir), "--split", "train", "--mode", "full_series", "--size",
            "96", "--depth", "15", "--filter", "mean_median", "--pad-px", "4"]  # fmt: skip
    name = cache_name(RoiConfig(mode="full_series", size=96, depth=15, filter="mean_median", pad_px=4))
    caches = {}
    for kind in ("truth", "pred"):
        workers = "2" if kind == "truth" else "1"  # the process pool once, in-process once
        where = ["--coords", str(tmp_path / f"{kind}.csv"), "--out", str(tmp_path / kind)]
        rc = main([*args, "--workers", workers, *where])
        out = capsys.readouterr().out
        assert rc == 0 and "samples/s" in out and str(tmp_path / kind / name) in out
        caches[kind] = load_cache(tmp_path / kind / name)
    (p_truth, s_truth), (p_pred, s_pred) = caches["truth"], caches["pred"]
    assert (
        s_truth.dtypes.equals(s_pred.dtypes) and s_truth["sample_id"].tolist() == s_pred["sample_id"].tolist()
    )
    assert len(s_truth) == 50
    differ = {k for k in p_truth if p_truth[k] != p_pred[k]}
    assert differ == {"coordinates_source", "coordinates_sha1"}
    a = load_sample(tmp_path / "truth" / name, s_truth.iloc[0])
    b = load_sample(tmp_path / "pred" / name, s_pred.iloc[0])
    assert (
        a.shape == b.shape == (17, 104, 104) and a.dtype == b.dtype == np.float16 and not np.array_equal(a, b)
    )
    assert (
        json.loads((tmp_path / "truth" / name / "params.json").read_text())["config"]["filter"]
        == "mean_median"
    )


def test_cli_rejects_unknown_parameters(sample_dir, tmp_path, capsys):
    assert main(["preprocess", "--data-dir", str(sample_dir), "--coords", "x.csv", "--out", str(tmp_path),
                 "--set", "padpx=3"]) == 2  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "lumbar preprocess: error: --set: RoiConfig: unknown setting 'padpx'" in err[0]
    assert "did you mean 'pad_px'" in err[0]


def test_an_unexpected_data_error_fails_only_its_sample(sample_dir, tmp_path, monkeypatch):
    from lumbar.preprocess import roi

    real = roi.render_sample

    def flaky(slices, positions, point_mm, condition, config, value_range=None):
        if condition == "left_subarticular_stenosis":
            raise ValueError("odd geometry")
        return real(slices, positions, point_mm, condition, config, value_range)

    monkeypatch.setattr(roi, "render_sample", flaky)
    report = build_cache(_coords(sample_dir, STUDY_A), sample_dir, "train", tmp_path, RoiConfig(), progress=False,
                         max_failed_share=0.2)  # fmt: skip
    assert len(report.samples) == 20 and len(report.failures) == 5
    assert report.failures["error"].str.endswith("ValueError: odd geometry").all()
    assert set(report.failures["condition"]) == {"left_subarticular_stenosis"}


def test_a_programming_error_in_the_crop_code_stops_the_build(sample_dir, tmp_path, monkeypatch):
    from lumbar.preprocess import roi

    def broken(*args, **kwargs):
        raise TypeError("injected fault")

    monkeypatch.setattr(roi, "render_sample", broken)
    with pytest.raises(TypeError, match="injected fault"):
        build_cache(_coords(sample_dir, STUDY_A), sample_dir, "train", tmp_path, RoiConfig(), progress=False,
                    max_failed_share=1.0)  # fmt: skip


def test_rows_pack_into_frames_and_keep_their_order():
    rows = [{"a": i, "b": f"s{i}"} for i in range(10)]
    table = Rows(["a", "b"], chunk=5)
    for k in range(0, 10, 3):
        table.extend(rows[k : k + 3])
    assert len(table.frames) == 1 and len(table.buffer) == 4  # packed at 6 rows, four still loose
    kept = pd.DataFrame([{"a": -1, "b": "kept"}])
    assert table.frame(kept).equals(pd.DataFrame([kept.iloc[0].to_dict(), *rows]))
    assert Rows(["a", "b"]).frame().columns.tolist() == ["a", "b"]


def test_a_pool_with_few_studies_in_flight_builds_what_one_process_does(synthetic_dir, tmp_path):
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    cfg = RoiConfig(size=32, pad_px=2)
    one = build_cache(coords, synthetic_dir, "train", tmp_path / "one", cfg, workers=1, progress=False)
    pool = build_cache(coords, synthetic_dir, "train", tmp_path / "pool", cfg, workers=2, progress=False)
    assert one.studies_opened == pool.studies_opened == coords["study_id"].nunique() >= 3
    assert one.samples.drop(columns="file").equals(pool.samples.drop(columns="file"))
    for row in one.samples.itertuples():
        np.testing.assert_array_equal(np.load(one.cache_dir / row.file), np.load(pool.cache_dir / row.file))

import shutil

import numpy as np
import pydicom
import pytest

from lumbar.data.dicom import DicomReadError, canonical_normal, read_header, read_series, read_volume
from lumbar.data.index import build_index

STUDY = 100206310
T2_SAG, T1_SAG, AXIAL = 1792451510, 2092806862, 1012284084


def test_sagittal_volume_sorted_by_geometry(sample_dir):
    vol = read_volume(sample_dir / "train_images" / str(STUDY) / str(T2_SAG))
    assert vol.pixels.shape == (18, 462, 448) and vol.pixels.dtype == np.uint16  # stored type, no rescale
    along = vol.positions @ canonical_normal(vol.orientations[0])
    assert np.all(np.diff(along) > 0)
    # canonical sagittal normal points patient-left (+x in LPS)
    assert np.all(np.diff(vol.positions[:, 0]) > 0)
    # pixel data decoded (RLE) and plausible for 12 bits stored
    assert 0 <= vol.pixels.min() and vol.pixels.max() < 4096 and vol.pixels.std() > 10


def test_matches_plain_pydicom_pixels(sample_dir):
    series = read_series(sample_dir / "train_images" / str(STUDY) / str(T1_SAG))
    vol = series.load(indices=[0, 5])
    for k in range(2):
        plain = pydicom.dcmread(vol.paths[k]).pixel_array.astype(np.float32)
        np.testing.assert_array_equal(vol.pixels[k], plain)


def test_axial_series_split_into_stacks(sample_dir):
    for study, axial in ((STUDY, AXIAL), (1002894806, 1252873726)):
        series = read_series(sample_dir / "train_images" / str(study) / str(axial))
        assert len(series.stacks) >= 3
        for stack in series.stacks:
            assert np.all(np.diff(stack.slice_positions) > 0)
            o = np.array([h.orientation for h in stack.headers])
            assert np.abs(o - o[0]).max() <= 1e-3
        # axial index runs head to foot
        assert series.stacks[0].positions[0, 2] > series.stacks[0].positions[-1, 2]


def test_pixel_patient_round_trip(sample_dir):
    vol = read_volume(sample_dir / "train_images" / str(STUDY) / str(T2_SAG))
    xs, ys = np.array([10.0, 200.5, 300.0]), np.array([5.0, 100.25, 400.0])
    mm = vol.pixel_to_patient(np.array([3, 3, 3]), xs, ys)
    idx, x, y, dist = vol.patient_to_pixel(mm)
    assert list(idx) == [3, 3, 3]
    np.testing.assert_allclose(x, xs, atol=1e-6)
    np.testing.assert_allclose(y, ys, atol=1e-6)
    np.testing.assert_allclose(dist, 0, atol=1e-6)


def test_index_on_sample(sample_dir):
    index, report = build_index(sample_dir, "train", workers=2, progress=False)
    assert len(index) == 174 and report.files == 174 and report.studies == 2 and not report.skipped
    for _, g in index.groupby(["study_id", "series_id", "stack_index"]):
        assert np.all(np.diff(g["slice_position"].to_numpy()) > 0)
        assert list(g["slice_index"]) == list(range(len(g)))
    axial = index[index["series_description"] == "Axial T2"]
    assert (axial.groupby("series_id")["stack_index"].nunique() > 1).all()
    # studies in the CSV without images are reported, not fatal
    assert len(report.missing_studies) == 1973 and "no images" in report.summary()


def _copy_series(sample_dir, tmp_path, series=T2_SAG):
    dst = tmp_path / "train_images" / str(STUDY) / str(series)
    shutil.copytree(sample_dir / "train_images" / str(STUDY) / str(series), dst)
    return dst


def test_truncated_file_named_and_skipped_by_index(sample_dir, tmp_path):
    folder = _copy_series(sample_dir, tmp_path)
    bad = folder / "7.dcm"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DicomReadError, match=r"7\.dcm: missing DICOM tag.*truncated"):
        read_header(bad)
    with pytest.raises(DicomReadError, match=r"7\.dcm"):
        read_series(folder)
    index, report = build_index(tmp_path, "train", progress=False)
    assert len(index) == 17 and len(report.skipped) == 1 and report.skipped[0][0].endswith("7.dcm")
    assert "1 files skipped" in report.summary()


def test_truncated_pixel_data_names_file(sample_dir, tmp_path):
    folder = _copy_series(sample_dir, tmp_path)
    bad = folder / "3.dcm"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - len(data) // 3])
    series = read_series(folder, skip_unreadable=True)
    si, k = series.stack_of_instance(3)
    with pytest.raises(DicomReadError, match=r"3\.dcm"):
        series.load(si, [k])


def test_corrupt_rle_data_names_file_and_memory_errors_propagate(sample_dir, tmp_path, monkeypatch):
    folder = _copy_series(sample_dir, tmp_path)
    bad = folder / "4.dcm"
    data = bytearray(bad.read_bytes())
    for i in range(len(data) - 2000, len(data) - 10):  # garbled RLE segments: the Rust decoder panics
        data[i] = (data[i] * 7 + 3) % 256
    bad.write_bytes(bytes(data))
    series = read_series(folder)
    si, k = series.stack_of_instance(4)
    with pytest.raises(DicomReadError, match=r"4\.dcm: corrupt pixel data, the decoder panicked"):
        series.load(si, [k])

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(pydicom.pixels, "pixel_array", out_of_memory)
    with pytest.raises(MemoryError):
        series.load(si, [k])


def test_missing_instance_or_stack_is_a_read_error_naming_the_folder(sample_dir, tmp_path):
    series = read_series(_copy_series(sample_dir, tmp_path))
    with pytest.raises(DicomReadError, match=r"no readable file with instance 999"):
        series.stack_of_instance(999)
    with pytest.raises(DicomReadError, match=r"stack 3 asked for, but the readable files form 1 stack"):
        series.stack(3)


def test_empty_series_folder(tmp_path):
    folder = tmp_path / "train_images" / "1" / "2"
    folder.mkdir(parents=True)
    with pytest.raises(DicomReadError, match=r"2: series folder holds no \.dcm files"):
        read_series(folder)
    index, report = build_index(tmp_path, "train", progress=False)
    assert index.empty and "no .dcm files" in report.skipped[0][1]


def test_rescale_and_mixed_shapes(sample_dir, tmp_path):
    folder = _copy_series(sample_dir, tmp_path)
    # rescale tags present in one file; another file downsampled to a different shape
    ds = pydicom.dcmread(folder / "5.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    ds.save_as(folder / "5.dcm")
    ds = pydicom.dcmread(folder / "6.dcm")
    arr = ds.pixel_array[::2, ::2].copy()
    ds.set_pixel_data(arr, "MONOCHROME2", 12)
    ds.PixelSpacing = [2 * float(v) for v in ds.PixelSpacing]
    ds.save_as(folder / "6.dcm")
    series = read_series(folder)
    vol = series.load()
    plain5 = pydicom.dcmread(folder / "5.dcm").pixel_array.astype(np.float32)
    np.testing.assert_allclose(vol.pixels[vol.index_of_instance(5)], plain5 * 2 - 10)
    k6 = vol.index_of_instance(6)
    assert vol.pixels[k6].shape == vol.pixels[0].shape
    # field of view kept: spacing back to the stack's
    np.testing.assert_allclose(vol.spacings[k6], vol.spacings[0], rtol=0.01)


def test_headers_first_decodes_only_chosen_slices(sample_dir, tmp_path):
    folder = _copy_series(sample_dir, tmp_path)
    bad = folder / "9.dcm"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - len(data) // 3])  # pixel data broken, header intact
    series = read_series(folder)  # headers only: the broken pixels are not touched
    si, k = series.stack_of_instance(9)
    vol = series.load(si, [i for i in range(len(series.stacks[si])) if i != k])
    assert len(vol) == 17 and 9 not in vol.instance_numbers
    with pytest.raises(DicomReadError, match=r"9\.dcm: "):
        read_series(folder, decode=True)

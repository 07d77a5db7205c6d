import pytest

from lumbar.preprocess.cache import cache_name
from lumbar.preprocess.config import RoiConfig


def test_overrides_are_cast_to_the_default_type():
    cfg = RoiConfig.from_overrides({"size": "96", "spinal_mm": "48,24,24,24", "low_percentile": "2"})
    assert cfg.size == 96 and isinstance(cfg.size, int)
    assert cfg.spinal_mm == (48.0, 24.0, 24.0, 24.0)
    assert cfg.low_percentile == 2.0


def test_typo_is_an_error_naming_the_closest_field():
    with pytest.raises(KeyError, match="did you mean 'pad_px'"):
        RoiConfig.from_overrides({"pad_pxx": 4})


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"size": "big"}, "RoiConfig.size"),
        ({"size": 96.5}, "RoiConfig.size"),
        ({"spinal_mm": "1,2,3"}, "expected 4 values"),
        ({"mode": "whole"}, "mode must be one of"),
        ({"filter": "sobel"}, "unknown filter"),
        ({"before": -1}, "before must be >= 0"),
        ({"low_percentile": 99, "high_percentile": 1}, "percentiles"),
        ({"margin_mode": "thesis_px", "pad_px": 40}, "pad_px=40"),
    ],
)
def test_bad_values_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        RoiConfig.from_overrides(overrides)


def test_cache_names_follow_the_thesis():
    assert cache_name(RoiConfig(filter="mean_median")) == "target_window_128x128_5D_B2A2_mean_median"
    assert cache_name(RoiConfig(before=1, after=1)) == "target_window_128x128_3D_B1A1_none"
    assert cache_name(RoiConfig(mode="full_series", size=96, depth=15)) == "full_series_96x96_15D_none"


def test_margins_by_condition_and_mode():
    cfg = RoiConfig()
    assert cfg.margins("spinal_canal_stenosis") == cfg.spinal_mm
    assert cfg.margins("left_neural_foraminal_narrowing") == cfg.foraminal_mm
    assert cfg.margins("right_subarticular_stenosis") == cfg.subarticular_mm
    assert RoiConfig(margin_mode="thesis_px").margins("spinal_canal_stenosis") == (96.0, 32.0, 40.0, 40.0)


def test_cache_names_differ_when_only_margins_or_padding_differ():
    base = RoiConfig(size=64)
    names = {cache_name(base), cache_name(RoiConfig(size=64, spinal_mm=(18.0, 18.0, 18.0, 18.0))),
             cache_name(RoiConfig(size=64, pad_px=3)), cache_name(RoiConfig(size=64, margin_mode="thesis_px"))}
    assert len(names) == 4
    assert cache_name(base) == "target_window_64x64_5D_B2A2_none"
    assert cache_name(RoiConfig(size=64, pad_px=3)).startswith("target_window_64x64_5D_B2A2_none_")
    assert cache_name(RoiConfig(size=64, pad_px=3)) == cache_name(RoiConfig.from_overrides(size="64", pad_px="3"))

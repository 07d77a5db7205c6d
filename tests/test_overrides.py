"""One override caster serves every typed config: the same spelling gives the same result everywhere."""

from __future__ import annotations

import pytest

from lumbar.core.settings import UnknownSettingError, apply_overrides, parse_assignments
from lumbar.localize.config import LocalizerConfig
from lumbar.pipeline.command import _parse_overrides
from lumbar.preprocess.config import RoiConfig
from lumbar.train.config import make_config


@pytest.mark.parametrize("word, expected", [("yes", True), ("off", False), ("1", True), ("False", False)])
def test_boolean_words_mean_the_same_in_every_config(word, expected):
    assert make_config({"amp": word}).amp is expected
    assert LocalizerConfig.from_overrides(amp=word).amp is expected


def test_integers_accept_integral_floats_and_reject_fractions():
    assert RoiConfig.from_overrides(size=64.0).size == 64
    assert LocalizerConfig.from_overrides(epochs="3").epochs == 3
    for build in (lambda: RoiConfig.from_overrides(size="64.5"), lambda: make_config({"epochs": 2.5}),
                  lambda: LocalizerConfig.from_overrides(epochs=True)):
        with pytest.raises(ValueError, match="expected int"):
            build()


def test_unknown_key_is_both_a_key_and_a_value_error_naming_the_closest_field():
    for build in (lambda: RoiConfig.from_overrides(sizee=64), lambda: make_config({"sizee": 1}),
                  lambda: LocalizerConfig.from_overrides(sizee=64)):
        with pytest.raises(UnknownSettingError, match="unknown setting 'sizee'") as info:
            build()
        assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError, match="did you mean 'size'"):
        RoiConfig.from_overrides(sizee=64)


def test_fixed_length_tuples_check_their_count_and_open_tuples_do_not():
    assert RoiConfig.from_overrides(spinal_mm=[10, 20, 30, 40]).spinal_mm == (10.0, 20.0, 30.0, 40.0)
    with pytest.raises(ValueError, match="expected 4 values"):
        RoiConfig.from_overrides(spinal_mm="10,20")
    assert make_config({"class_weights": "1,2"}).class_weights == (1.0, 2.0)
    assert make_config({"folds": 3}).folds == (3,)


def test_apply_overrides_reruns_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        apply_overrides(LocalizerConfig(), {"size": "100"})


def test_assignments_and_pipeline_overrides():
    assert parse_assignments(["lr=1e-3", " augment = none "]) == {"lr": "1e-3", "augment": "none"}
    assert parse_assignments(["expr=a=b"]) == {"expr": "a=b"}
    for bad in (["lr"], ["=3"]):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_assignments(bad)
    assert _parse_overrides(["EPOCHS=3", "EXTRA={slices: 12}", "ARCH=cnn3d"]) == {
        "EPOCHS": 3, "EXTRA": {"slices": 12}, "ARCH": "cnn3d"}

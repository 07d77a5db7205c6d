"""TrainConfig: overrides cast to the defaults' types, typos rejected, the resolved config round-trips."""

from __future__ import annotations

import pytest

from lumbar.train.config import TrainConfig, load_yaml_overrides, make_config


def test_strings_are_cast_to_field_types():
    cfg = make_config({"folds": "0, 2", "epochs": "3", "lr": "3e-4", "amp": "false", "class_weights": "1,2,8",
                       "model_kwargs": "{pool: attn}", "conditions": "scs,lnfn", "batch-size": 4})
    assert cfg.folds == (0, 2) and cfg.epochs == 3 and cfg.lr == pytest.approx(3e-4)
    assert cfg.amp is False and cfg.class_weights == (1.0, 2.0, 8.0)
    assert cfg.model_kwargs == {"pool": "attn"} and cfg.conditions == ("scs", "lnfn") and cfg.batch_size == 4


def test_yaml_scalars_and_lists_are_cast(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  folds: [1]\n  epochs: 2\n  ema_decay: 0.99\n  balanced_sampling: yes\n")
    cfg = make_config(load_yaml_overrides(path))
    assert cfg.folds == (1,) and cfg.epochs == 2 and cfg.ema_decay == 0.99 and cfg.balanced_sampling is True


def test_typo_is_an_error_naming_the_closest_field():
    with pytest.raises(KeyError, match="did you mean 'epochs'"):
        make_config({"epoch": 3})


@pytest.mark.parametrize("key, value", [("epochs", "three"), ("epochs", 2.5), ("amp", "maybe"),
                                        ("model_kwargs", "[1, 2]")])
def test_bad_values_are_errors(key, value):
    with pytest.raises(ValueError, match=key):
        make_config({key: value})


def test_resolved_config_round_trips_through_json(tmp_path):
    cfg = make_config({"folds": "0,1", "model_kwargs": {"pool": "gru"}, "arch": "timmseq:resnet18"})
    path = cfg.save(tmp_path / "run" / "config.json")
    assert TrainConfig.load(path) == cfg

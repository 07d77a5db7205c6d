"""The recipe bench's bookkeeping: which steps are shared, what a variant changes, and when a gain counts."""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("recipe_bench")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _rows(variant: str, gaps: dict[int, float], size: int = 240) -> list[dict]:
    return [
        {"size": size, "seed": seed, "variant": variant, "test_seed": 9001, "gap": gap,
         "test_score": 0.2 + gap, "oof_score": 0.3}
        for seed, gap in gaps.items()
    ]  # fmt: skip


def test_a_gain_counts_only_beyond_the_defaults_seed_spread_and_with_two_seeds(bench):
    table = pd.DataFrame(
        _rows("default", {11: 0.060, 12: 0.070})  # spread 0.010
        + _rows("better", {11: 0.045, 12: 0.055})  # gain 0.015 on each seed
        + _rows("noise", {11: 0.055, 12: 0.068})  # gain 0.0035: inside the spread
        + _rows("one_seed", {11: 0.020})  # a large gain on one seed judges nothing
        + _rows("default", {11: 0.15, 12: 0.16}, size=60)
    )
    out = bench.summarize(table).set_index(["size", "variant"])
    assert out.loc[(240, "default"), "gap_spread"] == pytest.approx(0.010)
    assert out.loc[(240, "better"), "gain_mean"] == pytest.approx(0.015)
    assert out.loc[(240, "noise"), "gain_mean"] == pytest.approx(0.0035)
    assert out["counts"].to_dict() == {
        (60, "default"): False, (240, "better"): True, (240, "default"): False, (240, "noise"): False,
        (240, "one_seed"): False}  # fmt: skip
    assert out.loc[(240, "default"), "gap_mean"] == pytest.approx(0.065) and out.loc[(60, "default"), "seeds"] == 2


def test_a_later_bench_replaces_its_own_rows_and_keeps_the_others(bench, tmp_path):
    csv = tmp_path / "bench.csv"
    pd.DataFrame(_rows("default", {11: 0.06}) + _rows("clean", {11: 0.07})).to_csv(csv, index=False)
    table = bench.merged(csv, pd.DataFrame(_rows("clean", {11: 0.05}) + _rows("clean", {12: 0.08})))
    got = {(r.variant, r.seed): r.gap for r in table.itertuples()}
    assert got == {("default", 11): 0.06, ("clean", 11): 0.05, ("clean", 12): 0.08}


def test_variants_start_with_the_default_and_parse_their_values_as_yaml(bench):
    variants = bench.parse_variants(
        [["any_severe", "any_severe_weight=1.0"], ["clean", "EXCLUDE=../run_default/label_noise/flags.csv"]]
    )
    assert list(variants) == ["default", "any_severe", "clean"]  # the default runs first in every set
    assert variants["any_severe"] == {"any_severe_weight": 1.0}
    assert variants["clean"] == {"EXCLUDE": "../run_default/label_noise/flags.csv"}
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        bench.parse_variants([["broken", "epochs"]])


def test_the_config_splits_into_shared_and_per_variant_steps_and_settings_reach_every_classifier(bench, tmp_path):
    configs = bench.bench_configs(ROOT / "configs/demo.yaml", 240, 12, tmp_path / "data", 128)
    steps = {
        part: [m["notebook"] for e in raw["notebooks"] for m in e.get("parallel", [e])]
        for part, raw in configs.items()
    }
    assert steps == {"shared": ["01_preprocess", "02_train_localizer"],
                     "variant": ["03_train", "03_train", "04_ensemble"]}  # fmt: skip
    assert configs["shared"]["synthetic"] == {"studies": 240, "test_studies": 0, "seed": 12, "image_size": 128}
    assert configs["shared"]["data_dir"] == str(tmp_path / "data")
    changed = bench.with_settings(configs["variant"], {"any_severe_weight": 1.0})
    members = [m for e in changed["notebooks"] for m in e.get("parallel", [e])]
    assert [m.get("parameters", {}).get("any_severe_weight") for m in members] == [1.0, 1.0, None]
    original = [m for e in configs["variant"]["notebooks"] for m in e.get("parallel", [e])]
    assert all("any_severe_weight" not in m.get("parameters", {}) for m in original)  # the config is not changed
    assert members[0]["parameters"]["ARCH"] == "timm25d:resnet10t"  # the step's own settings stay
    yaml.safe_dump(changed)  # written as the variant's config
    with pytest.raises(ValueError, match="synthetic"):
        bench.bench_configs(ROOT / "configs/full.yaml", 240, 12, tmp_path / "data", 128)


def _record_seeds(bench, out: Path, seeds: range) -> None:
    for seed in seeds:
        bench.record(out, pd.DataFrame(_rows("default", {seed: 0.06})))


def test_benches_finishing_into_one_folder_at_once_keep_every_row(bench, tmp_path):
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_record_seeds, args=(bench, tmp_path, range(k, 40, 2))) for k in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    table = pd.read_csv(tmp_path / "bench.csv")
    assert sorted(table["seed"]) == list(range(40))
    assert "| 240 | 39 | default |" in (tmp_path / "bench_runs.md").read_text()


def test_a_variant_may_change_the_shared_steps_and_then_gets_its_own_shared_run(bench, tmp_path):
    configs = bench.bench_configs(ROOT / "configs/demo.yaml", 240, 12, tmp_path / "data", 128)
    settings = {"01_preprocess.foraminal_slices": "6,6", "views": ["axial_canal"], "04_ensemble.SEED": 3}
    assert bench.split_settings(settings) == (
        {"01_preprocess.foraminal_slices": "6,6"},
        {"views": ["axial_canal"], "04_ensemble.SEED": 3},
    )
    assert bench.split_settings({"any_severe_weight": 1.0}) == ({}, {"any_severe_weight": 1.0})
    shared = bench.with_settings(configs["shared"], settings)
    assert shared["notebooks"][0]["parameters"]["foraminal_slices"] == "6,6"
    assert shared["notebooks"][0]["parameters"]["SIZE"] == 32  # the step's own settings stay
    assert "foraminal_slices" not in configs["shared"]["notebooks"][0]["parameters"]
    changed = bench.with_settings(configs["variant"], settings)
    variant = [m for e in changed["notebooks"] for m in e.get("parallel", [e])]
    assert [m.get("parameters", {}).get("views") for m in variant] == [["axial_canal"], ["axial_canal"], None]
    assert variant[2]["parameters"] == {"SEED": 3}
    assert not any("foraminal_slices" in m.get("parameters", {}) for m in variant)
    with pytest.raises(SystemExit, match="05_submission"):
        bench.step_settings({"05_submission.SPLIT": "train"})


def test_a_variants_own_shared_run_is_a_real_copy_of_the_defaults(bench, tmp_path, monkeypatch):
    """01 and 02 rewrite files in place: the variant's copy must not share them with the default's run."""
    shared = tmp_path / "shared"
    (shared / "crops").mkdir(parents=True)
    (shared / "crops" / "index.csv").write_text("default")
    (shared / "latest").symlink_to("crops")
    ran = []
    monkeypatch.setattr(bench, "run_steps", lambda raw, run_dir, config_file: ran.append(run_dir) or 1.0)
    configs = {"shared": {"notebooks": [{"notebook": "01_preprocess", "parameters": {}}]}}
    assert bench.shared_run(tmp_path, configs, "default", {}) == (shared, 1.0)
    run_dir, _ = bench.shared_run(tmp_path, configs, "slab", {"01_preprocess.foraminal_slices": "6,6"})
    assert run_dir == tmp_path / "shared_slab" and ran == [shared, shared, run_dir]
    assert (run_dir / "latest").is_symlink()
    (run_dir / "crops" / "index.csv").write_text("slab")
    assert (shared / "crops" / "index.csv").read_text() == "default"

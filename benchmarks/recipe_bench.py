"""The recipe bench (issue 30): a recipe's choices judged on enough synthetic data, with the seeds' spread.

The demo's 60 training studies cannot judge a choice: two seeds of one recipe differ by more than most effects.
For each training-set size and seed this writes a synthetic set at the demo's image size (`synthetic:` of the
config, `studies` and `seed` replaced), runs the config's preprocessing and localizer once (01 + 02: crops,
fold localizers, out-of-fold points and crops), and for each variant trains the config's classifiers and
ensemble (03 + 04) in a copy of that run (hard links: the crops and localizers are shared, not rebuilt). Every
variant's run then predicts the same fresh test sets (seeds used for nothing else, 100 studies by default)
exactly as a submission would (`lumbar.analysis.fresh`).

A variant is a name and the settings it changes, e.g. `--variant any_severe any_severe_weight=1.0` (values
parsed as YAML): a plain key in every 03 step, `STEP.KEY` in that step. A variant that changes 01 or 02
(`--variant slab '01_preprocess.foraminal_slices="6,6"'`) gets its own copy of the shared run, 01 and 02 run
again there (the fold localizers reused, the crops cut anew). The default recipe is always the variant
`default` (the config as written), run first in each set, so a variant can use what the default's run wrote
beside it: label-noise cleanup is `--variant clean EXCLUDE=../run_default/label_noise/flags.csv` (03's EXCLUDE
is relative to the run folder, `run_<variant>`; the default's 04 flagged those grades from its out-of-fold
predictions).

Report (`<out>/bench.csv`, `<out>/bench.md`, `<out>/bench_runs.md`, printed): per set and variant the
out-of-fold score, the fresh-set score, the oracle and the prior on the fresh set, score - oracle, the fresh
set's per-condition terms and the steps' seconds; per size and variant the mean and the spread (max - min)
of score - oracle over the seeds, and each variant's gain over the default on the same sets. A gain counts
only when it exceeds the default's seed spread at that size. The learning curve is the default's score -
oracle by size.

    python benchmarks/recipe_bench.py --sizes 60 240 480 --seeds 11 12 --test-seeds 9001 --out runs/bench

Runs resume: a set already written, a step already run (`bench.json` in its folder) and a fresh-set result
already there are reused, so an interrupted bench continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from filelock import FileLock

from lumbar.analysis.fresh import fresh_eval, set_folder
from lumbar.core.atomic import atomic_path, write_json, write_text
from lumbar.core.paths import PROJECT_ROOT
from lumbar.core.tables import load_labels, load_submission
from lumbar.data.synthetic import SynthConfig, generate
from lumbar.demo import demo_summary, ensure_data
from lumbar.inference.predict import PredictOptions
from lumbar.pipeline import load_config, run_pipeline
from lumbar.scoring.metric import TERMS, competition_score

SHARED_STEPS = ("01_preprocess", "02_train_localizer")
VARIANT_STEPS = ("03_train", "04_ensemble")


def bench_configs(config_path: Path, size: int, seed: int, data_dir: Path, image_size: int) -> dict:
    """The config's raw YAML split into the shared part (01 + 02) and the per-variant part (03 + 04)."""
    raw = yaml.safe_load(config_path.read_text())
    if "synthetic" not in raw:
        raise ValueError(f"{config_path}: the bench needs a synthetic-data config (one with `synthetic:`)")
    raw["synthetic"] = {**raw["synthetic"], "studies": size, "seed": seed, "image_size": image_size}
    raw["synthetic"]["test_studies"] = 0
    raw["data_dir"] = str(data_dir)
    shared, variant = [], []
    for entry in raw["notebooks"]:
        names = [m["notebook"] for m in entry["parallel"]] if "parallel" in entry else [entry["notebook"]]
        if any(n in SHARED_STEPS for n in names):
            shared.append(entry)
        elif any(n in VARIANT_STEPS for n in names):
            variant.append(entry)
    if not shared or not variant:
        raise ValueError(f"{config_path}: needs 01/02 and 03/04 steps, found {raw['notebooks']}")
    return {"shared": {**raw, "notebooks": shared}, "variant": {**raw, "notebooks": variant}}


def setting_step(key: str) -> tuple[str, str]:
    """The step a variant's setting goes to and its name there: `01_preprocess.views` -> 01, a plain key -> 03."""
    step, dot, name = key.rpartition(".") if "." in key else ("03_train", "", key)
    if dot and step not in SHARED_STEPS + VARIANT_STEPS:
        raise SystemExit(f"variant setting {key!r}: {step!r} is not one of {SHARED_STEPS + VARIANT_STEPS}")
    return step, name


def step_settings(settings: dict) -> dict[str, dict]:
    """A variant's settings by step (`setting_step`)."""
    by_step: dict[str, dict] = {}
    for key, value in settings.items():
        step, name = setting_step(key)
        by_step.setdefault(step, {})[name] = value
    return by_step


def with_settings(raw: dict, settings: dict) -> dict:
    """`raw` with the variant's `settings` over its steps' parameters (`step_settings`); `raw` is not changed."""
    by_step = step_settings(settings)

    def apply(step: dict) -> dict:
        if step["notebook"] not in by_step:
            return step
        return {**step, "parameters": {**step.get("parameters", {}), **by_step[step["notebook"]]}}

    notebooks = [
        {"parallel": [apply(m) for m in e["parallel"]]} if "parallel" in e else apply(e)
        for e in raw["notebooks"]
    ]
    return {**raw, "notebooks": notebooks}


def split_settings(settings: dict) -> tuple[dict, dict]:
    """A variant's settings split once: those of 01 or 02 (such a variant needs its own shared run) and the rest."""
    shared = {k: v for k, v in settings.items() if setting_step(k)[0] in SHARED_STEPS}
    return shared, {k: v for k, v in settings.items() if k not in shared}


def shared_run(folder: Path, configs: dict, name: str, own: dict) -> tuple[Path, float]:
    """The shared run (01 + 02) a variant trains on, and its seconds.

    Variants that change neither step share `shared`. One that does (a deeper slab, second views) gets
    `shared_<name>`: a full copy of `shared` (a copy, not hard links: 01 and 02 rewrite files of the run in
    place, which would change the default's) with 01 and 02 run again on its settings; the localizers are
    reused (`train_localizer_folds`: same settings, folds and coordinates), the crops are cut anew. `own`: the
    variant's 01/02 settings (`split_settings`).
    """
    base = folder / "shared"
    seconds = run_steps(configs["shared"], base, folder / "shared.yaml")
    if not own:
        return base, seconds
    run_dir = folder / f"shared_{name}"
    if not (folder / f"shared_{name}.done.json").is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(base, run_dir, symlinks=True)
    return run_dir, run_steps(with_settings(configs["shared"], own), run_dir, folder / f"shared_{name}.yaml")


def run_steps(raw: dict, run_dir: Path, config_file: Path) -> float:
    """Write the config, run its steps into `run_dir` (once: `bench.json` marks a finished part)."""
    marker = config_file.with_suffix(".done.json")
    if marker.is_file():
        return json.loads(marker.read_text())["seconds"]
    config_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.perf_counter()
    run_pipeline(load_config(config_file, run_dir=run_dir))
    seconds = round(time.perf_counter() - t0, 1)
    write_json({"seconds": seconds}, marker)
    return seconds


def fresh_set(out: Path, seed: int, test_studies: int, image_size: int, workers: int) -> Path:
    """A fresh test set written once and shared by every run (the generator's test split and oracle)."""
    data = set_folder(out / "fresh-sets", seed, image_size, 0.25) / "data"
    if not (data / "test_labels.csv").is_file():
        config = SynthConfig(studies=1, test_studies=test_studies, seed=seed, image_size=image_size)
        generate(data, config, oracle=data / "oracle.csv", workers=workers, overwrite=True)
    return data


def judge(run_dir: Path, out: Path, fresh_data: Path, seed: int, image_size: int, workers: int) -> dict:
    """The run on one fresh set: the `fresh-eval` summary plus the per-condition terms and the oracle's."""
    folder = set_folder(out, seed, image_size, 0.25)
    result_file = folder / "fresh_eval.json"
    if not result_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "data").exists():
            os.symlink(fresh_data.resolve(), folder / "data")
        options = PredictOptions(workers=workers, progress=False)
        fresh_eval(run_dir, out, seed, image_size=image_size, options=options)
    result = json.loads(result_file.read_text())
    labels = load_labels(fresh_data / "test_labels.csv")
    terms = competition_score(labels, load_submission(folder / "submission.csv"), "submission")
    oracle = competition_score(labels, load_submission(fresh_data / "oracle.csv"), "oracle")
    row = {k: result[k] for k in ("test_studies", "test_score", "oracle", "prior", "fallback_studies")}
    row.update({f"term_{t}": getattr(terms, t) for t in TERMS})
    row.update({f"oracle_{t}": getattr(oracle, t) for t in TERMS})
    row.update({k: result[k] for k in ("study_median", "study_p95", "study_max", "targets_over_8")})
    localize = dict(kv.split("=") for kv in result.get("localize", "").split()[1:])
    row.update(
        {f"loc_{k}": float(v) for k, v in localize.items() if k in ("within5mm", "slice_pm1", "median_mm")}
    )
    return row


def label_noise(run_dir: Path) -> dict:
    """The run's label-noise flags (04) against the generator's noise: flagged share, precision, recall."""
    path = run_dir / "label_noise" / "summary.json"
    if not path.is_file():
        return {}
    s = json.loads(path.read_text())
    nan = float("nan")
    return {
        "noise_flagged": s["flagged"],
        "noise_precision": nan if s["precision"] is None else s["precision"],
        "noise_recall": nan if s["recall"] is None else s["recall"],
    }


def bench_one(args, size: int, seed: int, variants: dict[str, dict]) -> list[dict]:
    """One training set: its shared steps once, every variant's steps and fresh-set judgements."""
    folder = args.out / f"n{size}_s{seed}"
    data_dir = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    configs = bench_configs(args.config, size, seed, data_dir, args.image_size)
    t0 = time.perf_counter()
    ensure_data(data_dir, configs["shared"]["synthetic"], workers=args.workers)
    generate_s = round(time.perf_counter() - t0, 1)
    rows = []
    for name, settings in variants.items():
        shared_part, variant_part = split_settings(settings)
        shared, shared_s = shared_run(folder, configs, name, shared_part)
        run_dir = folder / f"run_{name}"
        if not run_dir.exists():  # hard links: 03 and 04 write new files beside the shared run's, never into them
            shutil.copytree(shared, run_dir, symlinks=True, copy_function=os.link)
        variant_s = run_steps(with_settings(configs["variant"], variant_part), run_dir, folder / f"{name}.yaml")
        summary = demo_summary(run_dir, data_dir)
        for test_seed in args.test_seeds:
            fresh = fresh_set(args.out, test_seed, args.test_studies, args.image_size, args.workers)
            t1 = time.perf_counter()
            judged = judge(run_dir, folder / f"fresh_{name}", fresh, test_seed, args.image_size, args.workers)
            rows.append(
                {
                    "size": size,
                    "seed": seed,
                    "variant": name,
                    "settings": json.dumps(settings, sort_keys=True),
                    "test_seed": test_seed,
                    "oof_score": summary["oof_score"],
                    "oof_oracle": summary.get("oracle", float("nan")),
                    "chosen": summary.get("chosen", ""),
                    **judged,
                    **label_noise(run_dir),
                    "gap": judged["test_score"] - judged["oracle"],
                    "generate_s": generate_s,
                    "shared_s": shared_s,
                    "variant_s": variant_s,
                    "judge_s": round(time.perf_counter() - t1, 1),
                }
            )
            print(
                f"bench: n={size} seed={seed} variant={name} test_seed={test_seed} "
                f"oof={summary['oof_score']:.4f} fresh={judged['test_score']:.4f} "
                f"oracle={judged['oracle']:.4f} gap={rows[-1]['gap']:.4f} "
                f"(shared {shared_s:.0f} s, variant {variant_s:.0f} s)",
                flush=True,
            )
    return rows


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per size and variant: score - oracle over seeds (mean, spread) and the gain over the default."""
    per_seed = table.groupby(["size", "variant", "seed"], as_index=False)[
        ["gap", "test_score", "oof_score"]
    ].mean()
    out = per_seed.groupby(["size", "variant"]).agg(
        seeds=("seed", "nunique"),
        gap_mean=("gap", "mean"),
        gap_spread=("gap", lambda g: g.max() - g.min()),
        fresh_mean=("test_score", "mean"),
        oof_mean=("oof_score", "mean"),
    )
    default = per_seed[per_seed["variant"] == "default"].set_index(["size", "seed"])["gap"]
    gains = per_seed.join(default.rename("default_gap"), on=["size", "seed"])
    gains["gain"] = gains["default_gap"] - gains["gap"]
    out["gain_mean"] = gains.groupby(["size", "variant"])["gain"].mean()
    spread = out.xs("default", level="variant")["gap_spread"] if "default" in out.index.levels[1] else None
    if spread is not None:
        out["counts"] = [
            bool(v != "default" and s in spread.index and g > spread[s] and n > 1)
            for (s, v), g, n in zip(out.index, out["gain_mean"], out["seeds"], strict=True)
        ]
    return out.reset_index()


RUN_COLUMNS = {
    "size": "training studies",
    "seed": "seed",
    "variant": "variant",
    "oof_score": "OOF",
    "test_score": "fresh",
    "oracle": "oracle",
    "gap": "fresh - oracle",
    "term_spinal": "spinal",
    "term_foraminal": "foraminal",
    "term_subarticular": "subarticular",
    "term_any_severe_spinal": "any severe",
    "study_p95": "study p95",
    "study_max": "worst study",
    "loc_slice_pm1": "slice +-1",
    "noise_precision": "flags precision",
    "noise_recall": "flags recall",
}


def runs_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run and fresh set with the columns a reader compares (`bench_runs.md`)."""
    present = [c for c in RUN_COLUMNS if c in table.columns]
    return table[present].rename(columns=RUN_COLUMNS)


def merged(csv: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """`bench.csv` with `rows` in place of its rows of the same set, variant and test set: benches of other
    sizes, seeds or variants into one folder add up to one table."""
    if not csv.is_file():
        return rows
    old = pd.read_csv(csv)
    key = ["size", "seed", "variant", "test_seed"]
    kept = old[~old.set_index(key).index.isin(rows.set_index(key).index)]
    return pd.concat([kept, rows], ignore_index=True).sort_values(key, ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    cells = [
        [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


def write_report(out: Path, table: pd.DataFrame) -> str:
    """`bench_runs.md` (one row per run) and `bench.md` (the summary) from `table`; returns both as text."""
    runs, summary = markdown(runs_table(table)), markdown(summarize(table))
    write_text(runs, out / "bench_runs.md")
    write_text(summary, out / "bench.md")
    return runs + "\n" + summary


def record(out: Path, rows: pd.DataFrame) -> str:
    """Merge `rows` into `<out>/bench.csv` and rewrite the report, under a lock: benches of other sets or
    variants may finish into the same folder at the same moment, and a read-merge-write without one drops
    rows."""
    csv = out / "bench.csv"
    with FileLock(out / ".bench.csv.lock"):
        table = merged(csv, rows)
        with atomic_path(csv) as tmp:
            table.to_csv(tmp, index=False)
        return write_report(out, table)


def parse_variants(items: list[list[str]] | None) -> dict[str, dict]:
    variants: dict[str, dict] = {"default": {}}
    for item in items or []:
        name, *pairs = item
        settings = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise SystemExit(f"--variant {name}: {pair!r} is not KEY=VALUE")
            settings[key] = yaml.safe_load(value)
        variants[name] = settings
    return variants


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=PROJECT_ROOT / "configs/demo.yaml")
    p.add_argument("--sizes", type=int, nargs="+", default=[60, 240, 480])
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12], help="training-set seeds")
    p.add_argument("--test-seeds", type=int, nargs="+", default=[9001], help="fresh test-set seeds")
    p.add_argument("--test-studies", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"))
    p.add_argument(
        "--order",
        choices=["size", "seed"],
        default="seed",
        help="seed: every size of the first seed before the second (a learning curve early)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report", action="store_true", help="only summarise the folder's bench.csv")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "runs/bench")
    args = p.parse_args(argv)
    args.out = args.out.absolute()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(args.variant)
    if args.report:
        print(write_report(args.out, pd.read_csv(args.out / "bench.csv")))
        return 0
    pairs = [(n, s) for s in args.seeds for n in args.sizes]
    if args.order == "size":
        pairs = sorted(pairs)
    print(f"bench: {len(pairs)} sets x {len(variants)} variants -> {args.out} ({sys.executable})", flush=True)
    for size, seed in pairs:
        print(record(args.out, pd.DataFrame(bench_one(args, size, seed, variants))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

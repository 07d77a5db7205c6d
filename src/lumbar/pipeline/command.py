"""`python -m lumbar pipeline`: plan (`--plan`) or run a config."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from lumbar.core.manifest import read_manifest
from lumbar.core.settings import merge_layers, parse_assignments
from lumbar.pipeline.config import EXTRA, load_config
from lumbar.pipeline.cost import plan_report
from lumbar.pipeline.runner import run_pipeline


def _parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`--set EPOCHS=3` -> {"EPOCHS": 3}: values read as YAML, so numbers and lists keep their types."""
    out = {}
    for key, value in parse_assignments(items).items():
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {key}={value}: not a YAML value ({getattr(e, 'problem', e)})") from None
    return out


def pipeline_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters a command line sets over the config's, in the one precedence (`merge_layers`): the
    flags (`--fresh` = FRESH: true), then `--set`. `--data-dir`, `--run-dir`, `--jobs`: over the config's."""
    flags = {"FRESH": True} if getattr(args, "fresh", False) else {}
    return merge_layers(flags, _parse_overrides(args.set), bags=[EXTRA])


def cli_pipeline(args: argparse.Namespace) -> int:
    """`python -m lumbar pipeline`; a failed notebook raises PipelineError (exit 1, see lumbar.cli)."""
    config = load_config(args.config, data_dir=args.data_dir, run_dir=args.run_dir)
    overrides = pipeline_overrides(args)
    if args.plan:
        print(
            plan_report(
                config,
                args.start,
                args.only,
                args.jobs,
                overrides=overrides,
                allow_synthetic=args.allow_synthetic,
            )
        )
        return 0
    seconds = run_pipeline(
        config, args.start, args.only, args.jobs, overrides=overrides, allow_synthetic=args.allow_synthetic
    )
    print(
        f"pipeline: {len(seconds)} notebooks, {sum(seconds.values()):.1f} notebook-seconds; "
        f"run folder {config.run_dir}"
    )
    print(
        f"pipeline: manifest {config.run_dir / 'manifest.json'} ({len(read_manifest(config.run_dir))} keys)"
    )
    return 0

"""`python -m lumbar train ...`: the command-line front end of `lumbar.train.loop.train`.

Precedence of settings: the `TrainConfig` defaults, then `--config FILE.yaml`, then the explicit flags, then
`--set key=value` pairs (any config field). Works the same under `torchrun --nproc_per_node=N -m lumbar train`.
"""

from __future__ import annotations

import argparse

from lumbar.overrides import parse_assignments
from lumbar.train.config import load_yaml_overrides, make_config

#: Flags that map one-to-one onto config fields (None = not given).
FLAG_FIELDS = ("data_dir", "cache", "arch", "mode", "folds", "epochs", "out", "batch_size", "lr", "device",
               "workers", "seed")


def config_from_args(args: argparse.Namespace):
    """The resolved `TrainConfig` of a parsed command line."""
    config = make_config(load_yaml_overrides(args.config), source=args.config) if args.config else make_config()
    flags = {k: getattr(args, k) for k in FLAG_FIELDS if getattr(args, k, None) is not None}
    if args.condition:
        flags["conditions"] = ",".join(args.condition)
    config = make_config(flags, base=config, source="command line")
    return make_config(parse_assignments(args.set), base=config, source="--set")


def cli_train(args: argparse.Namespace) -> int:
    """Train, print the epoch lines and the OOF score (a configuration or data error: exit 2, lumbar.cli)."""
    from lumbar.train.loggers import PrintLogger
    from lumbar.train.loop import train

    result = train(config_from_args(args), logger=PrintLogger())
    print(f"run: {result.run_dir}  oof: {result.oof_path}")
    if result.oof_score:
        print(" ".join(f"{k}={v:.6f}" for k, v in result.oof_score.items() if isinstance(v, float)))
    return 0

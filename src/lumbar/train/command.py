"""`python -m lumbar train ...`: the command-line front end of `lumbar.train.loop.train`.

Precedence of settings, as in every command (`lumbar.core.settings.command_settings`): the `TrainConfig`
defaults, then a run's wiring (`--run RUN`: its crop caches and the localizer's errors, as `03_train` wires
them: `lumbar.train.member`), then `--config FILE.yaml`, then the explicit flags, then `--set key=value` pairs
(any config field). Works the same under `torchrun --nproc_per_node=N -m lumbar train`.
"""

from __future__ import annotations

import argparse

from lumbar.core.settings import command_settings, given_flags
from lumbar.train.config import TrainConfig, load_yaml_overrides, make_config
from lumbar.train.loggers import PrintLogger
from lumbar.train.loop import train
from lumbar.train.member import member_overrides

#: Flags that map one-to-one onto config fields (None = not given).
FLAG_FIELDS = (
    "data_dir",
    "cache",
    "arch",
    "mode",
    "folds",
    "epochs",
    "out",
    "batch_size",
    "lr",
    "device",
    "workers",
    "seed",
)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved `TrainConfig` of a parsed command line."""
    base = make_config()
    if getattr(args, "run", None):
        if not args.arch:
            raise ValueError("--run needs --arch (the architecture to train on the run's crops)")
        wiring = member_overrides(args.run, args.arch, crops=args.crops)
        base = make_config(wiring, source=f"--run {args.run}")
    flags = given_flags(args, FLAG_FIELDS)
    if args.condition:
        flags["conditions"] = ",".join(args.condition)
    config = (args.config, load_yaml_overrides(args.config)) if args.config else None
    return command_settings(base, flags, args.set, config=config)


def cli_train(args: argparse.Namespace) -> int:
    """Train, print the epoch lines and the OOF score (a configuration or data error: exit 2, lumbar.cli)."""

    result = train(config_from_args(args), logger=PrintLogger())
    print(f"run: {result.run_dir}  oof: {result.oof_path}")
    if result.oof_score:
        print(" ".join(f"{k}={v:.6f}" for k, v in result.oof_score.items() if isinstance(v, float)))
    return 0

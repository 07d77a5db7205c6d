"""Checkpoints as plain state dicts, loadable with `torch.load(..., weights_only=True)`: every `.pt` the
classifiers, the localizer (`save_model`) and pretrained weights (`lumbar.models.base`) use goes through here.

`final.pt` (select="last", the default) and `best.pt` (select="best") hold only the model's state dict (the
EMA weights when EMA is on): the weights after the last epoch, or of the epoch with the best validation score.
`result.json` names the one inference loads.
`last.pt` holds everything a killed run needs to continue exactly: model, optimizer, scheduler, grad scaler,
EMA, the epoch just finished, early-stopping state, the epoch history and torch's RNG state (the only global
random state the loop consumes: dropout; sampling and augmentation derive from (seed, epoch, sample)).
Files are written to a temporary name and renamed, so a kill during a save leaves the previous file intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lumbar.core.atomic import atomic_path

BEST = "best.pt"
FINAL = "final.pt"
LAST = "last.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """`torch.save` atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def save_model(model: torch.nn.Module, path: str | Path) -> Path:
    """A model's state dict as CPU tensors (`save_checkpoint`), so it loads on any device."""
    return save_checkpoint({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no pickled code is ever executed).

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA, when present) RNG state."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA state only when CUDA is present)."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

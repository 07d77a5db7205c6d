"""What the weights dataset looks like: written by `kaggle-bundle`, read by the kernel's first check.

    weights/
        bundle.json           every file of the run with its size, the dataset's id, the upload command
        README.md             the model card
        dataset-metadata.json read by the Kaggle CLI, never uploaded
        run/                  the run folder: manifest.json and every file it references (checkpoints, ...)

The Kaggle CLI uploads the plain files of a folder; a folder inside it only with `--dir-mode zip` (or `tar`),
which archives it (`run/` -> `run.zip`, its contents at the archive's root). With the default `--dir-mode
skip` it prints "Skipping folder: run" and the dataset holds bundle.json and README.md alone. Kaggle unpacks
an uploaded archive into a folder named after it, so the kernel sees `/kaggle/input/<slug>/run/...`; the
kernel also accepts the archive's contents at the dataset's root, and an archive left packed (it unpacks it
into a scratch folder), so the run is found whichever of these the upload produced
(`lumbar.kaggle.preflight`). Keeping the whole run in one folder makes these the only layouts: one archive, no
name clashes.
"""

from __future__ import annotations

import shlex

#: The bundle's index of the run's files (a plain file: it arrives however the folders were uploaded).
BUNDLE_INDEX = "bundle.json"
#: The run folder inside the weights dataset.
RUN_FOLDER = "run"
#: What the Kaggle CLI does with folders in the upload (`--dir-mode`): its default, `skip`, drops them.
DIR_MODE = "zip"
#: The accelerator the kernel asks for (`machine_shape` of kernel-metadata.json; the web UI's "GPU T4 x2").
#: Kaggle retired the P100; a T4 (compute capability 7.5) computes float16, not bfloat16, natively.
ACCELERATOR = "NvidiaTeslaT4"


def upload_command(folder: str, new: bool = True) -> str:
    """The Kaggle CLI command that uploads a bundle folder with its subfolders (a first version or a new
    one)."""
    verb = "create" if new else "version"
    message = "" if new else " -m " + shlex.quote("new weights")
    return f"kaggle datasets {verb} -p {shlex.quote(folder)} --dir-mode {DIR_MODE}{message}"

"""The Kaggle CLI, run for real on a command line, with Kaggle's servers stood in by folders.

The CLI's own parser and upload code run (which files of a folder it uploads, which folders it skips without
`--dir-mode`, how it archives the others); only its network calls are replaced, by `KaggleServer`:
- an uploaded file is kept as a blob;
- creating a dataset publishes its blobs under `<kaggle>/input/<slug>/`: a plain file as it is, an archive
  unpacked into a folder named after it (`run.zip` -> `run/`), the way Kaggle shows an uploaded archive
  (`unpack="root"` puts its contents at the dataset's root instead, `unpack="none"` leaves it packed: the kernel
  accepts those too);
- pushing a kernel keeps the request (its notebook text, accelerator, sources); a submission keeps its request.

Importing the CLI needs credentials (it authenticates on import, offline): `cli()` sets fake ones first.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock


class KaggleServer:
    """What Kaggle would hold after the commands: datasets mounted under `root/input`, kernels, submissions."""

    def __init__(self, root: Path, unpack: str = "folder") -> None:
        self.root, self.unpack = root, unpack
        self.blobs = root.parent / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.kernels: list = []
        self.submissions: list = []

    # -- the CLI's network calls ------------------------------------------------------------------------------
    def upload_blob(self, api, path, quiet, blob_type, upload_context, content_type=None):
        token = f"{len(list(self.blobs.iterdir()))}-{os.path.basename(path)}"
        shutil.copy2(path, self.blobs / token)
        return token

    def dataset_status(self, api, dataset, format=None):
        from requests.exceptions import HTTPError

        raise HTTPError(f"404: {dataset} does not exist yet")

    def client(self, api):
        server = self
        return contextlib.nullcontext(SimpleNamespace(
            datasets=SimpleNamespace(dataset_api_client=SimpleNamespace(create_dataset=server.create_dataset)),
            kernels=SimpleNamespace(kernels_api_client=SimpleNamespace(save_kernel=server.save_kernel)),
            competitions=SimpleNamespace(competition_api_client=SimpleNamespace(
                create_code_submission=server.create_code_submission)),
        ))  # fmt: skip

    # -- what the server does with the requests ----------------------------------------------------------------
    def create_dataset(self, request):
        mount = self.root / "input" / request.slug
        mount.mkdir(parents=True)
        for f in request.files:
            name = f.token.split("-", 1)[1]
            blob = self.blobs / f.token
            stem, ext = os.path.splitext(name)
            if ext in (".zip", ".tar") and self.unpack != "none":
                shutil.unpack_archive(blob, mount / stem if self.unpack == "folder" else mount)
            else:
                shutil.copy2(blob, mount / name)
        url = f"https://www.kaggle.com/datasets/{request.owner_slug}/{request.slug}"
        return SimpleNamespace(status="ok", error="", url=url, invalidTags=None)

    def save_kernel(self, request):
        self.kernels.append(request)
        return SimpleNamespace(error=None, invalidTags=None, invalidDatasetSources=None,
                               invalidCompetitionSources=None, invalidKernelSources=None,
                               versionNumber=len(self.kernels), url=f"https://www.kaggle.com/code/{request.slug}")  # fmt: skip

    def create_code_submission(self, request):
        self.submissions.append(request)
        return SimpleNamespace(message="Your submission was successfully saved", ref=len(self.submissions))

    def kernel_notebook(self, path: Path) -> Path:
        """The notebook the last push sent, as Kaggle would run it."""
        path.write_text(self.kernels[-1].text)
        return path


def cli(command: str, server: KaggleServer, cwd: Path | None = None) -> str:
    """Run one `kaggle ...` command line with the real CLI against `server`; its printed output.

    Raises:
        SystemExit: the CLI refused the command (bad flags: argparse; a failed command: exit code 1).
    """
    with mock.patch.dict(os.environ, {"KAGGLE_USERNAME": "tester", "KAGGLE_KEY": "0" * 32}):
        import kaggle.cli
        from kaggle.api.kaggle_api_extended import KaggleApi

    argv = shlex.split(command)
    assert argv[0] == "kaggle", command
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "argv", argv))
        for name, fake in (("_upload_blob", server.upload_blob), ("dataset_status", server.dataset_status),
                           ("build_kaggle_client", server.client)):
            stack.enter_context(mock.patch.object(KaggleApi, name, lambda api, *a, _f=fake, **k: _f(api, *a, **k)))
        stack.enter_context(contextlib.redirect_stdout(out))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        kaggle.cli.main()
    return out.getvalue()


def readme_block(readme: Path, heading: str) -> list[str]:
    """The command lines of the first ```bash block under `heading` (comments and continuations joined)."""
    text = readme.read_text()
    section = text[text.index(heading):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[: block.index("```")]
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.split("  #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        current += line.rstrip("\\").strip() + " " if line else ""
        if line and not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def parse(command: str) -> tuple[str, dict]:
    """The Kaggle CLI's reading of a command line, run nowhere: (the API method it calls, its arguments).

    Raises:
        SystemExit: the CLI's parser refused the command.
    """
    with mock.patch.dict(os.environ, {"KAGGLE_USERNAME": "tester", "KAGGLE_KEY": "0" * 32}):
        import kaggle.cli
        from kaggle.api.kaggle_api_extended import KaggleApi

    called: list[tuple[str, dict]] = []
    names = [n for n in dir(KaggleApi) if n.endswith("_cli")]
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "argv", shlex.split(command)))
        for name in names:
            stack.enter_context(mock.patch.object(KaggleApi, name,
                                                  lambda api, *a, _n=name, **k: called.append((_n, k)) or None))
        kaggle.cli.main()
    return called[0]

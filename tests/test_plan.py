"""`pipeline --plan` (lumbar.pipeline.cost) and `pipeline --run-dir`: the cost printed before a run, checked
against what the stages really write; the run folder placed anywhere, nothing in the checkout."""

import json
import re

import nbformat
import pytest
import torch
from torch import nn

from lumbar.cli import main
from lumbar.core.manifest import read_manifest
from lumbar.core.paths import PROJECT_ROOT
from lumbar.core.tables import load_coordinates
from lumbar.data.index import build_index
from lumbar.pipeline.cost import (
    Estimate,
    StepCost,
    cache_bytes,
    checkpoint_bytes,
    crop_array_bytes,
    crop_counts,
    indexed_rows,
    model_figures,
    primary_crops,
    state_dict_bytes,
    totals,
)
from lumbar.preprocess.cache import build_cache
from lumbar.preprocess.config import RoiConfig

#: How close an estimate of bytes must come to the bytes written (tables and zip records are approximated).
TOLERANCE = 0.05
CONFIGS = PROJECT_ROOT / "configs"


def _plan(config, data_dir, run_dir, *extra):
    return main(["pipeline", "--config", str(CONFIGS / config), "--plan", "--data-dir", str(data_dir),
                 "--run-dir", str(run_dir), *extra])  # fmt: skip


def _blocks(out: str) -> dict[str, list[str]]:
    """The plan's lines per step (a step's block starts with its output name and its device in brackets)."""
    blocks, current = {}, None
    for line in out.splitlines():
        head = re.match(r"^(\S+)  \[(CPU|one GPU)\]$", line)
        if head:
            current = blocks.setdefault(head.group(1), [])
        elif line.startswith("  ") and current is not None:
            current.append(line.strip())
        else:
            current = None
    return blocks


@pytest.mark.parametrize("config, extra", [("demo.yaml", ["--set", "EPOCHS=2"]),
                                           pytest.param("full.yaml", ["--allow-synthetic"], marks=pytest.mark.slow)])  # fmt: skip
def test_plan_prints_every_step_with_samples_disk_ram_and_time(synthetic_dir, tmp_path, capsys, config, extra):
    from lumbar.pipeline import load_config

    run = tmp_path / "run"
    assert _plan(config, synthetic_dir, run, *extra) == 0
    out = capsys.readouterr().out
    blocks = _blocks(out)
    assert list(blocks) == [s.output for s in load_config(CONFIGS / config).steps]
    for name, lines in blocks.items():
        kinds = [line.split()[0] for line in lines]
        assert {"samples", "disk", "RAM", "time"} <= set(kinds), name
        assert all(re.search(r"\s(measured|projected): ", line) for line in lines if line.split()[0] != "samples"
                   and line.split()[0] != "note"), name  # fmt: skip
        if name.startswith(("02", "03")):
            assert "epoch" in kinds, name  # time per epoch on the step's device
    trained = [lines for name, lines in blocks.items() if name.startswith("03")]
    if config == "demo.yaml":  # --set reaches the plan as it reaches the run; the config's folds too
        assert all("3 fold(s) x 2 epochs" in lines[0] for lines in trained)
    else:
        assert [re.search(r"x (\d+) epochs", lines[0]).group(1) for lines in trained] == ["10", "16", "12", "15"]
        assert "second views, at most axial_canal" in blocks["01_preprocess"][0]
    assert re.search(r"^total: disk .* free there\); peak RAM .*; time ", out, re.MULTILINE)
    assert "ASSUMED" in out and "sources:" in out and "scale.md" in out and "results.md" in out
    assert [p.name for p in run.iterdir()] == ["index_train.parquet"]  # the plan wrote its index cache only


def test_plan_of_a_real_data_config_refuses_synthetic_data_without_the_flag(synthetic_dir, tmp_path, capsys):
    assert _plan("full.yaml", synthetic_dir, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "is meant for the real data" in err and "--allow-synthetic" in err
    assert not (tmp_path / "run").exists()  # stopped before reading the data


def test_plan_warns_when_the_run_does_not_fit_its_disk(synthetic_dir, tmp_path, capsys, monkeypatch):
    from lumbar.pipeline import cost

    monkeypatch.setattr(cost, "free_bytes", lambda path: 1024)
    assert _plan("demo.yaml", synthetic_dir, tmp_path / "run", "--only", "01") == 0
    out = capsys.readouterr().out
    assert list(_blocks(out)) == ["01_preprocess"]
    assert re.search(r"^WARNING: the run writes about .* but only 1\.0 KiB are free .*--run-dir", out, re.MULTILINE)


def test_crop_cache_estimate_equals_what_the_cache_writes(synthetic_dir, tmp_path):
    """The formula of 01's and 02's cache sizes against a cache `build_cache` writes, second views included."""
    roi = RoiConfig(size=24, before=1, after=1, views=("axial_canal", "parasagittal_recess"))
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    index, _ = build_index(synthetic_dir, "train", progress=False)
    report = build_cache(coords, synthetic_dir, "train", tmp_path, roi, progress=False)
    counts = crop_counts(indexed_rows(coords, index), roi.views)
    assert primary_crops(counts) == len(report.samples)
    assert counts["spinal_canal_stenosis"] == (report.samples["condition"] == "spinal_canal_stenosis").sum()
    built_views = report.views["view"].value_counts()
    assert all(counts[v] >= built_views.get(v, 0) for v in roi.views)  # an upper bound: far views are not built
    arrays = list(report.cache_dir.rglob("*.npy"))
    assert {p.stat().st_size for p in arrays} == {crop_array_bytes(roi)}  # every array exactly as computed
    written = sum(p.stat().st_size for p in report.cache_dir.rglob("*") if p.is_file())
    estimate = cache_bytes(counts, roi)
    assert abs(estimate - written) <= TOLERANCE * written, (estimate, written)


def test_checkpoint_estimate_is_the_parameter_count_times_four(tmp_path):
    """A state dict saved by torch against the estimate from the same model built on the meta device."""
    from lumbar.models import build_model

    kwargs = {"in_channels": 1, "num_outputs": 3, "depth": 5, "pretrained": "none", "num_meta": 6}
    model = build_model("cnn3d", **kwargs)
    path = tmp_path / "final.pt"
    torch.save(model.state_dict(), path)
    size, tensors, params, flops = model_figures(lambda: build_model("cnn3d", **kwargs),
                                                 lambda: (torch.zeros(1, 1, 5, 32, 32), torch.zeros(1, 6)))
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert (size, tensors, params) == state_dict_bytes(model) and size == 4 * params + buffers
    assert params == sum(p.numel() for p in model.parameters()) and flops > 0
    assert abs(checkpoint_bytes(size, tensors, params) - path.stat().st_size) <= TOLERANCE * path.stat().st_size


class _Midsize(nn.Module):
    """A stand-in whose weights outweigh torch's per-tensor records, so the sizes compare: ~0.3 M parameters."""

    def __init__(self, in_channels, num_outputs, num_meta=0):
        super().__init__()
        self.conv, self.norm = nn.Conv3d(in_channels, 16, 3, padding=1), nn.BatchNorm3d(16)
        self.head = nn.Sequential(nn.Linear(16 + num_meta, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(),
                                  nn.Linear(256, num_outputs))  # fmt: skip

    def forward(self, x, meta=None):
        f = torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3, 4))
        return self.head(torch.cat([f, meta], dim=1) if meta is not None else f)


@pytest.mark.parametrize("ema_decay", [0.9, 0.0])
def test_last_checkpoint_estimate_matches_a_trained_fold(tiny, tmp_path, monkeypatch, ema_decay):
    """`last.pt` holds the model, its EMA (when on) and AdamW's moments: 4 (3) x the weights, as the plan counts."""
    from _train_data import engine_config

    import lumbar.models
    from lumbar.train import train

    monkeypatch.setattr(lumbar.models, "build_model", lambda name, in_channels, num_outputs, depth, num_meta=0,
                        **kw: _Midsize(in_channels, num_outputs, num_meta), raising=False)  # fmt: skip
    train(engine_config(tiny, tmp_path / "m", epochs=1, ema_decay=ema_decay, keep_last=True))
    fold = tmp_path / "m" / "spinal" / "fold0"
    size, tensors, params = state_dict_bytes(_Midsize(1, 3, 5))
    for name, kind in (("final.pt", "state"), ("last.pt", "last")):
        written = (fold / name).stat().st_size
        assert abs(checkpoint_bytes(size, tensors, params, kind, ema_decay > 0) - written) <= TOLERANCE * written


def test_a_parallel_group_overlaps_in_time_and_adds_up_in_memory():
    def cost(name, group, parallel, ram, seconds):
        return StepCost(name, "", Estimate(1, ""), Estimate(ram, ""), Estimate(seconds, ""), "CPU", group=group,
                        parallel=parallel)  # fmt: skip

    costs = [cost("01", 1, False, 5, 10), cost("03a", 2, True, 3, 100), cost("03b", 2, True, 4, 50),
             cost("04", 3, False, 6, 1)]  # fmt: skip
    assert totals(costs) == (4, 111, 7, "03a + 03b")


@pytest.mark.slow
def test_run_dir_puts_the_whole_run_outside_the_checkout(synthetic_dir, tmp_path, monkeypatch):
    """A real notebook run with a relative --run-dir (read from the current folder): its files, executed copy and
    manifest land there, and the checkout's runs/ is left as it was."""
    runs = PROJECT_ROOT / "runs"
    before = sorted(runs.rglob("*")) if runs.exists() else None
    monkeypatch.chdir(tmp_path)
    args = ["pipeline", "--config", str(CONFIGS / "demo.yaml"), "--only", "00_eda", "--data-dir", str(synthetic_dir),
            "--run-dir", "elsewhere/demo", "--set", "MAX_EXAMPLE_STUDIES=0"]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "elsewhere" / "demo"
    assert read_manifest(run)["notebooks"]["00_eda"]["status"] == "ok"
    assert (run / "00_eda.ipynb").is_file() and json.loads((run / "eda" / "summary.json").read_text())["studies"] == 3
    assert (sorted(runs.rglob("*")) if runs.exists() else None) == before


def test_notebooks_write_only_under_run_dir():
    """Past their parameters cell no notebook names a folder of its own: every path comes from RUN_DIR (05's
    submission from OUT), so --run-dir moves every file of a run."""
    for path in sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        body = [c.source for c in cells if "parameters" not in c.metadata.get("tags", [])]
        assert len(body) == len(cells) - 1, path.name
        for source in body:
            assert not re.search(r"""["'](\.\./|runs/|/)""", source), (path.name, source)

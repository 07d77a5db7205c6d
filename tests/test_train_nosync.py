"""A training step does not wait for the device, and on CPU it computes what the synchronising step did.

The no-sync pieces (`RunningMean`, `ModelEma`, the loss read once per epoch) are checked against what they
replace: the Python sum of `float(loss) * len(x)` and torch's `AveragedModel`, exactly. On a CPU-only machine
"no wait" is shown by counting the reads of tensor values (`float`, `item`, `bool`) in an epoch: they do not
grow with the number of steps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import engine_config
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lumbar.core.checkpoint import load_checkpoint
from lumbar.core.runtime import RunningMean, make_adamw, setup_runtime, teardown_runtime
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.fit import fit
from lumbar.train.ema import ModelEma
from lumbar.train.loop import train

pytestmark = pytest.mark.usefixtures("tiny_model")


def _config(tiny, out, **overrides):
    return engine_config(tiny, out, **{"ema_decay": 0.9, **overrides})


def test_running_mean_is_the_python_sum_of_float_losses():
    rng = np.random.default_rng(0)
    losses = [torch.tensor(v, dtype=torch.float32) for v in rng.random(200) * 3]
    sizes = rng.integers(1, 17, 200).tolist()
    meter, total = RunningMean(torch.device("cpu")), 0.0
    for loss, n in zip(losses, sizes):
        meter.add(loss, n)
        total += float(loss.detach()) * n
    assert meter.sum() == total and meter.count == sum(sizes)
    assert meter.value() == total / sum(sizes)
    assert np.isnan(RunningMean(torch.device("cpu")).value())


def test_model_ema_matches_averaged_model_and_its_checkpoints():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    ours = ModelEma(model, 0.9)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()  # also moves the BatchNorm buffers
        opt.step()
        ours.update_parameters(model)
        torchs.update_parameters(model)
    a, b = ours.state_dict(), torchs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.updates == 5 and int(ours.n_averaged) == 5
    resumed = ModelEma(model, 0.9)
    resumed.load_state_dict(torchs.state_dict())  # an older run's EMA checkpoint
    assert resumed.updates == 5


def test_epoch_loss_is_the_per_step_sum_and_reads_the_device_once_per_epoch(tiny, tmp_path, monkeypatch):
    from lumbar.train import loop

    steps = []
    build_loss = loop.build_loss

    def recording_loss(*args, **kwargs):
        inner = build_loss(*args, **kwargs)

        def loss_fn(logits, target, w):
            loss = inner(logits, target, w)
            if torch.is_grad_enabled():  # training steps (validation runs under no_grad)
                steps.append((loss.detach().clone(), len(logits)))
            return loss

        return loss_fn

    monkeypatch.setattr(loop, "build_loss", recording_loss)
    reads = []
    real_epoch = loop._train_epoch

    def counted_epoch(*args, **kwargs):
        count = {"n": 0}
        originals = {name: getattr(torch.Tensor, name) for name in ("__float__", "item", "__bool__")}

        def counting(name):
            def read(self, *a, **k):
                count["n"] += 1
                return originals[name](self, *a, **k)
            return read

        for name in originals:
            monkeypatch.setattr(torch.Tensor, name, counting(name))
        try:
            stats = real_epoch(*args, **kwargs)
        finally:
            for name, fn in originals.items():
                monkeypatch.setattr(torch.Tensor, name, fn)
        reads.append((stats["batches"], count["n"]))
        return stats

    monkeypatch.setattr(loop, "_train_epoch", counted_epoch)
    for batch_size in (8, 2):  # 2 vs 10 steps an epoch
        steps.clear()
        result = train(_config(tiny, tmp_path / f"b{batch_size}" / "run", batch_size=batch_size, epochs=1))
        history = pd.read_csv(result.run_dir / "spinal" / "fold0" / "history.csv")
        total = 0.0
        for loss, n in steps:  # what the loop summed before: float(loss) * len(x), step by step
            total += float(loss) * n
        assert history["train_loss"].iloc[0] == total / sum(n for _, n in steps)
    (few_steps, few_reads), (many_steps, many_reads) = reads
    assert many_steps >= 4 * few_steps and many_reads == few_reads, reads


def test_val_every_and_checkpoint_every_keep_the_predictions(tiny, tmp_path):
    every = train(_config(tiny, tmp_path / "every" / "run", epochs=3))
    sparse = train(_config(tiny, tmp_path / "sparse" / "run", epochs=3, val_every=2, checkpoint_every=2,
                           folds_csv=str(tmp_path / "every" / "folds.csv"), keep_last=True))
    pd.testing.assert_frame_equal(pd.read_csv(every.oof_path), pd.read_csv(sparse.oof_path), check_exact=True)
    history = pd.read_csv(sparse.run_dir / "spinal" / "fold0" / "history.csv")
    assert history["val_loss"].isna().tolist() == [True, False, False]  # epoch 2 (every 2nd) and 3 (the last)
    assert load_checkpoint(sparse.run_dir / "spinal" / "fold0" / "last.pt")["epoch"] == 3
    with pytest.raises(ValueError, match="val_every=0"):
        train(_config(tiny, tmp_path / "bad" / "run", val_every=0))


def test_a_checkpoint_interval_resumes_from_the_last_one_written(tiny, tmp_path):
    class KillAtEpoch3:
        def log_epoch(self, unit, fold, row):
            if row["epoch"] == 3:
                raise RuntimeError("killed")

        def log_result(self, result):
            pass

    config = _config(tiny, tmp_path / "k" / "run", epochs=4, checkpoint_every=2)
    with pytest.raises(RuntimeError, match="killed"):
        train(config, logger=KillAtEpoch3())
    last = tmp_path / "k" / "run" / "spinal" / "fold0" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 2
    resumed = train(config)
    whole = train(_config(tiny, tmp_path / "w" / "run", epochs=4, folds_csv=str(tmp_path / "k" / "folds.csv")))
    pd.testing.assert_frame_equal(pd.read_csv(whole.oof_path), pd.read_csv(resumed.oof_path), check_exact=True)


def test_localizer_fit_history_is_the_mean_of_float_losses():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    seen = []

    def loss_fn(out, target):
        loss = (out - target).pow(2).mean()
        seen.append(float(loss.detach()))
        return loss

    runtime = setup_runtime("cpu", threads=1)
    try:
        config = LocalizerConfig.from_dict({"batch_size": 8, "lr": 1e-2, "device": "cpu"})
        history = fit(model, 20, lambda idx, rng, gen: (x[idx], y[idx]), loss_fn, 2, config, runtime,
                      progress=False)
    finally:
        teardown_runtime(runtime)
    assert history == [float(np.mean(seen[:3])), float(np.mean(seen[3:]))]


def _adamw_steps(device: torch.device) -> tuple[torch.optim.AdamW, list[torch.Tensor], list[torch.Tensor]]:
    """Three steps of `make_adamw` and of torch's plain (for-loop) AdamW on the same parameters and gradients:
    (the optimizer, its parameters, the plain one's)."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    ours = [nn.Parameter(p.clone().to(device)) for p in start]
    plain = [nn.Parameter(p.clone().to(device)) for p in start]
    optimizer = make_adamw(ours, 1e-2, 0.05, device)
    reference = torch.optim.AdamW(plain, lr=1e-2, weight_decay=0.05, foreach=False, fused=False)
    for step in grads:
        for opt, params in ((optimizer, ours), (reference, plain)):
            for p, g in zip(params, step):
                p.grad = g.to(device)
            opt.step()
    return optimizer, [p.detach().cpu() for p in ours], [p.detach().cpu() for p in plain]


def test_adamw_is_fused_on_cpu_and_updates_as_plain_adamw():
    optimizer, ours, plain = _adamw_steps(torch.device("cpu"))
    assert optimizer.defaults["fused"] is True
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not make_adamw([nn.Parameter(torch.zeros(3))], 1e-3, 0.0, torch.device("meta")).defaults["fused"]


@pytest.mark.gpu
def test_adamw_is_fused_on_cuda_and_updates_as_plain_adamw():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the fused CUDA AdamW is checked on a GPU machine only")
    optimizer, ours, plain = _adamw_steps(torch.device("cuda"))
    assert optimizer.defaults["fused"] is True
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channels_last_on_cpu_only_for_models_that_ask_for_it():
    runtime = setup_runtime("cpu", channels_last=True, threads=1)
    off = setup_runtime("cpu", channels_last=False, threads=1)
    try:
        from lumbar.models.registry import build_model  # the registry's, not the tiny stand-in

        cnn = build_model("cnn3d", in_channels=1, num_outputs=3, depth=5, num_meta=5)
        resnet = build_model("resnet3d_10", in_channels=1, num_outputs=3, depth=5, num_meta=5)
        assert runtime.memory_format(cnn) == torch.channels_last_3d and off.memory_format(cnn) is None
        assert runtime.memory_format(resnet) is None and not runtime.channels_last
    finally:
        teardown_runtime(off)
        teardown_runtime(runtime)


def test_the_allocator_keeps_freed_blocks_on_linux():
    import sys

    from lumbar.core.runtime import keep_freed_memory

    assert keep_freed_memory() is sys.platform.startswith("linux")  # glibc's mallopt accepted both settings

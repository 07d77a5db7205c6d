"""Device, AMP and threads are decided once; on CPU AMP and channels-last stay off."""

from __future__ import annotations

import pytest
import torch

from lumbar.core.runtime import (
    UnsupportedGPUError,
    amp_dtype_for,
    arch_supported,
    resolve_device,
    setup_runtime,
    teardown_runtime,
)


def test_cpu_runtime_has_no_amp_and_restores_threads():
    before = torch.get_num_threads()
    runtime = setup_runtime("cpu", amp=True, channels_last=True, threads=1)
    assert runtime.device.type == "cpu" and runtime.amp_dtype is None and not runtime.channels_last
    assert runtime.is_main and not runtime.distributed and not runtime.needs_scaler
    assert torch.get_num_threads() == 1 and runtime.all_gather(3) == [3]
    teardown_runtime(runtime)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_is_an_error():
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(("capability", "dtype"), [
    ((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),  # H100, A100, A10/L4-class
    ((7, 5), torch.float16), ((7, 0), torch.float16), ((6, 0), torch.float16),  # T4, V100, P100: no native bf16
    ((6, 1), None), ((5, 2), None),  # GTX 10xx/P40 (fp16 at 1/64 rate), Maxwell: float32
])  # fmt: skip
def test_the_autocast_dtype_is_what_the_gpu_computes_natively(capability, dtype):
    assert amp_dtype_for(capability) == dtype


def test_a_build_runs_on_its_own_architectures_their_minor_successors_and_through_ptx():
    archs = ["sm_75", "sm_80", "sm_90", "compute_90"]
    assert arch_supported((7, 5), archs) and arch_supported((8, 6), archs)  # sm_80 cubins run on 8.6
    assert arch_supported((12, 0), archs)  # PTX of compute_90 compiles for newer GPUs
    assert not arch_supported((6, 0), archs) and not arch_supported((7, 0), archs)
    assert not arch_supported((7, 0), ["sm_75"])  # a cubin never runs on an older minor version


def _fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])


@pytest.mark.parametrize(("name", "capability", "dtype", "scaler"), [
    ("Tesla T4", (7, 5), torch.float16, True), ("NVIDIA A100-SXM4-80GB", (8, 0), torch.bfloat16, False),
])  # fmt: skip
def test_setup_runtime_picks_the_precision_prints_it_once_and_the_run_records_it(monkeypatch, capsys, name, capability,
                                                                                 dtype, scaler):  # fmt: skip
    _fake_gpu(monkeypatch, name, capability)
    first = setup_runtime("cuda", amp=True, channels_last=False, benchmark=False)
    second = setup_runtime("cuda", amp=True, channels_last=False, benchmark=False)
    assert first.amp_dtype == dtype and first.needs_scaler == scaler
    sm = f"sm_{capability[0]}{capability[1]}"
    assert first.precision == f"{str(dtype)[6:]} autocast{' + GradScaler' if scaler else ''} ({name}, {sm})"
    assert capsys.readouterr().out.count("precision: ") <= 1  # once per process, however many runtimes
    assert setup_runtime("cuda", amp=False, benchmark=False).precision == f"float32 ({name}, {sm})"
    for runtime in (first, second):
        teardown_runtime(runtime)


def test_setup_runtime_refuses_a_gpu_the_build_was_not_compiled_for(monkeypatch):
    _fake_gpu(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0))
    with pytest.raises(UnsupportedGPUError, match=r"Tesla P100-PCIE-16GB \(sm_60\) is not supported by this torch build"):
        setup_runtime("cuda", benchmark=False)

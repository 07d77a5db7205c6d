"""Device, AMP and threads are decided once; on CPU AMP and channels-last stay off."""

from __future__ import annotations

import pytest
import torch

from lumbar.train.runtime import resolve_device, setup_runtime, teardown_runtime


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

"""Device names as the CLI, the API and ComfyUI's model management hand them over: CUDA and Intel
XPU devices are numbered (an index beyond what torch sees is refused by name, no index means the
backend's current device), MPS and the CPU are not, anything else is refused with what is
expected. The GPU backends are answered by injecting torch's own availability functions, as this
machine has none."""

from __future__ import annotations

import pytest
import torch

from pisa_core.errors import PiSAError
from pisa_core.inference import hardware, memory


@pytest.fixture
def two_xpus(monkeypatch):
    """torch answering as on a machine with two Intel XPUs, the second current, and no CUDA."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    monkeypatch.setattr(torch.xpu, "device_count", lambda: 2)
    monkeypatch.setattr(torch.xpu, "current_device", lambda: 1)
    monkeypatch.setattr(torch.xpu, "empty_cache", lambda: emptied.append(True))
    return emptied


def test_xpu_devices_are_numbered_like_cuda_ones(two_xpus):
    assert hardware.parse_device("xpu") == torch.device("xpu", 1)  # the current one, as ComfyUI uses it
    assert hardware.parse_device("xpu:0") == torch.device("xpu", 0)
    assert hardware.parse_device(torch.device("xpu", 1)) == torch.device("xpu", 1)
    with pytest.raises(PiSAError, match=r"^device 'xpu:2': there are only 2 Intel XPU\(s\) \(xpu:0\.\.xpu:1\)\.$"):
        hardware.parse_device("xpu:2")
    assert hardware.default_device() == torch.device("xpu")
    with pytest.raises(PiSAError, match=r"torch sees no CUDA GPU here \(available: cpu, xpu:0, xpu:1\)"):
        hardware.parse_device("cuda")


def test_cached_xpu_memory_is_released_after_an_allocation_failure(two_xpus):
    memory.release_cached_memory()
    assert two_xpus == [True]


def test_absent_and_unknown_devices_are_refused_by_name():
    if torch.xpu.is_available():
        pytest.skip("this machine has an Intel XPU")
    with pytest.raises(PiSAError, match=r"^device 'xpu': torch sees no Intel XPU here \(available: cpu"):
        hardware.parse_device("xpu")
    for name in ("hpu", "privateuseone:0"):
        with pytest.raises(PiSAError, match=rf"^device '{name}' is not supported; expected cpu, cuda, cuda:N, xpu, "
                                            r"xpu:N or mps\.$"):
            hardware.parse_device(name)
    with pytest.raises(PiSAError, match=r"is not a device name; expected cpu, cuda, cuda:N, xpu, xpu:N or mps\."):
        hardware.parse_device("gpu please")
    assert hardware.parse_device("cpu") == torch.device("cpu")

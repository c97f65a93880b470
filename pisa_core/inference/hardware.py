"""What the machine can do: devices, native half-precision support, fused attention kernels,
free memory.

Probes only read; they never change torch's state. `Probe` bundles the capability questions the
dtype policy (auto_dtype, below) and the attention's chunking (vae_attention.plan) ask, so tests
can answer them for a machine they are not on.
"""

from __future__ import annotations

import functools
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PiSAError
from ..options import DTYPE_CHOICES, DTYPES

DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "meta")
# GPU backends with numbered devices: torch.<type> answers is_available, device_count, current_device
NUMBERED = {"cuda": "CUDA GPU", "xpu": "Intel XPU"}
EXPECTED_DEVICES = "cpu, cuda, cuda:N, xpu, xpu:N or mps"


def default_device() -> torch.device:
    """CUDA, else an Intel XPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if device_count("xpu"):
        return torch.device("xpu")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def mps_available() -> bool:
    """Whether Apple's MPS backend is usable here."""
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def parse_device(name) -> torch.device:
    """A device that exists on this machine ('cpu', 'cuda', 'cuda:1', 'xpu', 'xpu:1', 'mps'; 'meta'
    for shape-only dry runs); PiSAError naming what is available otherwise. None:
    default_device()."""
    if name is None or name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise PiSAError(f"device {name!r} is not a device name; expected {EXPECTED_DEVICES}.") from None
    if device.type not in DEVICE_TYPES:
        raise PiSAError(f"device {name!r} is not supported; expected {EXPECTED_DEVICES}.")
    if device.type in NUMBERED:
        kind, count = NUMBERED[device.type], device_count(device.type)
        if count == 0:
            raise PiSAError(f"device {name!r}: torch sees no {kind} here ({_available()}).")
        if device.index is not None and device.index >= count:
            raise PiSAError(f"device {name!r}: there are only {count} {kind}(s) "
                            f"({device.type}:0..{device.type}:{count - 1}).")
        if device.index is None:
            device = torch.device(device.type, getattr(torch, device.type).current_device())
    if device.type == "mps" and not mps_available():
        raise PiSAError(f"device {name!r}: Apple's MPS backend is not available here ({_available()}).")
    return device


def device_count(device_type: str) -> int:
    """How many devices of a numbered GPU backend torch sees (0 where this torch build lacks it)."""
    backend = getattr(torch, device_type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return 0
    return int(backend.device_count())


def _available() -> str:
    found = ["cpu"]
    for device_type in NUMBERED:
        found += [f"{device_type}:{i}" for i in range(device_count(device_type))]
    if mps_available():
        found.append("mps")
    return "available: " + ", ".join(found)


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (x86: AVX512-BF16 or AMX; Arm: the BF16 extension),
    as torch's CPU feature detection reports it. Emulated bf16 is slower than fp32."""
    cpu = torch.cpu
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in _linux_cpu_flags()
    return False


def _linux_cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if re.match(r"^(flags|Features)\s*:", line):
            flags.update(line.split(":", 1)[1].split())
    return flags


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of that CUDA device (not of the current one)."""
    return torch.cuda.get_device_capability(device)


def fused_attention(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int) -> bool:
    """Whether torch's scaled_dot_product_attention on `device` runs a fused kernel (flash,
    memory-efficient, cuDNN, CPU flash, or a backend's own) for `heads` heads of `head_dim`
    channels in `dtype`: one that never stores the query x key score matrix. False where it falls
    back to the plain formula (math), which does store it. Asked of torch's own kernel choice on a
    tiny input on that device, so it follows the torch build, the GPU, the head size (flash
    kernels stop at 256) and kernels the user disabled; devices without that choice (MPS, older
    torch) count as math."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return False
    q = torch.empty((1, heads, 8, head_dim), dtype=dtype, device=device)
    try:
        return int(choose(q, q, q)) > 0  # SDPBackend: -1 error, 0 math, above: fused kernels
    except (RuntimeError, NotImplementedError):  # no kernel choice registered for this device
        return False


def xpu_bf16(device: torch.device) -> bool:
    """Whether that Intel XPU converts bf16 in hardware (its device properties; torch's
    is_bf16_supported also counts emulation). Assumed where torch does not report it, as on the
    Arc and Data Center GPUs torch's XPU builds support."""
    properties = torch.xpu.get_device_properties(device)
    return bool(getattr(properties, "has_bfloat16_conversions", True))


@dataclass(frozen=True)
class Probe:
    """The capability questions of the dtype policy and the attention's chunking; tests pass
    their own answers."""

    cpu_native_bf16: Callable[[], bool] = cpu_native_bf16
    cuda_capability: Callable[[torch.device], tuple[int, int]] = cuda_capability
    xpu_bf16: Callable[[torch.device], bool] = xpu_bf16
    fused_attention: Callable[[torch.device, torch.dtype, int, int], bool] = fused_attention


# ---------------------------------------------------------------------------------- dtype policy


def auto_dtype(device: torch.device, probe: Probe | None = None) -> torch.dtype:
    """The dtype `auto` means on `device`: bf16 where that device computes it natively (CUDA
    compute capability >= 8; Intel XPUs that report bf16; CPUs with AVX512-BF16/AMX or Arm BF16),
    else fp16 on GPUs and fp32 on CPUs. cuDNN has no bf16 convolutions below capability 8, and
    CPUs without native bf16 emulate it more slowly than fp32; fp16 on a CPU is slower than fp32."""
    probe = probe or Probe()
    if device.type == "cuda":
        return torch.bfloat16 if probe.cuda_capability(device)[0] >= 8 else torch.float16
    if device.type == "xpu":
        return torch.bfloat16 if probe.xpu_bf16(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and probe.cpu_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name, device: torch.device, probe: Probe | None = None) -> torch.dtype:
    """'auto' / None / 'fp32' / 'fp16' / 'bf16' / a torch.dtype -> torch.dtype."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise PiSAError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {name}.")
        return name
    if name in (None, "auto"):
        return auto_dtype(device, probe)
    if name not in DTYPES:
        raise PiSAError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {name!r}.")
    return DTYPES[name]


def free_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can use on `device`: free device memory on CUDA and XPU (with the
    allocator's cached blocks), the allocator's recommended limit minus what is allocated on MPS,
    available RAM on the CPU; None if unknown."""
    if device.type in ("cuda", "xpu"):
        backend = getattr(torch, device.type)
        if not hasattr(backend, "mem_get_info"):  # torch.xpu has it from 2.6
            return None
        free, _total = backend.mem_get_info(device)
        reserved_unused = backend.memory_reserved(device) - backend.memory_allocated(device)
        return int(free + reserved_unused)
    if device.type == "mps":
        mps = getattr(torch, "mps", None)
        recommended = getattr(mps, "recommended_max_memory", None)
        if recommended is None:
            return None
        return max(0, int(recommended() - mps.current_allocated_memory()))
    if device.type == "cpu":
        return available_ram()
    return None


def available_ram() -> int | None:
    """MemAvailable (Linux), else psutil's figure when psutil is installed, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


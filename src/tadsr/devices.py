"""Devices, dtypes, autocast and peak memory: one definition of each, for inference, training, evaluate and bench."""

from __future__ import annotations

import contextlib
import re
import resource
from pathlib import Path

import torch

from tadsr.errors import ConfigError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` / None (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``; ConfigError
    names a device that is not one, one tadsr does not run on (``meta``, ``hpu``...), or one this PyTorch build or
    machine lacks (``mps`` off Apple silicon, ``cuda`` on a CPU build, ``cuda:N`` past the last GPU)."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {spec}: not a device (use {', '.join(DEVICE_TYPES)}, cuda:N or auto)") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {spec}: tadsr does not run on {device.type} devices (use "
                          f"{', '.join(DEVICE_TYPES)} or auto)")
    if not _available(device.type):
        raise ConfigError(f"--device {spec}: {device.type.upper()} is not available on this machine or in this "
                          f"PyTorch build ({torch.__version__})")
    if device.index is not None and device.type != "cpu" and device.index >= _count(device.type):
        raise ConfigError(f"--device {spec}: this machine has {_count(device.type)} {device.type} device(s)")
    return device


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # what --device takes; each must be available here


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "mps":
        return torch.backends.mps.is_available()
    module = getattr(torch, kind, None)
    return bool(module is not None and module.is_available())


def _count(kind: str) -> int:
    """Devices of a type (1 for MPS, which has no index beyond 0)."""
    return 1 if kind == "mps" else int(getattr(torch, kind).device_count())


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute bf16 natively (Linux /proc/cpuinfo names)


def cpu_bf16_native(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively: AVX512-BF16 or AMX-BF16 on x86 (from /proc/cpuinfo's flags, or
    ``cpuinfo`` given), FEAT_BF16 on Apple silicon (sysctl). Without native support PyTorch emulates bf16, more
    slowly than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set(re.findall(r"[a-z0-9_]+", " ".join(line.partition(":")[2] for line in cpuinfo.splitlines()
                                                    if line.startswith(("flags", "Features")))))
    if flags:
        return any(flag in flags for flag in BF16_FLAGS) or "bf16" in flags  # "bf16": ARM's Features line
    import platform
    import subprocess

    if platform.system() == "Darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5).stdout
            return out.strip() == "1"
    return False


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast to ``dtype`` on ``device``; nothing for None or float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU. Call before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA allocator stats, or the process's VmHWM on Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory since ``reset_peak_memory``: CUDA max allocated, or CPU peak resident set size (MiB).

    Without /proc (not Linux) the CPU figure is the process's lifetime peak: an upper bound.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_memory_mib() -> float:
    """The process's resident set now (VmRSS, MiB; 0 without /proc)."""
    return _proc_status_mib("VmRSS")


def _proc_status_mib(field: str) -> float:
    """A ``kB`` field of /proc/self/status in MiB (Linux), 0 where there is none."""
    with contextlib.suppress(OSError):
        found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if found:
            return int(found.group(1)) / 1024
    return 0.0

"""What this process may use of the CPU: how many cores (affinity and cgroup quota) and which instruction sets.

Backends size their thread pools with :func:`allowed_cores`, so one process uses every core it is allowed and no
more (a container limited to 2 CPUs on a 64-core host must not start 64 threads). :func:`cpu_flags` lets the
automatic backend choice and the torch backend know whether bf16 (AVX-512 BF16, AMX) or INT8 dot products (VNNI)
run natively here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
AMX_FLAGS = frozenset({"amx_tile", "amx_bf16", "amx_int8"})
FP16_FLAGS = frozenset({"avx512_fp16"})
# The flags that decide which precision runs fastest here, in the order reports list them.
MATMUL_FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8")


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> float | None:
    """The cgroup CPU quota in cores (``cpu.max`` "200000 100000" -> 2.0), or None when unlimited or unknown."""
    try:
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1[0].read_text())
        period_us = int(v1[1].read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def allowed_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where bf16 matrix products run in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated."""
    return bool((cpu_flags() if flags is None else flags) & BF16_FLAGS)


def has_int8_dot(flags: frozenset[str] | None = None) -> bool:
    """True where INT8 dot-product instructions exist (AVX-512 VNNI, AVX-VNNI or AMX)."""
    return bool((cpu_flags() if flags is None else flags) & INT8_FLAGS)


def has_amx(flags: frozenset[str] | None = None) -> bool:
    """True where Intel AMX tiles exist (``amx_tile`` with bf16 or int8): bf16 and INT8 matrix products in hardware."""
    found = (cpu_flags() if flags is None else flags) & AMX_FLAGS
    return "amx_tile" in found and len(found) > 1


def has_avx512_fp16(flags: frozenset[str] | None = None) -> bool:
    """True where AVX-512 FP16 arithmetic exists (Sapphire Rapids and later)."""
    return bool((cpu_flags() if flags is None else flags) & FP16_FLAGS)


def matmul_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The flags of :data:`MATMUL_FLAGS` this CPU has, in that order (``["avx2", "avx512f", "avx512_vnni", ...]``)."""
    found = cpu_flags() if flags is None else flags
    return [f for f in MATMUL_FLAGS if f in found]


def cpu_kind(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model and its matmul flags in one line, the way reports and caches name a machine's CPU."""
    flags = matmul_flags(cpu_flags(cpuinfo))
    return f"{cpu_model_name(cpuinfo)} [{' '.join(flags) or 'no AVX2'}]"

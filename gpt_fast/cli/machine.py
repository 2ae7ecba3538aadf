"""What the benchmarks read about the machine and this process: the CPU's name and vendor (/proc/cpuinfo), the
process's resident memory and its peak (/proc/self/status), and a reset of that peak (/proc/self/clear_refs).
Linux only where it says /proc; elsewhere the CPU fields fall back to platform.processor()."""

from __future__ import annotations

import ctypes
import platform


def _cpuinfo(field: str) -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_name() -> str:
    """The CPU model, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8480+"."""
    return _cpuinfo("model name")


def cpu_vendor() -> str:
    """"AuthenticAMD", "GenuineIntel", ..."""
    return _cpuinfo("vendor_id")


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status in bytes: "VmRSS" (resident now), "VmHWM" (its peak)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Sets VmHWM to the current VmRSS (Linux >= 4.0), so a later VmHWM is the peak since this call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class _MallInfo2(ctypes.Structure):  # glibc >= 2.33: struct mallinfo2, every field a size_t
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_heap() -> dict | None:
    """The C heap as glibc's allocator sees it, summed over its arenas (mallinfo2): bytes it holds from the system
    in heaps ("held"), of those in use ("in_use") and free but kept ("free"), and in separate mmaps ("mmapped").
    None without glibc >= 2.33. A growing "free" with a flat "in_use" is fragmentation, not a leak."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"held": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}

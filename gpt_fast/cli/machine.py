"""What the benchmarks read about the machine and this process: the CPU's name and vendor (/proc/cpuinfo), the
process's resident memory and its peak (/proc/self/status), and a reset of that peak (/proc/self/clear_refs).
Linux only where it says /proc; elsewhere the CPU fields fall back to platform.processor()."""

from __future__ import annotations

import ctypes
import platform

from gpt_fast.ops.cpu_isa import cpuinfo_field

# AMD's x86 (family, model ranges) -> core, from AMD's processor programming references: a VM's cpuinfo often says
# only "AMD EPYC", while Zen 4 (AVX-512 on 256-bit units) and Zen 5 (512-bit units) run the same kernels at
# different speeds, so the figures need the core named.
_AMD_CORES = (
    (23, range(0x00, 0x30), "Zen / Zen+"), (23, range(0x30, 0x100), "Zen 2"),
    (25, range(0x10, 0x20), "Zen 4"), (25, range(0x60, 0x80), "Zen 4"), (25, range(0xA0, 0xB0), "Zen 4"),
    (25, range(0x00, 0x100), "Zen 3"), (26, range(0x00, 0x100), "Zen 5"),
)


def amd_core(family: int, model: int) -> str | None:
    """"Zen 4" for family 25 (19h) model 17 (Genoa), ...; None for a family/model not listed."""
    return next((core for f, models, core in _AMD_CORES if f == family and model in models), None)


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU model as /proc/cpuinfo names it, with the x86 family and model (and AMD's core) appended, e.g.
    "AMD EPYC (family 25, model 17: Zen 4)" or "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143)";
    platform.processor() where there is no /proc/cpuinfo. `cpuinfo`: that file's text (tests)."""
    name = cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown"
    family, model = cpuinfo_field("cpu family", cpuinfo), cpuinfo_field("model", cpuinfo)
    if not (family and model and family.isdigit() and model.isdigit()):
        return name
    core = amd_core(int(family), int(model)) if cpuinfo_field("vendor_id", cpuinfo) == "AuthenticAMD" else None
    return f"{name} (family {family}, model {model}{': ' + core if core else ''})"


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

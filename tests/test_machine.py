"""gpt_fast/cli/machine.py's readings of this process and machine: glibc's heap (malloc_heap), checked against an
allocation of a known size; the CPU's name with its x86 family, model and AMD core (cpu_name), on cpuinfo texts."""

from __future__ import annotations

import pytest
import torch

from gpt_fast.cli.machine import amd_core, cpu_name, malloc_heap


def test_malloc_heap_sees_a_64_mib_tensor_and_its_release():
    before = malloc_heap()
    if before is None:
        pytest.skip("no glibc >= 2.33 mallinfo2 here")
    assert set(before) == {"held", "in_use", "free", "mmapped"} and all(v >= 0 for v in before.values())
    assert before["in_use"] + before["free"] <= before["held"]
    x = torch.ones(16 * 2**20)  # 64 MiB through malloc (a large block: mmapped, or from a heap)
    during = malloc_heap()
    grown = (during["in_use"] + during["mmapped"]) - (before["in_use"] + before["mmapped"])
    assert 64 * 2**20 <= grown < 80 * 2**20
    del x
    after = malloc_heap()
    assert (after["in_use"] + after["mmapped"]) - (before["in_use"] + before["mmapped"]) < 16 * 2**20


def _cpuinfo(vendor: str, family: int | str, model: int | str, name: str) -> str:
    """The head of a /proc/cpuinfo text, as Linux writes it (tab-padded keys; "model" before "model name")."""
    return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: {name}\nstepping\t: 1\n")


@pytest.mark.parametrize("family, model, core", [
    (25, 17, "Zen 4"),    # Genoa (this project's EPYC VMs that say only "AMD EPYC")
    (25, 0x61, "Zen 4"),  # Raphael
    (25, 0xA0, "Zen 4"),  # Bergamo
    (25, 1, "Zen 3"),     # Milan
    (25, 0x21, "Zen 3"),  # Vermeer
    (23, 0x31, "Zen 2"),  # Rome
    (23, 1, "Zen / Zen+"),
    (26, 2, "Zen 5"),     # Turin
    (24, 0, None),        # Hygon: not listed, no guess
])
def test_amd_core_by_family_and_model(family, model, core):
    assert amd_core(family, model) == core


def test_cpu_name_names_the_amd_core_and_intel_family():
    assert cpu_name(_cpuinfo("AuthenticAMD", 25, 17, "AMD EPYC")) == "AMD EPYC (family 25, model 17: Zen 4)"
    assert cpu_name(_cpuinfo("AuthenticAMD", 26, 2, "AMD EPYC")) == "AMD EPYC (family 26, model 2: Zen 5)"
    intel = _cpuinfo("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8480+")
    assert cpu_name(intel) == "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143)"  # no AMD core for Intel
    assert cpu_name("processor\t: 0\nmodel name\t: Neoverse\n") == "Neoverse"  # no x86 family / model (ARM)
    assert cpu_name(_cpuinfo("AuthenticAMD", "x", 17, "AMD EPYC")) == "AMD EPYC"  # unreadable: the name alone

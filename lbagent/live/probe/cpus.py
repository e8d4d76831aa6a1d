"""Which CPUs a probe reports: the online ones, as the kernel lists them (not our own affinity)."""

from __future__ import annotations

from pathlib import Path

ONLINE = Path("/sys/devices/system/cpu/online")


def parse_cpu_list(text: str) -> list[int]:
    """``"0-3,8,10-11"`` -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def online_cpus() -> list[int]:
    return parse_cpu_list(ONLINE.read_text())

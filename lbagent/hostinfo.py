"""The host's online CPUs as the contract's :class:`~lbagent.spaces.Cpu` list, read from sysfs.

Capacity comes from ``cpu_capacity`` (big.LITTLE and hybrid parts differ; 1024 is a full core),
the shared last-level cache from the highest cache index, the core from the topology ids, so
:func:`lbagent.spaces.build_slots` can group a large host the way the kernel's domains do.
"""

from __future__ import annotations

from pathlib import Path

from lbagent.live.cgroups import online_cpus
from lbagent.spaces import Cpu

SYS_CPU = Path("/sys/devices/system/cpu")


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _llc_id(cpu_dir: Path, cpu: int) -> int:
    """Identifier of the last-level cache: its ``id`` or, failing that, the first CPU sharing it."""
    caches = sorted(cpu_dir.glob("cache/index[0-9]*"), key=lambda p: _read_int(p / "level", 0))
    if not caches:
        return 0
    last = caches[-1]
    if (last / "id").exists():
        return _read_int(last / "id", 0)
    try:
        return min(int(c) for c in (last / "shared_cpu_list").read_text().replace("-", ",").split(","))
    except (OSError, ValueError):
        return cpu


def read_cpus(root: Path = SYS_CPU) -> list[Cpu]:
    cpus = []
    for cpu in sorted(online_cpus()):
        d = root / f"cpu{cpu}"
        package = _read_int(d / "topology" / "physical_package_id", 0)
        core = _read_int(d / "topology" / "core_id", cpu)
        cpus.append(
            Cpu(
                id=cpu,
                capacity=_read_int(d / "cpu_capacity", 1024) / 1024.0,
                llc=_llc_id(d, cpu),
                core=package * 1_000_000 + core,
            )
        )
    return cpus

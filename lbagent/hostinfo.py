"""Facts about this host, read from /proc and /sys: every module that needs one asks here.

What a task is (``/proc/PID/stat``, its real uid, its kernel flags), which CPUs are online and how
they are built (capacity, shared cache, core), and where the cgroup hierarchies are mounted. The
probes, the actuator and the topology reader all read the same files; one parser each keeps them
agreeing on what a field means (the actuator's start time and the probe's must be the same clock).

Only the standard library, numpy and :mod:`lbagent.spaces` may be imported here: the daemon, the
benches and the offline tools all depend on it.
"""

from __future__ import annotations

import os
import re
import select
from dataclasses import dataclass
from pathlib import Path

from lbagent.spaces import Cpu

PROC = Path("/proc")
SYS_CPU = Path("/sys/devices/system/cpu")
PF_KTHREAD = 0x00200000
"""A kernel thread: never in scope, never placed."""
PF_NO_SETAFFINITY = 0x04000000
"""The kernel refuses affinity changes for this task (per-CPU workers and the like)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK

# Positions in the part of /proc/PID/stat after the command name (field 3, the state, is 0).
_STATE, _FLAGS, _UTIME, _STIME, _START, _CPU = 0, 6, 11, 12, 19, 36


# --------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskInfo:
    """What /proc says about one task: enough to check the scope, recognise a reused PID and
    describe a probe event."""

    pid: int
    comm: str
    state: str
    flags: int
    start: int
    """Field 22: clock ticks from boot to the task's start. With the PID it names a task for good
    (a reused PID has a later start), which is why the state file records it."""
    cputime_ns: int
    """utime + stime of the whole process (clock-tick resolution)."""
    cpu: int
    """The CPU it last ran on (field 39)."""
    uid: int = -1
    """Real uid: not in the stat line, filled in from /proc/PID/status by callers that need it."""

    @property
    def start_ns(self) -> int:
        """The start on the boot clock in ns, the clock the BPF probe's ``start_ns`` uses."""
        return self.start * NS_PER_TICK


def parse_stat(text: str) -> TaskInfo:
    """Parse ``/proc/PID/stat``; the command name may contain spaces and parentheses, so it ends
    at the *last* ``)``."""
    left, right = text.index("("), text.rindex(")")
    fields = text[right + 2 :].split()
    return TaskInfo(
        pid=int(text[:left]),
        comm=text[left + 1 : right],
        state=fields[_STATE],
        flags=int(fields[_FLAGS]),
        start=int(fields[_START]),
        cputime_ns=(int(fields[_UTIME]) + int(fields[_STIME])) * NS_PER_TICK,
        cpu=int(fields[_CPU]),
    )


def read_task(pid: int) -> TaskInfo:
    """The task's /proc view; ProcessLookupError when it is gone (the usual race with short tasks).

    Read as bytes and decoded leniently: a command name is whatever bytes a program set."""
    try:
        with open(PROC / str(pid) / "stat", "rb") as f:
            return parse_stat(f.read().decode("utf-8", "replace"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def state_and_cpu(path: str) -> tuple[bytes, int] | None:
    """State letter and last CPU from a stat file, read raw; None when the task is gone. The procfs
    probe runs this for every thread of the host at each sample, so it skips decoding and the full
    parse."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        data = os.read(fd, 1024)
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)
    fields = data[data.rfind(b")") + 2 :].split(maxsplit=_CPU + 1)
    return (fields[_STATE], int(fields[_CPU])) if len(fields) > _CPU else None


def read_uid(pid: int) -> int:
    """The real uid (the first of the four on the ``Uid:`` line); ProcessLookupError when gone.

    Decoded leniently: the ``Name:`` line above it is the command name, any bytes a program set."""
    try:
        with open(PROC / str(pid) / "status", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    raise ProcessLookupError(pid)



def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat; iowait counts as idle."""
    times = {}
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            busy = user + nice + system + irq + softirq + steal
            times[int(name[3:])] = (busy, busy + idle + iowait)
    return times


def busy_fractions(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    """Per CPU, the busy share of the jiffies between two :func:`cpu_times` readings, in [0, 1]."""
    shares = {}
    for cpu, (busy, total) in after.items():
        p_busy, p_total = before.get(cpu, (0, 0))
        shares[cpu] = min(1.0, max(0.0, (busy - p_busy) / (total - p_total))) if total > p_total else 0.0
    return shares


def threads_runtime_ns(pid: int) -> int | None:
    """CPU time of every live thread of ``pid``, in ns (the first field of each
    ``/proc/PID/task/TID/schedstat``); threads that already exited are not counted. None when the
    process is gone. One small read per thread."""
    try:
        tids = os.listdir(PROC / str(pid) / "task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    total = 0
    for tid in tids:
        try:
            with open(PROC / str(pid) / "task" / tid / "schedstat", "rb") as f:
                total += int(f.read().split(maxsplit=1)[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total

# --------------------------------------------------------------------------------- CPUs
def parse_cpulist(text: str) -> frozenset[int]:
    """``"0-2,5"`` -> {0, 1, 2, 5}: the kernel's format for cpuset files and sysfs CPU lists."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


def format_cpulist(cpus) -> str:
    """The inverse of :func:`parse_cpulist` (without ranges, which the kernel does not need)."""
    return ",".join(str(c) for c in sorted(cpus))


def online_cpus(root: Path = SYS_CPU) -> frozenset[int]:
    """The CPUs the kernel lists as online (not our own affinity, which a cpuset may narrow)."""
    return parse_cpulist((root / "online").read_text())


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
        return min(parse_cpulist((last / "shared_cpu_list").read_text()))
    except (OSError, ValueError):
        return cpu


def read_cpus(root: Path = SYS_CPU) -> list[Cpu]:
    """The online CPUs as the contract's :class:`~lbagent.spaces.Cpu` list.

    Capacity comes from ``cpu_capacity`` (big.LITTLE and hybrid parts differ; 1024 is a full core),
    the shared last-level cache from the highest cache index, the core from the topology ids, so
    :func:`lbagent.spaces.build_slots` can group a large host the way the kernel's domains do.
    """
    cpus = []
    for cpu in sorted(online_cpus(root)):
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


# --------------------------------------------------------------------------------- cgroup mounts
@dataclass(frozen=True)
class Mount:
    point: Path
    fstype: str
    options: frozenset[str]
    """The superblock options (for a v1 cgroup mount: its controllers, e.g. ``cpuset``)."""


class _MountCache:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.poller = select.poll()
        self.table: list[Mount] = []


_cache = _MountCache()


def mounts() -> list[Mount]:
    """Parsed /proc/self/mountinfo, re-read only after the kernel reports a change.

    It is consulted on every placement; the kernel flags POLLPRI on an open mountinfo whenever the
    mount table changes, so a zero-timeout poll tells whether the cached table is still right.
    """
    if _cache.fd is None:
        _cache.fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        _cache.poller.register(_cache.fd, select.POLLPRI | select.POLLERR)
        _cache.poller.poll(0)
    elif not _cache.poller.poll(0) and _cache.table:
        return _cache.table
    chunks, offset = [], 0
    while chunk := os.pread(_cache.fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    _cache.table = [_mount(line) for line in b"".join(chunks).decode().splitlines()]
    return _cache.table


def _mount(line: str) -> Mount:
    left, _, right = line.partition(" - ")
    fields, rfields = left.split(), right.split()
    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # "\040" is a space
    return Mount(Path(point), rfields[0], frozenset(rfields[2].split(",")))


def unified_root(table: list[Mount] | None = None) -> Path | None:
    """The cgroup v2 mount, or None on a v1-only host."""
    return next((m.point for m in table or mounts() if m.fstype == "cgroup2"), None)


def v1_cpuset_root(table: list[Mount] | None = None) -> Path | None:
    """The v1 hierarchy carrying the cpuset controller (hybrid hosts), or None."""
    return next((m.point for m in table or mounts() if m.fstype == "cgroup" and "cpuset" in m.options), None)

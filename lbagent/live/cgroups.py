"""Where the cgroup hierarchies are mounted and what a task's cpuset allows.

Hosts differ: a modern box has cgroup v2 with the cpuset controller at /sys/fs/cgroup, a hybrid one
(like the CI hosts) keeps cpuset on a v1 mount and v2 at /sys/fs/cgroup/unified. Everything that
needs a path asks here instead of assuming one.
"""

from __future__ import annotations

import os
import re
import select
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from lbagent.live.config import ConfigError, ScopeConfig
from lbagent.live.probe.types import Scope


def parse_cpulist(text: str) -> frozenset[int]:
    """``"0-2,5"`` -> {0, 1, 2, 5}; the format of cpuset files and /sys/devices/system/cpu/online."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


def format_cpulist(cpus) -> str:
    return ",".join(str(c) for c in sorted(cpus))


@dataclass(frozen=True)
class Mount:
    point: Path
    fstype: str
    options: frozenset[str]


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


class _MountCache:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.poller = select.poll()
        self.table: list[Mount] = []


_cache = _MountCache()


def _mount(line: str) -> Mount:
    left, _, right = line.partition(" - ")
    fields, rfields = left.split(), right.split()
    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # "\040" is a space
    return Mount(Path(point), rfields[0], frozenset(rfields[2].split(",")))


def unified_root(table: list[Mount] | None = None) -> Path | None:
    """The cgroup v2 mount, or None on a v1-only host."""
    return next((m.point for m in table or mounts() if m.fstype == "cgroup2"), None)


def v1_cpuset_root(table: list[Mount] | None = None) -> Path | None:
    return next((m.point for m in table or mounts() if m.fstype == "cgroup" and "cpuset" in m.options), None)


def v2_has_cpuset(root: Path | None) -> bool:
    if root is None:
        return False
    try:
        return "cpuset" in (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def task_cgroups(pid: int) -> dict[str, str]:
    """The task's cgroup per hierarchy, from one read of /proc/PID/cgroup: ``""`` is the v2 path,
    other keys are v1 controller lists (``"cpuset"``, ``"cpu,cpuacct"``...)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    out = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        out[controllers] = path
    return out


def task_v2_path(pid: int) -> str:
    """The task's cgroup v2 path (the ``0::`` line), e.g. ``/lbagent-demo``."""
    return task_cgroups(pid).get("", "/")


def cgroup_id(root: Path, path: str) -> int:
    """The id the kernel (and BPF's ``bpf_get_current_cgroup_id``) uses: the directory's inode."""
    return os.stat(root / path.lstrip("/")).st_ino


def ancestry(root: Path, path: str) -> list[int]:
    """The ids of the cgroup at ``path`` and of all its ancestors, root first, its own last: what
    :meth:`Scope.matches` needs, since a scope cgroup covers its subtree."""
    here, ids = root, [os.stat(root).st_ino]
    for part in Path(path).parts[1:]:
        here = here / part
        ids.append(os.stat(here).st_ino)
    return ids


def resolve_scope(config: ScopeConfig, source: str) -> Scope:
    """The one :class:`Scope` of a configured scope: cgroup paths become the ids the kernel reports;
    a cgroup that does not exist yet is listed in ``missing`` (watched for, not an error)."""
    ids, missing = set(), []
    if config.cgroups:
        root = unified_root()
        if root is None:
            raise ConfigError(f"{source}: scope.cgroups: this host has no cgroup v2 mount")
        for path in config.cgroups:
            try:
                st = os.stat(root / path.lstrip("/"))
            except FileNotFoundError:
                missing.append(path)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ConfigError(f"{source}: scope.cgroups: {path} is not a cgroup under {root}")
            ids.add(st.st_ino)
    return Scope(frozenset(ids), frozenset(config.comms), frozenset(config.uids), config.cgroups, tuple(missing))


def online_cpus() -> frozenset[int]:
    return parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())


EFFECTIVE_TTL = 1.0
"""Seconds a cpuset's effective CPUs are reused. A stale value is harmless: the kernel itself clips a
mask to the cpuset (and refuses an empty one with EINVAL, which is counted)."""
_effective: dict[str, tuple[float, frozenset[int]]] = {}


def cpuset_allowed(pid: int, groups: dict[str, str] | None = None, fresh: bool = False) -> frozenset[int]:
    """CPUs the task's cpuset permits: a mask the daemon sets is always clipped to this.

    ``groups`` is the task's :func:`task_cgroups` when the caller has read it already; ``fresh``
    skips the cache (a restore must judge a mask against the cpuset as it is now).
    """
    groups = groups if groups is not None else task_cgroups(pid)
    table = mounts()
    v1 = v1_cpuset_root(table)
    if v1 is not None:
        path = next((p for c, p in groups.items() if "cpuset" in c.split(",")), "/")
        effective = os.path.join(v1, path.lstrip("/"), "cpuset.effective_cpus")
    else:  # no v1 cpuset mount: the controller (if any) lives on v2
        v2 = unified_root(table)
        effective = os.path.join(v2, groups.get("", "/").lstrip("/"), "cpuset.cpus.effective") if v2 else ""
    now = time.monotonic()
    cached = _effective.get(effective)
    if cached and now - cached[0] < EFFECTIVE_TTL and not fresh:
        return cached[1]
    try:
        with open(effective) as f:
            cpus = parse_cpulist(f.read())
    except OSError:
        return online_cpus()
    if len(_effective) > 1024:
        _effective.clear()
    _effective[effective] = (now, cpus)
    return cpus

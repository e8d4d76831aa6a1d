"""A task's cgroups and what its cpuset allows.

Hosts differ: a modern box has cgroup v2 with the cpuset controller at /sys/fs/cgroup, a hybrid one
(like the CI hosts) keeps cpuset on a v1 mount and v2 at /sys/fs/cgroup/unified. The mounts come
from :mod:`lbagent.hostinfo`; this module knows which of them holds a task's cpuset.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from lbagent.hostinfo import mounts, online_cpus, parse_cpulist, unified_root, v1_cpuset_root
from lbagent.live.config import ConfigError, ScopeConfig
from lbagent.live.probe.types import Scope


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

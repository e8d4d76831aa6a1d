"""CPU share classes by cgroup: an lbagent-owned low-weight ``background`` group inside a workload's cgroup.

Demoting a task means moving it (all its threads) into ``background``; the kernel then gives it
almost nothing while a task of the normal class is runnable on its CPU, and everything when none is.
Per-task nice is the wrong tool on these hosts (a hog in another group keeps its CPU whatever the
nice: host-facts, "Scheduler facts"), so the share is changed *inside* the workload's own group.

Two hierarchies, chosen once at start (:func:`detect`):

- cgroup v2 with the ``cpu`` controller (a modern box): ``background`` gets ``cpu.weight = 1``.
  v2 forbids processes in a cgroup that hands a controller to its children, so the normal class
  is a second lbagent-owned leaf, ``normal`` (weight 100), and the workload's tasks live there.
- the v1 ``cpu`` controller (these hosts: v2 has no ``cpu.weight`` here): ``background`` gets
  ``cpu.shares = 2``; the normal class is the workload cgroup itself.

Moving another process costs a blocking wait for an RCU grace period on these hosts (6-16 ms
measured when moves are more than ~10 ms apart: the cgroup threadgroup lock), while a
single-threaded process moving *itself* through v1's ``tasks`` file skips that lock (0.3 ms): so
new tasks join their class themselves (:meth:`ShareGroups.join_file`), and callers that move
others keep the write off any latency-critical thread.

Only the standard library and :mod:`lbagent.hostinfo`: the daemon uses this module.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lbagent.hostinfo import Mount, mounts, unified_root

log = logging.getLogger(__name__)

BACKGROUND = "lbagent-background"
NORMAL = "lbagent-normal"
"""The v2 leaf for the normal class (v1 keeps normal tasks in the workload cgroup itself)."""
LEAVES = (NORMAL, BACKGROUND)
"""Names lbagent gives its own cgroups: a task found in one is in a class lbagent made."""
V1_BACKGROUND_SHARES = 2
V2_BACKGROUND_WEIGHT = 1
RMDIR_PATIENCE = 2.0
"""Seconds a removal retries while just-killed tasks finish exiting (rmdir says EBUSY until then)."""


class ShareError(OSError):
    """The host has no usable cpu controller, or a share cgroup could not be set up."""


@dataclass(frozen=True)
class CpuController:
    """Where the cpu controller lives on this host: cgroup ``version`` 1 or 2, mounted at ``root``."""

    version: int
    root: Path

    def describe(self) -> str:
        knob = f"cpu.shares={V1_BACKGROUND_SHARES}" if self.version == 1 else f"cpu.weight={V2_BACKGROUND_WEIGHT}"
        return f"cgroup v{self.version} cpu controller at {self.root}, background {knob}"

    def join_name(self) -> str:
        """The file a single-threaded process writes ``0`` into to join a group of this hierarchy
        itself (v1's per-thread ``tasks`` avoids the threadgroup lock; v2 only has ``cgroup.procs``)."""
        return "tasks" if self.version == 1 else "cgroup.procs"


def detect(table: list[Mount] | None = None) -> CpuController:
    """The hierarchy share classes use: v2 when its root offers ``cpu``, else a v1 ``cpu`` mount."""
    table = table if table is not None else mounts()
    v2 = unified_root(table)
    if v2 is not None:
        try:
            if "cpu" in (v2 / "cgroup.controllers").read_text().split():
                return CpuController(2, v2)
        except OSError:
            pass
    v1 = next((m.point for m in table if m.fstype == "cgroup" and "cpu" in m.options), None)
    if v1 is None:
        raise ShareError(errno.ENOENT, "no cpu controller: neither cgroup v2 with 'cpu' nor a v1 cpu mount")
    return CpuController(1, v1)


def errno_name(e: OSError) -> str:
    """The errno's symbolic name (a metric label): ``EPERM``, ``ESRCH``...; ``other`` without one."""
    return errno.errorcode.get(e.errno or 0, "other")


def make_group(path: Path) -> Path:
    """Create a cgroup directory (the caller then owns it and removes it with :func:`remove_group`)."""
    try:
        path.mkdir()
    except FileExistsError:
        raise ShareError(errno.EEXIST, f"{path} exists already: another run owns it, or one left it behind") from None
    return path


def move(pid: int, group: Path) -> bool:
    """Move process ``pid`` with every thread into ``group``; False when it has exited."""
    try:
        (group / "cgroup.procs").write_text(str(pid))
    except ProcessLookupError:
        return False
    return True


def members(group: Path) -> list[int]:
    """Processes directly in ``group`` (not in its children)."""
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def remove_group(path: Path, evacuate_to: Path) -> None:
    """Remove a cgroup made by :func:`make_group`, moving any process still in it to ``evacuate_to``
    first; tasks that are exiting are waited for up to :data:`RMDIR_PATIENCE` seconds."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        remove_group(child, evacuate_to)
    deadline = time.monotonic() + RMDIR_PATIENCE
    while True:
        for pid in members(path):
            move(pid, evacuate_to)
        try:
            path.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


class ShareGroups:
    """The share classes of one workload cgroup: ``normal`` and the lbagent-owned ``background``.

    Use as a context manager (or call :meth:`close`): everything it made is removed, tasks still
    in ``background`` go back to the normal class first, so a stop never leaves a task demoted.
    """

    def __init__(self, controller: CpuController, workload: Path, *, adopt_enabled_cpu: bool | None = None) -> None:
        """Make the classes; ``adopt_enabled_cpu`` (not None) instead takes over the classes a
        previous daemon made there (from its state file), only to close them."""
        self.controller = controller
        self.workload = workload
        self.background = workload / BACKGROUND
        self.normal = workload / NORMAL if controller.version == 2 else workload
        self._made: list[Path] = []
        self._enabled_cpu = False
        if adopt_enabled_cpu is not None:
            self._made = [p for p in (workload / NORMAL, self.background) if p.is_dir()]
            self._enabled_cpu = adopt_enabled_cpu
            return
        try:
            if controller.version == 2:
                self._setup_v2()
            else:
                self._make(self.background)
                (self.background / "cpu.shares").write_text(str(V1_BACKGROUND_SHARES))
        except BaseException:
            self.close()
            raise
        log.info("share classes in %s: %s", workload, controller.describe())

    def _setup_v2(self) -> None:
        if "cpu" not in (self.workload / "cgroup.controllers").read_text().split():
            raise ShareError(errno.EOPNOTSUPP, f"{self.workload}: the cpu controller is not enabled for it (enable +cpu in its parent's cgroup.subtree_control)")
        self._make(self.normal)
        self._make(self.background)
        if "cpu" not in (self.workload / "cgroup.subtree_control").read_text().split():
            self._hand_cpu_down()
        (self.background / "cpu.weight").write_text(str(V2_BACKGROUND_WEIGHT))

    def _hand_cpu_down(self) -> None:
        """Enable ``+cpu`` for the children. The no-internal-process rule refuses it (EBUSY) while
        the workload cgroup holds processes, so they move into ``normal`` first; a process forked
        into it meanwhile makes the write fail once more, hence the retries."""
        for _ in range(5):
            for pid in members(self.workload):
                move(pid, self.normal)
            try:
                (self.workload / "cgroup.subtree_control").write_text("+cpu")
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                continue
            self._enabled_cpu = True
            return
        raise ShareError(errno.EBUSY, f"{self.workload}: processes keep arriving in it; cannot hand the cpu controller to its classes")

    @property
    def enabled_cpu(self) -> bool:
        """v2: whether this object enabled ``+cpu`` in the workload's subtree (and will disable it)."""
        return self._enabled_cpu

    def background_of(self, cgroup: Path) -> bool | None:
        """Whether a task in ``cgroup`` is in this workload's BACKGROUND (True) or normal class
        (False); None when the cgroup is neither."""
        if cgroup == self.background:
            return True
        return False if cgroup == self.normal else None

    def _make(self, path: Path) -> Path:
        make_group(path)
        self._made.append(path)
        return path

    def join_file(self, background: bool) -> str:
        """What a new single-threaded task writes ``0`` into to join its class by itself."""
        return str((self.background if background else self.normal) / self.controller.join_name())

    def demote(self, pid: int) -> bool:
        """Move ``pid`` (every thread) to ``background``; False when it has exited."""
        return move(pid, self.background)

    def promote(self, pid: int) -> bool:
        """Move ``pid`` back to the normal class; False when it has exited."""
        return move(pid, self.normal)

    def close(self) -> None:
        """Remove what this object made. Demoted tasks go back to the normal class first; on v2 the
        ``normal`` leaf empties into the workload cgroup once that no longer hands ``cpu`` down
        (if it already did before us, it cannot hold tasks: the removal fails, the safe side)."""
        made, self._made = self._made, []
        for path in made:
            if path.name == BACKGROUND:
                for pid in members(path):
                    move(pid, self.normal)
        if self._enabled_cpu:
            (self.workload / "cgroup.subtree_control").write_text("-cpu")
            self._enabled_cpu = False
        for path in reversed(made):
            remove_group(path, self.workload)

    def __enter__(self) -> ShareGroups:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def attained_ns(pid: int) -> int | None:
    """CPU time the task's main thread has run, in ns (``/proc/PID/schedstat``, first field); None
    when it has exited. Exact, unlike the clock-tick times of ``/proc/PID/stat``."""
    return _schedstat_ns(f"/proc/{pid}/schedstat")


def process_attained_ns(pid: int) -> int | None:
    """CPU time of every live thread of process ``pid``, in ns; None when it has exited. A
    single-threaded process costs one read, like :func:`attained_ns`."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(tids) <= 1:
        return attained_ns(pid)
    return sum(_schedstat_ns(f"/proc/{pid}/task/{tid}/schedstat") or 0 for tid in tids)


def _schedstat_ns(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().split(maxsplit=1)[0])
    except (FileNotFoundError, ProcessLookupError):
        return None

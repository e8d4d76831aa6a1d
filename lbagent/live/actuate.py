"""Placing tasks on CPUs, safely: the only module that changes anything on the host.

Two ways to place a task: ``affinity`` sets the mask of every thread with ``sched_setaffinity``;
``cpuset`` moves the task into an lbagent-owned cpuset cgroup (cgroup v2 where the cpuset controller
is enabled, else the v1 cpuset hierarchy). Whatever the policy asks, the rules below hold, because a
load balancer that pins the wrong task can hurt a host far more than a bad placement can:

- never a kernel thread (``PF_KTHREAD``), a task that refuses affinity changes
  (``PF_NO_SETAFFINITY``), PID 1, the daemon itself, or a task outside the configured scope (a
  scope cgroup covers its subtree) -- and restoring a mask obeys these rules as placing one does;
- a mask is always clipped to what the task's own cpuset allows, and never widened beyond it;
- the original mask is written to the state file *before* the change, with the task's start time;
  restoring checks the start time, so a PID reused by another task is never touched;
- ESRCH (the task exited), EINVAL and EPERM are counted per kind and never raised; so is a state
  file that cannot be written (``state_write``), and then nothing is changed.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from enum import StrEnum
from pathlib import Path

from lbagent.hostinfo import (
    PF_KTHREAD,
    PF_NO_SETAFFINITY,
    TaskInfo,
    format_cpulist,
    online_cpus,
    read_task,
    read_uid,
    unified_root,
    v1_cpuset_root,
)
from lbagent.live import cgroups
from lbagent.live.config import MODES
from lbagent.live.probe.types import Scope
from lbagent.live.state import Placement, StateFile, StateFileError


class Outcome(StrEnum):
    """What happened to one task asked to be placed (or restored).

    The values are the ``outcome`` labels of ``lbagent_placements_total`` and of the logs; the
    part after the colon is the key of :attr:`Actuator.refusals` or :attr:`Actuator.errors`.
    """

    PLACED = "placed"
    DRY_RUN = "dry_run"
    """Every check passed; nothing was changed because the daemon runs with ``dry_run``."""
    REFUSED_PID1 = "refused:pid1"
    REFUSED_SELF = "refused:self"
    REFUSED_NO_SETAFFINITY = "refused:no_setaffinity"
    REFUSED_KTHREAD = "refused:kthread"
    REFUSED_OUT_OF_SCOPE = "refused:out_of_scope"
    REFUSED_OUTSIDE_CPUSET = "refused:outside_cpuset"
    """The task is lbagent's to manage, but its cpuset does not allow the slot asked for."""
    ERROR_ESRCH = "error:ESRCH"
    ERROR_EINVAL = "error:EINVAL"
    ERROR_EPERM = "error:EPERM"
    ERROR_OTHER = "error:other"
    ERROR_STATE_WRITE = "error:state_write"
    """The write-ahead record could not be saved, so nothing was changed."""
    RESTORED = "restored"
    GONE = "gone"
    """Restore: the task exited; nothing to undo."""
    REUSED_PID = "reused_pid"
    """Restore: the PID now names another task (a later start time); it is left alone."""

    @property
    def applied(self) -> bool:
        """The task runs (or, in a dry run, would run) on the slot asked for."""
        return self in (Outcome.PLACED, Outcome.DRY_RUN)

    @property
    def unmanaged(self) -> bool:
        """The safety rules say the task is not lbagent's at all (not merely not placeable now)."""
        return self.value.startswith("refused:") and self is not Outcome.REFUSED_OUTSIDE_CPUSET

    @property
    def key(self) -> str:
        """The refusal rule or error kind this outcome counts under (the part after any colon)."""
        return self.value.rpartition(":")[2]


ERROR_KINDS = {errno.ESRCH: Outcome.ERROR_ESRCH, errno.EINVAL: Outcome.ERROR_EINVAL, errno.EPERM: Outcome.ERROR_EPERM}


class ActuatorError(RuntimeError):
    """The actuator cannot work at all on this host (e.g. cpuset mode without a cpuset controller)."""


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def in_scope(scope: Scope, pid: int, comm: str, groups: dict[str, str]) -> bool:
    """The actuator's own scope check (the probe's rule, subtree included): the probe filters too,
    but a policy must never widen it. Only what the scope restricts is read from /proc."""
    if scope.comms and comm not in scope.comms:
        return False  # the cheapest test first: no cgroup walk or status read for most outsiders
    root = unified_root() if scope.by_cgroup else None
    ancestry = cgroups.ancestry(root, groups.get("", "/")) if root is not None else []
    return scope.matches(ancestry, comm, read_uid(pid) if scope.uids else -1)


class CpusetBackend:
    """lbagent-owned cpusets, one leaf per distinct mask, under ``<cpuset root>/<name>``."""

    def __init__(self, name: str = "lbagent") -> None:
        v2 = unified_root()
        if v2 is not None and cgroups.v2_has_cpuset(v2):
            self.version, self.root = 2, v2
        else:
            v1 = v1_cpuset_root()
            if v1 is None:
                raise ActuatorError("cpuset mode: no cpuset controller (neither on cgroup v2 nor a v1 mount)")
            self.version, self.root = 1, v1
        self.name = name
        self.base = self.root / name
        self._leaves: dict[tuple[int, ...], Path] = {}

    def owns(self, path: str) -> bool:
        return path == f"/{self.name}" or path.startswith(f"/{self.name}/")

    def leaf(self, cpus: tuple[int, ...]) -> Path:
        if cpus not in self._leaves:
            leaf = self.base / ("cpus" + "_".join(map(str, cpus)))
            if self.version == 2:
                _write(self.root / "cgroup.subtree_control", "+cpuset")
                self.base.mkdir(exist_ok=True)
                _write(self.base / "cgroup.subtree_control", "+cpuset")
                leaf.mkdir(exist_ok=True)
                _write(leaf / "cpuset.cpus", format_cpulist(cpus))
            else:  # v1 needs cpus and mems on every level before a task may join
                mems = (self.root / "cpuset.mems").read_text().strip()
                for d, c in ((self.base, (self.root / "cpuset.cpus").read_text().strip()), (leaf, None)):
                    d.mkdir(exist_ok=True)
                    _write(d / "cpuset.cpus", c or format_cpulist(cpus))
                    _write(d / "cpuset.mems", mems)
            self._leaves[cpus] = leaf
        return self._leaves[cpus]

    def move(self, tgid: int, directory: Path) -> None:
        _write(directory / "cgroup.procs", str(tgid))

    def leaves(self) -> list[Path]:
        return sorted(p for p in self.base.glob("cpus*") if p.is_dir()) if self.base.is_dir() else []

    def teardown(self) -> None:
        """Remove lbagent's cgroups; one still holding a task (EBUSY) stays, which is the safe side."""
        for leaf in self.leaves():
            try:
                leaf.rmdir()
            except OSError:
                pass
        try:
            self.base.rmdir()
        except OSError:
            pass
        self._leaves.clear()


def _set_unclipped(tid: int, original: tuple[int, ...]) -> None:
    """Give a thread back its original mask *as requested*, not clipped to its cpuset of the moment.

    Since Linux 6.2 the kernel keeps the requested mask and re-applies it whenever the cpuset
    changes: when a CPU left the cpuset while the task was placed (``clipped`` above: the kernel
    narrowed our mask), a clipped restore would stay narrow after the CPU comes back, and a
    restore skipped as "changed elsewhere" would bring our pin back. The kernel clips the request
    itself; when nothing of the original is left (EINVAL), every CPU is asked for: the default.
    """
    try:
        os.sched_setaffinity(tid, original)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        os.sched_setaffinity(tid, online_cpus())


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Actuator:
    """Applies placements and undoes them; counts every refusal and error instead of raising."""

    def __init__(
        self,
        mode: str,
        scope: Scope,
        state: StateFile,
        *,
        dry_run: bool = False,
        cgroup_name: str = "lbagent",
    ) -> None:
        if mode not in MODES:
            raise ActuatorError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        self.mode, self.scope, self.state, self.dry_run = mode, scope, state, dry_run
        self.own_tgid = os.getpid()
        self.refusals: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.cpusets = CpusetBackend(cgroup_name) if mode == "cpuset" else None

    # ---------------------------------------------------------------- placing
    def place_many(self, requests: list[tuple[int, frozenset[int]]]) -> list[Outcome]:
        """Place a batch: check each, record all in one state write, then apply.

        One write per batch instead of per task keeps the arrival-to-affinity latency low under a
        burst while keeping the write-ahead rule. Returns one outcome per request: placed, dry run,
        a refusal or an error.
        """
        outcomes: list[Outcome] = []
        ready: list[tuple[int, Placement]] = []
        for tgid, cpus in requests:
            try:
                result = self._prepare(tgid, cpus)
            except OSError as e:
                result = self._error(e)
            if isinstance(result, Placement):
                ready.append((len(outcomes), result))
                outcomes.append(Outcome.DRY_RUN if self.dry_run else Outcome.PLACED)
            else:
                outcomes.append(result)
        if ready and not self.dry_run:
            previous = {p.tgid: self.state.placements.get(p.tgid) for _, p in ready}
            with self.state.guard:
                for _, p in ready:
                    self.state.placements[p.tgid] = p
                try:
                    self.state.save()
                except StateFileError:  # no record, no change (write-ahead): the tasks stay as they are
                    for i, p in ready:
                        self._forget_failed(p, previous[p.tgid])
                        outcomes[i] = Outcome.ERROR_STATE_WRITE
                    self.errors[Outcome.ERROR_STATE_WRITE.key] += len(ready)
                    return outcomes
            for i, p in ready:
                failure = self._apply(p)
                if failure:
                    outcomes[i] = failure
                    with self.state.guard:
                        self._forget_failed(p, previous[p.tgid])
        return outcomes

    def _forget_failed(self, p: Placement, previous: Placement | None) -> None:
        if previous is not None:  # an earlier placement still holds: keep its record
            self.state.placements[p.tgid] = previous
        else:
            self.state.placements.pop(p.tgid, None)

    def _refuse(self, outcome: Outcome) -> Outcome:
        self.refusals[outcome.key] += 1
        return outcome

    def _error(self, e: OSError) -> Outcome:
        fallback = Outcome.ERROR_ESRCH if isinstance(e, ProcessLookupError) else Outcome.ERROR_OTHER
        outcome = ERROR_KINDS.get(e.errno or 0, fallback)
        self.errors[outcome.key] += 1
        return outcome

    def check(self, tgid: int, start: int | None = None) -> Outcome | tuple[TaskInfo, dict[str, str]]:
        """The rules every change obeys, a placement or a restore alike: the outcome of a refusal,
        or the task's identity and cgroups. ``start``: the start time the task must still have."""
        if tgid <= 1:
            return self._refuse(Outcome.REFUSED_PID1)
        if tgid == self.own_tgid:
            return self._refuse(Outcome.REFUSED_SELF)
        info = read_task(tgid)
        if start is not None and info.start != start:
            return self._refuse(Outcome.REUSED_PID)
        if info.flags & PF_NO_SETAFFINITY:
            return self._refuse(Outcome.REFUSED_NO_SETAFFINITY)
        if info.flags & PF_KTHREAD:
            return self._refuse(Outcome.REFUSED_KTHREAD)
        groups = cgroups.task_cgroups(tgid)
        if not in_scope(self.scope, tgid, info.comm, groups):
            return self._refuse(Outcome.REFUSED_OUT_OF_SCOPE)
        return info, groups

    def _prepare(self, tgid: int, slot_cpus: frozenset[int]) -> Placement | Outcome:
        checked = self.check(tgid)
        if isinstance(checked, Outcome):
            return checked
        info, groups = checked
        allowed = cgroups.cpuset_allowed(tgid, groups)
        target = slot_cpus & allowed
        if not target or (self.mode == "cpuset" and target != slot_cpus):
            return self._refuse(Outcome.REFUSED_OUTSIDE_CPUSET)
        old = self.state.placements.get(tgid)
        if old is not None and old.start == info.start:
            originals, cgroup = old.originals, old.cgroup  # placed again (e.g. after exec): keep the first
        else:
            originals = {}
            for tid in thread_ids(tgid):
                try:
                    originals[tid] = tuple(sorted(os.sched_getaffinity(tid)))
                except OSError:
                    continue  # the thread exited meanwhile
            if not originals:
                raise ProcessLookupError(tgid)
            cgroup = Path(f"/proc/{tgid}/cpuset").read_text().strip() if self.cpusets else None
        return Placement(tgid, info.start, info.comm, self.mode, tuple(sorted(target)), originals, cgroup)

    def _apply(self, p: Placement) -> Outcome | None:
        """Make the recorded change; returns an outcome only when nothing could be changed."""
        try:
            if self.cpusets is not None:
                self.cpusets.move(p.tgid, self.cpusets.leaf(p.applied))
                return None
            changed, seen, failure = 0, set(), None
            for _ in range(3):  # threads born while we work inherit either mask: catch them too
                tids = [t for t in thread_ids(p.tgid) if t not in seen]
                if not tids:
                    break
                for tid in tids:
                    seen.add(tid)
                    try:
                        os.sched_setaffinity(tid, p.applied)
                        changed += 1
                    except OSError as e:
                        failure = self._error(e)
            if changed:
                return None
            return failure or self._error(ProcessLookupError(errno.ESRCH, "no thread left"))
        except OSError as e:
            return self._error(e)

    # ---------------------------------------------------------------- undoing
    def forget(self, tgid: int) -> None:
        """The task exited: nothing to restore any more."""
        with self.state.guard:
            self.state.placements.pop(tgid, None)

    def restore(self, p: Placement) -> Outcome:
        """Undo one placement: restored, gone, reused PID, a refusal by rule or an error.

        A restore changes a mask as much as a placement does, and its record may come from a
        previous run: it obeys the same rules (never a kernel thread, PID 1, the daemon itself or a
        task out of scope), and a thread whose mask is no longer the one applied is left alone."""
        try:
            checked = self.check(p.tgid, p.start)
        except ProcessLookupError:
            return Outcome.GONE
        except OSError as e:
            return self._error(e)
        if isinstance(checked, Outcome):
            return checked
        try:
            if p.mode == "cpuset" and p.cgroup is not None:
                backend = self.cpusets or CpusetBackend()
                if backend.owns(Path(f"/proc/{p.tgid}/cpuset").read_text().strip()):
                    backend.move(p.tgid, backend.root / p.cgroup.lstrip("/"))
            allowed = cgroups.cpuset_allowed(p.tgid, fresh=True)
            clipped = tuple(sorted((set(p.applied) & allowed) or allowed))
            for tid in thread_ids(p.tgid):
                try:
                    current = tuple(sorted(os.sched_getaffinity(tid)))
                    if p.mode == "affinity" and current not in (p.applied, clipped):
                        self.refusals["changed_elsewhere"] += 1  # someone else's mask now: leave it
                        continue
                    _set_unclipped(tid, p.original_for(tid))
                except OSError as e:
                    self._error(e)
        except OSError as e:
            return self._error(e)
        return Outcome.RESTORED

    def restore_all(self) -> Counter[Outcome]:
        """Undo every placement (clean stop); the state file goes, the cgroups lbagent made too."""
        outcomes = Counter(self.restore(p) for p in list(self.state.placements.values()))
        with self.state.guard:
            self.state.placements.clear()
        if self.state.locked or not self.dry_run:  # a dry run's file is not its own: it may be a real daemon's
            self.state.remove()
        if self.cpusets is not None:
            self.cpusets.teardown()
        return outcomes

    def safe_scan(self, slot_masks: list[frozenset[int]]) -> int:
        """Without a trustworthy state file: free in-scope tasks pinned to exactly a slot's CPUs.

        Their original masks are unknown, so each is reset to everything its cpuset allows (the
        kernel default), and tasks found in lbagent's cpusets go back to the hierarchy's root.
        Returns how many tasks were reset.
        """
        rescued = 0
        if self.cpusets is not None:
            for leaf in self.cpusets.leaves():
                for line in (leaf / "cgroup.procs").read_text().split():
                    try:
                        self.cpusets.move(int(line), self.cpusets.root)
                        rescued += 1
                    except OSError as e:
                        self._error(e)
            self.cpusets.teardown()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in (1, self.own_tgid):
                continue
            pid = int(entry)
            try:
                info = read_task(pid)
                groups = cgroups.task_cgroups(pid)
                if info.flags & (PF_KTHREAD | PF_NO_SETAFFINITY) or not in_scope(self.scope, pid, info.comm, groups):
                    continue
                allowed = cgroups.cpuset_allowed(pid, groups)
                recognised = {frozenset(m & allowed) for m in slot_masks} - {allowed, frozenset()}
                tids = thread_ids(pid)
                if not all(frozenset(os.sched_getaffinity(t)) in recognised for t in tids):
                    continue
                for t in tids:
                    os.sched_setaffinity(t, allowed)
                rescued += 1
            except OSError as e:
                self._error(e)
        return rescued


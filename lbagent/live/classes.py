"""The daemon's share lever: a managed task's class (NORMAL or BACKGROUND) applied on the host.

BACKGROUND moves the task, every thread, into the lbagent-owned low-weight ``background`` group of
its own workload cgroup (:mod:`lbagent.live.share`); NORMAL moves it back. The workload cgroup is
the task's cgroup in the hierarchy that carries the ``cpu`` controller (v2 where it has one, else
the v1 ``cpu`` mount); a task directly in that hierarchy's root is refused, because a low-weight
group beside every other tenant is per-task nice again (host-facts: it hands the CPU to them).

Moving another process into a cgroup blocks for an RCU grace period (6-16 ms on these hosts), so
every move happens on one worker thread and the decision loop only queues requests. The rules of
:class:`~lbagent.live.actuate.Actuator` hold for every move (never PID 1, the daemon, a kernel
thread, a reused PID or a task out of scope), and the record comes first (write-ahead): the group
before it is made, the task with its start time before it is moved, so a crash at any moment leaves
a state file that names everything to undo. :meth:`ShareClasses.close` and :func:`recover` move
every task back and remove every group lbagent made.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from lbagent.live import share
from lbagent.live.state import ShareGroupRecord, ShareRecord, StateFile, StateFileError

log = logging.getLogger("lbagent.live.classes")

Rules = Callable[..., object]
"""``Actuator.check(tgid, start=None)``: a refusal outcome, or the task's (TaskInfo, cgroups)."""

NORMAL, BACKGROUND = "normal", "background"
"""The ``class`` label values of the share metrics."""


def cpu_cgroup(controller: share.CpuController, groups: dict[str, str]) -> Path:
    """The directory of the task's cgroup in the hierarchy carrying the cpu controller."""
    if controller.version == 2:
        path = groups.get("", "/")
    else:
        path = next((p for c, p in groups.items() if "cpu" in c.split(",")), "/")
    return controller.root / path.strip().lstrip("/")


def workload_of(controller: share.CpuController, cgroup: Path) -> Path:
    """The workload cgroup a task belongs to: its own, or the parent of an lbagent class leaf."""
    return cgroup.parent if cgroup.name in share.LEAVES and cgroup != controller.root else cgroup


class ShareClasses:
    """Applies the class part of decisions, one worker thread, counting every outcome."""

    def __init__(self, controller: share.CpuController, state: StateFile, rules: Rules, *, dry_run: bool = False) -> None:
        self.controller, self.state, self.rules, self.dry_run = controller, state, rules, dry_run
        self.groups: dict[Path, share.ShareGroups] = {}
        self.outcomes: Counter[tuple[str, str]] = Counter()
        """(class asked, outcome) -> moves: moved, unchanged, dry_run, a refusal or an error."""
        self._requests: queue.SimpleQueue[tuple[int, bool] | None] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0
        self._worker = threading.Thread(target=self._work, name="lbagent-share", daemon=True)
        self._worker.start()

    @property
    def active(self) -> bool:
        """Some workload has share classes: a new task may have been born into BACKGROUND."""
        return bool(self.groups)

    def request(self, tgid: int, background: bool) -> None:
        """Queue a class change; never blocks (the move takes milliseconds on the worker)."""
        with self._idle:
            self._pending += 1
        self._requests.put((tgid, background))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued request is handled (tests, and a stop that must restore after them)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _work(self) -> None:
        while (item := self._requests.get()) is not None:
            tgid, background = item
            try:
                outcome = self._change(tgid, background)
            except ProcessLookupError:
                outcome = "error:ESRCH"
            except StateFileError:  # no record, no change (write-ahead)
                outcome = "error:state_write"
            except OSError as e:
                outcome = f"error:{share.errno_name(e)}"
            except Exception:  # a bug must not silently end every later move
                log.exception("share move failed", extra={"fields": {"tgid": tgid}})
                outcome = "error:other"
            self.outcomes[(BACKGROUND if background else NORMAL, outcome)] += 1
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _change(self, tgid: int, background: bool) -> str:
        checked = self.rules(tgid)
        if not isinstance(checked, tuple):
            return str(checked)
        info, cgroups = checked
        here = cpu_cgroup(self.controller, cgroups)
        workload = workload_of(self.controller, here)
        if workload == self.controller.root:
            return "refused:root_cgroup"
        groups = self.groups.get(workload)
        now_background = groups.background_of(here) if groups is not None else False
        if now_background is None:
            return "refused:foreign_cgroup"  # a leaf of lbagent's name that this daemon did not make
        if now_background == background:
            return "unchanged"
        if self.dry_run:
            return "dry_run"
        if groups is None:
            groups = self._make_groups(workload)
        if background and tgid not in self.state.shares:
            with self.state.guard:
                self.state.shares[tgid] = ShareRecord(tgid, info.start, info.comm, str(workload))
                try:
                    self.state.save()
                except StateFileError:
                    del self.state.shares[tgid]
                    raise
        moved = groups.demote(tgid) if background else groups.promote(tgid)
        return "moved" if moved else "error:ESRCH"

    def _make_groups(self, workload: Path) -> share.ShareGroups:
        hands_down = self.controller.version == 2 and "cpu" not in _subtree(workload)
        with self.state.guard:
            self.state.share_groups[str(workload)] = ShareGroupRecord(str(workload), self.controller.version, hands_down)
            try:
                self.state.save()
            except StateFileError:
                del self.state.share_groups[str(workload)]
                raise
        try:
            groups = share.ShareGroups(self.controller, workload)
        except BaseException:
            with self.state.guard:  # nothing made: a stale record would only be a no-op to undo
                del self.state.share_groups[str(workload)]
            raise
        self.groups[workload] = groups
        log.info("share classes made", extra={"fields": {"workload": str(workload), "how": self.controller.describe()}})
        return groups

    def forget(self, tgid: int) -> None:
        """The task exited: nothing to move back (a later save drops its record)."""
        with self.state.guard:
            self.state.shares.pop(tgid, None)

    # ---------------------------------------------------------------- undoing
    def close(self) -> Counter[str]:
        """Stop the worker after the requests already queued, move every task back, remove every group."""
        self._requests.put(None)
        self._worker.join()
        outcomes = undo(self.controller, self.rules, list(self.state.shares.values()), self.groups)
        with self.state.guard:
            self.state.shares.clear()
            self.state.share_groups.clear()
        self.groups = {}
        return outcomes


def recover(controller: share.CpuController, rules: Rules, previous: StateFile) -> Counter[str]:
    """Undo the share classes a previous daemon's state file records (it crashed, or was killed)."""
    adopted = {}
    for record in previous.share_groups.values():
        workload = Path(record.workload)
        if not workload.is_dir():
            continue  # removed since, with its tasks: nothing left to undo
        if record.version != controller.version or controller.root not in workload.parents:
            log.error("a recorded share group is not in this host's cpu hierarchy: left alone",
                      extra={"fields": {"workload": record.workload, "hierarchy": str(controller.root)}})
            continue
        adopted[workload] = share.ShareGroups(controller, workload, adopt_enabled_cpu=record.enabled_cpu)
    return undo(controller, rules, list(previous.shares.values()), adopted)


def undo(controller: share.CpuController, rules: Rules, records: list[ShareRecord],
         groups: dict[Path, share.ShareGroups]) -> Counter[str]:
    """Move each recorded task back to its normal class (by the actuator's rules, start time
    checked), then remove the groups, which sends anything left in them (children of demoted
    tasks, a reused PID) back to the normal class too."""
    outcomes: Counter[str] = Counter(_restore(controller, rules, r, groups.get(Path(r.cgroup))) for r in records)
    for workload, g in groups.items():
        try:
            g.close()
        except OSError as e:
            outcomes["error:group_left"] += 1
            log.error("a share group could not be removed", extra={"fields": {"workload": str(workload), "reason": str(e)}})
    return outcomes


def _restore(controller: share.CpuController, rules: Rules, record: ShareRecord, groups: share.ShareGroups | None) -> str:
    if groups is None:
        return "gone"  # its workload's classes are not ours (any more): nothing of ours to undo
    try:
        checked = rules(record.tgid, record.start)
        if not isinstance(checked, tuple):
            return str(checked)
        if groups.background_of(cpu_cgroup(controller, checked[1])) is not True:
            return "unchanged"
        return "restored" if groups.promote(record.tgid) else "gone"
    except ProcessLookupError:
        return "gone"
    except OSError as e:
        return f"error:{share.errno_name(e)}"


def _subtree(cgroup: Path) -> list[str]:
    return (cgroup / "cgroup.subtree_control").read_text().split()

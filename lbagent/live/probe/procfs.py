"""The procfs probe: the same :class:`Snapshot` and :class:`TaskEvent` without BPF, for hosts or
containers where loading BPF is not allowed.

Run queues come from scans of ``/proc/*/task/*/stat`` (state ``R`` and the last CPU), taken while
the caller waits in :meth:`ProcfsProbe.poll` and averaged over the window: a sampled mean, not the
BPF probe's exact integral. Busy time comes from ``/proc/stat``. Forks, execs and exits come from
the kernel's proc connector (pyroute2 decodes it); we own the netlink socket so that ``select``
sees every queued datagram (pyroute2's own socket buffers them in an event loop the fd never shows).
CPU time at exit comes from taskstats (:mod:`lbagent.live.probe.taskstats`), else from the zombie's
``/proc/PID/stat`` when we are faster than its parent, else 0. Attained CPU of the processes that
arrived is read at each snapshot from their threads' ``schedstat``: one read per thread of a managed
process, nothing for the rest of the host.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import replace
from pathlib import Path

from pyroute2.netlink import NLMSG_DONE
from pyroute2.netlink.connector.cn_proc import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    ProcEventMarshal,
    proc_event_control,
)

from lbagent.hostinfo import (
    PF_KTHREAD,
    PROC,
    TaskInfo,
    busy_fractions,
    cpu_times,
    online_cpus,
    read_task,
    read_uid,
    state_and_cpu,
    threads_runtime_ns,
    unified_root,
)
from lbagent.live import cgroups
from lbagent.live.probe.netlink import MulticastListener
from lbagent.live.probe.taskstats import TaskExitStats
from lbagent.live.probe.types import CpuSample, EventKind, Scope, Snapshot, TaskEvent

NETLINK_CONNECTOR = 11
log = logging.getLogger("lbagent.live.probe")


def cgroup_ids(pid: int, mount: Path | None) -> list[int]:
    """The v2 cgroup ids of a process's cgroup and its ancestors (:func:`cgroups.ancestry`); [0]
    without a v2 hierarchy."""
    if mount is None:
        return [0]
    own = cgroups.task_cgroups(pid).get("")
    return [0] if own is None else cgroups.ancestry(mount, own.strip())


def runnable_per_cpu(exclude: Collection[int] = ()) -> Counter[int]:
    """One scan: tasks in state R by the CPU they last ran on, skipping the processes ``exclude``."""
    counts: Counter[int] = Counter()
    for proc in os.scandir(PROC):
        if not proc.name.isdigit() or int(proc.name) in exclude:
            continue
        try:
            tids = os.listdir(f"/proc/{proc.name}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            found = state_and_cpu(f"/proc/{proc.name}/task/{tid}/stat")
            if found is not None and found[0] == b"R":
                counts[found[1]] += 1
    return counts


class ProcConnector(MulticastListener):
    """The kernel's process-event multicast (fork/exec/exit), root only. Non-blocking reads."""

    def __init__(self):
        super().__init__(NETLINK_CONNECTOR, CN_IDX_PROC)
        try:
            self._control(PROC_CN_MCAST_LISTEN)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.marshal = ProcEventMarshal()

    def _control(self, action: int) -> None:
        msg = proc_event_control()
        msg["header"]["type"] = NLMSG_DONE
        msg["header"]["pid"] = self.sock.getsockname()[0]
        msg["idx"], msg["val"], msg["len"], msg["action"] = CN_IDX_PROC, CN_VAL_PROC, 4, action
        msg.encode()
        self.sock.send(msg.data)

    def drain(self) -> Iterator[dict]:
        """Every event queued now."""
        for data in self.datagrams():
            yield from self.marshal.parse(data)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            try:
                self._control(PROC_CN_MCAST_IGNORE)
            finally:
                self.sock.close()


class ProcfsProbe:
    """The procfs probe; :meth:`poll` also takes the run-queue samples, so call it in a loop."""

    kind = "procfs"

    def __init__(self, scope: Scope, sample_interval: float = 0.1, max_scan_share: float = 0.2):
        self.scope = scope
        self.cpus = sorted(online_cpus())
        self.sample_interval = sample_interval
        self.max_scan_share = max_scan_share
        """Scans may take at most this share of the time: on a host with thousands of threads
        (a scan reads every thread's stat file) the probe samples less often, not more CPU."""
        self.last_samples: list[Counter[int]] = []
        """The scans the last snapshot averaged: its runq is a sampled mean, this is its precision."""
        self._self = os.getpid()
        self._cgroup_mount = unified_root()
        self._connector = ProcConnector()
        try:
            self._exit_stats: TaskExitStats | None = TaskExitStats(self.cpus)
        except OSError as exc:
            log.warning("taskstats unavailable (%s): exit CPU times read from /proc when still there", exc)
            self._exit_stats = None
        self._tracked: dict[int, TaskInfo] = {}
        self._unseen = 0
        self._arrivals: Counter[int] = Counter()
        self._samples: list[Counter[int]] = []
        self._next_sample = 0.0
        self._prev_t, self._prev_times = time.monotonic_ns(), cpu_times()

    def _sample(self) -> None:
        start = time.monotonic()
        self._samples.append(runnable_per_cpu({self._self}))
        now = time.monotonic()
        self._next_sample = now + max(self.sample_interval, (now - start) * (1 / self.max_scan_share - 1))

    def _info_in_scope(self, pid: int) -> TaskInfo | None:
        """The task's /proc view when it is in scope; None when out of scope; raises
        ProcessLookupError when it is already gone."""
        info = read_task(pid)
        if info.flags & PF_KTHREAD:
            return None
        ancestry = cgroup_ids(pid, self._cgroup_mount) if self.scope.by_cgroup else []
        info = replace(info, uid=read_uid(pid))
        return info if self.scope.matches(ancestry, info.comm, info.uid) else None

    def _maybe_arrive(self, tgid: int, cpu: int, ts_ns: int, parent: int = 0) -> TaskEvent | None:
        """Same rule as the BPF probe: a process enters the scope once, at fork or at exec. A child
        gone before we look is judged by its parent (at fork it has the parent's comm, uid and
        cgroup); one we cannot judge at all is counted as lost."""
        if tgid in self._tracked or tgid == self._self:
            return None
        for pid in (tgid, parent) if parent else (tgid,):
            try:
                info = self._info_in_scope(pid)
                break
            except (FileNotFoundError, ProcessLookupError):
                continue
        else:
            self._unseen += 1
            return None
        if info is None:
            return None
        if pid != tgid:
            info = replace(info, pid=tgid, start=0, cputime_ns=0)
        self._tracked[tgid] = info
        return self._event(EventKind.ARRIVAL, tgid, cpu, ts_ns, info)

    def _event(self, kind: EventKind, tgid: int, cpu: int, ts_ns: int, info: TaskInfo) -> TaskEvent:
        try:
            cgroup = cgroup_ids(tgid, self._cgroup_mount)[-1]
        except (FileNotFoundError, ProcessLookupError):
            cgroup = 0
        return TaskEvent(
            kind=kind, pid=tgid, tgid=tgid, cgroup=cgroup, comm=info.comm, cpu=cpu, ts_ns=ts_ns,
            start_ns=info.start_ns, runtime_ns=info.cputime_ns if kind is EventKind.EXIT else 0, uid=info.uid,
        )

    def _handle(self, msg: dict) -> TaskEvent | None:
        what, cpu, ts = msg["event"], msg["cpu"], msg["timestamp_ns"]
        if what == "PROC_EVENT_FORK":
            self._arrivals[cpu] += 1
            if msg["child_pid"] == msg["child_tgid"]:
                return self._maybe_arrive(msg["child_tgid"], cpu, ts, parent=msg["parent_tgid"])
        elif what == "PROC_EVENT_EXEC":
            return self._maybe_arrive(msg["process_tgid"], cpu, ts)
        elif what == "PROC_EVENT_EXIT" and msg["process_pid"] == msg["process_tgid"]:
            tgid = msg["process_tgid"]
            if tgid in self._tracked:
                seen = replace(self._tracked.pop(tgid), cputime_ns=0)
                try:  # the zombie's own figures, if its parent has not reaped it yet
                    info = replace(read_task(tgid), uid=seen.uid)
                except ProcessLookupError:
                    info = seen
                runtime = self._exit_stats.runtime_ns(tgid) if self._exit_stats else None
                if runtime is not None:
                    info = replace(info, cputime_ns=runtime)
                return self._event(EventKind.EXIT, tgid, cpu, ts, info)
        return None

    def poll(self, timeout: float) -> list[TaskEvent]:
        deadline = time.monotonic() + timeout
        events: list[TaskEvent] = []
        while True:
            now = time.monotonic()
            if now >= self._next_sample:
                self._sample()
            if events or now >= deadline:
                return events
            wait = max(0.0, min(deadline, self._next_sample) - now)
            ready = select.select([self._connector, *([self._exit_stats] if self._exit_stats else [])], [], [], wait)[0]
            if self._exit_stats in ready:
                self._exit_stats.drain()
            if self._connector in ready:
                events.extend(e for e in map(self._handle, self._connector.drain()) if e is not None)

    def snapshot(self) -> Snapshot:
        self._sample()
        now, times = time.monotonic_ns(), cpu_times()
        samples, self._samples = self._samples, []
        self.last_samples = samples
        arrivals, self._arrivals = self._arrivals, Counter()
        util = busy_fractions(self._prev_times, times)
        cpus = tuple(
            CpuSample(cpu=cpu, runq=sum(s[cpu] for s in samples) / len(samples), util=util.get(cpu, 0.0),
                      arrivals=arrivals[cpu])
            for cpu in self.cpus
        )
        window = max(1, now - self._prev_t)
        self._prev_t, self._prev_times = now, times
        return Snapshot(t_ns=now, window_ns=window, cpus=cpus, lost=self.lost(), attained=self._attained())

    def _attained(self) -> dict[int, int]:
        """CPU time of each arrived, live process, summed over its live threads (an exited thread's
        time is no longer in /proc: a multithreaded process can read a little short)."""
        attained = {}
        for tgid in self._tracked:
            runtime = threads_runtime_ns(tgid)
            if runtime is not None:
                attained[tgid] = runtime
        return attained

    def lost(self) -> int:
        """Connector and taskstats overruns, plus tasks gone before their scope could be judged."""
        return self._connector.overruns + self._unseen + (self._exit_stats.overruns if self._exit_stats else 0)

    def close(self) -> None:
        self._connector.close()
        if self._exit_stats:
            self._exit_stats.close()

"""The CO-RE eBPF probe: loads ``bpf/lbprobe.bpf.c``'s object and turns its counters, its task
iterator and its ring buffer into :class:`Snapshot` and :class:`TaskEvent`.

Two modes (``bpf/lbprobe.bpf.c`` says what each attaches and costs):

- ``lite`` (the default): nothing on the context-switch path. At each snapshot the task iterator
  lists the runnable threads and those of tracked processes; a CPU's ``runq`` is the number of
  runnable tasks on it at that instant (a sample, not an integral), its ``util`` the busy share of
  /proc/stat's jiffies over the window.
- ``exact``: the kernel side keeps, per CPU, a time integral of the run-queue length updated at
  every switch and wakeup; a window's mean is the integral's difference divided by the window, after
  closing the open interval at "now" here (mapped to the run queue's clock by the offset the kernel
  side keeps). So an idle CPU reads exactly 0 and a CPU with three busy loops exactly 3.

Both modes fill ``Snapshot.attained`` from the iterator.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from lbagent.hostinfo import busy_fractions, cpu_times, online_cpus
from lbagent.live.config import PROBE_MODES
from lbagent.live.probe.libbpf import BPF_NOEXIST, BpfObject, LibbpfError, RingBuffer
from lbagent.live.probe.types import CpuSample, EventKind, Scope, Snapshot, TaskEvent

DEFAULT_OBJECT = Path(__file__).resolve().parents[2] / "bpf" / "lbprobe.bpf.o"
LB_MAX_CPUS = 1024
COMM_LEN = 16
_KINDS = {1: EventKind.ARRIVAL, 2: EventKind.EXIT}
EXACT_PROGRAMS = frozenset({"lb_switch", "lb_wakeup", "lb_wakeup_new", "lb_migrate"})
"""On the context-switch and wakeup paths: loaded in exact mode only."""
LITE_PROGRAMS = frozenset({"lb_fork"})
"""Arrivals at fork: exact mode takes them at wakeup_new instead."""
ITERATOR = "lb_tasks"
TASK_RUNNABLE, TASK_TRACKED = 1, 2

u8, u32, u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64


# Mirrors of bpf/lbprobe.bpf.h; every one is checked against the object's BTF at open (MIRRORS).
class _Config(ctypes.Structure):
    _fields_ = [("self_tgid", u32), ("filter_cgroup", u8), ("filter_comm", u8), ("filter_uid", u8), ("lite", u8)]


class _Cpu(ctypes.Structure):
    _fields_ = [
        ("last_ns", u64),
        ("runq_ns", u64),
        ("switch_ns", u64),
        ("busy_ns", u64),
        ("arrivals", u64),
        ("nr", u32),
        ("busy", u32),
        ("clock_offset", ctypes.c_int64),
        ("calibrated", u64),
    ]


class _Shared(ctypes.Structure):
    _fields_ = [("lost", u64), ("pad", u64 * 7), ("cpus", _Cpu * LB_MAX_CPUS)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("ts_ns", u64),
        ("start_ns", u64),
        ("runtime_ns", u64),
        ("cgroup", u64),
        ("pid", u32),
        ("tgid", u32),
        ("uid", u32),
        ("cpu", u32),
        ("kind", u32),
        ("pad", u32),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


class _Task(ctypes.Structure):
    _fields_ = [("runtime_ns", u64), ("tgid", u32), ("cpu", u32), ("flags", u32), ("pad", u32)]


MIRRORS: Mapping[str, type[ctypes.Structure]] = {
    "lb_config": _Config, "lb_cpu": _Cpu, "lb_shared": _Shared, "lb_event": _Event, "lb_task": _Task,
}
"""Every struct of bpf/lbprobe.bpf.h by its C name, with the Python mirror the loader reads it by."""


def check_layouts(obj: BpfObject, mirrors: Mapping[str, type[ctypes.Structure]] = MIRRORS) -> None:
    """Refuse an object whose shared structs differ in size from their mirrors (built from another
    version of lbprobe.bpf.h): records would be read at the wrong offsets, silently."""
    for name, mirror in mirrors.items():
        size, expected = obj.struct_size(name), ctypes.sizeof(mirror)
        if size != expected:
            found = "absent from its BTF" if size is None else f"{size} bytes"
            raise LibbpfError(f"struct {name} of {obj.path} is {found}, the loader's mirror {mirror.__name__} is "
                              f"{expected} bytes: object and loader out of date", errno.EINVAL)


def read_tasks(data: bytes) -> tuple[Counter[int], dict[int, int]]:
    """The iterator's records: (runnable tasks per CPU, attained ns per tracked tgid)."""
    records = (_Task * (len(data) // ctypes.sizeof(_Task))).from_buffer_copy(data)
    runnable: Counter[int] = Counter()
    attained: dict[int, int] = {}
    for r in records:
        if r.flags & TASK_RUNNABLE:
            runnable[r.cpu] += 1
        if r.flags & TASK_TRACKED:
            attained[r.tgid] = attained.get(r.tgid, 0) + r.runtime_ns
    return runnable, attained


def comm_key(comm: str) -> bytes:
    """The kernel keeps 15 bytes of a command name plus NUL: match what it will compare."""
    return comm.encode()[: COMM_LEN - 1]


class BpfProbe:
    """The eBPF probe. Opening it loads and attaches; :meth:`close` detaches (idempotent).

    ``attached``: the names of the programs attached, so what runs in the kernel can be checked."""

    kind = "bpf"

    def __init__(self, scope: Scope, obj_path: str | Path | None = None, ring_bytes: int = 1 << 22,
                 mode: str = "lite"):
        if mode not in PROBE_MODES:
            raise ValueError(f"unknown probe mode {mode!r} (one of {', '.join(PROBE_MODES)})")
        self.scope = scope
        self.mode = mode
        self._events: list[TaskEvent] = []
        self._obj = BpfObject(obj_path or DEFAULT_OBJECT)
        self._ring: RingBuffer | None = None
        try:
            self._configure(ring_bytes)
            self._obj.load()
            self._fill_scope()
            self.attached = tuple(self._obj.attach_all())
            self._ring = RingBuffer(self._obj.map("events"), self._on_record)
        except BaseException:
            self.close()
            raise
        self.cpus = sorted(online_cpus())
        if mode == "exact":
            self._prime_cpus()
        self._start_window()

    def _configure(self, ring_bytes: int) -> None:
        check_layouts(self._obj)
        rodata, bss = self._obj.map(".rodata"), self._obj.map(".bss")
        for name, m, expected in ((".rodata", rodata, _Config), (".bss", bss, _Shared)):
            if m.value_size != ctypes.sizeof(expected):
                raise LibbpfError(f"{name} of {self._obj.path} is {m.value_size} bytes, loader expects "
                                  f"{ctypes.sizeof(expected)}: object and loader out of date", errno.EINVAL)
        lite = self.mode == "lite"
        rodata.set_initial_value(_Config(
            self_tgid=os.getpid(),
            filter_cgroup=self.scope.by_cgroup,
            filter_comm=bool(self.scope.comms),
            filter_uid=bool(self.scope.uids),
            lite=lite,
        ))
        for name in EXACT_PROGRAMS | LITE_PROGRAMS:
            self._obj.set_autoload(name, (name in LITE_PROGRAMS) == lite)
        self._obj.map("events").set_max_entries(ring_bytes)
        self._bss = bss

    def _fill_scope(self) -> None:
        one = u8(1)
        cgroups, comms, uids = (self._obj.map(n) for n in ("scope_cgroups", "scope_comms", "scope_uids"))
        for cgroup in self.scope.cgroup_ids:
            cgroups.update(u64(cgroup), one, BPF_NOEXIST)
        for comm in self.scope.comms:
            comms.update(ctypes.create_string_buffer(comm_key(comm), COMM_LEN), one)
        for uid in self.scope.uids:
            uids.update(u32(uid), one, BPF_NOEXIST)

    def _prime_cpus(self) -> None:
        """Exact mode: visit every CPU once so each records a switch. Until its first event a CPU's
        run queue is unknown, and a CPU running one busy loop may not switch for a long time."""
        mask = os.sched_getaffinity(0)
        try:
            for cpu in sorted(mask):
                os.sched_setaffinity(0, {cpu})
                time.sleep(0)
        finally:
            os.sched_setaffinity(0, mask)

    def _on_record(self, data: bytes) -> None:
        e = _Event.from_buffer_copy(data[: ctypes.sizeof(_Event)])
        self._events.append(TaskEvent(
            kind=_KINDS[e.kind], pid=e.pid, tgid=e.tgid, cgroup=e.cgroup, comm=e.comm.decode(errors="replace"),
            cpu=e.cpu, ts_ns=e.ts_ns, start_ns=e.start_ns, runtime_ns=e.runtime_ns, uid=e.uid,
        ))

    def _shared(self) -> _Shared:
        shared = _Shared()
        self._bss.lookup(u32(0), shared)
        return shared

    def _integrals(self, shared: _Shared, now: int) -> list[tuple[int, int]]:
        """Exact mode, per CPU: (run-queue integral in task*ns, busy ns), each open interval closed
        at ``now``."""
        integrals = []
        for cpu in self.cpus:
            c = shared.cpus[cpu]
            rq_now = now - c.clock_offset  # this CPU's run-queue clock, now
            runq = c.runq_ns + (c.nr * (rq_now - c.last_ns) if c.last_ns and rq_now > c.last_ns else 0)
            busy = c.busy_ns + (rq_now - c.switch_ns if c.busy and rq_now > c.switch_ns else 0)
            integrals.append((runq, busy))
        return integrals

    def _start_window(self) -> None:
        shared, self._prev_t = self._shared(), time.monotonic_ns()
        self._prev_arrivals = [shared.cpus[cpu].arrivals for cpu in self.cpus]
        self._prev_integrals = self._integrals(shared, self._prev_t) if self.mode == "exact" else []
        self._prev_times = cpu_times() if self.mode == "lite" else {}

    def _runq_util(self, shared: _Shared, now: int, window: int, runnable: Counter[int]) -> list[tuple[float, float]]:
        """Per CPU (runq, util) for the window ending now. Exact: the integrals' means. Lite: the
        runnable tasks the iterator saw at this instant, and the busy share of /proc/stat jiffies."""
        if self.mode == "lite":
            times = cpu_times()
            util = busy_fractions(self._prev_times, times)
            self._prev_times = times
            return [(float(runnable[cpu]), util.get(cpu, 0.0)) for cpu in self.cpus]
        integrals = self._integrals(shared, now)
        means = [(max(0.0, (runq - p_runq) / window), min(1.0, max(0.0, (busy - p_busy) / window)))
                 for (runq, busy), (p_runq, p_busy) in zip(integrals, self._prev_integrals, strict=True)]
        self._prev_integrals = integrals
        return means

    def poll(self, timeout: float) -> list[TaskEvent]:
        if self._ring is None:
            raise RuntimeError("probe is closed")
        self._ring.poll(timeout)
        events, self._events = self._events, []
        return events

    def snapshot(self) -> Snapshot:
        runnable, attained = read_tasks(self._obj.iterate(ITERATOR))
        shared, now = self._shared(), time.monotonic_ns()
        window = max(1, now - self._prev_t)
        arrivals = [shared.cpus[cpu].arrivals for cpu in self.cpus]
        cpus = tuple(
            CpuSample(cpu=cpu, runq=runq, util=util, arrivals=new - old)
            for cpu, (runq, util), new, old in zip(
                self.cpus, self._runq_util(shared, now, window, runnable), arrivals, self._prev_arrivals, strict=True
            )
        )
        self._prev_t, self._prev_arrivals = now, arrivals
        return Snapshot(t_ns=now, window_ns=window, cpus=cpus, lost=shared.lost, attained=attained)

    def lost(self) -> int:
        return self._shared().lost

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._obj.close()

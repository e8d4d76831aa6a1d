"""The CO-RE eBPF probe: loads ``bpf/lbprobe.bpf.c``'s object and turns its counters and ring buffer
into :class:`Snapshot` and :class:`TaskEvent`.

The kernel side keeps, per CPU, a time integral of the run-queue length updated at every switch and
wakeup; a window's mean is the integral's difference divided by the window, after closing the open
interval at "now" here (mapped to the run queue's clock by the offset the kernel side keeps). So an
idle CPU reads exactly 0 and a CPU with three busy loops exactly 3, with no sampling in between.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from pathlib import Path

from lbagent.hostinfo import online_cpus
from lbagent.live.probe.libbpf import BPF_NOEXIST, BpfObject, LibbpfError, RingBuffer
from lbagent.live.probe.types import CpuSample, EventKind, Scope, Snapshot, TaskEvent

DEFAULT_OBJECT = Path(__file__).resolve().parents[2] / "bpf" / "lbprobe.bpf.o"
LB_MAX_CPUS = 1024
COMM_LEN = 16
_KINDS = {1: EventKind.ARRIVAL, 2: EventKind.EXIT}

u8, u32, u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64


# Mirrors of bpf/lbprobe.bpf.h; sizes are checked against the object's BTF-derived map sizes.
class _Config(ctypes.Structure):
    _fields_ = [("self_tgid", u32), ("filter_cgroup", u8), ("filter_comm", u8), ("filter_uid", u8), ("pad", u8)]


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


def comm_key(comm: str) -> bytes:
    """The kernel keeps 15 bytes of a command name plus NUL: match what it will compare."""
    return comm.encode()[: COMM_LEN - 1]


class BpfProbe:
    """The eBPF probe. Opening it loads and attaches; :meth:`close` detaches (idempotent)."""

    kind = "bpf"

    def __init__(self, scope: Scope, obj_path: str | Path | None = None, ring_bytes: int = 1 << 22):
        self.scope = scope
        self._events: list[TaskEvent] = []
        self._obj = BpfObject(obj_path or DEFAULT_OBJECT)
        self._ring: RingBuffer | None = None
        try:
            self._configure(ring_bytes)
            self._obj.load()
            self._fill_scope()
            self._obj.attach_all()
            self._ring = RingBuffer(self._obj.map("events"), self._on_record)
        except BaseException:
            self.close()
            raise
        self.cpus = sorted(online_cpus())
        self._prime_cpus()
        self._prev_t, self._prev = self._totals()

    def _configure(self, ring_bytes: int) -> None:
        rodata, bss = self._obj.map(".rodata"), self._obj.map(".bss")
        for name, m, expected in ((".rodata", rodata, _Config), (".bss", bss, _Shared)):
            if m.value_size != ctypes.sizeof(expected):
                raise LibbpfError(f"{name} of {self._obj.path} is {m.value_size} bytes, loader expects "
                                  f"{ctypes.sizeof(expected)}: object and loader out of date", errno.EINVAL)
        rodata.set_initial_value(_Config(
            self_tgid=os.getpid(),
            filter_cgroup=self.scope.by_cgroup,
            filter_comm=bool(self.scope.comms),
            filter_uid=bool(self.scope.uids),
        ))
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
        """Visit every CPU once so each records a switch: until its first event a CPU's run queue is
        unknown, and a CPU running one busy loop may not switch for a long time."""
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

    def _totals(self) -> tuple[int, list[tuple[int, int, int]]]:
        """(now, per CPU (runq integral, busy ns, arrivals)) with open intervals closed at now."""
        shared = self._shared()
        now = time.monotonic_ns()
        totals = []
        for cpu in self.cpus:
            c = shared.cpus[cpu]
            rq_now = now - c.clock_offset  # this CPU's run-queue clock, now
            runq = c.runq_ns + (c.nr * (rq_now - c.last_ns) if c.last_ns and rq_now > c.last_ns else 0)
            busy = c.busy_ns + (rq_now - c.switch_ns if c.busy and rq_now > c.switch_ns else 0)
            totals.append((runq, busy, c.arrivals))
        return now, totals

    def poll(self, timeout: float) -> list[TaskEvent]:
        if self._ring is None:
            raise RuntimeError("probe is closed")
        self._ring.poll(timeout)
        events, self._events = self._events, []
        return events

    def snapshot(self) -> Snapshot:
        now, totals = self._totals()
        window = max(1, now - self._prev_t)
        cpus = tuple(
            CpuSample(
                cpu=cpu,
                runq=max(0.0, (runq - p_runq) / window),
                util=min(1.0, max(0.0, (busy - p_busy) / window)),
                arrivals=arrivals - p_arrivals,
            )
            for cpu, (runq, busy, arrivals), (p_runq, p_busy, p_arrivals) in zip(self.cpus, totals, self._prev, strict=True)
        )
        self._prev_t, self._prev = now, totals
        return Snapshot(t_ns=now, window_ns=window, cpus=cpus, lost=self.lost())

    def lost(self) -> int:
        return self._shared().lost

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._obj.close()

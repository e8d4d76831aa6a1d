"""Host traces: what a real machine did, in a form the simulator can replay.

JSON Lines, gzip when the name ends in ``.gz``. Line 1 is the header, every later line one event;
``t`` is seconds since the trace started (CLOCK_MONOTONIC based)::

    {"type": "header", "schema": 1, "kernel": "6.18.0", "start": 1764045000.0, "source": "bpf",
     "cpus": [{"cpu": 0, "capacity": 1.0}, ...]}
    {"type": "arrival", "t": 0.12, "pid": 41, "tgid": 41, "comm": "make", "cpu": 1, "cgroup": 7}
    {"type": "exit", "t": 0.95, "pid": 41, "tgid": 41, "comm": "cc1", "cpu": 0, "runtime": 0.61}
    {"type": "sample", "t": 1.0, "cpus": [{"cpu": 0, "runq": 1.3, "util": 0.9, "arrivals": 4}], "lost": 0}

``runtime`` is the CPU time the task consumed (s): a job's size when the trace is replayed. The
reader validates every line and names the line and field of the first fault (:class:`TraceError`);
the writer makes the file 0600 and renames it into place only when complete, so a crash never
leaves a half trace under the final name.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import platform
import re
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lbagent.errors import UserError
from lbagent.sim.workload import CAPACITY_RANGE

SCHEMA = 1
MAX_TRACE_BYTES = 1 << 30
"""Refuse traces whose (decompressed) text exceeds this: a typo'd path must not eat the memory."""
MAX_LINE_BYTES = 1 << 20
"""The longest line read: a header of a 4096-CPU host is ~150 KB; a gzip member that inflates to
gigabytes without a newline stops here, not in memory."""
READ_CHUNK = 1 << 20
"""Decompressed bytes read at a time, so both limits apply while reading, not after."""
MAX_SECONDS = 1e6
"""Largest |t| (11.6 days): float64 still resolves a nanosecond-long task at twice this (ulp 4.7e-10 s);
beyond it the simulator's clock sums lose short tasks, and near 1e308 they overflow."""
MIN_RUNTIME, MAX_RUNTIME = 1e-9, 1e6
"""A known runtime is at least the clock's nanosecond (a slowdown divides by it) and at most as long
as a trace; 0 means unknown (the task is counted as unsized and not replayed)."""


class TraceError(UserError, ValueError):
    """A trace that cannot be used; ``str()`` names the file, the line and the field at fault."""


@dataclass(frozen=True)
class CpuInfo:
    cpu: int
    capacity: float = 1.0


@dataclass(frozen=True)
class Header:
    kernel: str
    start: float
    """Wall-clock time (Unix seconds) at t = 0."""
    source: str
    """``bpf``, ``procfs`` or ``perf`` (imported)."""
    cpus: tuple[CpuInfo, ...]
    schema: int = SCHEMA


@dataclass(frozen=True)
class _TaskRecord:
    t: float
    pid: int
    tgid: int
    comm: str
    cpu: int


@dataclass(frozen=True)
class Arrival(_TaskRecord):
    cgroup: int = 0


@dataclass(frozen=True)
class Exit(_TaskRecord):
    runtime: float


@dataclass(frozen=True)
class Sample:
    t: float
    cpus: tuple[dict, ...]
    lost: int = 0


Event = Arrival | Exit | Sample
_TYPES: dict[str, type[Arrival] | type[Exit] | type[Sample]] = {"arrival": Arrival, "exit": Exit, "sample": Sample}
_NAMES = {cls: name for name, cls in _TYPES.items()}


@dataclass
class Trace:
    header: Header
    events: list[Event] = field(default_factory=list)

    def jobs(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(arrival times s, sizes in CPU-seconds, tasks without an exit) of every task that both
        arrived and exited in the trace, ordered by arrival. A PID reused later is a new task."""
        open_arrivals: dict[int, Arrival] = {}
        jobs: list[tuple[float, float]] = []
        for event in sorted(self.events, key=lambda e: e.t):
            if isinstance(event, Arrival):
                open_arrivals[event.pid] = event
            elif isinstance(event, Exit) and event.pid in open_arrivals:
                jobs.append((open_arrivals.pop(event.pid).t, event.runtime))
        jobs.sort()
        times = np.array([j[0] for j in jobs], dtype=np.float64)
        sizes = np.array([j[1] for j in jobs], dtype=np.float64)
        return times, sizes, len(open_arrivals)

    @property
    def capacities(self) -> np.ndarray:
        return np.array([c.capacity for c in self.header.cpus], dtype=np.float64)


# ---- writing ------------------------------------------------------------------------------------


def _record(obj: Header | Event) -> dict:
    if isinstance(obj, Header):
        record = {"type": "header", **asdict(obj)}
    else:
        record = {"type": _NAMES[type(obj)], **asdict(obj)}
    return record


class TraceWriter:
    """Write a trace atomically: a 0600 temp file beside the target, renamed on :meth:`close`.

    Leaving the ``with`` block by an exception discards the partial file."""

    def __init__(self, path: str | Path, header: Header):
        self.path = Path(path)
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent or ".")
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot write the trace here ({exc.strerror})") from None
        os.fchmod(fd, 0o600)
        raw = os.fdopen(fd, "wb")
        self._raw = raw
        self._out: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if self.path.suffix == ".gz" else raw
        self.write(header)

    def write(self, item: Header | Event) -> None:
        try:
            self._out.write(json.dumps(_record(item), separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> TraceError:
        """A write that failed part way (disk full, I/O error): drop the partial file, say why."""
        self.discard()
        return TraceError(f"{self.path}: cannot write the trace ({exc.strerror or exc})")

    def discard(self) -> None:
        try:
            self._raw.close()
        except OSError:
            pass  # closing flushes: on a full disk that fails too, and the file goes anyway
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif exc_type is not TraceError:  # a TraceError from a failed write has discarded already
            self.discard()


def write_trace(path: str | Path, trace: Trace) -> None:
    with TraceWriter(path, trace.header) as writer:
        for event in trace.events:
            writer.write(event)


# ---- reading ------------------------------------------------------------------------------------


def _lines(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines, with gzip damage and the size guards turned into TraceError.

    Read in chunks and split here (not ``for line in f``, which holds a whole line however long it
    is before anything can be checked), so memory stays within two chunks and a line."""
    if path.stat().st_size > max_bytes:
        raise TraceError(f"{path}: {path.stat().st_size} bytes exceeds the {max_bytes}-byte limit")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    total, number, pending = 0, 0, b""
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise TraceError(f"{path}: decompressed size exceeds the {max_bytes}-byte limit")
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    number += 1
                    _check_line_length(path, number, line)
                    yield number, line
                _check_line_length(path, number + 1, pending)
        if pending:
            yield number + 1, pending
    except EOFError:
        raise TraceError(f"{path}: truncated gzip stream (the file was cut short)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise TraceError(f"{path}: corrupt gzip data ({exc})") from None


def _check_line_length(path: Path, number: int, line: bytes) -> None:
    if len(line) > MAX_LINE_BYTES:
        raise TraceError(f"{path}:{number}: line longer than the {MAX_LINE_BYTES}-byte limit")


_FIELD_TYPES = {
    "t": float, "pid": int, "tgid": int, "cpu": int, "cgroup": int, "runtime": float, "lost": int,
    "comm": str, "capacity": float, "kernel": str, "start": float, "source": str, "schema": int,
    "runq": float, "util": float, "arrivals": int,
}


_RANGES = {
    "t": (-MAX_SECONDS, MAX_SECONDS), "start": (0, 1e11), "runtime": (0, MAX_RUNTIME), "capacity": CAPACITY_RANGE,
}
"""Closed ranges of the numeric fields that differ from [0, inf)."""


def _value(where: str, record: dict, name: str, optional: bool = False):
    if name not in record:
        if optional:
            return None
        raise TraceError(f"{where}: missing field {name!r}")
    value, kind = record[name], _FIELD_TYPES[name]
    ok = isinstance(value, str) if kind is str else (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and (kind is float or float(value).is_integer())
    )
    if not ok:
        raise TraceError(f"{where}: field {name!r} must be {'a string' if kind is str else f'a finite {kind.__name__}'}, "
                         f"got {value!r}")
    lo, hi = _RANGES.get(name, (0, math.inf))
    if kind is not str and not lo <= value <= hi:
        raise TraceError(f"{where}: field {name!r} must be in [{lo:g}, {hi:g}], got {value!r}")
    if name == "runtime" and 0 < value < MIN_RUNTIME:
        raise TraceError(f"{where}: field 'runtime' must be 0 (unknown) or at least {MIN_RUNTIME:g} s, got {value!r}")
    return kind(value)


def _cpus(where: str, record: dict, fields: tuple[str, ...]) -> list[dict]:
    cpus = record.get("cpus")
    if not isinstance(cpus, list) or not cpus or not all(isinstance(c, dict) for c in cpus):
        raise TraceError(f"{where}: field 'cpus' must be a non-empty list of objects")
    return [{name: _value(f"{where}: cpus[{i}]", c, name) for name in fields} for i, c in enumerate(cpus)]


def _parse_header(where: str, record: dict) -> Header:
    if record.get("type") != "header":
        raise TraceError(f"{where}: the first line must be the header (type 'header'), got type {record.get('type')!r}")
    schema = _value(where, record, "schema")
    if schema != SCHEMA:
        raise TraceError(f"{where}: schema version {schema} is not supported (this lbagent reads version {SCHEMA})")
    cpus = tuple(CpuInfo(**c) for c in _cpus(where, record, ("cpu", "capacity")))
    if [c.cpu for c in cpus] != list(range(len(cpus))):
        raise TraceError(f"{where}: field 'cpus' must list CPUs 0..{len(cpus) - 1} in order")
    return Header(kernel=_value(where, record, "kernel"), start=_value(where, record, "start"),
                  source=_value(where, record, "source"), cpus=cpus)


def _parse_event(where: str, record: dict, n_cpus: int) -> Event:
    kind = record.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:
        raise TraceError(f"{where}: field 'type' must be one of {sorted(_TYPES)}, got {kind!r}")
    if kind == "sample":
        cpus = tuple(_cpus(where, record, ("cpu", "runq", "util", "arrivals")))
        return Sample(t=_value(where, record, "t"), cpus=cpus, lost=_value(where, record, "lost"))
    cls = _TYPES[kind]
    names = [f for f in cls.__dataclass_fields__ if f != "cgroup"]
    values = {name: _value(where, record, name) for name in names}
    if values["cpu"] >= n_cpus:
        raise TraceError(f"{where}: field 'cpu' is {values['cpu']} but the header lists {n_cpus} CPUs")
    if cls is Arrival:
        values["cgroup"] = _value(where, record, "cgroup", optional=True) or 0
    return cls(**values)


def read_trace(path: str | Path, max_bytes: int = MAX_TRACE_BYTES) -> Trace:
    """Load and validate a whole trace. Raises :class:`TraceError` naming the line and field."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    try:
        return _parse_lines(path, _lines(path, max_bytes))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from None


def _parse_lines(path: Path, lines: Iterable[tuple[int, bytes]]) -> Trace:
    trace: Trace | None = None
    for number, line in lines:
        where = f"{path}:{number}"
        if not line.strip():
            raise TraceError(f"{where}: empty line")
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TraceError(f"{where}: not valid JSON ({exc})") from None
        except RecursionError:
            raise TraceError(f"{where}: JSON nested too deeply for a trace record") from None
        if not isinstance(record, dict):
            raise TraceError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if trace is None:
            trace = Trace(_parse_header(where, record))
        else:
            trace.events.append(_parse_event(where, record, len(trace.header.cpus)))
    if trace is None:
        raise TraceError(f"{path}: empty trace (no header line)")
    return trace


# ---- recording from a live probe ----------------------------------------------------------------


def host_header(source: str, start: float | None = None) -> Header:
    """This host's header: online CPUs with their relative capacities (1.0 unless the kernel
    publishes ``cpu_capacity``, as on big.LITTLE machines)."""
    from lbagent.hostinfo import read_cpus

    raw = [cpu.capacity for cpu in read_cpus()]
    top = max(raw)
    return Header(kernel=platform.release(), start=time.time() if start is None else start, source=source,
                  cpus=tuple(CpuInfo(i, round(c / top, 4)) for i, c in enumerate(raw)))


def record(probe, path: str | Path, duration: float, interval: float = 1.0) -> tuple[int, int]:
    """Record ``duration`` s from a live probe; returns (task events, samples) written."""
    from lbagent.live.probe.stream import windows
    from lbagent.live.probe.types import EventKind

    t0 = time.monotonic_ns()
    counts = [0, 0]
    with TraceWriter(path, host_header(probe.kind)) as writer:
        for snapshot, events in windows(probe, interval, duration):
            for e in sorted(events, key=lambda e: e.ts_ns):
                t = (e.ts_ns - t0) / 1e9
                if e.kind is EventKind.ARRIVAL:
                    writer.write(Arrival(t, e.pid, e.tgid, e.comm, e.cpu, e.cgroup))
                else:
                    writer.write(Exit(t, e.pid, e.tgid, e.comm, e.cpu, e.runtime_ns / 1e9))
                counts[0] += 1
            cpus = tuple({"cpu": c.cpu, "runq": round(c.runq, 4), "util": round(c.util, 4), "arrivals": c.arrivals}
                         for c in snapshot.cpus)
            writer.write(Sample((snapshot.t_ns - t0) / 1e9, cpus, snapshot.lost))
            counts[1] += 1
    return counts[0], counts[1]


# ---- importing perf script output ---------------------------------------------------------------

_PERF_LINE = re.compile(
    r"^\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<ts>\d+\.\d+):\s+(?P<event>sched:\w+):\s*(?P<fields>.*)$"
)
_PERF_FIELD = re.compile(r"(\w+)=(\S+)")


@dataclass
class _PerfTask:
    arrival: float
    cpu: int
    comm: str
    runtime_ns: int = 0
    switched_in: float | None = None
    on_cpu_s: float = 0.0
    exit: tuple[float, int] | None = None


def perf_script_text(path: Path) -> Iterable[str]:
    """Lines of ``perf script`` output; a binary ``perf.data`` is run through ``perf script``."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from None
    if magic.startswith(b"PERFILE"):
        try:
            out = subprocess.run(["perf", "script", "--header", "-i", str(path)], capture_output=True, text=True,
                                 check=True)
        except FileNotFoundError:
            raise TraceError(f"{path}: a perf.data file, but `perf` is not installed to read it") from None
        except subprocess.CalledProcessError as exc:
            raise TraceError(f"{path}: perf script failed: {exc.stderr.strip().splitlines()[-1:]}") from None
        return out.stdout.splitlines()
    return path.read_text(errors="replace").splitlines()


def import_perf_script(path: str | Path) -> Trace:
    """Tasks born in a ``perf sched record`` / ``perf script`` trace of the sched tracepoints.

    Arrival: the first sched_process_fork (child), sched_wakeup_new or sched_process_exec of a
    task. Exit: sched_process_exit, else its last switch out in state Z/X. Size: the sum of its
    sched_stat_runtime, else the time it spent switched in. Tasks alive before the trace are skipped.
    """
    path = Path(path)
    tasks: dict[int, _PerfTask] = {}
    kernel, n_cpus, first_ts, max_cpu, matched = "unknown", 0, None, 0, 0
    for number, line in enumerate(perf_script_text(path), start=1):
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            if key.strip() == "os release":
                kernel = value.strip()
            elif key.strip() == "nrcpus online":
                n_cpus = int(value)
            continue
        m = _PERF_LINE.match(line)
        if not m:
            continue
        matched += 1
        ts, cpu, event = float(m["ts"]), int(m["cpu"]), m["event"][6:]
        first_ts = ts if first_ts is None else first_ts
        max_cpu = max(max_cpu, cpu)
        fields = dict(_PERF_FIELD.findall(m["fields"]))
        try:
            _perf_event(tasks, event, fields, ts, cpu, m["comm"].strip())
        except (KeyError, ValueError) as exc:
            raise TraceError(f"{path}:{number}: {event} line lacks a usable field ({exc})") from None
    if not matched:
        raise TraceError(f"{path}: no sched tracepoint lines found (expected `perf script` output of `perf sched record`)")
    assert first_ts is not None  # set by the first matched line
    header = Header(kernel=kernel, start=0.0, source="perf",
                    cpus=tuple(CpuInfo(i) for i in range(max(n_cpus, max_cpu + 1))))
    events: list[Event] = []
    for pid, task in tasks.items():
        events.append(Arrival(round(task.arrival - first_ts, 9), pid, pid, task.comm, task.cpu))
        if task.exit is not None:
            runtime = task.runtime_ns / 1e9 if task.runtime_ns else task.on_cpu_s
            events.append(Exit(round(task.exit[0] - first_ts, 9), pid, pid, task.comm, task.exit[1], runtime))
    events.sort(key=lambda e: e.t)
    return Trace(header, events)


def _perf_event(tasks: dict[int, _PerfTask], event: str, f: dict[str, str], ts: float, cpu: int, comm: str) -> None:
    if event == "sched_process_fork":
        tasks.setdefault(int(f["child_pid"]), _PerfTask(ts, cpu, f.get("child_comm", comm)))
    elif event == "sched_wakeup_new":
        task = tasks.setdefault(int(f["pid"]), _PerfTask(ts, cpu, f.get("comm", comm)))
        task.cpu = int(f.get("target_cpu", cpu))
    elif event == "sched_process_exec":
        task = tasks.setdefault(int(f["pid"]), _PerfTask(ts, cpu, comm))
        task.comm = comm
    elif event == "sched_stat_runtime" and int(f["pid"]) in tasks:
        tasks[int(f["pid"])].runtime_ns += int(f["runtime"])
    elif event == "sched_process_exit" and int(f["pid"]) in tasks:
        task = tasks[int(f["pid"])]
        task.exit = task.exit or (ts, cpu)
    elif event == "sched_switch":
        prev, nxt = tasks.get(int(f["prev_pid"])), tasks.get(int(f["next_pid"]))
        if prev is not None:
            prev.comm = f.get("prev_comm", prev.comm)  # the name after any exec the trace missed
            if prev.switched_in is not None:
                prev.on_cpu_s += ts - prev.switched_in
                prev.switched_in = None
            if f["prev_state"][0] in "ZX" and prev.exit is None:
                prev.exit = (ts, cpu)
        if nxt is not None and nxt.exit is None:
            nxt.switched_in = ts

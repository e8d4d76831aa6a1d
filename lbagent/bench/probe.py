"""What the probe costs and whether it keeps up: ``lbagent bench probe``.

Overhead: ``perf bench sched pipe`` (two tasks ping-ponging through pipes: a context switch and a
wakeup per message, the probe's hottest path), both tasks pinned to one CPU so every message is a
switch there, run alternately without and with the probe attached. The slowdown is the median of
the per-pair ratios, so drift of a shared machine hits both sides of each pair alike; it is given
on wall time and on CPU time per message (see :class:`PipeResult`).

Throughput: a fork storm of tiny shell subshells, all in scope by command name; every child must be
seen arriving and exiting, and whatever the probe could not report must show up in ``lost``.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lbagent.errors import UserError
from lbagent.live.probe import open_probe
from lbagent.live.probe.types import EventKind, Scope

STORM_COMM = "lbstorm"
_USECS = re.compile(r"([\d.]+)\s+usecs/op")


def _median_ratio_pct(with_probe: list[float], without: list[float]) -> float:
    return 100.0 * (statistics.median(w / wo for w, wo in zip(with_probe, without, strict=True)) - 1.0)


@dataclass(frozen=True)
class PipeResult:
    """Per run: wall time per message (perf's usecs/op) and CPU time per message (user + system of
    the two ping-pong tasks, from rusage). CPU time is the steadier figure on a shared machine:
    waiting behind someone else's task costs wall time, not CPU time, while the probe's handlers
    run in the switching tasks' context and are charged to them."""

    probe: str
    rounds: int
    loops: int
    wall_us_without: list[float]
    wall_us_with: list[float]
    cpu_us_without: list[float]
    cpu_us_with: list[float]

    @property
    def wall_slowdown_pct(self) -> float:
        return _median_ratio_pct(self.wall_us_with, self.wall_us_without)

    @property
    def cpu_slowdown_pct(self) -> float:
        return _median_ratio_pct(self.cpu_us_with, self.cpu_us_without)

    def to_json(self) -> dict:
        return {**asdict(self), "wall_slowdown_pct": self.wall_slowdown_pct, "cpu_slowdown_pct": self.cpu_slowdown_pct}


@dataclass(frozen=True)
class StormResult:
    probe: str
    expected: int
    arrivals: int
    exits: int
    lost: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.expected / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "rate": self.rate}


def _perf() -> str:
    perf = shutil.which("perf")
    if perf is None:
        raise UserError("`perf` not found: install linux-perf (make deps) to run the pipe benchmark")
    return perf


def _pipe_once(perf: str, loops: int, cpu: int) -> tuple[float, float]:
    """One ``perf bench sched pipe`` run pinned to ``cpu``: (wall us, CPU us) per message."""
    proc = subprocess.Popen([perf, "bench", "sched", "pipe", "-l", str(loops)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert proc.stdout is not None and proc.stderr is not None  # both PIPE
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    match = _USECS.search(out)
    if proc.returncode or not match:
        raise UserError(f"perf bench sched pipe failed: {(err or out).strip()[-200:]}")
    return float(match.group(1)), (usage.ru_utime + usage.ru_stime) * 1e6 / loops


def pipe_overhead(kind: str = "bpf", rounds: int = 7, loops: int = 50_000, cpu: int | None = None) -> PipeResult:
    """Alternate without/with the probe ``rounds`` times; the probe is attached only during its runs."""
    perf = _perf()
    cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
    _pipe_once(perf, loops // 10, cpu)  # warm caches and the page cache for perf itself
    without: list[tuple[float, float]] = []
    with_probe: list[tuple[float, float]] = []
    probe_kind = kind
    for _ in range(rounds):
        without.append(_pipe_once(perf, loops, cpu))
        probe = open_probe(kind, Scope())
        probe_kind = probe.kind
        try:
            with_probe.append(_pipe_once(perf, loops, cpu))
            probe.poll(0)
        finally:
            probe.close()
    return PipeResult(probe_kind, rounds, loops, [w for w, _ in without], [w for w, _ in with_probe],
                      [c for _, c in without], [c for _, c in with_probe])


def fork_storm(kind: str = "bpf", tasks: int = 10_000, parallel: int | None = None, timeout: float = 60.0) -> StormResult:
    """``parallel`` shells (default: two per CPU, so a CPU stays busy while a shell waits for its
    child) named ``lbstorm`` each fork ``tasks / parallel`` subshells as fast as they can; the
    scope is that command name, so the expected count is exact: every subshell plus the shells
    themselves (each arrives at its exec and exits)."""
    parallel = parallel or 2 * len(os.sched_getaffinity(0))
    per_shell = max(1, tasks // parallel)
    script = f"i=0; while [ $i -lt {per_shell} ]; do (:); i=$((i+1)); done"
    with tempfile.TemporaryDirectory() as tmp:
        shell = Path(tmp) / STORM_COMM
        os.symlink(shutil.which("sh") or "/bin/sh", shell)
        probe = open_probe(kind, Scope(comms=frozenset({STORM_COMM})))
        shells: list[subprocess.Popen] = []
        try:
            lost0 = probe.lost()
            start = time.monotonic()
            shells += [subprocess.Popen([str(shell), "-c", script]) for _ in range(parallel)]
            counts = {EventKind.ARRIVAL: 0, EventKind.EXIT: 0}
            expected = parallel * per_shell + parallel
            while any(s.poll() is None for s in shells) and time.monotonic() - start < timeout:
                for e in probe.poll(0.05):
                    counts[e.kind] += 1
            seconds = time.monotonic() - start
            settle = time.monotonic() + 1.0
            while counts[EventKind.EXIT] + probe.lost() - lost0 < expected and time.monotonic() < settle:
                for e in probe.poll(0.05):
                    counts[e.kind] += 1
            lost = probe.lost() - lost0
        finally:
            for s in shells:
                s.kill()
                s.wait()
            probe.close()
    return StormResult(probe.kind, expected, counts[EventKind.ARRIVAL], counts[EventKind.EXIT], lost, seconds)

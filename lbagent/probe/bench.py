"""What the probe costs and whether it keeps up: ``lbagent bench probe``.

Overhead: ``perf bench sched pipe`` (two tasks ping-ponging through pipes: a context switch and a
wakeup per message, the probe's hottest path), both tasks pinned to one CPU so every message is a
switch there, run alternately without and with the probe attached. The slowdown is the median of
the per-pair ratios, so drift of a shared machine hits both sides of each pair alike.

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
from lbagent.probe import open_probe
from lbagent.probe.types import EventKind, Scope

STORM_COMM = "lbstorm"
_USECS = re.compile(r"([\d.]+)\s+usecs/op")


@dataclass(frozen=True)
class PipeResult:
    probe: str
    rounds: int
    loops: int
    usecs_without: list[float]
    usecs_with: list[float]

    @property
    def median_without(self) -> float:
        return statistics.median(self.usecs_without)

    @property
    def median_with(self) -> float:
        return statistics.median(self.usecs_with)

    @property
    def slowdown_pct(self) -> float:
        ratios = [w / wo for w, wo in zip(self.usecs_with, self.usecs_without)]
        return 100.0 * (statistics.median(ratios) - 1.0)

    def to_json(self) -> dict:
        return {**asdict(self), "median_without": self.median_without, "median_with": self.median_with,
                "slowdown_pct": self.slowdown_pct}


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


def _pipe_once(perf: str, loops: int, cpu: int) -> float:
    out = subprocess.run([perf, "bench", "sched", "pipe", "-l", str(loops)], capture_output=True, text=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    match = _USECS.search(out.stdout)
    if out.returncode or not match:
        raise UserError(f"perf bench sched pipe failed: {(out.stderr or out.stdout).strip()[-200:]}")
    return float(match.group(1))


def pipe_overhead(kind: str = "bpf", rounds: int = 7, loops: int = 50_000, cpu: int | None = None) -> PipeResult:
    """Alternate without/with the probe ``rounds`` times; the probe is attached only during its runs."""
    perf = _perf()
    cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
    _pipe_once(perf, loops // 10, cpu)  # warm caches and the page cache for perf itself
    without, with_probe = [], []
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
    return PipeResult(probe_kind, rounds, loops, without, with_probe)


def fork_storm(kind: str = "bpf", tasks: int = 10_000, parallel: int = 2, timeout: float = 60.0) -> StormResult:
    """``parallel`` shells named ``lbstorm`` each fork ``tasks / parallel`` subshells as fast as they
    can; the scope is that command name, so the expected count is exact: every subshell plus the
    shells themselves (each arrives at its exec and exits)."""
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

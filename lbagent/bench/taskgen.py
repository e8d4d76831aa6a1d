"""A real, seeded workload for the demo and the benchmarks: CPU-burning tasks in their own cgroup.

The schedule (arrival times and CPU work per task) is drawn once from a seed, so the kernel, a
heuristic and the learned policy face exactly the same tasks. Arrivals are bursty (a two-state
modulated Poisson process: calm, then bursts at several times the rate) and sizes heavy-tailed
(Pareto, alpha 1.5, as in Park's load_balance), which is where placement matters.

The generator runs as its own process (``python -m lbagent.bench.taskgen``): it moves itself into the
workload cgroup first (or each child joins a cgroup of its own by itself, see ``join``), then forks
one child per task at its arrival time; the child names itself after the task's command, burns
exactly its CPU work and exits; completion times come from pidfds, not from polling. Under load a
nice-0 forker lags its arrivals by milliseconds (host-facts): :class:`Generators` can start it at
real-time priority, the children reset to normal scheduling.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Task:
    at: float
    """Seconds after the start of the run."""
    work: float
    """CPU seconds the task burns."""
    hold: float = 0.0
    """Seconds the task sleeps first (the latency benchmark needs tasks that live past the daemon's reaction)."""
    comm: str = ""
    """The command name the task gives itself (empty: the generator's), as a per-command size history sees it."""


@dataclass(frozen=True)
class Command:
    """A command of a batch workload: its share of the arrivals and its own size scale."""

    name: str
    share: float
    scale: float
    """Pareto minimum (s): the command's mean work is ``scale * alpha / (alpha - 1)`` before the cap."""


def capped_pareto_mean(scale: float, alpha: float, cap: float) -> float:
    """E[min(X, cap)] for X Pareto with minimum ``scale`` and index ``alpha`` > 1."""
    if cap <= scale:
        return cap
    return scale * alpha / (alpha - 1) - scale**alpha * cap ** (1 - alpha) / (alpha - 1)


def make_batch(
    seed: int, seconds: float, cpu_load: float, cpus: int, commands: tuple[Command, ...],
    alpha: float = 1.5, max_work: float = 2.0,
) -> list[Task]:
    """Poisson arrivals of heavy-tailed CPU-bound tasks of several commands, ``cpu_load`` of ``cpus``
    CPUs on average (the cap included in the mean, so the load is what is asked for)."""
    return make_build(seed, seconds, cpu_load, cpus, (commands,), alpha, max_work, burst_factor=None)


def make_build(
    seed: int, seconds: float, cpu_load: float, cpus: int, phases: Sequence[tuple[Command, ...]],
    alpha: float = 1.5, max_work: float = 1.0, burst_factor: float | None = 4.0,
) -> list[Task]:
    """A build-like workload: arrivals of several commands, each with its own heavy-tailed (Pareto)
    sizes, ``cpu_load`` of ``cpus`` CPUs on average; the command mix moves to the next of ``phases``
    at equal fractions of the run (the arrival rate follows, so the load stays put). Arrivals are
    bursty (:func:`arrivals`), or Poisson with ``burst_factor=None``."""
    import numpy as np  # not at module level: the generator forks, and numpy's mappings make fork 4x slower

    rng = np.random.default_rng(seed)
    tasks: list[Task] = []
    span = seconds / len(phases)
    for i, commands in enumerate(phases):
        total = sum(c.share for c in commands)
        p = np.array([c.share / total for c in commands])
        mean = sum(c.share / total * capped_pareto_mean(c.scale, alpha, max_work) for c in commands)
        for t in arrivals(rng, cpu_load * cpus / mean, span, burst_factor):
            c = commands[int(rng.choice(len(commands), p=p))]
            work = min(float(c.scale * (rng.pareto(alpha) + 1.0)), max_work)
            tasks.append(Task(round(i * span + t, 6), round(work, 6), comm=c.name))
    return tasks


def scaled_to(tasks: list[Task], total_work: float, max_work: float) -> list[Task]:
    """The same tasks with every size scaled so the total is ``total_work`` (then capped again).

    A heavy tail over a short run lands far from its mean (a 12 s schedule at 85 % load realises
    35 % to 116 % on these seeds): scaling keeps the shape of the mix while every seed asks for the
    load it names."""
    factor = total_work / max(sum(t.work for t in tasks), 1e-12)
    return [replace(t, work=round(min(t.work * factor, max_work), 6)) for t in tasks]


def arrivals(rng, rate: float, seconds: float, burst_factor: float | None = 4.0) -> Iterator[float]:
    """Arrival times in [0, seconds) averaging ``rate`` per second. Bursty: a two-state modulated
    Poisson process, calm phases (mean 1 s) at half the rate and bursts at ``burst_factor`` times
    it; ``None``: plain Poisson. ``rng`` is numpy's Generator; the caller draws each task's other
    values between two arrivals, so one seed fixes the whole schedule."""
    rates = (rate, rate) if burst_factor is None else (rate * 0.5, rate * burst_factor)
    burst_share = 0.0 if burst_factor is None else 0.5 / (burst_factor - 1.0)  # keeps the mean rate at ``rate``
    t, bursting = 0.0, False
    phase_end = rng.exponential(1.0) if burst_factor is not None else float("inf")
    while True:
        t += rng.exponential(1.0 / rates[bursting])
        while t > phase_end:
            bursting = not bursting
            phase_end += rng.exponential(burst_share if bursting else 1.0)
        if t >= seconds:
            return
        yield float(t)


def burn(work: float) -> None:
    """Consume ``work`` seconds of this process's CPU time (not wall time: sharing slows it down)."""
    end = time.process_time() + work
    while time.process_time() < end:
        pass


def generate(
    tasks: list[Task], cgroup_procs: Sequence[str] = (), drain: float = 1e9, start_at: float | None = None,
    join: list[str | None] | None = None,
) -> list[tuple[float, float, bool]]:
    """Run the schedule from this process: (arrival, completion time, finished) per task.

    Tasks still running ``drain`` seconds after the last arrival are killed and reported unfinished,
    with their time so far (a lower bound): a demo on a swamped host still ends on time. ``join``
    gives per task a cgroup file the child writes ``0`` into before it burns (it joins by itself);
    ``cgroup_procs`` are the files this process joins first (one per hierarchy, e.g. the v2 scope
    and the v1 cpu cgroup), so every task starts in them.
    """
    prctl = None
    if any(t.comm for t in tasks):
        import ctypes

        prctl = ctypes.CDLL(None).prctl  # loaded before the forks, so no child pays for it
    for procs in cgroup_procs:
        Path(procs).write_text("0")
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.monotonic()))
    start = time.monotonic() if start_at is None else start_at
    pending: dict[int, tuple[int, int, float]] = {}  # pidfd -> (pid, index, arrival)
    results: list[tuple[float, float, bool]] = [(0.0, 0.0, False)] * len(tasks)
    poller = select.poll()
    stop_at = start + (tasks[-1].at if tasks else 0.0) + drain
    i = 0
    while i < len(tasks) or pending:
        now = time.monotonic() - start
        if i == len(tasks) and time.monotonic() > stop_at:
            for fd, (pid, index, arrival) in pending.items():
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                os.close(fd)
                results[index] = (arrival - start, time.monotonic() - arrival, False)
            break
        while i < len(tasks) and tasks[i].at <= now:
            pid = os.fork()
            if pid == 0:
                try:
                    if join and (target := join[i]):
                        with open(target, "w") as f:
                            f.write("0")
                    if prctl is not None and tasks[i].comm:
                        prctl(15, tasks[i].comm.encode()[:15], 0, 0, 0)  # PR_SET_NAME
                    time.sleep(tasks[i].hold)
                    burn(tasks[i].work)
                finally:
                    os._exit(0)
            fd = os.pidfd_open(pid)
            pending[fd] = (pid, i, time.monotonic())
            poller.register(fd, select.POLLIN)
            i += 1
        wait_ms = max(0.0, (tasks[i].at - (time.monotonic() - start)) * 1e3) if i < len(tasks) else 100
        for fd, _ in poller.poll(wait_ms):
            done = time.monotonic()
            pid, index, arrival = pending.pop(fd)
            poller.unregister(fd)
            os.close(fd)
            os.waitpid(pid, 0)
            results[index] = (arrival - start, done - arrival, True)
    return results


class Generators:
    """Generator processes running one schedule (only they and their tasks join the cgroup).

    A fork costs about a millisecond on these hosts, so high arrival rates deal the tasks
    round-robin to ``workers`` generators, which all start at the same CLOCK_MONOTONIC instant.
    Each runs in its own session, so :meth:`kill` ends it together with every task it forked.
    ``preexec`` runs in each generator before it starts (e.g. to make it real-time).
    """

    def __init__(
        self, tasks: list[Task], cgroup_dirs: Sequence[Path] = (), drain: float = 1e9, workers: int = 1,
        join: list[str | None] | None = None, preexec: Callable[[], None] | None = None,
    ) -> None:
        self.tasks, self.workers, self.drain = tasks, workers, drain
        self.start_at = time.monotonic() + 0.3 + 0.1 * workers
        self.procs: list[subprocess.Popen] = []
        try:
            for w in range(workers):
                payload = json.dumps({"tasks": [[t.at, t.work, t.hold, t.comm] for t in tasks[w::workers]],
                                      "drain": drain, "start_at": self.start_at,
                                      "join": join[w::workers] if join else None,
                                      "cgroup_procs": [str(d / "cgroup.procs") for d in cgroup_dirs]})
                p = subprocess.Popen([sys.executable, "-m", "lbagent.bench.taskgen"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, preexec_fn=preexec)
                self.procs.append(p)
                assert p.stdin is not None  # stdin=PIPE
                p.stdin.write(payload)
                p.stdin.close()
                p.stdin = None  # sent: communicate() only collects the results
        except BaseException:
            self.kill()
            raise

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def results(self) -> list[tuple[float, float, bool]]:
        """Wait for every generator: (arrival, completion time, finished) per task, in schedule order."""
        timeout = self.start_at - time.monotonic() + (self.tasks[-1].at if self.tasks else 0.0) + min(self.drain, 3600) + 60
        results: list = [None] * len(self.tasks)
        for w, p in enumerate(self.procs):
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"workload generator failed: {err.strip()[-500:]}")
            results[w::self.workers] = [tuple(r) for r in json.loads(out)]
        return results

    def kill(self) -> None:
        """End the generators and every task they forked (a no-op once they finished)."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
            p.wait()
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()


def run(
    tasks: list[Task], cgroup_dirs: Sequence[Path] = (), drain: float = 1e9, workers: int = 1,
    preexec: Callable[[], None] | None = None, join: list[str | None] | None = None,
) -> list[tuple[float, float, bool]]:
    """Run the schedule from :class:`Generators` and wait for it; results come back in schedule order."""
    gens = Generators(tasks, cgroup_dirs, drain, workers, join=join, preexec=preexec)
    try:
        return gens.results()
    finally:
        gens.kill()


class NoisyNeighbour:
    """A process outside the workload's scope, pinned to one CPU, busy ``duty`` of the time."""

    def __init__(self, cpu: int, duty: float = 0.5, period: float = 0.01) -> None:
        code = (
            "import os, time\n"
            f"os.sched_setaffinity(0, {{{cpu}}})\n"
            "while True:\n"
            f"    end = time.monotonic() + {duty * period}\n"
            "    while time.monotonic() < end: pass\n"
            f"    time.sleep({(1 - duty) * period})\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _main() -> None:
    spec = json.loads(sys.stdin.read())
    tasks = [Task(a, w, h, c) for a, w, h, c in spec["tasks"]]
    json.dump(generate(tasks, spec["cgroup_procs"], spec["drain"], spec.get("start_at"), spec.get("join")), sys.stdout)


if __name__ == "__main__":
    _main()

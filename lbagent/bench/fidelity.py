"""``lbagent bench fidelity``: the host's ratio to the kernel for share policies, beside the simulator's.

Each workload of :data:`lbagent.eval.fidelity.WORKLOADS` is a seeded schedule of heavy-tailed
CPU-bound tasks of a few commands (:func:`lbagent.bench.taskgen.make_batch`), really run: a
real-time generator forks the tasks, each joins its share class itself (:mod:`lbagent.live.share`,
the mechanism the daemon will use: an lbagent-owned low-weight ``background`` cgroup inside the
workload's cgroup). Policies:

- ``kernel``: nothing moved;
- ``las:<N>ms``: this process polls each normal task's attained CPU (``/proc/PID/schedstat``) every
  few ms at real-time priority and demotes it once it crosses N ms;
- ``oracle``: the generator knows every task's work; tasks over 100 ms start in background.

Runs alternate (every policy on every workload per repeat, in rotating order). A run another
process disturbed is discarded and rerun: the box's busy time (/proc/stat) over the run minus the
CPU time of the run's own processes (this one, the generator, its tasks and the hog, by rusage)
must stay under ``max_elsewhere`` CPU-s (host-facts, "Scheduler facts"). The same schedules go
through :func:`lbagent.eval.fidelity.simulate`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from lbagent import hostinfo
from lbagent.bench import taskgen
from lbagent.bench.alone import MAX_ELSEWHERE, Disturbance, realtime
from lbagent.bench.demo import as_the_unit_schedules_it
from lbagent.errors import UserError
from lbagent.eval.fidelity import POLICIES, WORKLOADS, Workload, simulate
from lbagent.live import share

log = logging.getLogger(__name__)

COMMANDS = (
    taskgen.Command("fid-cc", 0.5, 0.010),
    taskgen.Command("fid-ld", 0.2, 0.030),
    taskgen.Command("fid-test", 0.3, 0.020),
)
"""Three commands (named for the bench, so its tasks are recognisable) with their own size scales (Pareto 1.5: means 30, 90, 60 ms; about 50 ms overall,
47 ms after the 2 s cap), so a per-command history predicts a task's size only roughly."""
ORACLE_OVER = 0.100
"""The oracle's rule: a task of more than this much work (s) starts in background."""
POLL_INTERVAL = 0.003
MAX_RETRIES = 3
DRAIN = 30.0
"""Seconds a run may take after its last arrival; tasks still running are killed and counted at it."""
GROUP_PREFIX = "lbagent-fidelity"
HOG_READY_TIMEOUT = 5.0


@dataclass(frozen=True)
class Rule:
    """What a policy spec means on the host."""

    spec: str
    demote_after: float | None = None
    """las: CPU seconds of attained service after which a task is demoted."""
    background_over: float | None = None
    """oracle: work (s) above which a task starts in background."""


def parse_policy(spec: str) -> Rule:
    if spec == "kernel":
        return Rule(spec)
    if spec == "oracle":
        return Rule(spec, background_over=ORACLE_OVER)
    m = re.fullmatch(r"las:(\d+(?:\.\d+)?)ms", spec)
    if m and float(m.group(1)) > 0:
        return Rule(spec, demote_after=float(m.group(1)) / 1e3)
    raise UserError(f"--policies: unknown policy {spec!r} (known: kernel, las:<N>ms such as las:30ms, oracle)")


@dataclass(frozen=True)
class Run:
    """One measured run."""

    workload: str
    policy: str
    repeat: int
    tasks: int
    mean: float
    """Mean completion time (exit - fork) over the tasks, s; unfinished ones counted at the drain limit."""
    unfinished: int
    own: float
    """CPU-s of the run's own processes (this one, the generator, its tasks, the hog)."""
    elsewhere: float
    """CPU-s the box was busy beyond them."""
    demoted: int
    move_max: float
    """Longest wait for one demotion (s): moving another process waits for an RCU grace period."""
    lag_max: float
    """Latest fork behind its scheduled arrival (s)."""


class Hog:
    """A busy loop that joins ``join_file``'s cgroup by itself before it spins."""

    def __init__(self, group: Path, join_file: str) -> None:
        code = f"with open({join_file!r}, 'w') as f:\n    f.write('0')\nwhile True:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.monotonic() + HOG_READY_TIMEOUT
        while self.proc.pid not in share.members(group):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the hog did not join {group}")
            time.sleep(0.005)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Demoter:
    """Moves tasks to background from its own thread: a move blocks for a grace period, the poll must not."""

    def __init__(self, groups: share.ShareGroups) -> None:
        self.groups = groups
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.demoted = 0
        self.move_max = 0.0
        self.thread = threading.Thread(target=self._work, name="demoter", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (pid := self.queue.get()) is not None:
            t = time.monotonic()
            if self.groups.demote(pid):
                self.demoted += 1
                self.move_max = max(self.move_max, time.monotonic() - t)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def las_monitor(gens: taskgen.Generators, groups: share.ShareGroups, after: float, exclude: set[int],
                poll: float = POLL_INTERVAL) -> tuple[int, float]:
    """Demote each normal task of the run once its attained CPU crosses ``after`` seconds, until the
    generators are done. Returns (tasks demoted, longest move in s)."""
    threshold = int(after * 1e9)
    sent: set[int] = set()
    with realtime():
        demoter = Demoter(groups)
        try:
            while gens.running():
                present = set(share.members(groups.normal)) - exclude
                sent &= present  # moved ones left the group; a reused PID is a new task
                for pid in present - sent:
                    ns = share.attained_ns(pid)
                    if ns is not None and ns >= threshold:
                        sent.add(pid)
                        demoter.queue.put(pid)
                time.sleep(poll)
        finally:
            demoter.close()
    return demoter.demoted, demoter.move_max


class Bench:
    """The cgroups of one fidelity measurement: made at start, removed at the end whatever happens."""

    def __init__(self, stack: ExitStack) -> None:
        try:
            self.controller = share.detect()
        except share.ShareError as exc:
            raise UserError(f"bench fidelity: {exc.strerror}") from None
        log.info("share mechanism: %s", self.controller.describe())
        root = self.controller.root
        name = f"{GROUP_PREFIX}-{os.getpid()}"
        self.workload_dir = share.make_group(root / name)
        stack.callback(share.remove_group, self.workload_dir, root)
        self.groups = stack.enter_context(share.ShareGroups(self.controller, self.workload_dir))
        self.other_dir = share.make_group(root / f"{name}-hog")
        stack.callback(share.remove_group, self.other_dir, root)

    def run(self, workload: Workload, rule: Rule, schedule: list[taskgen.Task], repeat: int) -> Run:
        over = rule.background_over
        join: list[str | None] = [self.groups.join_file(over is not None and t.work > over) for t in schedule]
        disturbance = Disturbance()
        hog = None
        if workload.hog == "same":
            hog = Hog(self.groups.normal, self.groups.join_file(False))
        elif workload.hog == "other":
            hog = Hog(self.other_dir, str(self.other_dir / self.controller.join_name()))
        demoted, move_max = 0, 0.0
        try:
            gens = taskgen.Generators(schedule, (), DRAIN, join=join, preexec=as_the_unit_schedules_it)
            try:
                if rule.demote_after is not None:
                    exclude = gens.pids | ({hog.proc.pid} if hog else set())
                    demoted, move_max = las_monitor(gens, self.groups, rule.demote_after, exclude)
                results = gens.results()
            finally:
                gens.kill()
        finally:
            if hog:
                hog.stop()
        own, elsewhere = disturbance.own(), disturbance.elsewhere()
        jct = [c for _, c, _ in results]
        lag = max((a - t.at for (a, _, _), t in zip(results, schedule, strict=True)), default=0.0)
        return Run(workload.name, rule.spec, repeat, len(jct), statistics.fmean(jct),
                   sum(not done for _, _, done in results), own, elsewhere, demoted, move_max, lag)


@dataclass(frozen=True)
class Row:
    """One (workload, policy) line of the report; None where there is nothing to show."""

    workload: str
    policy: str
    real_mean: float | None
    real_ratio: float | None
    sim_mean: float | None
    sim_ratio: float | None
    spread: float | None
    """(max - min) / median of the real ratio across repeats (None with fewer than two)."""
    runs: int
    note: str = ""

    @property
    def difference(self) -> float | None:
        return None if self.sim_ratio is None or self.real_ratio is None else self.sim_ratio - self.real_ratio

    def to_json(self) -> dict:
        keys = ("workload", "policy", "real_ratio", "sim_ratio", "real_mean", "sim_mean", "spread")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Report:
    rows: list[Row]
    runs: list[Run]
    rejected: list[Run]
    """Runs discarded as disturbed (each was rerun, up to the retry cap)."""

    @property
    def discarded(self) -> int:
        return len(self.rejected)

    def to_json(self) -> dict:
        return {"runs": [r.to_json() for r in self.rows], "discarded": self.discarded}


def rotated(items: Sequence[str], k: int) -> list[str]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def measure(
    workloads: Sequence[Workload] = WORKLOADS, policies: Sequence[str] = POLICIES, repeats: int = 3,
    seconds: float = 15.0, max_elsewhere: float = MAX_ELSEWHERE, max_retries: int = MAX_RETRIES,
    progress: Callable[[str], None] = log.info,
) -> Report:
    """Every policy on every workload, ``repeats`` times alternated, then the simulator on the same schedules."""
    if os.geteuid() != 0:
        raise UserError("bench fidelity runs real tasks in cgroups it makes: run it as root")
    if "kernel" not in policies:
        raise UserError("--policies must include kernel: every ratio is to the kernel")
    rules = {spec: parse_policy(spec) for spec in policies}
    cpus = len(hostinfo.online_cpus())
    schedules = {w.name: taskgen.make_batch(w.seed, seconds, w.load, w.cpus_for_tasks(cpus), COMMANDS) for w in workloads}
    kept: list[Run] = []
    rejected: list[Run] = []
    with ExitStack() as stack:
        bench = Bench(stack)
        for repeat in range(repeats):
            for workload in workloads:
                for spec in rotated(list(policies), repeat):
                    for attempt in range(max_retries + 1):
                        progress(f"repeat {repeat + 1}/{repeats}: {workload.name} under {spec}"
                                 + (f" (retry {attempt})" if attempt else ""))
                        run = bench.run(workload, rules[spec], schedules[workload.name], repeat)
                        progress(describe(run))
                        if run.elsewhere <= max_elsewhere:
                            kept.append(run)
                            break
                        rejected.append(run)
                        progress(f"discarded: {run.elsewhere:.2f} CPU-s went elsewhere (limit {max_elsewhere:g})")
    capacities = tuple(c.capacity for c in hostinfo.read_cpus())
    rows = [row(w, list(policies), kept, schedules[w.name], capacities) for w in workloads]
    return Report([r for group in rows for r in group], kept, rejected)


def describe(run: Run) -> str:
    text = (f"{run.tasks} tasks, mean {run.mean * 1e3:.1f} ms, {run.own:.2f} CPU-s own, {run.elsewhere:+.2f} elsewhere, "
            f"arrival lag max {run.lag_max * 1e3:.1f} ms")
    if run.policy.startswith("las"):
        text += f", {run.demoted} demoted (longest move {run.move_max * 1e3:.1f} ms)"
    return text + (f", {run.unfinished} unfinished at the drain limit" if run.unfinished else "")


def row(workload: Workload, policies: list[str], runs: list[Run], schedule: list[taskgen.Task],
        capacities: tuple[float, ...]) -> list[Row]:
    """The rows of one workload: real figures paired with the kernel's run of the same repeat."""
    mine = [r for r in runs if r.workload == workload.name]
    kernel_by_repeat = {r.repeat: r.mean for r in mine if r.policy == "kernel"}
    sim: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for spec in policies:
        try:
            sim[spec] = float(simulate(schedule, spec, workload, capacities).mean())
        except UserError as exc:
            sim[spec], notes[spec] = None, str(exc)
    out = []
    for spec in policies:
        means = [r.mean for r in mine if r.policy == spec]
        ratios = [r.mean / kernel_by_repeat[r.repeat] for r in mine if r.policy == spec and r.repeat in kernel_by_repeat]
        ratio = statistics.median(ratios) if ratios else None
        sim_kernel, sim_mean = sim["kernel"], sim[spec]
        out.append(Row(
            workload.name, spec,
            real_mean=statistics.median(means) if means else None,
            real_ratio=ratio,
            sim_mean=sim_mean,
            sim_ratio=sim_mean / sim_kernel if sim_mean is not None and sim_kernel else None,
            spread=(max(ratios) - min(ratios)) / ratio if len(ratios) > 1 and ratio else None,
            runs=len(means),
            note=notes.get(spec, "") or ("" if means else "no undisturbed run"),
        ))
    return out


def render_table(report: Report, title: str):
    from rich import box
    from rich.table import Table

    def fmt(value: float | None, spec: str = ".3f") -> str:
        return "n/a" if value is None or not math.isfinite(value) else format(value, spec)

    table = Table(title=title, box=box.SIMPLE, pad_edge=False)  # about 80 columns wide: numbers keep their width, headers wrap
    for column in ("workload", "policy"):
        table.add_column(column, no_wrap=True)
    for column in ("real mean ms", "real ratio", "sim ratio", "sim - real", "spread", "runs"):
        table.add_column(column, justify="right", width=4 if column == "runs" else 7 if column == "sim - real" else 6)
    for r in report.rows:
        table.add_row(r.workload, r.policy, fmt(None if r.real_mean is None else r.real_mean * 1e3, ".1f"),
                      fmt(r.real_ratio), fmt(r.sim_ratio), fmt(r.difference, "+.3f"), fmt(r.spread), str(r.runs))
    return table


def write_json(report: Report, path: str) -> None:
    """The report as JSON at ``path`` (``-``: stdout); a file appears whole or not at all."""
    text = json.dumps(report.to_json(), indent=2, allow_nan=False)
    if path == "-":
        sys.stdout.write(text + "\n")
        return
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)

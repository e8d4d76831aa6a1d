"""``lbagent demo``: one seeded build-like workload under the kernel alone, the best placement
heuristic, ``las:30ms`` and the shipped learned policy, each through a real ``lbagent run``.

The workload (:func:`lbagent.bench.taskgen.make_build`): several commands with their own
heavy-tailed sizes, bursty arrivals, about 85 % of the CPUs, the mix shifting halfway; beside it, in
the same workload cgroups, a few interactive loops (:mod:`lbagent.bench.interactive`) whose
wake-to-done p99 is reported. The workload lives in a cgroup v2 directory (the daemon's scope) and,
where the cpu controller is on v1 (these hosts), in a v1 cpu cgroup of the same name: the one the
share classes go into. For each policy row the daemon starts as the unit runs it (SCHED_FIFO,
READY over a notify socket, exactly as systemd would), the generator forks the tasks at real-time
priority, then SIGTERM must exit 0 and leave nothing behind: no lbagent cgroup, no state file, no
interactive loop with another mask or cgroup. Rows alternate in rotating order over the repeats;
a run another process disturbed (:mod:`lbagent.bench.alone`) is discarded and rerun.
Completion time = exit - fork of each task, wall clock; slowdown = completion time / CPU work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lbagent import hostinfo
from lbagent.bench import taskgen
from lbagent.bench.alone import MAX_ELSEWHERE, Disturbance
from lbagent.bench.interactive import BURST, SLEEP, InteractiveLoops
from lbagent.errors import UserError
from lbagent.live import share

DEMO_CGROUP = "lbagent-demo"
READY_TIMEOUT = 15.0
DRAIN_LIMIT = 10.0
"""Seconds a run may take after its last arrival; tasks still running are killed and counted at it."""
BEST_PLACEMENT = "jsq"
"""The placement heuristic with the best mean on the simulator's batch suite (docs/eval-v2-batch.json:
2.748 s against the kernel's 2.777 s; placement has no measured headroom on these hosts)."""
DEMOTION = "las:30ms"
CPU_LOAD = 0.85
"""Of the CPUs, the whole workload's: the build's tasks and the interactive loops together."""
INTERACTIVE_LOOPS = 2
MAX_WORK = 1.0
MAX_RETRIES = 2
PHASES = (
    (taskgen.Command("demo-cc", 0.70, 0.008), taskgen.Command("demo-ld", 0.10, 0.060), taskgen.Command("demo-test", 0.20, 0.020)),
    (taskgen.Command("demo-cc", 0.30, 0.008), taskgen.Command("demo-ld", 0.30, 0.060), taskgen.Command("demo-test", 0.40, 0.020)),
)
"""A compile-heavy first half (many small cc, few large ld) shifting to a link- and test-heavy one;
Pareto 1.5 means 24, 180 and 60 ms before the 1 s cap."""
UNIT_RT_PRIORITY = 1
"""The real-time priority systemd/lbagent.service gives the daemon; demo and bench run it the same way."""
UNIT_RTTIME_US = (2_000_000, 3_000_000)
"""Its RLIMIT_RTTIME (LimitRTTIME=): CPU time without blocking before the kernel stops a runaway."""


def as_the_unit_schedules_it() -> None:
    """In the child before exec: SCHED_FIFO priority 1, reset on fork, RLIMIT_RTTIME, as systemd does."""
    import resource

    resource.setrlimit(resource.RLIMIT_RTTIME, UNIT_RTTIME_US)
    os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(UNIT_RT_PRIORITY))


class DaemonProcess:
    """A real ``lbagent run`` subprocess, started and confirmed READY through ``$NOTIFY_SOCKET``."""

    def __init__(
        self, config_text: str, policy: str | None, workdir: Path, unit_scheduling: bool = False,
        wrapper: list[str] | None = None,
    ) -> None:
        self.config = workdir / "lbagent.toml"
        self.config.write_text(config_text)
        self.log_path = workdir / f"daemon-{(policy or 'config').replace('/', '_')}.log"
        self.sock_path = workdir / "notify.sock"
        self.sock_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(self.sock_path))
        self.log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "lbagent.cli", "run", "--config", str(self.config)]
            + (["--policy", policy] if policy else []),
            env=env, stderr=self.log, stdout=subprocess.DEVNULL, preexec_fn=as_the_unit_schedules_it if unit_scheduling else None,
        )
        self.ready_after = self._wait_ready()

    def _wait_ready(self) -> float:
        self.sock.settimeout(0.2)
        deadline = self.started + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"lbagent run exited with {self.proc.returncode}: {self.tail()}")
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in msg.split("\n"):
                return time.monotonic() - self.started
        self.proc.kill()
        raise UserError(f"lbagent run sent no READY=1 within {READY_TIMEOUT:.0f} s: {self.tail()}")

    def tail(self) -> str:
        lines = self.log_path.read_text().strip().splitlines()
        return lines[-1] if lines else "(no output)"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.sock.close()
        self.log.close()
        return code


def demo_config(scope_path: str, state_file: Path, metrics: str | None = None, **daemon: object) -> str:
    """A daemon config scoped to one cgroup; ``daemon`` adds keys of the [daemon] table."""
    settings = {"mode": "affinity", "probe": "auto", "state_file": str(state_file), **daemon}
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    metrics_part = f'enabled = true\naddress = "{metrics}"' if metrics else "enabled = false"
    return f'[scope]\ncgroups = ["{scope_path}"]\n[daemon]\n{body}\n[metrics]\n{metrics_part}\n'


def learned_available(spec: str) -> str | None:
    """None when the learned policy loads, else why not (the row is then skipped, and says so)."""
    from lbagent.policy import resolve_policy

    try:
        resolve_policy(spec)
    except UserError as e:
        return str(e)
    return None



# --------------------------------------------------------------------------------- the workload's cgroups
class WorkloadCgroups:
    """The demo's cgroups: its v2 scope and, where the cpu controller is on v1, a cpu cgroup of the
    same name (where the share classes go). Made at start, removed at the end whatever happens."""

    def __init__(self, stack: ExitStack) -> None:
        v2 = hostinfo.unified_root()
        if v2 is None:
            raise UserError("the demo needs a cgroup v2 mount for its workload cgroup")
        try:
            self.controller = share.detect()
        except share.ShareError as e:
            raise UserError(f"the demo needs a cpu controller for its share classes: {e.strerror}") from None
        self.scope_path = "/" + DEMO_CGROUP
        self.dirs = [self._make(stack, v2 / DEMO_CGROUP, v2)]
        if self.controller.version == 1:
            self.dirs.append(self._make(stack, self.controller.root / DEMO_CGROUP, self.controller.root))
        self.cpu_dir = self.dirs[-1]
        self.join_file = str(self.cpu_dir / self.controller.join_name())
        """What each task writes ``0`` into to join the cpu cgroup itself: the generator runs at
        SCHED_FIFO, which a v1 cpu cgroup without an RT budget refuses (EINVAL), and its children
        do not (they reset to SCHED_OTHER at fork)."""

    @staticmethod
    def _make(stack: ExitStack, d: Path, root: Path) -> Path:
        if d.is_dir():  # an interrupted demo left it: its tasks are the demo's own
            share.remove_group(d, root)
        share.make_group(d)
        stack.callback(share.remove_group, d, root)
        return d

    def leftovers(self, state_file: Path, loops: InteractiveLoops) -> list[str]:
        """What a stopped daemon left: lbagent cgroups, its state file, a loop it changed."""
        found = [f"cgroup {d / leaf}" for d in self.dirs for leaf in share.LEAVES if (d / leaf).exists()]
        if state_file.exists():
            found.append(f"state file {state_file}")
        everything = hostinfo.online_cpus()
        for pid in loops.pids:
            if {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")} != {everything}:
                found.append(f"the mask of interactive loop {pid}")
            if pid not in share.members(self.cpu_dir):
                found.append(f"interactive loop {pid} outside {self.cpu_dir}")
        return found


# --------------------------------------------------------------------------------- one run
@dataclass
class Run:
    completion: list[float]
    slowdown: list[float]
    interactive: list[float]
    unfinished: int
    elsewhere: float
    leftovers: list[str]


def run_once(policy: str | None, tasks: list[taskgen.Task], groups: WorkloadCgroups, workdir: Path) -> Run:
    """One run of the workload under the daemon with ``policy``; None runs no daemon at all."""
    disturbance = Disturbance()
    state_file = workdir / "state.json"
    loops = InteractiveLoops(INTERACTIVE_LOOPS, groups.dirs)
    daemon = None
    try:
        if policy is not None:
            daemon = DaemonProcess(demo_config(groups.scope_path, state_file), policy, workdir, unit_scheduling=True)
        results = taskgen.run(tasks, groups.dirs[:1], drain=DRAIN_LIMIT, preexec=as_the_unit_schedules_it,
                              join=[groups.join_file] * len(tasks))
        code = daemon.stop() if daemon is not None else 0
        if code != 0:
            raise UserError(f"{policy}: the daemon exited with {code} on SIGTERM: {daemon.tail() if daemon else ''}")
        left = groups.leftovers(state_file, loops)
        interactive = loops.stop()
    finally:
        if daemon is not None:
            daemon.stop()
        loops.kill()
    completion = [c for _, c, _ in results]
    return Run(completion, [c / t.work for c, t in zip(completion, tasks, strict=True)], interactive,
               sum(not done for _, _, done in results), disturbance.elsewhere(), left)


# --------------------------------------------------------------------------------- rows
@dataclass
class Row:
    name: str
    policy: str
    tasks: int = 0
    mean: float | None = None
    p99: float | None = None
    mean_slowdown: float | None = None
    interactive_p99: float | None = None
    ratio_to_kernel: float | None = None
    note: str = ""
    runs: list[Run] = field(default_factory=list, repr=False)

    def settle(self, kernel_mean: float | None) -> None:
        """Pool the repeats (the same schedule each time) into the row's figures."""
        if not self.runs:
            return
        completion = np.concatenate([r.completion for r in self.runs])
        self.tasks = len(self.runs[0].completion)
        self.mean, self.p99 = float(completion.mean()), float(np.percentile(completion, 99))
        self.mean_slowdown = float(np.mean(np.concatenate([r.slowdown for r in self.runs])))
        interactive = np.concatenate([r.interactive for r in self.runs])
        self.interactive_p99 = float(np.percentile(interactive, 99)) if interactive.size else None
        self.ratio_to_kernel = self.mean / kernel_mean if kernel_mean else None
        unfinished = sum(r.unfinished for r in self.runs)
        if unfinished:
            self.note = f"{unfinished} task(s) unfinished after the {DRAIN_LIMIT:.0f} s drain (counted at it)"

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "runs"}


def plan(placement: str, learned: str) -> list[Row]:
    return [Row("kernel alone", "kernel"), Row(f"best placement ({placement})", placement),
            Row(f"demotion ({DEMOTION})", DEMOTION), Row(f"learned ({learned})", learned)]


def main(seconds: float, seed: int, repeats: int = 3, placement: str = BEST_PLACEMENT, learned: str = "default",
         json_path: str | None = None, max_elsewhere: float = MAX_ELSEWHERE) -> dict:
    from rich.console import Console

    if os.geteuid() != 0:
        raise UserError("the demo places real tasks and makes cgroups: run it as root (sudo make demo)")
    console = Console()
    cpus = len(hostinfo.online_cpus())
    build_load = CPU_LOAD - INTERACTIVE_LOOPS * BURST / (BURST + SLEEP) / cpus
    tasks = taskgen.scaled_to(taskgen.make_build(seed, seconds, build_load, cpus, PHASES, max_work=MAX_WORK),
                              build_load * cpus * seconds, MAX_WORK)
    console.print(f"workload: {len(tasks)} tasks of {', '.join(c.name for c in PHASES[0])} over {seconds:g} s (seed {seed}), "
                  f"{sum(t.work for t in tasks):.1f} CPU-s on {cpus} CPUs, the mix shifting at {seconds / 2:g} s; "
                  f"{INTERACTIVE_LOOPS} interactive loops (1 ms CPU / 3 ms sleep) beside it: {CPU_LOAD:.0%} of the CPUs in all")
    rows = plan(placement, learned)
    for row in rows:
        why_not = learned_available(row.policy) if row.policy not in ("kernel", placement, DEMOTION) else None
        if why_not:
            row.note = f"skipped: {why_not}"
            console.print(f"[yellow]{row.name}: skipped: {why_not}[/]")
    active = [r for r in rows if not r.note]
    discarded, leftovers = 0, []
    with ExitStack() as stack:
        groups = WorkloadCgroups(stack)
        console.print(f"share classes: {groups.controller.describe()}")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lbagent-demo-", dir="/dev/shm")))
        for repeat in range(repeats):
            for row in active[repeat % len(active):] + active[: repeat % len(active)]:
                with console.status(f"repeat {repeat + 1}/{repeats}: {row.name} ..."):
                    for _attempt in range(MAX_RETRIES + 1):
                        run = run_once(None if row.policy == "kernel" else row.policy, tasks, groups, workdir)
                        leftovers += run.leftovers
                        if run.elsewhere <= max_elsewhere:
                            break
                        discarded += 1
                        console.print(f"[yellow]{row.name}: {run.elsewhere:.2f} CPU-s went elsewhere: discarded, rerun[/]")
                    row.runs.append(run)
    rows[0].settle(None)
    for row in rows[1:]:
        row.settle(rows[0].mean)
    console.print(render(rows, repeats, seconds))
    console.print(f"discarded and rerun: {discarded} (more than {max_elsewhere:g} CPU-s elsewhere)")
    if leftovers:
        console.print(f"[red]left behind by the daemon: {'; '.join(leftovers)}[/]")
    else:
        console.print("left behind: nothing (no lbagent cgroup, state file, or changed mask or cgroup)")
    report = {"rows": [r.to_json() for r in rows], "repeats": repeats, "discarded": discarded, "leftovers": len(leftovers)}
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def render(rows: list[Row], repeats: int, seconds: float):
    from rich.table import Table

    table = Table(title=f"same seeded workload, {repeats} alternated repeats of {seconds:g} s: completion time (s)")
    for col in ("run", "tasks", "mean", "p99", "mean slowdown", "interactive p99 (ms)", "mean / kernel", "note"):
        table.add_column(col, justify="left" if col in ("run", "note") else "right")

    def fmt(v: float | None, spec: str = ".3f", scale: float = 1.0) -> str:
        return "-" if v is None else format(v * scale, spec)

    for r in rows:
        table.add_row(r.name, str(r.tasks), fmt(r.mean), fmt(r.p99), fmt(r.mean_slowdown, ".2f"),
                      fmt(r.interactive_p99, ".2f", 1e3), fmt(r.ratio_to_kernel, ".3f"), r.note)
    return table

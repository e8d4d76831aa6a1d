"""``lbagent demo``: the same seeded workload under the kernel alone, a heuristic and the learned policy.

Each row starts a noisy neighbour (outside the scope, half of the last CPU), then for the policy
rows a real ``lbagent run`` subprocess scoped to the demo cgroup (waiting for its READY over a
notify socket, exactly as systemd would), runs the workload, stops the daemon with SIGTERM and
checks that it exited cleanly. Completion time = exit - arrival of each task, wall clock.
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lbagent import hostinfo
from lbagent.bench import taskgen
from lbagent.errors import UserError

DEMO_CGROUP = "lbagent-demo"
READY_TIMEOUT = 15.0
DRAIN_LIMIT = 15.0
"""Seconds a run may take after its last arrival: three runs stay within 3 minutes on a busy host."""
UNIT_RT_PRIORITY = 1
"""The real-time priority systemd/lbagent.service gives the daemon; demo and bench run it the same way."""
UNIT_RTTIME_US = (2_000_000, 3_000_000)
"""Its RLIMIT_RTTIME (LimitRTTIME=): CPU time without blocking before the kernel stops a runaway."""


def as_the_unit_schedules_it() -> None:
    """In the child before exec: SCHED_FIFO priority 1, reset on fork, RLIMIT_RTTIME, as systemd does."""
    import resource

    resource.setrlimit(resource.RLIMIT_RTTIME, UNIT_RTTIME_US)
    os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(UNIT_RT_PRIORITY))


@dataclass
class Row:
    name: str
    tasks: int
    mean: float | None
    p99: float | None
    note: str = ""


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


def run_row(name: str, policy: str | None, tasks: list[taskgen.Task], cg: Path, workdir: Path) -> Row:
    noisy = taskgen.NoisyNeighbour(max(hostinfo.online_cpus()))
    daemon = None
    try:
        if policy is not None:
            daemon = DaemonProcess(demo_config("/" + cg.name, workdir / "state.json"), policy, workdir, True)
        results = taskgen.run(tasks, cg, drain=DRAIN_LIMIT)
    finally:
        noisy.stop()
        code = daemon.stop() if daemon else 0
    if daemon is not None and code != 0:
        raise UserError(f"{name}: the daemon exited with {code} on SIGTERM: {daemon.tail()}")
    jct = np.array([c for _, c, _ in results])
    unfinished = sum(not done for _, _, done in results)
    note = f"{unfinished} unfinished after the {DRAIN_LIMIT:.0f} s drain (counted at the limit)" if unfinished else ""
    return Row(name, len(jct), float(jct.mean()), float(np.percentile(jct, 99)), note)


def main(seconds: float, seed: int, heuristic: str, learned: str, json_path: str | None) -> list[Row]:
    from rich.console import Console
    from rich.table import Table

    if os.geteuid() != 0:
        raise UserError("the demo places real tasks and makes a cgroup: run it as root (sudo make demo)")
    root = hostinfo.unified_root()
    if root is None:
        raise UserError("the demo needs a cgroup v2 mount for its workload cgroup")
    console = Console()
    tasks = taskgen.make_schedule(seed, seconds, cpu_load=0.9)
    console.print(f"workload: {len(tasks)} tasks over {seconds:.0f} s (seed {seed}), "
                  f"{sum(t.work for t in tasks):.1f} CPU-s, noisy neighbour on CPU {max(hostinfo.online_cpus())}")
    plan = [("kernel alone", None), (f"heuristic ({heuristic})", heuristic), (f"learned ({learned})", learned)]
    rows: list[Row] = []
    cg = root / DEMO_CGROUP
    cg.mkdir(exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="lbagent-demo-", dir="/dev/shm") as tmp:
            for name, policy in plan:
                why_not = learned_available(policy) if policy == learned else None
                if why_not:
                    rows.append(Row(name, 0, None, None, f"skipped: {why_not}"))
                    console.print(f"[yellow]{name}: skipped: {why_not}[/]")
                    continue
                with console.status(f"running {name} ..."):
                    rows.append(run_row(name, policy, tasks, cg, Path(tmp)))
    finally:
        cg.rmdir()
    table = Table(title="task completion time (s), same seeded workload")
    for col in ("run", "tasks", "mean", "p99", "note"):
        table.add_column(col, justify="left" if col in ("run", "note") else "right")
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(r.name, str(r.tasks), fmt(r.mean), fmt(r.p99), r.note)
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows

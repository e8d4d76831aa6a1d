"""``lbagent bench daemon``: how fast and how lean a real ``lbagent run`` is under a stream of arrivals.

Latency is the daemon's own histogram: from the kernel's timestamp of the task's arrival (the probe
event) to the completed ``sched_setaffinity``, read back from ``/metrics`` and interpolated inside
its bucket (buckets are dense around the 2 ms target). CPU and RSS are sampled from /proc by psutil
while the arrivals run; start-to-READY is the time from spawning to the READY=1 datagram.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import psutil

from lbagent import hostinfo
from lbagent.bench import taskgen
from lbagent.bench.demo import DaemonProcess, demo_config
from lbagent.errors import UserError
from lbagent.live.metrics import histogram_quantile, parse, scrape, summed_by

BENCH_CGROUP = "lbagent-bench"
TASK_WORK = 0.0005
TASK_HOLD = 0.02
"""Each task sleeps 20 ms first: alive when the daemon places it, yet 500/s cost little CPU."""
GENERATOR_RATE = 200.0
"""Arrivals per second one generator process sustains here (a fork costs about 1-2 ms)."""
RUNTIME_DIR = "/dev/shm"
"""The state file goes on a tmpfs, as /run is on a systemd host (its fsync is then free)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler(threading.Thread):
    """Peak RSS and CPU seconds of one process, sampled while a measurement runs."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.proc, self.period = psutil.Process(pid), period
        self.peak_rss = self.proc.memory_info().rss
        self.cpu0 = sum(self.proc.cpu_times()[:2])
        self.t0 = time.monotonic()
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    def finish(self) -> tuple[float, float]:
        """(peak RSS in MB, CPU use as a fraction of one CPU)."""
        self.halt.set()
        self.join()
        cpu = sum(self.proc.cpu_times()[:2]) - self.cpu0
        return self.peak_rss / 2**20, cpu / (time.monotonic() - self.t0)


def measure(rate: float, seconds: float, policy: str, probe: str) -> dict:
    if os.geteuid() != 0:
        raise UserError("bench daemon places real tasks: run it as root")
    root = hostinfo.unified_root()
    if root is None:
        raise UserError("bench daemon needs a cgroup v2 mount for its workload cgroup")
    tasks = [taskgen.Task(round(i / rate, 6), TASK_WORK, TASK_HOLD) for i in range(int(rate * seconds))]
    cg = root / BENCH_CGROUP
    cg.mkdir(exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    try:
        with tempfile.TemporaryDirectory(prefix="lbagent-bench-", dir=RUNTIME_DIR) as tmp:
            config = demo_config("/" + cg.name, Path(tmp) / "state.json", metrics=address, probe=probe)
            daemon = DaemonProcess(config, policy, Path(tmp), unit_scheduling=True)
            try:
                proc = psutil.Process(daemon.proc.pid)
                idle_rss, fds_start = proc.memory_info().rss / 2**20, proc.num_fds()
                sampler = Sampler(daemon.proc.pid)
                results = taskgen.run(tasks, [cg], workers=max(1, math.ceil(rate / GENERATOR_RATE)))
                time.sleep(0.2)  # the last exits reach the daemon
                peak_rss, cpu = sampler.finish()
                end_rss, fds_end = proc.memory_info().rss / 2**20, proc.num_fds()
                metrics = parse(scrape(address))
            finally:
                code = daemon.stop()
    finally:
        cg.rmdir()
    placed = sum(v for k, v in metrics.get("lbagent_placements_total", {}).items() if dict(k)["outcome"] == "placed")
    return {
        "rate": rate,
        "seconds": seconds,
        "policy": policy,
        "probe": dict(next(iter(metrics.get("lbagent_info", {})), ())).get("probe"),
        "arrivals": len(results),
        "achieved_rate": len(results) / max(max(a for a, _, _ in results) - min(a for a, _, _ in results), 1e-9),
        "decisions": summed_by(metrics, "lbagent_decisions_total", "kind").get("arrival", 0.0),
        "reviews": summed_by(metrics, "lbagent_decisions_total", "kind").get("review", 0.0),
        "placed": placed,
        "latency_p50_ms": histogram_quantile(metrics, 0.5) * 1e3,
        "latency_p99_ms": histogram_quantile(metrics, 0.99) * 1e3,
        "lost_events": metrics.get("lbagent_probe_lost_events_total", {}).get((), 0.0),
        "errors": {dict(k)["kind"]: v for k, v in metrics.get("lbagent_errors_total", {}).items()},
        "daemon_cpu": cpu,
        "rss_idle_mb": idle_rss,
        "rss_peak_mb": peak_rss,
        "rss_end_mb": end_rss,
        "fds_start": fds_start,
        "fds_end": fds_end,
        "ready_s": daemon.ready_after,
        "exit_code": code,
    }


def main(rate: float, seconds: float, policy: str, probe: str, as_json: bool) -> dict:
    r = measure(rate, seconds, policy, probe)
    if as_json:
        print(json.dumps(r, indent=2))
        return r
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lbagent run under {rate:.0f} arrivals/s for {seconds:.0f} s ({r['probe']} probe, {policy})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    rows = [
        ("arrivals / decisions / placed", f"{r['arrivals']} / {r['decisions']:.0f} / {r['placed']:.0f}", ""),
        ("arrivals/s achieved", f"{r['achieved_rate']:.0f}", f"{rate:.0f}"),
        ("arrival-to-affinity p50", f"{r['latency_p50_ms']:.3f} ms", ""),
        ("arrival-to-affinity p99", f"{r['latency_p99_ms']:.3f} ms", "<= 2 ms"),
        ("lost probe events", f"{r['lost_events']:.0f}", "counted"),
        ("daemon CPU", f"{100 * r['daemon_cpu']:.1f} % of one CPU", ""),
        ("daemon RSS idle / peak / end", f"{r['rss_idle_mb']:.1f} / {r['rss_peak_mb']:.1f} / {r['rss_end_mb']:.1f} MB",
         "<= 120 MB"),
        ("open fds start / end", f"{r['fds_start']} / {r['fds_end']}", "equal (no leak)"),
        ("start to READY", f"{r['ready_s']:.3f} s", "<= 2 s"),
        ("exit code after SIGTERM", str(r["exit_code"]), "0"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return r

"""``lbagent bench storm`` and ``lbagent bench soak``: a real ``lbagent run`` under a fork storm, and
for a long stretch of steady arrivals, checked for what must not happen: a crash, an event lost
without being counted, memory that keeps growing, leaked file descriptors or BPF links.

The storm is shells in the daemon's scope cgroup forking tiny subshells as fast as the host allows
(a subshell costs a fork, not an exec): ``rate x seconds`` tasks in all, the achieved rate is
measured. Each task gives the probe exactly two events (arrival and exit) unless the ring was full,
when the probe counts it lost; so ``events seen + lost == 2 x tasks`` is exact, and checked.
Most storm tasks exit before they can be placed: their ``ESRCH`` is the expected outcome, counted.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from lbagent import hostinfo
from lbagent.bench.daemon import RUNTIME_DIR, Sampler, free_port
from lbagent.bench.demo import DaemonProcess, demo_config
from lbagent.errors import UserError
from lbagent.live.metrics import histogram_quantile, parse, scrape, summed_by

STORM_CGROUP = "lbagent-storm"
WARMUP_TASKS = 400
"""Forked before the baseline is taken: the first arrivals allocate the daemon's working set."""


def bpf_links(pid: int) -> int:
    """Open BPF links of a process (fds whose fdinfo names a ``link_id``): must not grow."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            count += "link_id:" in Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue  # closed meanwhile
    return count


def fork_burst(cgroup_dir: Path, tasks: int, shells: int) -> tuple[int, float]:
    """``shells`` shells inside the cgroup fork ``tasks`` subshells between them; (tasks in scope, s)."""
    per_shell = max(1, tasks // shells)
    script = f"i=0; while [ $i -lt {per_shell} ]; do (:); i=$((i+1)); done"
    fd = os.open(cgroup_dir / "cgroup.procs", os.O_WRONLY)
    try:
        start = time.monotonic()
        procs = [subprocess.Popen(["sh", "-c", script], preexec_fn=lambda: os.write(fd, b"0"), pass_fds=(fd,))
                 for _ in range(shells)]
        for p in procs:
            p.wait()
        return shells * (per_shell + 1), time.monotonic() - start  # the subshells and the shells themselves
    finally:
        os.close(fd)


class StormDaemon:
    """A daemon scoped to a fresh cgroup, with its metrics, for the storm and the soak."""

    def __init__(self, policy: str, probe: str, ring_bytes: int | None) -> None:
        if os.geteuid() != 0:
            raise UserError("bench storm/soak run a real daemon on real tasks: run as root")
        root = hostinfo.unified_root()
        if root is None:
            raise UserError("bench storm/soak need a cgroup v2 mount for the storm's cgroup")
        self.cgroup = root / STORM_CGROUP
        self.cgroup.mkdir(exist_ok=True)
        self.tmp = tempfile.TemporaryDirectory(prefix="lbagent-storm-", dir=RUNTIME_DIR)
        self.address = f"127.0.0.1:{free_port()}"
        extra = {"ring_buffer_bytes": ring_bytes} if ring_bytes else {}
        config = demo_config("/" + self.cgroup.name, Path(self.tmp.name) / "state.json", metrics=self.address,
                             probe=probe, **extra)
        self.daemon = DaemonProcess(config, policy, Path(self.tmp.name), unit_scheduling=True)
        self.proc = psutil.Process(self.daemon.proc.pid)
        self.tasks = 0

    def burst(self, tasks: int, shells: int) -> float:
        n, seconds = fork_burst(self.cgroup, tasks, shells)
        self.tasks += n
        return seconds

    def metrics(self) -> dict:
        return parse(scrape(self.address))

    def settle(self, timeout: float = 15.0) -> tuple[float, float]:
        """Wait until every event is seen or counted lost; (seen, lost)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            seen = sum(m.get("lbagent_probe_events_total", {}).values())
            lost = m.get("lbagent_probe_lost_events_total", {}).get((), 0.0)
            if seen + lost >= 2 * self.tasks or time.monotonic() > deadline:
                return seen, lost
            time.sleep(0.1)

    def footprint(self) -> tuple[float, int, int]:
        """(RSS MB, open fds, BPF links)."""
        return self.proc.memory_info().rss / 2**20, self.proc.num_fds(), bpf_links(self.proc.pid)

    def stop(self) -> int:
        try:
            return self.daemon.stop()
        finally:
            self.tmp.cleanup()
            cgroups_left = [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
            if not cgroups_left:
                self.cgroup.rmdir()


def storm(rate: float, seconds: float, policy: str = "round_robin", probe: str = "bpf", shells: int | None = None,
          ring_bytes: int | None = None) -> dict:
    shells = shells or 2 * len(os.sched_getaffinity(0))
    d = StormDaemon(policy, probe, ring_bytes)
    try:
        d.burst(WARMUP_TASKS, shells)
        d.settle()
        rss0, fds0, links0 = d.footprint()
        sampler = Sampler(d.proc.pid)
        before = d.tasks
        elapsed = d.burst(int(rate * seconds), shells)
        seen, lost = d.settle()
        peak_rss, cpu = sampler.finish()
        rss1, fds1, links1 = d.footprint()
        m = d.metrics()
    finally:
        code = d.stop()
    outcomes = {dict(k)["outcome"]: v for k, v in m.get("lbagent_placements_total", {}).items()}
    return {
        "probe": dict(next(iter(m.get("lbagent_info", {})), ())).get("probe"),
        "tasks": d.tasks - before,
        "seconds": elapsed,
        "achieved_rate": (d.tasks - before) / elapsed,
        "events_expected": 2 * d.tasks,
        "events_seen": seen,
        "events_lost": lost,
        "all_accounted": seen + lost == 2 * d.tasks,
        "decisions": summed_by(m, "lbagent_decisions_total", "kind").get("arrival", 0.0),
        "reviews": summed_by(m, "lbagent_decisions_total", "kind").get("review", 0.0),
        "placements": outcomes,
        "latency_p50_ms": histogram_quantile(m, 0.5) * 1e3,
        "latency_p99_ms": histogram_quantile(m, 0.99) * 1e3,
        "daemon_cpu": cpu,
        "rss_start_mb": rss0,
        "rss_peak_mb": peak_rss,
        "rss_end_mb": rss1,
        "rss_growth_pct": 100 * (rss1 - rss0) / rss0,
        "fds_start": fds0,
        "fds_end": fds1,
        "bpf_links_start": links0,
        "bpf_links_end": links1,
        "exit_code": code,
    }


def soak(minutes: float, rate: float = 200.0, policy: str = "round_robin", probe: str = "bpf",
         interval: float = 10.0, on_sample=None) -> dict:
    """Steady arrivals for ``minutes``; RSS, fds and BPF links sampled every ``interval`` s."""
    d = StormDaemon(policy, probe, None)
    samples = []
    try:
        start = time.monotonic()
        while time.monotonic() - start < minutes * 60:
            t = time.monotonic()
            d.burst(int(rate * interval), 2)
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
            rss, fds, links = d.footprint()
            samples.append({"t": round(time.monotonic() - start, 1), "rss_mb": round(rss, 2), "fds": fds,
                            "bpf_links": links, "tasks": d.tasks})
            if on_sample:
                on_sample(samples[-1])
        seen, lost = d.settle()
    finally:
        code = d.stop()
    later = samples[len(samples) // 2 :] or samples
    return {
        "minutes": minutes, "tasks": d.tasks, "events_seen": seen, "events_lost": lost,
        "all_accounted": seen + lost == 2 * d.tasks,
        "rss_first_mb": samples[0]["rss_mb"], "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_last_mb": samples[-1]["rss_mb"],
        "rss_growth_second_half_pct": 100 * (later[-1]["rss_mb"] - later[0]["rss_mb"]) / later[0]["rss_mb"],
        "fds": sorted({s["fds"] for s in samples}), "bpf_links": sorted({s["bpf_links"] for s in samples}),
        "exit_code": code, "samples": samples,
    }

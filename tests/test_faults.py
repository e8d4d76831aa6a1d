"""Faults on the real kernel that the daemon must survive and report: a task gone between decision and
action, a CPU leaving a task's cpuset, the BPF probe unavailable at start, the event ring full."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lbagent.bench.daemon import free_port
from lbagent.bench.demo import DaemonProcess, demo_config
from lbagent.live.config import parse_config
from lbagent.live.daemon import Daemon
from lbagent.live.metrics import parse, scrape
from livehost import SLEEPER, masks, sleepers, spawn_in, stop, v1_cpuset
from test_daemon import AlwaysSlot, free, log_lines, pinned, scope, wait_for  # noqa: F401 (scope is a fixture)

pytestmark = pytest.mark.kernel
CPU0, CPU1 = frozenset({0}), frozenset({1})


def step_until(daemon: Daemon, condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        daemon.step(0.05)


class KillsTheTaskItDecides(AlwaysSlot):
    """Asks for slot 1, but first kills (and reaps) the task being decided: it exits between the
    decision and the action, exactly as a very short task does."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: subprocess.Popen | None = None

    def act(self, obs, raw, mask):
        if self.victim is not None:
            stop(self.victim)
            self.victim = None
        return super().act(obs, raw, mask)


def test_task_exiting_between_decision_and_action_counts_esrch_and_the_daemon_goes_on(scope):
    path, directory, tmp = scope
    policy = KillsTheTaskItDecides()
    daemon = Daemon(parse_config(demo_config(path, tmp / "state.json")), policy=policy)
    survivor = None
    try:
        for n in range(1, 4):
            policy.victim = spawn_in(directory)
            step_until(daemon, lambda n=n: daemon.decisions == n, f"decision {n}")
        step_until(daemon, lambda: not daemon.live, "the victims' exit events")
        assert daemon.actuator.errors == {"ESRCH": 3}
        assert daemon.metrics.counters["lbagent_placements_total"] == {(("outcome", "error:ESRCH"),): 3.0}
        assert daemon.actuator.state.placements == {}  # the write-ahead records of the dead were dropped
        survivor = spawn_in(directory, threads=1)
        step_until(daemon, lambda: pinned(survivor.pid), "the next placement")
        assert set(masks(survivor.pid).values()) == {CPU1} and set(daemon.live) == {survivor.pid}
    finally:
        daemon.shutdown()
    assert free(survivor.pid)
    stop(survivor)


def spawn_in_cpuset(v2_dir, v1_dir) -> subprocess.Popen:
    """A sleeper that joins the scope's v2 cgroup and a v1 cpuset before it runs any code."""
    fds = [os.open(d / "cgroup.procs", os.O_WRONLY) for d in (v2_dir, v1_dir)]
    try:
        return subprocess.Popen([sys.executable, "-c", SLEEPER.format(threads=0)], pass_fds=fds,
                                preexec_fn=lambda: [os.write(fd, b"0") for fd in fds])
    finally:
        for fd in fds:
            os.close(fd)


def test_cpu_taken_out_of_service_is_refused_counted_and_restore_still_works(scope):
    """CPU 1 leaves the cpuset of a task placed on it, and of a task arriving next: the daemon never
    widens a mask, counts the refusal, and its restore leaves no pin to come back with the CPU."""
    path, directory, tmp = scope
    daemon = Daemon(parse_config(demo_config(path, tmp / "state.json")), policy=AlwaysSlot())
    placed = spawn_in(directory, threads=1)
    late = None
    try:
        step_until(daemon, lambda: pinned(placed.pid), "the first placement")
        with v1_cpuset("lbagent-t-fault", "0-1", placed.pid) as cs:
            (cs / "cpuset.cpus").write_text("0")  # CPU 1 out of service
            assert set(masks(placed.pid).values()) == {CPU0}  # the kernel narrowed our mask
            late = spawn_in_cpuset(directory, cs)
            step_until(daemon, lambda: daemon.decisions == 2, "the late arrival's decision")
            outcomes = daemon.metrics.counters["lbagent_placements_total"]
            assert outcomes == {(("outcome", "placed"),): 1.0, (("outcome", "refused:outside_cpuset"),): 1.0}
            assert set(masks(late.pid).values()) == {CPU0}
            daemon.shutdown()
            daemon = None
            (cs / "cpuset.cpus").write_text("0-1")  # CPU 1 back: nothing of the daemon comes back with it
            assert free(placed.pid) and free(late.pid)
            stop(late)
    finally:
        if daemon is not None:
            daemon.shutdown()
        if late is not None:
            stop(late)
        stop(placed)


def test_probe_unavailable_at_start_falls_back_to_procfs_and_logs_why(scope):
    path, directory, tmp = scope
    missing = tmp / "missing.bpf.o"
    d = DaemonProcess(demo_config(path, tmp / "state.json", bpf_object=str(missing)), "round_robin", tmp)
    with sleepers(directory) as procs:
        lines = log_lines(d)
        (why,) = [e for e in lines if e["logger"] == "lbagent.live.probe"]
        assert why["level"] == "warning" and why["msg"] == (
            f"bpf probe unavailable: BPF object missing: {missing} (build it with `make bpf`); "
            "falling back to the procfs probe")
        assert [e["probe"] for e in lines if e["msg"] == "probe open"] == ["procfs"]
        procs.append(spawn_in(directory, threads=1))
        wait_for(lambda: pinned(procs[0].pid), what="a placement through the procfs probe")
        assert d.stop() == 0 and free(procs[0].pid)
    (tmp / "lbagent.toml").write_text(demo_config(path, tmp / "state.json", probe="bpf", policy="kernel", bpf_object=str(missing)))
    out = subprocess.run([sys.executable, "-m", "lbagent.cli", "run", "--config", str(tmp / "lbagent.toml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr == (
        f"lbagent: error: bpf probe unavailable: BPF object missing: {missing} (build it with `make bpf`)\n")


def test_ring_buffer_full_every_dropped_event_is_counted(scope):
    """A one-page ring (about 50 events) and a burst of 300 tasks while the daemon is stopped: what
    the ring could not hold is counted as lost, so events seen + lost is exactly two per task."""
    path, directory, tmp = scope
    address = f"127.0.0.1:{free_port()}"
    d = DaemonProcess(demo_config(path, tmp / "state.json", metrics=address, probe="bpf", ring_buffer_bytes=4096),
                      "kernel", tmp)
    tasks = 300
    burst = ["sh", "-c", f"i=0; while [ $i -lt {tasks} ]; do (:); i=$((i+1)); done"]
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        shell = spawn_in(directory, argv=burst)
        shell.wait(timeout=60)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    expected = 2 * (tasks + 1)  # the subshells and the shell itself: an arrival and an exit each

    def counts() -> tuple[float, float]:
        m = parse(scrape(address))
        return sum(m.get("lbagent_probe_events_total", {}).values()), m["lbagent_probe_lost_events_total"][()]

    wait_for(lambda: sum(counts()) == expected, what="every event seen or counted lost")
    seen, lost = counts()
    assert lost > 0 and seen > 0
    status = subprocess.run([sys.executable, "-m", "lbagent.cli", "status", "--address", address],
                            capture_output=True, text=True, timeout=20)
    assert f"{lost:.0f}" in status.stdout and "lost" in status.stdout, status.stdout
    assert d.stop() == 0

"""Faults on the real kernel that the daemon must survive and report: a task gone between decision and
action, a CPU leaving a task's cpuset, the BPF probe unavailable at start, the event ring full."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from lbagent.bench.daemon import free_port
from lbagent.bench.demo import DaemonProcess, demo_config
from lbagent.live.config import parse_config
from lbagent.live.daemon import Daemon
from lbagent.live.metrics import IDLE_TIMEOUT, MAX_CONNECTIONS, parse, scrape
from livehost import SLEEPER, masks, sleepers, spawn_in, stop, v1_cpuset
from test_daemon import AlwaysSlot, free, log_lines, pinned, scope, wait_for  # noqa: F401 (scope is a fixture)
from test_service import UNIT

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
            step_until(daemon, lambda n=n: daemon.decisions["arrival"] == n, f"decision {n}")
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
            step_until(daemon, lambda: daemon.decisions["arrival"] == 2, "the late arrival's decision")
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


# ------------------------------------------------------------------ file descriptors (issue 13, item 4)
def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_connections(address: str, n: int) -> list[socket.socket]:
    """``n`` clients that connect to the metrics port and never send a byte (as a slowloris does).

    Non-blocking connects: a daemon that stops accepting fills its listen backlog, and the clients
    beyond it wait in SYN_SENT instead of blocking the test."""
    host, port = address.rsplit(":", 1)
    clients = []
    for _ in range(n):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex((host, int(port)))
        clients.append(c)
    return clients


def answers(address: str) -> bool:
    try:
        return "lbagent_decisions_total" in scrape(address, timeout=1.0)
    except OSError:
        return False


def test_idle_metrics_connections_cannot_exhaust_the_daemon(scope):
    """300 idle clients against a daemon allowed 40 file descriptors more than it has at start:
    it still places new tasks, answers a scrape once the idle ones time out, and SIGTERM restores
    every mask and exits 0."""
    path, directory, tmp = scope
    address = f"127.0.0.1:{free_port()}"
    d = DaemonProcess(demo_config(path, tmp / "state.json", metrics=address), "round_robin", tmp)
    baseline = fds_of(d.proc.pid)
    unit = dict(re.findall(r"^(\w+)=(.*)$", UNIT.read_text(), re.M))
    assert int(unit["LimitNOFILE"]) >= 4 * (baseline + MAX_CONNECTIONS)  # the unit's bound leaves room
    resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (baseline + 40, baseline + 40))
    clients = idle_connections(address, 300)
    try:
        time.sleep(0.5)  # the daemon has seen every connection by now
        assert fds_of(d.proc.pid) <= baseline + MAX_CONNECTIONS + 2
        with sleepers(directory, 3, threads=1) as procs:
            wait_for(lambda: all(pinned(p.pid) for p in procs), what="placements with 300 idle clients")
            start = time.monotonic()
            wait_for(lambda: answers(address), timeout=IDLE_TIMEOUT + 5, what="a scrape after the idle ones time out")
            assert time.monotonic() - start <= IDLE_TIMEOUT + 5
            assert d.stop(signal.SIGTERM) == 0
            assert all(free(p.pid) for p in procs)
    finally:
        for c in clients:
            c.close()
    assert not any("Traceback" in line for line in d.log_path.read_text().splitlines())


def listening_fd(pid: int, port: int) -> int:
    """The descriptor number of a process's TCP socket listening on ``port``."""
    with open(f"/proc/{pid}/net/tcp") as f:
        inodes = {line.split()[9] for line in f.readlines()[1:]
                  if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"}
    (fd,) = [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")
             if os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").rstrip("]") in inodes]
    return fd


def test_sigterm_restores_every_mask_even_with_no_file_descriptor_left(scope):
    """Tasks placed, then RLIMIT_NOFILE lowered to the metrics socket's number, so every descriptor
    number the daemon may use is taken and closing that socket frees none it may reuse: only the
    descriptors reserved at start are left for restoring. SIGTERM frees every task and exits 0."""
    path, directory, tmp = scope
    port = free_port()
    d = DaemonProcess(demo_config(path, tmp / "state.json", metrics=f"127.0.0.1:{port}"), "round_robin", tmp)
    with sleepers(directory, 4, threads=1) as procs:
        wait_for(lambda: all(pinned(p.pid) for p in procs), what="placements")
        limit = listening_fd(d.proc.pid, port)
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
        assert set(range(limit)) <= {int(fd) for fd in os.listdir(f"/proc/{d.proc.pid}/fd")}  # none free below it
        assert d.stop(signal.SIGTERM) == 0, d.tail()
        assert all(free(p.pid) for p in procs)
    assert not (tmp / "state.json").exists()
    assert not any("Traceback" in line for line in d.log_path.read_text().splitlines())

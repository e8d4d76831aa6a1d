"""The daemon on the real kernel: real probe, real ``lbagent run`` subprocesses, real masks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lbagent import hostinfo, spaces
from lbagent.bench.daemon import free_port
from lbagent.bench.demo import DaemonProcess, demo_config
from lbagent.errors import UserError
from lbagent.live.config import parse_config
from lbagent.live.daemon import MAX_COMMS, Daemon, HostView, LiveTask, SojournClock, WorkHistory
from lbagent.live.probe.types import CpuSample, EventKind, Snapshot, TaskEvent
from livehost import masks, sleepers, spawn_in, stop, v2_cgroup

ALL = hostinfo.online_cpus()


def wait_for(condition, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def pinned(pid: int) -> bool:
    """Every thread on a single slot's CPUs (not the default all-CPU mask)."""
    m = set(masks(pid).values())
    return len(m) == 1 and len(next(iter(m))) < len(ALL)


def free(pid: int) -> bool:
    return set(masks(pid).values()) == {ALL}


def log_lines(d: DaemonProcess) -> list[dict]:
    return [json.loads(line) for line in d.log_path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def scope(tmp_path):
    with v2_cgroup("lbagent-t-daemon") as (path, directory):
        yield path, directory, tmp_path


# ------------------------------------------------------------------ pure pieces (no kernel)
def test_sojourn_clock_integrates_tasks_between_decisions():
    c = SojournClock()
    c.arrive(0)
    assert c.take(0) == 0.0
    c.arrive(1_000_000_000)  # one task for 1 s
    c.leave(1_500_000_000)  # two tasks for 0.5 s
    assert c.take(2_000_000_000) == pytest.approx(1.0 + 1.0 + 0.5)  # then one task for 0.5 s
    assert spaces.reward(np.array([2.5]))[0] == -2.5


def test_work_history_predicts_by_command_and_flags_the_unknown():
    h = WorkHistory()
    assert h.predict("burn")[1] is True
    h.record("burn", 0.2)
    h.record("burn", 0.4)
    assert h.predict("burn") == (pytest.approx(0.3), False)
    work, unknown = h.predict("other")
    assert unknown and 0.05 < work < 0.3  # the prior moved towards what was seen
    for i in range(MAX_COMMS):
        h.record(f"c{i}", 0.1)
    assert len(h.by_comm) == MAX_COMMS and "burn" not in h.by_comm  # bounded: the oldest command went


def test_host_view_builds_the_contracts_observation():
    view = HostView()
    n = len(view.slot_masks)
    snap = Snapshot(10_000_000_000, 1_000_000_000, tuple(CpuSample(c, 1.0 + c, 0.5, 0) for c in sorted(ALL)))
    live = {7: LiveTask(7, "burn", 9_500_000_000, 0, 2.0), 8: LiveTask(8, "burn", 9_000_000_000, None, 1.0)}
    view.record_placement(8_000_000_000, 0)
    view.record_placement(9_600_000_000, 0)
    raw = view.raw(snap, live, 10_000_000_000, 0.3, False, 0.01)
    assert raw.slot_mask[0, :n].all() and not raw.slot_mask[0, n:].any()
    assert raw.runnable[0, 0] == 1.0 and raw.util[0, 0] == 0.5
    assert raw.placed[0, 0] == 1.0  # the placement 2 s ago is outside the 1 s window
    assert view.raw(snap, live, 10_700_000_000, 0.3, False, 0.01).placed[0, 0] == 0.0  # and now both are
    assert raw.work_left[0, 0] == pytest.approx(1.5)  # 2.0 predicted, 0.5 s elapsed; KERNEL tasks not counted
    obs = spaces.encode(raw)
    assert obs.shape == (1, spaces.OBS_DIM) and spaces.action_mask(raw)[0, spaces.KERNEL]


def test_daemon_never_imports_torch_the_simulator_or_the_agent():
    code = (
        "import sys, lbagent.cli, lbagent.live.daemon, lbagent.live.probe.bpf, lbagent.live.probe.procfs, lbagent.policy.files\n"
        "from lbagent.policy import resolve_policy\nresolve_policy('sed')\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('lbagent.agent', 'lbagent.sim', 'sim'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ in-process daemon
class AlwaysSlot:
    """A policy that asks for slot 1 for every arriving task, whatever it is: the scope rules must hold
    anyway (a review may only keep its task where it is: KERNEL)."""

    name = "always"

    def __init__(self) -> None:
        self.rewards: list[float] = []

    def begin_trial(self, batch: int, seed: int) -> None:
        pass

    def act(self, obs, raw, mask):
        return np.where(raw.review, spaces.KERNEL, 1)

    def observe(self, reward, episode_start) -> None:
        self.rewards.append(float(reward[0]))


@pytest.mark.kernel
def test_policy_that_always_asks_never_touches_out_of_scope_tasks(scope):
    path, directory, tmp = scope
    address = f"127.0.0.1:{free_port()}"
    config = parse_config(demo_config(path, tmp / "state.json", metrics=address))
    policy = AlwaysSlot()
    daemon = Daemon(config, policy=policy)
    outsider = spawn_in(None)
    insiders = []
    try:
        assert daemon.server.address[0] == "127.0.0.1"
        insiders = [spawn_in(directory, threads=1) for _ in range(3)]
        deadline = time.monotonic() + 5
        while not all(pinned(p.pid) for p in insiders) and time.monotonic() < deadline:
            daemon.step(0.05)
        assert all(set(masks(p.pid).values()) == {frozenset({1})} for p in insiders)
        # As if the probe reported tasks it should not: out of scope, PID 1, the daemon itself.
        now = time.monotonic_ns()
        fake = [TaskEvent(EventKind.ARRIVAL, pid, pid, 0, "python", 0, now) for pid in (outsider.pid, 1, os.getpid())]
        init_before = masks(1)
        daemon.handle(fake)
        assert free(outsider.pid) and masks(1) == init_before and free(os.getpid())
        assert daemon.actuator.refusals == {"out_of_scope": 1, "pid1": 1, "self": 1}
        gone = subprocess.Popen(["true"])
        gone.wait()
        daemon.live[gone.pid] = LiveTask(gone.pid, "true", now, 1, 0.1)  # as if its exit event was lost
        daemon.prune()
        assert gone.pid not in daemon.live and len(daemon.live) == 3
        assert len(policy.rewards) >= 4 and all(r <= 0 for r in policy.rewards)
        status = subprocess.run([sys.executable, "-m", "lbagent.cli", "status", "--address", address],
                                capture_output=True, text=True, timeout=20)
        assert "slot1 6" in status.stdout and "arrival 6" in status.stdout and "out_of_scope 1" in status.stdout, status.stdout
    finally:
        daemon.shutdown()
        stop(outsider)
    assert all(free(p.pid) for p in insiders)
    for p in insiders:
        stop(p)


# ------------------------------------------------------------------ lbagent run subprocesses
@pytest.mark.kernel
def test_sigterm_restores_every_mask_and_exits_0(scope):
    path, directory, tmp = scope
    d = DaemonProcess(demo_config(path, tmp / "state.json"), "round_robin", tmp)
    with sleepers(directory, 4, threads=2) as procs:
        wait_for(lambda: all(pinned(p.pid) for p in procs), what="placements")
        assert {frozenset(masks(p.pid).values()) for p in procs} == {frozenset({frozenset({0})}), frozenset({frozenset({1})})}
        assert (tmp / "state.json").exists()
        assert d.stop(signal.SIGTERM) == 0
        assert all(free(p.pid) for p in procs)
        assert not (tmp / "state.json").exists()
        assert any(e["msg"].startswith("stopped") for e in log_lines(d))


@pytest.mark.kernel
def test_kill_9_then_restart_restores_from_the_state_file(scope):
    path, directory, tmp = scope
    config = demo_config(path, tmp / "state.json")
    first = DaemonProcess(config, "round_robin", tmp)
    with sleepers(directory, 3, threads=1) as procs:
        wait_for(lambda: all(pinned(p.pid) for p in procs), what="placements")
        first.stop(signal.SIGKILL)
        assert all(pinned(p.pid) for p in procs)  # nobody restored them: the daemon died
        saved = json.loads((tmp / "state.json").read_text())
        assert {e["tgid"] for e in saved["placements"]} == {p.pid for p in procs}
        second = DaemonProcess(config, "kernel", tmp)
        assert all(free(p.pid) for p in procs)  # restored before READY
        assert second.stop() == 0


@pytest.mark.kernel
def test_kill_9_at_random_moments_under_arrivals_leaves_no_mask_behind(scope):
    """Three SIGKILLs at seeded random moments while tasks keep arriving, a restart after each, then
    SIGTERM: not one task keeps a mask the daemon set."""
    path, directory, tmp = scope
    config = demo_config(path, tmp / "state.json")
    rng = np.random.default_rng(5)
    fd = os.open(directory / "cgroup.procs", os.O_WRONLY)
    procs: list[subprocess.Popen] = []

    def arrive(n: int) -> None:
        for _ in range(n):
            procs.append(subprocess.Popen(["sleep", "60"], preexec_fn=lambda: os.write(fd, b"0"), pass_fds=(fd,)))
            time.sleep(rng.uniform(0.0, 0.02))

    try:
        d = DaemonProcess(config, "round_robin", tmp)
        for _ in range(3):
            arrive(int(rng.integers(5, 15)))
            d.stop(signal.SIGKILL)
            arrive(3)  # arrivals while no daemon runs: never decided, never touched
            d = DaemonProcess(config, "round_robin", tmp)
        arrive(5)
        wait_for(lambda: all(pinned(p.pid) for p in procs[-5:]), what="placements after the last restart")
        assert d.stop() == 0
        assert [p.pid for p in procs if not free(p.pid)] == []
    finally:
        os.close(fd)
        for p in procs:
            stop(p)


@pytest.mark.kernel
def test_corrupt_state_file_is_refused_and_a_safe_scan_frees_tasks(scope):
    path, directory, tmp = scope
    (tmp / "state.json").write_text('{"format": "lbagent-state", "version": 1, "placem')
    (tmp / "state.json").chmod(0o600)  # as the daemon writes it: only the content is wrong
    stuck = spawn_in(directory, threads=1)
    try:
        for t in masks(stuck.pid):
            os.sched_setaffinity(t, {1})
        d = DaemonProcess(demo_config(path, tmp / "state.json"), "kernel", tmp)
        assert free(stuck.pid)
        errors = [e for e in log_lines(d) if e["level"] == "error"]
        assert len(errors) == 1 and "corrupt or truncated JSON" in errors[0]["msg"] and errors[0]["rescued"] == 1
        assert len(list(tmp.glob("state.json.corrupt-*"))) == 1
        assert d.stop() == 0
    finally:
        stop(stuck)


@pytest.mark.kernel
def test_dry_run_decides_and_logs_but_changes_nothing(scope):
    path, directory, tmp = scope
    for sub in ("real", "third"):
        (tmp / sub).mkdir()
    real = DaemonProcess(demo_config(path, tmp / "state.json"), "round_robin", tmp / "real")
    with pytest.raises(UserError, match="another lbagent daemon is using it"):
        DaemonProcess(demo_config(path, tmp / "state.json"), "round_robin", tmp / "third")
    dry = DaemonProcess(demo_config(path, tmp / "state.json", dry_run=True), "round_robin", tmp)

    def dry_placements() -> list[dict]:
        return [e for e in log_lines(dry) if e["msg"] == "placement"]

    with sleepers(directory, 2) as procs:
        wait_for(lambda: len(dry_placements()) == 2 and all(pinned(p.pid) for p in procs), what="both daemons")
        assert dry.stop() == 0
        # Beside a real daemon, a dry run neither restores its tasks nor removes its state file.
        assert all(pinned(p.pid) for p in procs) and (tmp / "state.json").exists()
        assert real.stop() == 0 and all(free(p.pid) for p in procs)
        dry = DaemonProcess(demo_config(path, tmp / "state.json", dry_run=True), "round_robin", tmp)
        procs += [spawn_in(directory) for _ in range(2)]
        wait_for(lambda: len(dry_placements()) == 2, what="dry-run log lines")
        assert {e["tgid"] for e in dry_placements()} == {p.pid for p in procs[2:]}
        assert all(e["outcome"] == "dry_run" for e in dry_placements())
        assert all(free(p.pid) for p in procs) and not (tmp / "state.json").exists()
        assert dry.stop() == 0


def write_policy(path: Path, favourite: int) -> None:
    """A real policy file (an MLP actor) whose output always prefers one action."""
    from lbagent.policy.files import save_policy

    bias = np.zeros(spaces.N_ACTIONS)
    bias[favourite] = 10.0
    weights = {"pi.0.weight": np.zeros((8, spaces.OBS_DIM)), "pi.0.bias": np.zeros(8),
               "action.weight": np.zeros((spaces.N_ACTIONS, 8)), "action.bias": bias}
    save_policy(path, weights, {"algorithm": "a2c", "arch": {"layers": 1}})


@pytest.mark.kernel
def test_policy_file_replaced_and_sighup_keeps_state_and_rejects_a_bad_file(scope):
    path, directory, tmp = scope
    policy = tmp / "live.policy"
    write_policy(policy, favourite=1)
    d = DaemonProcess(demo_config(path, tmp / "state.json", policy=str(policy)), None, tmp)
    with sleepers(directory, 1) as procs:
        wait_for(lambda: set(masks(procs[0].pid).values()) == {frozenset({1})}, what="placement by the file")
        policy.write_bytes(b"\x00garbage, not safetensors")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e["msg"].startswith("reload rejected") for e in log_lines(d)), what="rejection")
        (rejection,) = [e for e in log_lines(d) if e["msg"].startswith("reload rejected")]
        assert str(policy) in rejection["reason"]
        procs.append(spawn_in(directory))
        wait_for(lambda: set(masks(procs[1].pid).values()) == {frozenset({1})}, what="placement by the old policy")
        write_policy(policy, favourite=spaces.KERNEL)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e["msg"] == "reloaded" for e in log_lines(d)), what="reload")
        procs.append(spawn_in(directory))
        time.sleep(0.3)
        assert free(procs[2].pid)  # KERNEL: left alone
        assert d.stop() == 0
        assert all(free(p.pid) for p in procs)  # the placements made before the reloads were restored


def test_bad_policy_or_root_scope_exit_2_before_touching_anything(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(demo_config("//.", tmp_path / "state.json"))
    out = subprocess.run([sys.executable, "-m", "lbagent.cli", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "scope.cgroups: '//.' is the root cgroup" in out.stderr
    cfg.write_text(demo_config("/no-such-cgroup-here", tmp_path / "state.json", policy=str(tmp_path / "nope.policy")))
    out = subprocess.run([sys.executable, "-m", "lbagent.cli", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr == f"lbagent: error: {tmp_path}/nope.policy: policy file not found\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


# ------------------------------------------------------------------ the unit's restrictions, without systemd
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "lbagent.service"
CAP_NUMBERS = {"CAP_SYS_NICE": 23, "CAP_PERFMON": 38, "CAP_BPF": 39}
# PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN): what MemoryDenyWriteExecute=yes applies; it survives execve.
MDWE_EXEC = [sys.executable, "-c",
             "import ctypes, os, sys; assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0; os.execv(sys.argv[1], sys.argv[1:])"]


def unit_capabilities() -> list[str]:
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("CapabilityBoundingSet="))
    return line.split("=", 1)[1].split()


@pytest.mark.kernel
@pytest.mark.parametrize("probe", ["bpf", "procfs"])
def test_works_with_only_the_units_capabilities_and_memory_deny_write_execute(scope, probe):
    """The unit's capability bounding set, no_new_privs, MDWE and real-time scheduling, as systemd applies them."""
    path, directory, tmp = scope
    caps = unit_capabilities()
    wrapper = ["setpriv", "--nnp", "--bounding-set", "-all," + ",".join("+" + c[4:].lower() for c in caps), *MDWE_EXEC]
    d = DaemonProcess(demo_config(path, tmp / "state.json", probe=probe), "round_robin", tmp, True, wrapper)
    with sleepers(directory) as procs:
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        bounding = int(next(x for x in status.splitlines() if x.startswith("CapBnd:")).split()[1], 16)
        assert bounding == sum(1 << CAP_NUMBERS[c] for c in caps)
        assert [e["probe"] for e in log_lines(d) if e["msg"] == "probe open"] == [probe]
        procs += [spawn_in(directory, threads=1) for _ in range(2)]
        wait_for(lambda: all(pinned(p.pid) for p in procs), what="placements under the unit's restrictions")
        assert d.stop() == 0
        assert all(free(p.pid) for p in procs)


@pytest.mark.kernel
@pytest.mark.slow
def test_demo_runs_the_same_workload_under_every_row_and_leaves_nothing(tmp_path):
    from lbagent.bench import demo

    learned = tmp_path / "kernel.policy"
    write_policy(learned, favourite=spaces.KERNEL)
    report = demo.main(seconds=3, seed=11, repeats=1, placement="round_robin", learned=str(learned),
                       json_path=str(tmp_path / "demo.json"))
    rows = report["rows"]
    assert [r["policy"] for r in rows] == ["kernel", "round_robin", "las:30ms", str(learned)]
    assert len({r["tasks"] for r in rows}) == 1 and rows[0]["tasks"] > 0
    assert all(0 < r["mean"] <= r["p99"] and r["interactive_p99"] > 0.001 for r in rows)
    assert report["leftovers"] == 0 and report["repeats"] == 1
    assert json.loads((tmp_path / "demo.json").read_text())["rows"][2]["policy"] == "las:30ms"
    assert not (hostinfo.unified_root() / demo.DEMO_CGROUP).exists()

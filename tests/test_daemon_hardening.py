"""The daemon against hostile or broken inputs, on the real kernel with real ``lbagent run`` processes:
state files it must not trust, restores that must obey the placement rules, reloads that must neither
crash nor let two daemons share a state file, and scope cgroups that appear late or nest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lbagent import hostinfo
from lbagent.bench.daemon import free_port
from lbagent.bench.demo import DaemonProcess, demo_config
from lbagent.hostinfo import read_task
from lbagent.live.actuate import Actuator
from lbagent.live.probe.types import Scope
from lbagent.live.state import Placement, StateFile, boot_id
from livehost import NOBODY, kill_all, masks, shared_directory, sleepers, spawn_in, stop, v2_cgroup
from test_config import deep
from test_daemon import ALL, free, log_lines, pinned, scope, wait_for  # noqa: F401 (scope is a fixture)

SHIPPED = Path(__file__).resolve().parent.parent / "systemd" / "lbagent.toml"


def write_state(path: Path, entries: list[dict]) -> None:
    """A state file as the daemon writes one (this boot, mode 0600), naming whatever the test wants."""
    path.write_text(json.dumps({"format": "lbagent-state", "version": 1, "boot_id": boot_id(), "placements": entries}))
    path.chmod(0o600)


def entry(pid: int, applied, originals, comm: str = "python") -> dict:
    """A placement of a real task, with its true start time (so only the placement rules can refuse it)."""
    return {"tgid": pid, "start": read_task(pid).start, "comm": comm, "mode": "affinity", "applied": sorted(applied),
            "originals": {str(t): sorted(originals) for t in masks(pid)}, "cgroup": None}


@contextmanager
def running(config_text: str, policy: str | None, workdir: Path, wrapper: list[str] | None = None) -> Iterator[DaemonProcess]:
    """A real ``lbagent run``, READY on entry and stopped on the way out, even when an assertion
    fails first (a daemon left running would keep its tasks pinned on a shared host)."""
    d = DaemonProcess(config_text, policy, workdir, wrapper=wrapper)
    try:
        yield d
    finally:
        d.stop()


def messages(d: DaemonProcess, prefix: str) -> list[dict]:
    return [e for e in log_lines(d) if e["msg"].startswith(prefix)]


def sighup(d: DaemonProcess, outcome: str, n: int = 1) -> dict:
    """Reload, and wait for the ``n``-th log line starting with ``outcome`` (``reloaded``, ``reload rejected``)."""
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(messages(d, outcome)) >= n, what=f"{outcome} #{n}")
    return messages(d, outcome)[n - 1]


def places_then_stops_cleanly(d: DaemonProcess, directory: Path, what: str, n: int = 1) -> None:
    """The daemon still works: new tasks in ``directory`` get placed, and SIGTERM frees them again."""
    with sleepers(directory, n, threads=1) as procs:
        wait_for(lambda: all(pinned(p.pid) for p in procs), what=what)
        assert d.stop() == 0 and all(free(p.pid) for p in procs)


# ------------------------------------------------------------------ 1. the state file is root's alone
def test_a_state_file_in_a_directory_others_can_write_stops_the_start_with_one_line(tmp_path):
    with shared_directory() as shared:
        cfg = tmp_path / "c.toml"
        cfg.write_text('[scope]\ncomms = ["lbagent-none"]\n[daemon]\nprobe = "procfs"\n'
                       f'state_file = "{shared}/state.json"\n[metrics]\nenabled = false\n')
        out = subprocess.run([sys.executable, "-m", "lbagent.cli", "run", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and out.stderr == (
            f"lbagent: error: state file {shared}/state.json: directory {shared} is writable by other users "
            "(mode 1777): keep the state file in a directory only root can write\n")
        assert os.listdir(shared) == []


# ------------------------------------------------------------------ 2. restore obeys every placement rule
@pytest.mark.kernel
def test_restore_from_a_state_file_obeys_every_placement_rule(scope):
    """A state file naming a kernel thread, a task that refuses affinity changes, an out-of-scope task
    and a task that changed its own mask, each with its true start time: only the one the daemon
    placed and that still has the mask the daemon applied gets its original back."""
    path, directory, tmp = scope
    ksoftirqd = next(int(p) for p in os.listdir("/proc") if p.isdigit() and read_task(int(p)).comm == "ksoftirqd/0")
    outsider, placed, changed = spawn_in(None), spawn_in(directory, threads=1), spawn_in(directory)
    try:
        for t in masks(placed.pid):
            os.sched_setaffinity(t, {1})  # as the previous daemon left it
        os.sched_setaffinity(changed.pid, {0})  # the task's own choice since
        kernel_before = {2: masks(2), ksoftirqd: masks(ksoftirqd)}
        write_state(tmp / "state.json", [
            entry(2, masks(2)[2], masks(2)[2], "kthreadd"),  # a no-op mask: an outcome, never a change, if it failed
            entry(ksoftirqd, masks(ksoftirqd)[ksoftirqd], masks(ksoftirqd)[ksoftirqd], "ksoftirqd/0"),
            entry(outsider.pid, ALL, {0}),  # "restoring" would pin it to CPU 0
            entry(placed.pid, {1}, ALL),
            entry(changed.pid, {1}, ALL),
        ])
        with running(demo_config(path, tmp / "state.json"), "kernel", tmp) as d:
            (restored,) = messages(d, "restored tasks of a previous run")
            assert restored["outcomes"] == {"2": "refused:kthread", str(ksoftirqd): "refused:no_setaffinity",
                                            str(outsider.pid): "refused:out_of_scope", str(placed.pid): "restored",
                                            str(changed.pid): "restored"}
            assert free(outsider.pid) and free(placed.pid) and set(masks(changed.pid).values()) == {frozenset({0})}
            assert {pid: masks(pid) for pid in kernel_before} == kernel_before
            assert d.stop() == 0
    finally:
        for p in (outsider, placed, changed):
            stop(p)


def test_restore_never_touches_pid_1_or_the_daemon_itself(tmp_path):
    act = Actuator("affinity", Scope(comms=frozenset({"systemd", "init", "python", "pytest"})),
                   StateFile(tmp_path / "s.json"))
    for pid, rule in ((1, "pid1"), (os.getpid(), "self")):
        # The mask it has now as both applied and original: if a rule failed, the outcome would say
        # so without changing PID 1 (on these hosts, the machinery that runs everything) or this test.
        mask = tuple(sorted(os.sched_getaffinity(pid)))
        assert act.restore(Placement(pid, read_task(pid).start, "x", "affinity", mask, {pid: mask})) == f"refused:{rule}"
    assert act.refusals == {"pid1": 1, "self": 1}


# ------------------------------------------------------------------ 3. dry run to live only with the lock
@pytest.mark.kernel
def test_a_dry_run_goes_live_on_sighup_only_with_the_state_files_lock(scope):
    path, directory, tmp = scope
    for sub in ("live", "dry"):
        (tmp / sub).mkdir()
    state = tmp / "state.json"
    live = DaemonProcess(demo_config(path, state), "round_robin", tmp / "live")
    dry = DaemonProcess(demo_config(path, state, dry_run=True), "round_robin", tmp / "dry")
    try:
        with sleepers(directory, 2) as procs:
            wait_for(lambda: all(pinned(p.pid) for p in procs), what="the live daemon's placements")
            dry.config.write_text(demo_config(path, state))
            assert "another lbagent daemon is using it" in sighup(dry, "reload rejected")["reason"]
            live.stop(signal.SIGKILL)  # a crash: its tasks stay pinned, its state file names them
            assert all(pinned(p.pid) for p in procs)
            sighup(dry, "reloaded")
            assert all(free(p.pid) for p in procs)  # restored from the crashed daemon's record first
            procs.append(spawn_in(directory))
            wait_for(lambda: pinned(procs[-1].pid), what="a placement by the daemon now live")
            assert dry.stop() == 0 and all(free(p.pid) for p in procs) and not state.exists()
    finally:
        live.stop()
        dry.stop()


# ------------------------------------------------------------------ 5. inputs that hang or crash a reader
STRANGE_STATE = {
    "fifo": lambda p: os.mkfifo(p, 0o600),
    "directory": lambda p: p.mkdir(mode=0o700),
    "link to /dev/zero": lambda p: p.symlink_to("/dev/zero"),
}


@pytest.mark.kernel
@pytest.mark.parametrize("case", [*STRANGE_STATE, "owned by nobody"])
def test_an_untrusted_state_file_is_moved_aside_and_a_safe_scan_frees_tasks(scope, case):
    path, directory, tmp = scope
    state = tmp / "state.json"
    stuck = spawn_in(directory, threads=1)
    try:
        for t in masks(stuck.pid):
            os.sched_setaffinity(t, {1})
        if case == "owned by nobody":  # trusted, it would pin the task to CPU 0
            write_state(state, [entry(stuck.pid, {1}, {0})])
            os.chown(state, NOBODY, NOBODY)
        else:
            STRANGE_STATE[case](state)
        capped = ["prlimit", f"--as={8 << 30}", "--"]  # a reader flooded by /dev/zero fails, not the host
        with running(demo_config(path, state), "kernel", tmp, wrapper=capped) as d:
            (error,) = [e for e in log_lines(d) if e["level"] == "error"]
            assert error["msg"].startswith(f"state file {state}: ") and error["rescued"] == 1
            assert free(stuck.pid) and not os.path.lexists(state) and len(list(tmp.glob("state.json.corrupt-*"))) == 1
            assert d.stop() == 0
    finally:
        stop(stuck)


BAD_RELOADS = {
    "fifo": (lambda p: os.mkfifo(p), "it is a FIFO, not a regular file"),
    "link to /dev/zero": (lambda p: p.symlink_to("/dev/zero"), "it is a character device, not a regular file"),
    "TOML nested 100000 deep": (lambda p: p.write_text(deep("array")), "values nested too deeply"),
}


@pytest.mark.kernel
def test_sighup_with_a_config_that_would_hang_or_crash_the_reader_is_rejected_and_the_daemon_goes_on(scope):
    path, directory, tmp = scope
    with running(demo_config(path, tmp / "state.json"), "round_robin", tmp) as d:
        good = d.config.read_text()
        for n, (make, reason) in enumerate(BAD_RELOADS.values(), 1):
            d.config.unlink()
            make(d.config)
            assert sighup(d, "reload rejected", n)["reason"] == f"{d.config}: " + (
                f"refused as a config file: {reason}" if n < 3 else f"not a config: {reason}")
        d.config.unlink()
        d.config.write_text(good)
        places_then_stops_cleanly(d, directory, "a placement after the rejections")


@pytest.mark.kernel
def test_a_reload_whose_new_probe_cannot_open_is_rejected_and_the_old_probe_kept(scope):
    from lbagent.live.probe.bpf import DEFAULT_OBJECT

    path, directory, tmp = scope
    obj = tmp / "lbprobe.bpf.o"
    shutil.copy(DEFAULT_OBJECT, obj)
    with running(demo_config(path, tmp / "state.json", probe="bpf", bpf_object=str(obj)), "round_robin", tmp) as d:
        obj.unlink()
        d.config.write_text(d.config.read_text().replace(f'"{path}"', f'"{path}", "/lbagent-t-later"'))
        assert "BPF object missing" in sighup(d, "reload rejected")["reason"]
        places_then_stops_cleanly(d, directory, "a placement through the old probe")


# ------------------------------------------------------------------ 7. scope cgroups: late, nested, shipped
@pytest.mark.kernel
def test_a_scope_cgroup_made_after_the_start_is_watched_for_then_managed(tmp_path):
    late = f"/lbagent-t-late-{os.getpid()}"
    with running(demo_config(late, tmp_path / "state.json"), "round_robin", tmp_path) as d:
        (waiting,) = messages(d, "scope cgroup does not exist yet")
        assert waiting["level"] == "warning" and waiting["cgroups"] == [late]
        with v2_cgroup("lbagent-t-late") as (path, directory):
            assert path == late
            wait_for(lambda: messages(d, "scope cgroups changed"), what="the daemon to see the cgroup")
            assert messages(d, "scope cgroups changed")[0]["appeared"] == [late]
            places_then_stops_cleanly(d, directory, "a placement in the new cgroup")


@pytest.mark.kernel
def test_a_task_in_a_cgroup_nested_under_the_scope_is_placed(scope):
    path, directory, tmp = scope
    inner = directory / "inner"
    inner.mkdir()
    try:
        with running(demo_config(path, tmp / "state.json"), "round_robin", tmp) as d:
            places_then_stops_cleanly(d, inner, "placements in the nested cgroup", n=2)
    finally:
        kill_all(inner)
        inner.rmdir()


@pytest.mark.kernel
def test_the_shipped_config_starts_a_dry_run_on_this_host(tmp_path):
    port = free_port()
    text = SHIPPED.read_text().replace("dry_run = false", "dry_run = true").replace(
        'address = "127.0.0.1:9469"', f'address = "127.0.0.1:{port}"')
    assert text.count("dry_run = true") == 1 and text.count(str(port)) == 1
    runtime_existed = os.path.lexists("/run/lbagent")
    d = DaemonProcess(text, None, tmp_path)
    try:
        wait_for(lambda: messages(d, "ready"), what="the ready line (logged just after READY=1 is sent)")
        (ready,) = messages(d, "ready")
        assert ready["dry_run"] is True and ready["policy"] == "default"
        if not (hostinfo.unified_root() / "lbagent.slice").exists():
            assert messages(d, "scope cgroup does not exist yet")[0]["cgroups"] == ["/lbagent.slice"]
    finally:
        assert d.stop() == 0
    assert os.path.lexists("/run/lbagent") == runtime_existed  # a dry run writes nothing

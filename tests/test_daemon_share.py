"""Share classes through the real daemon: reviews demote long tasks into lbagent's low-weight group
inside their own workload cgroup, and every stop (SIGTERM, kill -9 and a restart) undoes it all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from lbagent.bench.daemon import free_port
from lbagent.bench.demo import DaemonProcess, demo_config
from lbagent.live import share, status
from lbagent.live.cgroups import task_cgroups
from lbagent.live.classes import cpu_cgroup
from lbagent.live.config import ConfigError, parse_config
from lbagent.live.reviews import MAX_LATE_NS, MIN_RECHECK_NS, ReviewClock
from lbagent.live.state import ShareGroupRecord, ShareRecord, StateFile, StateFileError
from livehost import kill_all, stop, v2_cgroup

BUSY = "import time\nwhile True:\n    pass\n"
SLEEPY = "import time\ntime.sleep(60)\n"


def wait_for(condition, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------ pure pieces
def test_review_clock_reads_a_task_no_sooner_than_it_could_cross():
    clock = ReviewClock(0.010, 3)
    assert [clock.milestone_ns(k) for k in range(3)] == [10_000_000, 20_000_000, 40_000_000]
    clock.watch(7, 0, 0, 0)
    assert clock.due(9_999_999) == [] and clock.due(10_000_000) == [7]
    clock.watch(7, 10_000_000, 9_500_000, 0)  # half a ms short: not before the minimum recheck
    assert clock.next_due_ns() == 10_000_000 + MIN_RECHECK_NS
    clock.due(10**12)
    clock.watch(7, 0, 6_000_000, 0, share=0.5)  # 4 ms short at half a CPU: expected in 8 ms
    assert clock.next_due_ns() == 8_000_000
    clock.due(10**12)
    clock.watch(7, 0, 6_000_000, 0, share=0.0)  # starved so far: never later than MAX_LATE_NS past the soonest
    assert clock.next_due_ns() == 4_000_000 + MAX_LATE_NS
    assert clock.crossed(9_999_999, 0) == 0 and clock.crossed(25_000_000, 0) == 2 and clock.crossed(10**12, 1) == 3
    clock.due(10**12)
    clock.watch(7, 0, 10**12, 3)  # every review had: never read again
    assert len(clock) == 0


def test_share_records_round_trip_and_bad_ones_are_named(tmp_path):
    s = StateFile(tmp_path / "state.json")
    s.shares[4242] = ShareRecord(4242, 777, "cc1", "/sys/fs/cgroup/cpu/build")
    s.share_groups["/sys/fs/cgroup/cpu/build"] = ShareGroupRecord("/sys/fs/cgroup/cpu/build", 1, False)
    s.save()
    back = StateFile.load(s.path)
    assert back.shares == s.shares and back.share_groups == s.share_groups and not back.empty
    data = json.loads(s.path.read_text())
    data["shares"][0]["cgroup"] = "/etc/../sys/fs/cgroup"
    s._write(json.dumps(data).encode())
    with pytest.raises(StateFileError, match=r"share 0: 'cgroup' must be a directory under /sys/fs/cgroup"):
        StateFile.load(s.path)
    data["shares"] = []
    data["share_groups"] = [{"workload": "/sys/fs/cgroup/cpu/x", "version": 3, "enabled_cpu": False}]
    s._write(json.dumps(data).encode())
    with pytest.raises(StateFileError, match=r"share group 0: 'version' must be 1 or 2, got 3"):
        StateFile.load(s.path)
    data.update(version=1, share_groups=[])
    del data["shares"], data["share_groups"]
    s._write(json.dumps(data).encode())
    assert StateFile.load(s.path).empty  # a version-1 file, from before share classes


def test_share_config_keys_are_checked():
    base = '[scope]\ncgroups = ["/w"]\n[daemon]\n'
    config = parse_config(base + "share = false\nreview_m0 = 0.02\nmax_reviews = 3\n")
    assert (config.share, config.review_m0, config.max_reviews) == (False, 0.02, 3)
    with pytest.raises(ConfigError, match=r"max_reviews.*must lie in \[0, 16\], got 40"):
        parse_config(base + "max_reviews = 40\n")
    with pytest.raises(ConfigError, match="share"):
        parse_config(base + 'share = "yes"\n')


# ------------------------------------------------------------------ the real kernel
@contextmanager
def workload(name: str):
    """A scope cgroup on v2 and, where the cpu controller is on v1 (these hosts), a workload cpu
    cgroup of the same name: yields (scope path, [cgroup dirs a task joins], the cpu cgroup)."""
    controller = share.detect()
    with v2_cgroup(name) as (path, scope_dir):
        if controller.version == 2:
            yield path, [scope_dir], scope_dir
            return
        cpu_dir = controller.root / scope_dir.name
        cpu_dir.mkdir()
        try:
            yield path, [scope_dir, cpu_dir], cpu_dir
        finally:
            for leaf in (cpu_dir / share.BACKGROUND,):
                if leaf.is_dir():
                    kill_all(leaf)
                    leaf.rmdir()
            kill_all(cpu_dir)
            cpu_dir.rmdir()


def spawn(dirs: list[Path], code: str) -> subprocess.Popen:
    fds = [os.open(d / "cgroup.procs", os.O_WRONLY) for d in dirs]

    def join() -> None:
        for fd in fds:
            os.write(fd, b"0")

    try:
        return subprocess.Popen([sys.executable, "-c", code], preexec_fn=join, pass_fds=tuple(fds))
    finally:
        for fd in fds:
            os.close(fd)


def cpu_dir_of(pid: int) -> Path:
    return cpu_cgroup(share.detect(), task_cgroups(pid))


def demoted(pid: int) -> bool:
    return cpu_dir_of(pid).name == share.BACKGROUND


@pytest.mark.kernel
def test_las_demotes_busy_tasks_on_review_keeps_sleepers_and_sigterm_undoes_it(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    with workload("lbagent-t-share") as (path, dirs, cpu_dir):
        d = DaemonProcess(demo_config(path, tmp_path / "state.json", metrics=address), "las:30ms", tmp_path)
        busy = [spawn(dirs, BUSY) for _ in range(2)]
        sleepy = spawn(dirs, SLEEPY)
        try:
            wait_for(lambda: all(demoted(p.pid) for p in busy), what="demotion of the busy loops")
            assert cpu_dir_of(busy[0].pid) == cpu_dir / share.BACKGROUND
            assert (cpu_dir / share.BACKGROUND / ("cpu.shares" if share.detect().version == 1 else "cpu.weight")).is_file()
            assert not demoted(sleepy.pid)
            saved = json.loads((tmp_path / "state.json").read_text())
            assert {e["tgid"] for e in saved["shares"]} == {p.pid for p in busy}
            assert [g["workload"] for g in saved["share_groups"]] == [str(cpu_dir)]
            summary = status.summary(status.fetch(address))
            assert summary["share_moves"].get("moved") == 2
            assert summary["decision_kinds"]["review"] >= 2 * 3  # 10, 20 and 40 ms of CPU, per busy loop
            assert summary["classes"]["background"] >= 2 and summary["classes"]["normal"] >= 3  # las keeps a demoted task down
            assert d.stop(signal.SIGTERM) == 0
            assert [cpu_dir_of(p.pid) for p in busy + [sleepy]] == [cpu_dir] * 3
            assert not (cpu_dir / share.BACKGROUND).exists() and not (tmp_path / "state.json").exists()
        finally:
            d.stop()
            for p in busy + [sleepy]:
                stop(p)


@pytest.mark.kernel
def test_kill_9_leaves_demoted_tasks_that_a_restart_restores_before_ready(tmp_path):
    with workload("lbagent-t-share9") as (path, dirs, cpu_dir):
        config = demo_config(path, tmp_path / "state.json")
        first = DaemonProcess(config, "las:30ms", tmp_path)
        busy = [spawn(dirs, BUSY) for _ in range(2)]
        try:
            wait_for(lambda: all(demoted(p.pid) for p in busy), what="demotion")
            first.stop(signal.SIGKILL)
            assert all(demoted(p.pid) for p in busy)  # nobody restored them: the daemon died
            child = spawn([cpu_dir / share.BACKGROUND], SLEEPY)  # as if a demoted task had forked
            second = DaemonProcess(config, "kernel", tmp_path)
            try:
                assert [cpu_dir_of(p.pid) for p in busy + [child]] == [cpu_dir] * 3  # before READY
                assert not (cpu_dir / share.BACKGROUND).exists()
            finally:
                assert second.stop() == 0
                stop(child)
        finally:
            first.stop()
            for p in busy:
                stop(p)


@pytest.mark.kernel
def test_a_task_in_the_cpu_hierarchys_root_is_never_demoted(tmp_path):
    """A low-weight group beside every other tenant is nice by another name: refused."""
    address = f"127.0.0.1:{free_port()}"
    controller = share.detect()
    exe = tmp_path / "lbtrootbusy"  # the command name the scope matches (a link: exec names the task after it)
    exe.symlink_to(sys.executable)
    config = (f'[scope]\ncomms = ["{exe.name}"]\n[daemon]\nstate_file = "{tmp_path / "state.json"}"\n'
              f'[metrics]\naddress = "{address}"\n')
    d = DaemonProcess(config, "las:30ms", tmp_path)
    fd = os.open(controller.root / "cgroup.procs", os.O_WRONLY)
    busy = subprocess.Popen([str(exe), "-c", BUSY], preexec_fn=lambda: os.write(fd, b"0"), pass_fds=(fd,))
    os.close(fd)
    try:
        wait_for(lambda: status.summary(status.fetch(address))["share_moves"].get("refused:root_cgroup", 0) >= 1,
                 what="the refusal")
        assert cpu_dir_of(busy.pid) == controller.root and not (controller.root / share.BACKGROUND).exists()
    finally:
        assert d.stop() == 0
        stop(busy)

"""Share classes by cgroup on the real kernel: a demoted task really loses its CPU, a promoted one
gets it back, and nothing lbagent made is left behind, even when the caller fails half-way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbagent.hostinfo import Mount
from lbagent.live import share

BUSY = "import os\nos.sched_setaffinity(0, {{{cpu}}})\nwith open({join!r}, 'w') as f:\n    f.write('0')\nwhile True:\n    pass\n"


def _busy(groups: share.ShareGroups, cpu: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", BUSY.format(cpu=cpu, join=groups.join_file(False))])
    deadline = time.monotonic() + 5
    while proc.pid not in share.members(groups.normal):
        assert time.monotonic() < deadline, "the busy loop never joined the normal class"
        time.sleep(0.01)
    return proc


def _cpu_over(pids: list[int], seconds: float) -> list[float]:
    """Share of the wall time each pid ran during ``seconds`` (exact, from schedstat)."""
    before = [share.attained_ns(p) or 0 for p in pids]
    time.sleep(seconds)
    return [((share.attained_ns(p) or 0) - b) / 1e9 / seconds for p, b in zip(pids, before, strict=True)]


@pytest.fixture
def workload():
    """A fresh workload cgroup with its share classes; afterwards nothing of it may remain."""
    controller = share.detect()
    d = share.make_group(controller.root / f"lbagent-t-share-{os.getpid()}")
    groups = share.ShareGroups(controller, d)
    yield groups
    groups.close()
    share.remove_group(d, controller.root)
    assert not d.exists()


@pytest.mark.kernel
def test_a_demoted_task_gets_almost_no_cpu_beside_a_normal_one_and_gets_it_back(workload):
    cpu = max(os.sched_getaffinity(0))
    normal, other = _busy(workload, cpu), _busy(workload, cpu)
    try:
        assert workload.demote(other.pid)
        assert other.pid in share.members(workload.background) and other.pid not in share.members(workload.normal)
        time.sleep(0.05)
        kept, demoted = _cpu_over([normal.pid, other.pid], 0.5)
        assert demoted < 0.10 and kept > 4 * demoted, (kept, demoted)
        assert workload.promote(other.pid)
        time.sleep(0.05)
        kept, promoted = _cpu_over([normal.pid, other.pid], 0.5)
        assert promoted > 0.6 * kept and promoted > 0.2, (kept, promoted)  # a fair half again
    finally:
        for p in (normal, other):
            p.kill()
            p.wait()


@pytest.mark.kernel
def test_close_puts_demoted_tasks_back_and_removes_what_it_made():
    controller = share.detect()
    d = share.make_group(controller.root / f"lbagent-t-share-close-{os.getpid()}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(RuntimeError, match="half-way"), share.ShareGroups(controller, d) as groups:
            assert share.move(sleeper.pid, groups.normal) and groups.demote(sleeper.pid)
            assert (d / share.BACKGROUND).is_dir()
            raise RuntimeError("the caller fails half-way")
        assert not (d / share.BACKGROUND).exists()
        assert sleeper.pid in share.members(groups.normal)  # back in the normal class, not lost
    finally:
        share.remove_group(d, controller.root)  # evacuates the sleeper to the root
        sleeper.kill()
        sleeper.wait()
    assert not d.exists()
    assert not share.move(sleeper.pid, controller.root)  # an exited task is reported, not raised


@pytest.mark.kernel
def test_make_group_refuses_one_that_exists():
    controller = share.detect()
    d = share.make_group(controller.root / f"lbagent-t-share-twice-{os.getpid()}")
    try:
        with pytest.raises(share.ShareError, match="exists already"):
            share.make_group(d)
    finally:
        share.remove_group(d, controller.root)


def test_detect_prefers_v2_with_the_cpu_controller_then_a_v1_cpu_mount(tmp_path: Path):
    v2, v1 = tmp_path / "unified", tmp_path / "cpu"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset io memory\n")
    table = [Mount(v2, "cgroup2", frozenset({"rw"})), Mount(v1, "cgroup", frozenset({"rw", "cpu", "cpuacct"})),
             Mount(tmp_path / "cpuset", "cgroup", frozenset({"rw", "cpuset"}))]
    assert share.detect(table) == share.CpuController(1, v1)
    assert share.detect(table).join_name() == "tasks"
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    assert share.detect(table) == share.CpuController(2, v2)
    assert share.detect(table).join_name() == "cgroup.procs"
    assert "cpu.weight=1" in share.detect(table).describe()
    with pytest.raises(share.ShareError, match="no cpu controller"):
        share.detect(table[2:])  # a cpuset mount is not a cpu mount

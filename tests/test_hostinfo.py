"""Host facts read from the real /proc and from sysfs-shaped trees: one parser each, checked
against independent sources (psutil, /proc/self/mounts) rather than against itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lbagent import hostinfo
from lbagent.hostinfo import PF_KTHREAD, _mount, read_cpus, read_task, read_uid

NAMER = """
import ctypes, os, time
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"bad\\xff\\xfe) x"))  # PR_SET_NAME: not UTF-8, a ')'
if os.geteuid() == 0:
    os.setresuid(65534, 0, 0)  # real uid nobody, effective still root: the scope checks the real one
print(flush=True)
time.sleep(30)
"""


@pytest.fixture
def oddly_named():
    """A child whose command name is not valid UTF-8 and contains ``) ``; as root, real uid nobody."""
    proc = subprocess.Popen([sys.executable, "-c", NAMER], stdout=subprocess.PIPE)
    proc.stdout.readline()
    yield proc
    proc.kill()
    proc.wait()


def test_read_task_agrees_with_psutil_on_a_hostile_name(oddly_named):
    info = read_task(oddly_named.pid)
    assert info.pid == oddly_named.pid and info.comm == "bad\ufffd\ufffd) x"
    assert info.state in "RS" and not info.flags & PF_KTHREAD
    started = psutil.boot_time() + info.start / hostinfo.CLK_TCK
    assert abs(started - psutil.Process(oddly_named.pid).create_time()) < 0.05
    assert info.start_ns == info.start * hostinfo.NS_PER_TICK
    assert read_uid(oddly_named.pid) == (65534 if os.geteuid() == 0 else os.getuid())


def test_kernel_threads_carry_pf_kthread():
    assert read_task(2).comm == "kthreadd" and read_task(2).flags & PF_KTHREAD


def test_a_gone_task_is_process_lookup_error_for_every_reader():
    proc = subprocess.Popen(["true"])
    proc.wait()
    time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        read_task(proc.pid)
    with pytest.raises(ProcessLookupError):
        read_uid(proc.pid)


def _cpu(root: Path, cpu: int, capacity: int, shared: str) -> None:
    d = root / f"cpu{cpu}"
    (d / "topology").mkdir(parents=True)
    (d / "topology" / "core_id").write_text(f"{cpu // 2}\n")
    (d / "topology" / "physical_package_id").write_text("0\n")
    (d / "cpu_capacity").write_text(f"{capacity}\n")
    for index, level in (("index0", "1"), ("index3", "3")):
        (d / "cache" / index).mkdir(parents=True)
        (d / "cache" / index / "level").write_text(level + "\n")
        (d / "cache" / index / "shared_cpu_list").write_text((str(cpu) if level == "1" else shared) + "\n")


def test_read_cpus_reads_its_own_tree(tmp_path):
    """Online list, capacity, last-level cache (no ``id``: the first CPU sharing it) and core, all
    from the tree it is given, not from the host's sysfs."""
    (tmp_path / "online").write_text("0,2-3\n")
    _cpu(tmp_path, 0, 1024, "0")
    _cpu(tmp_path, 2, 512, "2-3")
    _cpu(tmp_path, 3, 512, "2-3")
    cpus = read_cpus(tmp_path)
    assert [(c.id, c.capacity, c.llc, c.core) for c in cpus] == [(0, 1.0, 0, 0), (2, 0.5, 2, 1), (3, 0.5, 2, 1)]


def test_mountinfo_lines_and_the_unified_root():
    line = r"36 25 0:31 / /sys/fs/cgroup/my\040dir rw,nosuid - cgroup cgroup rw,cpuset,cpu"
    m = _mount(line)
    assert (m.point, m.fstype, m.options) == (Path("/sys/fs/cgroup/my dir"), "cgroup", {"rw", "cpuset", "cpu"})
    assert hostinfo.v1_cpuset_root([m]) == m.point and hostinfo.unified_root([m]) is None
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    expected = next((Path(f[1]) for f in mounts if f[2] == "cgroup2"), None)
    assert hostinfo.unified_root() == expected


def test_busy_fractions_between_two_readings():
    """Busy jiffies over all jiffies per CPU; a CPU without new jiffies reads 0 rather than dividing
    by zero, and one missing from the first reading counts from zero."""
    before = {0: (100, 1000), 1: (50, 500)}
    after = {0: (150, 1100), 1: (50, 500), 2: (10, 20)}
    assert hostinfo.busy_fractions(before, after) == {0: 0.5, 1: 0.0, 2: 0.5}


def test_threads_runtime_ns_sums_every_live_thread():
    own = sum(int(Path(f"/proc/self/task/{t}/schedstat").read_text().split()[0]) for t in os.listdir("/proc/self/task"))
    assert 0 < own <= hostinfo.threads_runtime_ns(os.getpid())
    assert hostinfo.threads_runtime_ns(2**22 + 1) is None

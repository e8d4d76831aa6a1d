"""Real-host fixtures for kernel tests: throwaway cgroups and processes that live in them.

Every helper cleans up after itself (kills what it started, removes what it created), because these
tests run on a shared machine.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from lbagent import hostinfo
from lbagent.live import cgroups

SLEEPER = "import threading, time\nfor _ in range({threads}): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\ntime.sleep(60)\n"


@contextmanager
def v2_cgroup(name: str):
    """A fresh cgroup v2 directory; yields (path relative to the v2 root, its directory)."""
    root = hostinfo.unified_root()
    assert root is not None, "no cgroup v2 mount"
    d = root / f"{name}-{os.getpid()}"
    d.mkdir(exist_ok=True)
    try:
        yield "/" + d.name, d
    finally:
        kill_all(d)
        d.rmdir()


@contextmanager
def v1_cpuset(name: str, cpus: str, pid: int):
    """A v1 cpuset limited to ``cpus`` holding ``pid``; afterwards the task goes back to the root."""
    cs = hostinfo.v1_cpuset_root() / f"{name}-{os.getpid()}"
    cs.mkdir()
    try:
        (cs / "cpuset.cpus").write_text(cpus)
        (cs / "cpuset.mems").write_text((cs.parent / "cpuset.mems").read_text())
        (cs / "cgroup.procs").write_text(str(pid))
        yield cs
    finally:
        (cs.parent / "cgroup.procs").write_text(str(pid))
        cs.rmdir()


def kill_all(d: Path) -> None:
    for _ in range(50):
        pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def spawn_in(d: Path | None, threads: int = 0, argv: list[str] | None = None) -> subprocess.Popen:
    """Start a sleeper (with extra threads) inside cgroup directory ``d`` before it runs any code."""
    fd = os.open(d / "cgroup.procs", os.O_WRONLY) if d is not None else None

    def join() -> None:
        if fd is not None:
            os.write(fd, b"0")

    proc = subprocess.Popen(
        argv or [sys.executable, "-c", SLEEPER.format(threads=threads)],
        preexec_fn=join,
        pass_fds=(fd,) if fd is not None else (),
    )
    if fd is not None:
        os.close(fd)
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{proc.pid}/task")) < threads + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def masks(pid: int) -> dict[int, frozenset[int]]:
    return {int(t): frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class CpusetV2Unavailable(RuntimeError):
    """This host cannot lend its cpuset controller to cgroup v2 (the v1 mount has been put back)."""


@contextmanager
def cpuset_controller_on_v2():
    """Move the cpuset controller from its v1 mount to cgroup v2 for the duration, then give it back.

    On a hybrid host (cpuset on v1, v2 at /sys/fs/cgroup/unified) unmounting the v1 hierarchy frees
    the controller for v2. Afterwards v2 lets go of it and the v1 mount is restored, retrying while
    the kernel is still releasing it. On a host where v2 already has cpuset this does nothing.
    """
    root, v1 = hostinfo.unified_root(), hostinfo.v1_cpuset_root()
    if v1 is None:
        assert cgroups.v2_has_cpuset(root), "no cpuset controller anywhere"
        yield
        return
    try:
        _retry(lambda: subprocess.run(["umount", str(v1)], check=True, capture_output=True), 5)
    except subprocess.CalledProcessError as exc:
        raise CpusetV2Unavailable(
            f"cannot unmount the v1 cpuset hierarchy at {v1} to free the controller for cgroup v2: "
            f"{exc.stderr.decode(errors='replace').strip() or f'umount exit status {exc.returncode}'}"
        ) from None
    try:
        deadline = time.monotonic() + 3
        while not cgroups.v2_has_cpuset(root):
            if time.monotonic() > deadline:
                raise CpusetV2Unavailable(
                    "the kernel did not hand the cpuset controller to cgroup v2 after the v1 unmount: the v1 "
                    "hierarchy is still referenced (a child cgroup, an open file or another mount namespace)"
                )
            time.sleep(0.05)
        yield
    finally:

        def give_back() -> None:
            if "cpuset" in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("-cpuset")
            subprocess.run(["mount", "-t", "cgroup", "-o", "cpuset", "cgroup", str(v1)], check=True, capture_output=True)

        _retry(give_back, 10)


def _retry(action, seconds: float) -> None:
    """The kernel releases a cgroup hierarchy asynchronously: EBUSY for a moment is normal."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            action()
            return
        except (OSError, subprocess.CalledProcessError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def sleepers(d: Path | None, n: int = 0, threads: int = 0):
    """``n`` sleepers in cgroup ``d``; the yielded list may grow, and everything in it is stopped."""
    procs = [spawn_in(d, threads) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            stop(p)


NOBODY = 65534


def as_nobody(action: Callable[[], object]) -> None:
    """Run ``action`` in a forked child with uid and gid ``nobody``: what another user on the host can do."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the action failed as nobody"


@contextmanager
def shared_directory():
    """A directory every user may write, like /tmp itself, where ``nobody`` can reach it."""
    d = Path(tempfile.mkdtemp(prefix="lbagent-t-shared-", dir="/tmp"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@contextmanager
def bounded(seconds: int, memory: int = 1 << 30):
    """Fail a call that blocks (a FIFO's open), loops or floods memory (a read of /dev/zero) instead
    of waiting for it: an alarm after ``seconds``, and at most ``memory`` more bytes of address space,
    so a regression ends in TimeoutError or MemoryError, not in the kernel's OOM killer on a shared host."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    old_handler = signal.signal(signal.SIGALRM, expire)
    resource.setrlimit(resource.RLIMIT_AS, (size + memory, old_limit[1]))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)

"""File descriptors held back for restoring tasks, so a full descriptor table cannot leave one pinned.

Restoring reads ``/proc/PID/stat``, the task's cgroup and cpuset files and its thread list: a few
descriptors at a time. When something has taken every descriptor the process may have (RLIMIT_NOFILE),
those reads fail with EMFILE and a placed task would keep the daemon's mask after it stops. Opening
a few descriptors at start and closing them just before restoring keeps that many free for it.
"""

from __future__ import annotations

import os

RESTORE_FDS = 4
"""Restore holds at most two descriptors at once (a /proc file and a directory listing); twice that."""


class FdReserve:
    """``count`` descriptors on /dev/null, opened now and given back by :meth:`release`."""

    def __init__(self, count: int = RESTORE_FDS) -> None:
        self.fds: list[int] = []
        try:
            for _ in range(count):
                self.fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Free the reserved descriptors (idempotent): call right before restoring."""
        while self.fds:
            os.close(self.fds.pop())

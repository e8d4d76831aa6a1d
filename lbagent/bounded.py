"""Reading a file the daemon is handed, without letting the file decide how long or how much.

A path can name a FIFO (``open`` blocks until a writer comes), ``/dev/zero`` (``read`` never ends
and memory grows at hundreds of MB/s), a directory or a link to any of them. So a file is opened
without blocking, checked to be a regular file on the descriptor actually opened (a rename between
a check by path and the open cannot swap it), its size checked before reading, and the read itself
capped: a file that grows while it is read still cannot hand over more than the limit.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


class NotReadable(ValueError):
    """Why the file was not read, as a phrase ("is a FIFO, not a regular file"); callers add the path."""


def kind(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_regular(
    name: str | os.PathLike,
    limit: int,
    *,
    dir_fd: int | None = None,
    follow_symlinks: bool = True,
    check: Callable[[os.stat_result], str | None] | None = None,
) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes.

    ``check`` sees the opened file's ``fstat`` and returns a reason to refuse it (owner, mode) or
    None. Raises :class:`NotReadable` for a file that is not regular, too big or refused by
    ``check``; ``FileNotFoundError`` when nothing is there; other ``OSError`` as the kernel says.
    """
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotReadable("is a symbolic link loop") from None
        raise
    if not stat.S_ISREG(before.st_mode):
        raise NotReadable(f"is {kind(before.st_mode)}, not a regular file")  # never opened: no device side effects
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotReadable("is a symbolic link (replaced while being opened)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotReadable(f"is {kind(st.st_mode)}, not a regular file")
        reason = check(st) if check else None
        if reason:
            raise NotReadable(reason)
        if st.st_size > limit:
            raise NotReadable(f"is {st.st_size} bytes, over the {limit} byte limit")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise NotReadable(f"grew past the {limit} byte limit while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)

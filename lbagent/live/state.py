"""The record of every task the daemon changed, so that a crash never strands a pinned task.

Each placement is written *before* the change is made (write-ahead), with the task's start time so a
reused PID is recognised and left alone. The file is replaced atomically (temporary file, fsync,
rename, mode 0600): a reader sees the old or the new state, never half of one. It carries the boot
id, because after a reboot every task it describes is gone and PIDs mean something else.

What it names gets its mask "restored" by root, so another user must never be able to supply it or
redirect a write: it lives in a directory only root can write (checked component by component,
never through a link), is read only when it is a root-owned 0600 regular file, and is written
through a fresh randomly named temporary file (``O_EXCL``, ``O_NOFOLLOW``) renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbagent.bounded import NotReadable, kind, read_regular
from lbagent.errors import UserError, brief
from lbagent.live.config import MODES

FORMAT = "lbagent-state"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 added share classes (``shares``, ``share_groups``); a version-1 file has neither."""
MAX_STATE_BYTES = 64 << 20
PID_MAX = 1 << 22
"""The kernel's PID_MAX_LIMIT: no task or thread id is larger."""


class StateFileError(UserError):
    """The state file cannot be trusted (corrupt, truncated, foreign): one line saying why."""


@functools.cache
def boot_id() -> str:
    """Constant until the next boot, so read once (the state file is written per placement batch)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@dataclass
class Placement:
    """One task the daemon changed and how to undo it."""

    tgid: int
    start: int
    """Field 22 of /proc/PID/stat (clock ticks after boot): tells a reused PID from this task."""
    comm: str
    mode: str
    applied: tuple[int, ...]
    """The CPUs the daemon set: a thread whose mask differs was changed by someone else since."""
    originals: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Per thread id, its mask before the daemon touched it."""
    cgroup: str | None = None
    """cpuset mode: the task's cpuset cgroup before it was moved (path in the cpuset hierarchy)."""

    def original_for(self, tid: int) -> tuple[int, ...]:
        """Threads born after the change inherited the applied mask: give them the leader's original."""
        return self.originals.get(tid) or self.originals.get(self.tgid) or next(iter(self.originals.values()))

    def to_json(self) -> dict:
        return {
            "tgid": self.tgid,
            "start": self.start,
            "comm": self.comm,
            "mode": self.mode,
            "applied": list(self.applied),
            "originals": {str(t): list(m) for t, m in self.originals.items()},
            "cgroup": self.cgroup,
        }


@dataclass(frozen=True)
class ShareRecord:
    """One task the daemon moved into a share class, and the cpu cgroup it came from."""

    tgid: int
    start: int
    comm: str
    cgroup: str
    """Absolute directory of the task's cpu cgroup before its first move (its workload's group)."""

    def to_json(self) -> dict:
        return {"tgid": self.tgid, "start": self.start, "comm": self.comm, "cgroup": self.cgroup}


@dataclass(frozen=True)
class ShareGroupRecord:
    """Share classes lbagent made inside one workload cgroup: what a recovery must take down."""

    workload: str
    """Absolute directory of the workload's cpu cgroup (the ``background`` leaf lives below it)."""
    version: int
    """cgroup version of the hierarchy (1 or 2)."""
    enabled_cpu: bool
    """v2: lbagent enabled ``+cpu`` in the workload's ``cgroup.subtree_control`` (undo it)."""

    def to_json(self) -> dict:
        return {"workload": self.workload, "version": self.version, "enabled_cpu": self.enabled_cpu}


class StateFile:
    """The record on disk; every file operation goes through a directory checked to be root's own.

    The placement records belong to the daemon's main thread and the share records to its share
    worker: ``guard`` is held around every change and while :meth:`save` serialises them."""

    def __init__(self, path: str | Path, placements: dict[int, Placement] | None = None) -> None:
        self.path = Path(path)
        self.placements: dict[int, Placement] = placements or {}
        self.shares: dict[int, ShareRecord] = {}
        self.share_groups: dict[str, ShareGroupRecord] = {}
        self.guard = threading.RLock()
        self._lock_fd: int | None = None

    @property
    def empty(self) -> bool:
        """Nothing recorded: no task and no cgroup to restore."""
        return not (self.placements or self.shares or self.share_groups)

    @property
    def locked(self) -> bool:
        """This process holds the lock: the file is its own to write and to remove."""
        return self._lock_fd is not None

    @contextmanager
    def _directory(self, create: bool) -> Iterator[int]:
        fd = trusted_directory(self.path.parent, create, f"state file {self.path}")
        try:
            yield fd
        finally:
            os.close(fd)

    def lock(self) -> None:
        """Hold ``<state>.lock`` for the process's lifetime: two daemons must never share one record.

        The holder is the only writer, so it also clears temporary files a crash left behind."""
        if self.locked:
            return
        name = self.path.name + ".lock"
        try:
            with self._directory(create=True) as d:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d)
                reason = private_file(os.fstat(fd))
                if reason:
                    os.close(fd)
                    raise StateFileError(f"state file {self.path}: its lock file {reason}")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise StateFileError(f"state file {self.path}: another lbagent daemon is using it (its lock is held)") from None
                self._lock_fd = fd
                self._remove_stale_temporaries(d)
        except OSError as e:
            raise StateFileError(f"state file {self.path}: cannot lock {name}: {_reason(e)}") from None

    def _remove_stale_temporaries(self, d: int) -> None:
        prefix = f".{self.path.name}."
        for entry in os.listdir(d):
            if entry.startswith(prefix) and entry.endswith(".tmp"):
                try:
                    os.unlink(entry, dir_fd=d)
                except OSError:
                    pass  # a directory of that name is odd but harmless: writes use fresh random names

    def save(self) -> None:
        with self.guard:
            record = {
                "format": FORMAT,
                "version": VERSION,
                "boot_id": boot_id(),
                "placements": [p.to_json() for p in self.placements.values()],
                "shares": [r.to_json() for r in self.shares.values()],
                "share_groups": [g.to_json() for g in self.share_groups.values()],
            }
            self._write(json.dumps(record, separators=(",", ":")).encode())

    def _write(self, body: bytes) -> None:
        tmp = f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        try:
            with self._directory(create=True) as d:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d)
                try:
                    try:
                        os.fchmod(fd, 0o600)
                        view = memoryview(body)
                        while view:
                            view = view[os.write(fd, view) :]
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.rename(tmp, self.path.name, src_dir_fd=d, dst_dir_fd=d)
                except OSError:  # disk full, read-only: the previous file stays whole, no temp file is left
                    os.unlink(tmp, dir_fd=d)
                    raise
        except OSError as e:
            raise StateFileError(f"state file {self.path}: cannot write: {_reason(e)}") from None

    def remove(self) -> None:
        """After a clean stop nothing is left to restore: no file means no work at the next start."""
        try:
            with self._directory(create=False) as d:
                os.unlink(self.path.name, dir_fd=d)
        except FileNotFoundError:
            pass

    def move_aside(self) -> Path:
        """Keep a state file that cannot be trusted for the operator to look at, out of the daemon's way."""
        aside = f"{self.path.name}.corrupt-{int(time.time())}"
        try:
            with self._directory(create=False) as d:
                os.rename(self.path.name, aside, src_dir_fd=d, dst_dir_fd=d)
        except OSError as e:
            raise StateFileError(f"state file {self.path}: cannot move it aside to {aside}: {_reason(e)}") from None
        return self.path.with_name(aside)

    @classmethod
    def load(cls, path: str | Path) -> StateFile:
        """Read a state file; a missing file is an empty state, a bad one raises StateFileError.

        Only a regular file that root owns and nobody else may read or write is trusted: anything
        else (a link, a FIFO, ``/dev/zero``, a file another user supplied) could name tasks the
        daemon never placed and have their masks "restored"."""
        p = Path(path)
        state = cls(p)
        try:
            with state._directory(create=False) as d:
                raw = read_regular(p.name, MAX_STATE_BYTES, dir_fd=d, follow_symlinks=False, check=private_file)
        except FileNotFoundError:
            return state
        except NotReadable as e:
            raise StateFileError(f"state file {p}: {e}") from None
        except OSError as e:
            raise StateFileError(f"state file {p}: cannot read: {_reason(e)}") from None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise StateFileError(f"state file {p}: corrupt or truncated JSON ({e})") from None
        except RecursionError:
            raise StateFileError(f"state file {p}: JSON nested too deeply to be a state file") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateFileError(f"state file {p}: not an lbagent state file (format != {FORMAT!r})")
        if data.get("version") not in READABLE_VERSIONS:
            raise StateFileError(f"state file {p}: version {brief(data.get('version'))}, this lbagent reads "
                                 f"{' and '.join(map(str, READABLE_VERSIONS))}")
        if data.get("boot_id") != boot_id():
            return state  # written before a reboot: every task it names is gone
        for i, entry in enumerate(_entries(data, "placements", p, required=True)):
            placement = _placement(entry, f"state file {p}: placement {i}")
            state.placements[placement.tgid] = placement
        for i, entry in enumerate(_entries(data, "shares", p)):
            share = _share(entry, f"state file {p}: share {i}")
            state.shares[share.tgid] = share
        for i, entry in enumerate(_entries(data, "share_groups", p)):
            group = _share_group(entry, f"state file {p}: share group {i}")
            state.share_groups[group.workload] = group
        return state


def _entries(data: dict, key: str, p: Path, required: bool = False) -> list:
    """The list under ``key``; absent is empty (a version-1 file has no share records) unless required."""
    entries = data.get(key, None if required else [])
    if not isinstance(entries, list):
        raise StateFileError(f"state file {p}: {key!r} must be a list")
    return entries


def trusted_directory(directory: Path, create: bool, where: str) -> int:
    """Open ``directory`` one component at a time, never through a link, and refuse it unless no
    user but root can change what it holds; missing components are made (mode 0700) if ``create``.

    Each ancestor must be root's and not writable by others unless sticky (like /tmp: nobody can
    rename a root-owned entry there); the directory itself must not be writable by others at all,
    or another user could plant a link or a file of their own at the state file's name.
    """
    fd = os.open("/", _DIRECTORY)
    here = Path("/")
    try:
        _check_directory(fd, here, len(directory.parts) == 1, where)
        for i, part in enumerate(directory.parts[1:], 2):
            here = here / part
            try:
                below = os.open(part, _DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                below = os.open(part, _DIRECTORY, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    what = "a symbolic link" if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode) else "not a directory"
                    raise StateFileError(f"{where}: {here} is {what} (give the real path of a directory)") from None
                raise
            os.close(fd)
            fd = below
            _check_directory(fd, here, i == len(directory.parts), where)
        return fd
    except BaseException:
        os.close(fd)
        raise


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def _check_directory(fd: int, here: Path, last: bool, where: str) -> None:
    st = os.fstat(fd)
    if st.st_uid not in _trusted_owners():
        raise StateFileError(f"{where}: directory {here} is owned by uid {st.st_uid}, not root")
    if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
        raise StateFileError(f"{where}: directory {here} is writable by other users (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}): keep the state file in a directory only root can write")


def private_file(st: os.stat_result) -> str | None:
    """Why a state or lock file cannot be root's private record, or None when it is."""
    if not stat.S_ISREG(st.st_mode):
        return f"is {kind(st.st_mode)}, not a regular file"
    if st.st_uid not in _trusted_owners():
        return f"is owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not private to root (0600)"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    return None


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _fields(e: object, where: str) -> Callable[[str, type], Any]:
    """A reader of one record's typed fields that names the record and field of a bad one."""
    if not isinstance(e, dict):
        raise StateFileError(f"{where}: must be an object")

    def need(key: str, want: type) -> Any:
        v = e.get(key)
        if not isinstance(v, want) or (isinstance(v, bool) and want is not bool):
            raise StateFileError(f"{where}: {key!r} must be {want.__name__}, got {brief(v)}")
        return v

    return need


def _task_identity(need: Callable[[str, type], Any], where: str) -> tuple[int, int]:
    tgid, start = need("tgid", int), need("start", int)
    if not 1 < tgid <= PID_MAX or start < 0:
        raise StateFileError(f"{where}: tgid {tgid} / start {start} out of range")
    return tgid, start


def _cgroup_dir(v: object, key: str, where: str) -> str:
    if not (isinstance(v, str) and v.startswith("/sys/fs/cgroup/") and ".." not in v.split("/")):
        raise StateFileError(f"{where}: {key!r} must be a directory under /sys/fs/cgroup without '..', got {brief(v)}")
    return v


def _share(e: object, where: str) -> ShareRecord:
    need = _fields(e, where)
    tgid, start = _task_identity(need, where)
    return ShareRecord(tgid, start, need("comm", str), _cgroup_dir(need("cgroup", str), "cgroup", where))


def _share_group(e: object, where: str) -> ShareGroupRecord:
    need = _fields(e, where)
    version = need("version", int)
    if version not in (1, 2):
        raise StateFileError(f"{where}: 'version' must be 1 or 2, got {version}")
    return ShareGroupRecord(_cgroup_dir(need("workload", str), "workload", where), version, need("enabled_cpu", bool))


def _placement(e: object, where: str) -> Placement:
    need = _fields(e, where)
    assert isinstance(e, dict)

    def cpus(v: object, key: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not v or not all(isinstance(c, int) and 0 <= c < 65536 for c in v):
            raise StateFileError(f"{where}: {key!r} must be a non-empty list of CPU numbers, got {brief(v)}")
        return tuple(v)

    tgid, start = _task_identity(need, where)
    mode = need("mode", str)
    if mode not in MODES:
        raise StateFileError(f"{where}: 'mode' must be {' or '.join(MODES)}, got {brief(mode)}")
    raw_orig = need("originals", dict)
    originals = {}
    for t, m in raw_orig.items():
        if not (t.isascii() and t.isdigit() and 0 < int(t) <= PID_MAX):  # "١٢" and "²" are digits too
            raise StateFileError(f"{where}: thread id {brief(t)} is not a number from 1 to {PID_MAX}")
        originals[int(t)] = cpus(m, f"originals[{t}]")
    if not originals:
        raise StateFileError(f"{where}: 'originals' is empty")
    cgroup = e.get("cgroup")
    if cgroup is not None and not (isinstance(cgroup, str) and cgroup.startswith("/") and ".." not in cgroup.split("/")):
        raise StateFileError(f"{where}: 'cgroup' must be null or an absolute path without '..', got {brief(cgroup)}")
    return Placement(tgid, start, need("comm", str), mode, cpus(e.get("applied"), "applied"), originals, cgroup)

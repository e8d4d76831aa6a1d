"""The record of every task the daemon changed, so that a crash never strands a pinned task.

Each placement is written *before* the change is made (write-ahead), with the task's start time so a
reused PID is recognised and left alone. The file is replaced atomically (temporary file, fsync,
rename, mode 0600): a reader sees the old or the new state, never half of one. It carries the boot
id, because after a reboot every task it describes is gone and PIDs mean something else.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lbagent.errors import UserError
from lbagent.live.config import MODES

FORMAT = "lbagent-state"
VERSION = 1
MAX_STATE_BYTES = 64 << 20


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


class StateFile:
    def __init__(self, path: str | Path, placements: dict[int, Placement] | None = None) -> None:
        self.path = Path(path)
        self.placements: dict[int, Placement] = placements or {}
        self._dir_ready = False

    def lock(self) -> None:
        """Hold ``<state>.lock`` for the process's lifetime: two daemons must never share one record."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateFileError(f"state file {self.path}: another lbagent daemon is using it (its lock is held)") from None
        self._lock_fd = fd

    def save(self) -> None:
        if not self._dir_ready:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir_ready = True
        body = json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "boot_id": boot_id(),
                "placements": [p.to_json() for p in self.placements.values()],
            },
            separators=(",", ":"),
        ).encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError as e:  # disk full, read-only: the previous file stays whole, no temp file is left
            tmp.unlink(missing_ok=True)
            raise StateFileError(f"state file {self.path}: cannot write: {e.strerror or e}") from None

    def remove(self) -> None:
        """After a clean stop nothing is left to restore: no file means no work at the next start."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    @classmethod
    def load(cls, path: str | Path) -> StateFile:
        """Read a state file; a missing file is an empty state, a bad one raises StateFileError."""
        p = Path(path)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return cls(p)
        if size > MAX_STATE_BYTES:
            raise StateFileError(f"state file {p}: {size} bytes exceeds the {MAX_STATE_BYTES} byte limit")
        try:
            data = json.loads(p.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise StateFileError(f"state file {p}: corrupt or truncated JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateFileError(f"state file {p}: not an lbagent state file (format != {FORMAT!r})")
        if data.get("version") != VERSION:
            raise StateFileError(f"state file {p}: version {data.get('version')!r}, this lbagent reads {VERSION}")
        if data.get("boot_id") != boot_id():
            return cls(p)  # written before a reboot: every task it names is gone
        entries = data.get("placements")
        if not isinstance(entries, list):
            raise StateFileError(f"state file {p}: 'placements' must be a list")
        placements = {}
        for i, entry in enumerate(entries):
            placement = _placement(entry, f"state file {p}: placement {i}")
            placements[placement.tgid] = placement
        return cls(p, placements)


def _placement(e: object, where: str) -> Placement:
    if not isinstance(e, dict):
        raise StateFileError(f"{where}: must be an object")

    def need(key: str, kind: type):
        v = e.get(key)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise StateFileError(f"{where}: {key!r} must be {kind.__name__}, got {v!r}")
        return v

    def cpus(v: object, key: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not v or not all(isinstance(c, int) and 0 <= c < 65536 for c in v):
            raise StateFileError(f"{where}: {key!r} must be a non-empty list of CPU numbers, got {v!r}")
        return tuple(v)

    tgid, start = need("tgid", int), need("start", int)
    if tgid <= 1 or start < 0:
        raise StateFileError(f"{where}: tgid {tgid} / start {start} out of range")
    mode = need("mode", str)
    if mode not in MODES:
        raise StateFileError(f"{where}: 'mode' must be {' or '.join(MODES)}, got {mode!r}")
    raw_orig = need("originals", dict)
    originals = {}
    for t, m in raw_orig.items():
        if not t.isdigit():
            raise StateFileError(f"{where}: thread id {t!r} is not a number")
        originals[int(t)] = cpus(m, f"originals[{t}]")
    if not originals:
        raise StateFileError(f"{where}: 'originals' is empty")
    cgroup = e.get("cgroup")
    if cgroup is not None and not (isinstance(cgroup, str) and cgroup.startswith("/")):
        raise StateFileError(f"{where}: 'cgroup' must be null or an absolute path, got {cgroup!r}")
    return Placement(tgid, start, need("comm", str), mode, cpus(e.get("applied"), "applied"), originals, cgroup)

"""What every probe yields, BPF or procfs: the daemon and the recorder depend only on these."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    ARRIVAL = "arrival"
    EXIT = "exit"


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A managed task arriving (fork/exec in scope) or exiting.

    Slotted: a fork storm can hand the daemon tens of thousands at once, and a per-object ``__dict__``
    would triple the memory of that backlog (the daemon's RSS high-water mark).

    Timestamps are CLOCK_MONOTONIC nanoseconds (what ``bpf_ktime_get_ns`` returns), so a
    latency can be measured from the kernel's own moment of arrival.
    """

    kind: EventKind
    pid: int
    tgid: int
    cgroup: int
    comm: str
    cpu: int
    ts_ns: int
    start_ns: int = 0
    """The task's start time (for telling a reused PID from the task we saw)."""
    runtime_ns: int = 0
    """CPU time the task consumed, known at exit."""
    uid: int = -1


@dataclass(frozen=True)
class CpuSample:
    cpu: int
    runq: float
    """Runnable tasks (running + queued) on the CPU: the window's mean (BPF exact mode: an exact
    time integral; procfs: a mean of scans), or in BPF lite mode the count at the snapshot's instant
    (a sample, so it is noisier over short windows than a mean)."""
    util: float
    """Busy fraction of the window, in [0, 1]."""
    arrivals: int
    """Tasks that arrived on the CPU during the window: new tasks woken there (BPF lite mode: forked
    there, since their own CPU is chosen just after the fork tracepoint)."""


@dataclass(frozen=True)
class Snapshot:
    """Per-CPU state over one window ending at ``t_ns``."""

    t_ns: int
    window_ns: int
    cpus: tuple[CpuSample, ...]
    lost: int = 0
    """Events dropped since the probe started (ring buffer full): never silent."""
    attained: Mapping[int, int] = field(default_factory=dict)
    """tgid -> CPU time in ns (all its threads) of every process that arrived and is still alive,
    at the snapshot: what review decisions compare with their milestones."""


@dataclass(frozen=True)
class Scope:
    """Which tasks the agent manages, the one rule for the probes, the actuator and the CLI: a task
    matches when it satisfies every field that is set; an unset field means "no restriction".

    A scope cgroup covers its whole subtree, so a task matches by the ids of its cgroup *and its
    ancestors*. Configured cgroups that do not exist yet still restrict: the scope then holds no
    task through them until they appear (see ``missing``), never every task on the host.
    """

    cgroup_ids: frozenset[int] = field(default_factory=frozenset)
    """cgroup v2 ids (directory inodes, as BPF's ``kn->id``) of the scope cgroups that exist."""
    comms: frozenset[str] = field(default_factory=frozenset)
    uids: frozenset[int] = field(default_factory=frozenset)
    cgroups: tuple[str, ...] = ()
    """The configured cgroup paths (relative to the v2 root), when the scope came from paths."""
    missing: tuple[str, ...] = ()
    """Those of ``cgroups`` that do not exist yet (a systemd slice appears with its first unit)."""

    @property
    def by_cgroup(self) -> bool:
        """Whether cgroups restrict the scope (even when none of them exists yet)."""
        return bool(self.cgroups or self.cgroup_ids)

    def matches(self, ancestry: Collection[int], comm: str, uid: int) -> bool:
        """``ancestry``: the ids of the task's cgroup and of all its ancestors (unused without ``by_cgroup``)."""
        return (
            (not self.by_cgroup or not self.cgroup_ids.isdisjoint(ancestry))
            and (not self.comms or comm in self.comms)
            and (not self.uids or uid in self.uids)
        )

"""The one contract shared by the simulator, the daemon and the agent.

Everything that both sides of lbagent must agree on lives here and nowhere else: how CPUs are
grouped into slots, the observation's layout and its single ``encode`` function, the action space
(a slot or ``KERNEL``, times a share class), the reward, and the contract's version. A policy
trained in the simulator is only valid on a host because both build a :class:`RawObservation` and
call the same :func:`encode`.

Units. Work is measured in *seconds of a capacity-1.0 CPU* on a host (a task of work 0.2 takes
0.2 s alone on a full-speed CPU). The park dynamics use Park's abstract time units instead; the
``time_unit`` of an environment converts its clock to the scale the encoder expects, so features
of either dynamics land in the same numeric range.

Decisions (version 2). ``ARRIVAL``: a new managed task, placed and given a class. ``REVIEW``: a
managed task's attained CPU time crossed its next milestone ``m0 * 2**k`` (a multi-level feedback
queue's view), so a policy can act on a size nobody predicted; on a review the slot part must be
``KERNEL``, which there means *keep it where it is* (placement has no measured headroom on these
hosts, so version 2 does not move running tasks), and only the class may change.

Share classes. ``NORMAL`` keeps the task's weight; ``BACKGROUND`` moves it into an lbagent-owned
low-weight child group of its own workload's group, where it yields only to that workload's normal
tasks. Dynamics without share control (Park) mask every ``BACKGROUND`` action.

Observation layout (float32, length :data:`OBS_DIM`)::

    [0 : 16*F)    per slot s, F = len(SLOT_FEATURES) features at [s*F : (s+1)*F):
                    mask            1 if the slot exists on this host, else 0 (all its features 0)
                    capacity        slot capacity / the largest slot capacity, in (0, 1]
                    runnable        symlog(runnable managed tasks on the slot, both classes)
                    background      symlog(runnable BACKGROUND tasks on the slot)
                    util            busy fraction of the slot's CPUs over the last window, [0, 1]
                    placed          symlog(tasks placed on the slot in the last window)
                    work_left       symlog(estimated remaining work on the slot / time_unit)
                    expected_delay  symlog((work_left + task work) / capacity / time_unit):
                                    capacity-aware finish-time estimate for the task under decision
                    current         1 on the slot the reviewed task runs on (0 everywhere on arrivals)
    [16*F]        review           1 for a REVIEW decision, 0 for an ARRIVAL
    [16*F + 1]    task_work        symlog(predicted work of the task / time_unit)
    [16*F + 2]    task_unknown     1 if no history predicts the task's work (task_work is a prior)
    [16*F + 3]    attained         symlog(CPU time the task has received / time_unit), 0 on arrival
    [16*F + 4]    background_now   1 if the reviewed task is BACKGROUND now
    [16*F + 5]    since_last       symlog(time since the previous decision / time_unit)
    [16*F + 6]    load             symlog(runnable tasks on all slots / active slots)

Action: ``compose_action(slot, cls) = cls * (MAX_SLOTS + 1) + slot``, so the NORMAL actions are
exactly version 1's (a slot index, or ``KERNEL``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gymnasium.spaces import Box, Discrete

CONTRACT_VERSION = 2
"""Bumped whenever the layout, the action space or the reward changes meaning."""

MAX_SLOTS = 16
KERNEL = MAX_SLOTS
"""The slot part that leaves the task's affinity alone: the kernel's balancer decides on an
arrival; on a review it means keep the task where it is."""
N_PLACEMENTS = MAX_SLOTS + 1
NORMAL, BACKGROUND = 0, 1
CLASSES: tuple[str, ...] = ("normal", "background")
N_CLASSES = len(CLASSES)
N_ACTIONS = N_PLACEMENTS * N_CLASSES
ARRIVAL, REVIEW = 0, 1

SLOT_FEATURES: tuple[str, ...] = (
    "mask",
    "capacity",
    "runnable",
    "background",
    "util",
    "placed",
    "work_left",
    "expected_delay",
    "current",
)
TASK_FEATURES: tuple[str, ...] = ("review", "task_work", "task_unknown", "attained", "background_now")
GLOBAL_FEATURES: tuple[str, ...] = ("since_last", "load")
N_SLOT_FEATURES = len(SLOT_FEATURES)
OBS_DIM = MAX_SLOTS * N_SLOT_FEATURES + len(TASK_FEATURES) + len(GLOBAL_FEATURES)


def symlog(x: np.ndarray) -> np.ndarray:
    """Compress magnitudes spanning decades (queue lengths, heavy-tailed work) into a small range."""
    return np.sign(x) * np.log1p(np.abs(x))


def symexp(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.expm1(np.abs(x))


def compose_action(slot: np.ndarray | int, cls: np.ndarray | int) -> np.ndarray:
    """The action for a slot part (a slot index or ``KERNEL``) and a share class."""
    return np.asarray(cls, dtype=np.int64) * N_PLACEMENTS + np.asarray(slot, dtype=np.int64)


def split_action(action: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(slot part, class) of actions: the inverse of :func:`compose_action`."""
    a = np.asarray(action, dtype=np.int64)
    return a % N_PLACEMENTS, a // N_PLACEMENTS


def feature_index(name: str, slot: int | None = None) -> int:
    """Position of a named feature in the encoded vector; tests and heuristics use it, not offsets."""
    if name in SLOT_FEATURES:
        if slot is None or not 0 <= slot < MAX_SLOTS:
            raise ValueError(f"slot feature {name!r} needs a slot in [0, {MAX_SLOTS}), got {slot}")
        return slot * N_SLOT_FEATURES + SLOT_FEATURES.index(name)
    tail = TASK_FEATURES + GLOBAL_FEATURES
    if name in tail:
        return MAX_SLOTS * N_SLOT_FEATURES + tail.index(name)
    raise KeyError(f"unknown observation feature {name!r}")


# --------------------------------------------------------------------------------------------
# Slots: CPUs grouped into at most MAX_SLOTS scheduling domains.


@dataclass(frozen=True)
class Cpu:
    """One online CPU as the topology reader sees it."""

    id: int
    capacity: float = 1.0
    llc: int = 0
    """Identifier of the last-level cache it shares (CPUs with equal ids share it)."""
    core: int = -1
    """Identifier of its physical core (SMT siblings share it); -1 means its own core."""


@dataclass(frozen=True)
class Slot:
    cpus: tuple[int, ...]
    capacity: float
    """Sum of the member CPUs' capacities: how much work per second the slot can do."""


@dataclass(frozen=True)
class SlotLayout:
    """The mapping from slots to CPUs that a policy file and a host must agree on."""

    slots: tuple[Slot, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.slots) <= MAX_SLOTS:
            raise ValueError(f"a layout needs 1 to {MAX_SLOTS} slots, got {len(self.slots)}")

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def mask(self) -> np.ndarray:
        """Which of the MAX_SLOTS positions exist (bool, length MAX_SLOTS)."""
        m = np.zeros(MAX_SLOTS, dtype=bool)
        m[: self.n_slots] = True
        return m

    @property
    def capacities(self) -> np.ndarray:
        c = np.zeros(MAX_SLOTS, dtype=np.float64)
        c[: self.n_slots] = [s.capacity for s in self.slots]
        return c

    def slot_of_cpu(self) -> dict[int, int]:
        return {cpu: i for i, slot in enumerate(self.slots) for cpu in slot.cpus}


def build_slots(cpus: Sequence[Cpu]) -> SlotLayout:
    """Group CPUs into at most MAX_SLOTS slots.

    A small host keeps one slot per CPU, so the policy can address each one. A bigger host is
    grouped so that a slot stays a domain the kernel balances cheaply inside: first by shared
    last-level cache, and if that leaves too many groups (or too few to be useful) by physical
    core; as a last resort neighbouring groups (in CPU order) are merged pairwise.
    """
    if not cpus:
        raise ValueError("no online CPUs to build slots from")
    ordered = sorted(cpus, key=lambda c: c.id)
    if len(ordered) <= MAX_SLOTS:
        groups = [[c] for c in ordered]
    else:
        groups = _group_by(ordered, lambda c: c.llc)
        if len(groups) > MAX_SLOTS or len(groups) == 1:
            groups = _group_by(ordered, lambda c: (c.llc, c.core if c.core >= 0 else -1 - c.id))
        while len(groups) > MAX_SLOTS:
            groups = [sum(groups[i : i + 2], []) for i in range(0, len(groups), 2)]
    return SlotLayout(
        tuple(Slot(tuple(c.id for c in g), float(sum(c.capacity for c in g))) for g in groups)
    )


def _group_by(cpus: Sequence[Cpu], key) -> list[list[Cpu]]:
    groups: dict[object, list[Cpu]] = {}
    for c in cpus:
        groups.setdefault(key(c), []).append(c)
    return sorted(groups.values(), key=lambda g: g[0].id)


# --------------------------------------------------------------------------------------------
# Observation


_ABSENT = np.zeros(0)
"""Marks a version-2 field a caller left out (filled with its neutral value at construction)."""


@dataclass
class RawObservation:
    """Unscaled quantities for a batch of B decisions, in the units described in the module doc.

    Both the simulator (vectorized over environments) and the daemon (B = 1) fill this; only
    :func:`encode` turns it into the policy's input.
    """

    slot_mask: np.ndarray  # (B, MAX_SLOTS) bool
    capacity: np.ndarray  # (B, MAX_SLOTS) work per second (host) or per time unit (park)
    runnable: np.ndarray  # (B, MAX_SLOTS) tasks
    util: np.ndarray  # (B, MAX_SLOTS) in [0, 1]
    placed: np.ndarray  # (B, MAX_SLOTS) tasks placed in the last window
    work_left: np.ndarray  # (B, MAX_SLOTS) work
    task_work: np.ndarray  # (B,) predicted work of the arriving task
    task_unknown: np.ndarray  # (B,) bool
    since_last: np.ndarray  # (B,) time since the previous decision
    time_unit: np.ndarray | float = 1.0
    """Scale of the environment's clock: work and times are divided by it before symlog."""
    kernel_allowed: np.ndarray | bool = True
    """Whether ``KERNEL`` is a valid action (park has no kernel balancer to defer to)."""
    share_allowed: np.ndarray | bool = False
    """Whether ``BACKGROUND`` is a valid class (the dynamics or host can apply a share)."""
    review: np.ndarray = field(default_factory=lambda: _ABSENT)
    """(B,) bool: the decision is a REVIEW of a running task (left out: every row is an ARRIVAL)."""
    attained: np.ndarray = field(default_factory=lambda: _ABSENT)
    """(B,) CPU time the task under decision has received (0 on arrival)."""
    current_slot: np.ndarray = field(default_factory=lambda: _ABSENT)
    """(B,) int, the slot the reviewed task runs on, -1 on arrival."""
    background_now: np.ndarray = field(default_factory=lambda: _ABSENT)
    """(B,) bool, the reviewed task is BACKGROUND now."""
    runnable_bg: np.ndarray = field(default_factory=lambda: _ABSENT)
    """(B, MAX_SLOTS) runnable BACKGROUND tasks per slot (left out: none)."""
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Dynamics-specific data that must not reach the policy (e.g. Park's raw observation)."""

    def __post_init__(self) -> None:
        """Dynamics without reviews or share control (Park, the daemon before it applies shares)
        leave the version-2 fields out; they read as arrivals of NORMAL tasks with nothing attained."""
        b = self.batch
        defaults = {
            "review": lambda: np.zeros(b, dtype=bool),
            "attained": lambda: np.zeros(b),
            "current_slot": lambda: np.full(b, -1, dtype=np.int64),
            "background_now": lambda: np.zeros(b, dtype=bool),
            "runnable_bg": lambda: np.zeros(np.shape(self.runnable)),
        }
        for name, make in defaults.items():
            if getattr(self, name) is _ABSENT:
                setattr(self, name, make())

    @property
    def batch(self) -> int:
        return int(self.slot_mask.shape[0])

    def take(self, index: np.ndarray | slice) -> RawObservation:
        """Rows of a batch, e.g. the environments that need a decision now."""

        def pick(v):
            return v[index] if isinstance(v, np.ndarray) and v.ndim >= 1 else v

        return RawObservation(
            **{k: pick(getattr(self, k)) for k in _RAW_ARRAY_FIELDS},
            time_unit=pick(self.time_unit),
            kernel_allowed=pick(self.kernel_allowed),
            share_allowed=pick(self.share_allowed),
            extras={k: v[index] for k, v in self.extras.items()},
        )


_RAW_ARRAY_FIELDS = (
    "slot_mask",
    "capacity",
    "runnable",
    "util",
    "placed",
    "work_left",
    "task_work",
    "task_unknown",
    "since_last",
    "review",
    "attained",
    "current_slot",
    "background_now",
    "runnable_bg",
)


_SYMLOG_SLOT_COLUMNS = [SLOT_FEATURES.index(n) for n in ("runnable", "background", "placed", "work_left", "expected_delay")]


def encode(raw: RawObservation) -> np.ndarray:
    """The only scaling from raw quantities to the policy's input: (B, OBS_DIM) float32."""
    mask = raw.slot_mask.astype(bool)
    maskf = mask.astype(np.float64)
    unit = np.broadcast_to(np.asarray(raw.time_unit, dtype=np.float64), (raw.batch,))[:, None]
    cap = np.where(mask, raw.capacity, 0.0)
    max_cap = np.maximum(cap.max(axis=1, keepdims=True), 1e-12)
    safe_cap = np.where(mask, np.maximum(cap, 1e-12), 1.0)
    work_left = np.maximum(raw.work_left, 0.0)
    task_work = np.maximum(raw.task_work, 0.0)[:, None]
    delay = (work_left + task_work) / safe_cap / unit
    current = np.asarray(raw.current_slot)[:, None] == np.arange(MAX_SLOTS)[None, :]

    per_slot = np.empty((raw.batch, MAX_SLOTS, N_SLOT_FEATURES))
    for i, feature in enumerate((
        maskf,
        cap / max_cap,
        raw.runnable,
        raw.runnable_bg,
        np.clip(raw.util, 0.0, 1.0),
        raw.placed,
        work_left / unit,
        delay,
        current,
    )):
        per_slot[..., i] = feature
    per_slot[..., _SYMLOG_SLOT_COLUMNS] = symlog(per_slot[..., _SYMLOG_SLOT_COLUMNS])
    per_slot *= maskf[..., None]
    active = np.maximum(maskf.sum(axis=1), 1.0)
    tail = np.stack(
        [
            np.asarray(raw.review, dtype=np.float64),
            symlog(task_work[:, 0] / unit[:, 0]),
            raw.task_unknown.astype(np.float64),
            symlog(np.maximum(np.asarray(raw.attained, dtype=np.float64), 0.0) / unit[:, 0]),
            np.asarray(raw.background_now, dtype=np.float64),
            symlog(np.maximum(raw.since_last, 0.0) / unit[:, 0]),
            symlog((raw.runnable * maskf).sum(axis=1) / active),
        ],
        axis=-1,
    )
    out = np.concatenate([per_slot.reshape(raw.batch, -1), tail], axis=1).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# Action


def gym_spaces() -> tuple[Box, Discrete]:
    """The observation and action spaces as gymnasium objects, for the simulator and the trainers.

    New objects on every call (each space carries its own sampling RNG). gymnasium is imported
    here and not with the module: the daemon's install has no gymnasium and never calls this.
    """
    from gymnasium.spaces import Box, Discrete

    return Box(-np.inf, np.inf, (OBS_DIM,), np.float32), Discrete(N_ACTIONS)


def action_mask(raw: RawObservation) -> np.ndarray:
    """Valid actions per decision, (B, N_ACTIONS) bool.

    An arrival may go to an existing slot, or to ``KERNEL`` where the dynamics have a balancer; a
    review may only keep its task (``KERNEL``). ``BACKGROUND`` repeats the NORMAL row where share
    control exists and is masked everywhere else.
    """
    b = raw.batch
    placement = np.zeros((b, N_PLACEMENTS), dtype=bool)
    review = np.asarray(raw.review, dtype=bool)
    placement[:, :MAX_SLOTS] = raw.slot_mask & ~review[:, None]
    placement[:, KERNEL] = np.broadcast_to(np.asarray(raw.kernel_allowed, dtype=bool), (b,)) | review
    share = np.broadcast_to(np.asarray(raw.share_allowed, dtype=bool), (b,))
    return np.concatenate([placement, placement & share[:, None]], axis=1)


def validate_actions(actions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Refuse an action outside the mask: a policy must never place work on a missing slot."""
    a = np.asarray(actions, dtype=np.int64)
    if a.shape != mask.shape[:1]:
        raise ValueError(f"expected {mask.shape[0]} actions, got shape {a.shape}")
    if np.any((a < 0) | (a >= N_ACTIONS)):
        raise ValueError(f"actions must lie in [0, {N_ACTIONS}), got {a[(a < 0) | (a >= N_ACTIONS)]}")
    bad = ~mask[np.arange(a.size), a]
    if np.any(bad):
        raise ValueError(f"masked actions chosen: {a[bad].tolist()} at rows {np.flatnonzero(bad).tolist()}")
    return a


# --------------------------------------------------------------------------------------------
# Reward


def reward(task_seconds: np.ndarray, time_unit: np.ndarray | float = 1.0) -> np.ndarray:
    """Minus the integral of the number of managed tasks in the system since the last decision.

    ``task_seconds`` is that integral in the environment's clock (tasks x time). Dividing by the
    time unit keeps returns of host and park dynamics on comparable scales; an episode's return is
    then minus the total sojourn time in time units, so maximizing it minimizes mean completion time.
    """
    return -np.asarray(task_seconds, dtype=np.float64) / np.asarray(time_unit, dtype=np.float64)

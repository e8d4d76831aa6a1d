"""The classic dispatch heuristics the learned policy must beat, all in one place.

Each one reads only the contract's :class:`~lbagent.spaces.RawObservation`, so the same code runs on
the park and host dynamics and in the daemon. They are vectorized over the batch: a decision for
1024 simulated environments is a handful of numpy operations. Ties go to the lowest slot index,
as ``np.argmin`` (and Park's own least-load baseline) does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lbagent.policy import Policy
from lbagent.spaces import KERNEL, RawObservation

HEURISTICS: tuple[str, ...] = ("random", "round_robin", "jsq", "lwl", "sed", "po2", "kernel")


def argmin_valid(score: np.ndarray, slot_mask: np.ndarray) -> np.ndarray:
    """Per row, the allowed slot with the lowest score (ties to the lowest index)."""
    return np.argmin(np.where(slot_mask, score, np.inf), axis=1)


def safe_capacity(raw: RawObservation) -> np.ndarray:
    return np.where(raw.slot_mask, np.maximum(raw.capacity, 1e-12), 1.0)


def _jsq_score(raw: RawObservation) -> np.ndarray:
    """Fewest runnable tasks; the remaining work breaks ties so an idle-but-loaded slot is not chosen."""
    scale = np.maximum(np.where(raw.slot_mask, raw.work_left, 0.0).max(axis=1, keepdims=True), 1e-12)
    return raw.runnable + 0.5 * np.where(raw.slot_mask, raw.work_left, 0.0) / scale


def _least_work_left(raw: RawObservation) -> np.ndarray:
    return raw.work_left


def earliest_finish(raw: RawObservation) -> np.ndarray:
    """Shortest expected delay: when would this task finish if it queued behind the slot's work."""
    return (np.maximum(raw.work_left, 0.0) + raw.task_work[:, None]) / safe_capacity(raw)


class _Heuristic:
    """Heuristics learn nothing from rewards and, unless they say otherwise, keep no memory."""

    name: str

    @property
    def metadata(self) -> Mapping[str, Any]:
        """No file behind it: only what it is, so callers can ask any policy the same question."""
        return {"algorithm": "heuristic", "name": self.name}

    def begin_trial(self, batch: int, seed: int) -> None:
        pass

    def observe(self, reward: np.ndarray, episode_start: np.ndarray) -> None:
        pass


class _Stateless(_Heuristic):
    """A heuristic whose choice depends only on the current observation."""

    def __init__(self, name: str, score: Callable[[RawObservation], np.ndarray]) -> None:
        self.name = name
        self._score = score

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        return argmin_valid(self._score(raw), raw.slot_mask)


class _Seeded(_Heuristic):
    """A randomized heuristic: each trial replays the same draws for the same seed."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def begin_trial(self, batch: int, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def _slot_keys(self, raw: RawObservation) -> np.ndarray:
        """A random key per slot with masked slots pushed out of reach (below every real key)."""
        return np.where(raw.slot_mask, self._rng.random(raw.slot_mask.shape), -1.0)


class RandomSlot(_Seeded):
    """Uniform over the slots that exist (never ``KERNEL``: that is the ``kernel`` baseline)."""

    name = "random"

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        return np.argmax(self._slot_keys(raw), axis=1)


class RoundRobin(_Heuristic):
    """Cycles through the existing slots, one cursor per environment."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = np.zeros(0, dtype=np.int64)

    def begin_trial(self, batch: int, seed: int) -> None:
        self._next = np.zeros(batch, dtype=np.int64)

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        if self._next.shape[0] != raw.batch:
            self.begin_trial(raw.batch, 0)
        n_slots = np.maximum(raw.slot_mask.sum(axis=1), 1)
        # Existing slots are the first n of the layout (spaces.SlotLayout), so the cursor is a count.
        choice = self._next % n_slots
        self._next = choice + 1
        return choice


class PowerOfTwo(_Seeded):
    """Power-of-two-choices: sample two distinct slots, keep the one with fewer runnable tasks."""

    name = "po2"

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        two = np.argsort(-self._slot_keys(raw), axis=1)[:, :2]
        # A single-slot host has only one real candidate: the second pick falls on a masked slot.
        rows = np.arange(raw.batch)
        second_valid = raw.slot_mask[rows, two[:, 1]]
        score = _jsq_score(raw)
        better_second = second_valid & (score[rows, two[:, 1]] < score[rows, two[:, 0]])
        return np.where(better_second, two[:, 1], two[:, 0])


class KernelDefault(_Heuristic):
    """Always defer to the kernel's own balancer: the baseline of doing nothing."""

    name = "kernel"

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        if not mask[:, KERNEL].all():
            raise UnsupportedPolicy("the kernel baseline needs a kernel balancer; these dynamics have none")
        return np.full(raw.batch, KERNEL, dtype=np.int64)


class UnsupportedPolicy(RuntimeError):
    """A policy that has no meaning under the given dynamics (e.g. ``kernel`` on park)."""


def make_heuristic(name: str, seed: int = 0) -> Policy:
    """A fresh heuristic policy by name (see :data:`HEURISTICS`)."""
    factories: dict[str, Callable[[], Policy]] = {
        "random": lambda: RandomSlot(seed),
        "round_robin": RoundRobin,
        "jsq": lambda: _Stateless("jsq", _jsq_score),
        "lwl": lambda: _Stateless("lwl", _least_work_left),
        "sed": lambda: _Stateless("sed", earliest_finish),
        "po2": lambda: PowerOfTwo(seed),
        "kernel": KernelDefault,
    }
    if name not in factories:
        raise KeyError(f"unknown heuristic {name!r}; known: {', '.join(HEURISTICS)}")
    return factories[name]()


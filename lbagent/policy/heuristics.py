"""The classic dispatch heuristics the learned policy must beat, all in one place.

Each one reads only the contract's :class:`~lbagent.spaces.RawObservation`, so the same code runs on
the park and host dynamics and in the daemon. They are vectorized over the batch: a decision for
1024 simulated environments is a handful of numpy operations. Ties go to the lowest slot index,
as ``np.argmin`` (and Park's own least-load baseline) does.

Placement heuristics choose a slot on arrivals, keep the task where it is on reviews, and leave
every task NORMAL. The share heuristics leave placement to the kernel and choose the class:
``las:T`` (least attained service: demote to BACKGROUND at the first review whose milestone is at or
past T), ``sized:T`` (BACKGROUND on arrival when the predicted work exceeds T, then ``las:T``) and
``oracle:T`` (simulator only: BACKGROUND while the true remaining work exceeds T, the ceiling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lbagent.policy import Policy
from lbagent.policy.specs import HEURISTICS, SHARE_HEURISTICS, parse_threshold
from lbagent.spaces import BACKGROUND, KERNEL, NORMAL, RawObservation, compose_action


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
    """Heuristics learn nothing from rewards and, unless they say otherwise, keep no memory.

    A placement heuristic answers arrivals in ``_choose``; reviews keep their task (``KERNEL``)."""

    name: str

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        return np.where(raw.review, KERNEL, self._choose(obs, raw, mask))

    def _choose(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

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

    def _choose(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
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

    def _choose(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        return np.argmax(self._slot_keys(raw), axis=1)


class RoundRobin(_Heuristic):
    """Cycles through the existing slots, one cursor per environment."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = np.zeros(0, dtype=np.int64)

    def begin_trial(self, batch: int, seed: int) -> None:
        self._next = np.zeros(batch, dtype=np.int64)

    def _choose(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        if self._next.shape[0] != raw.batch:
            self.begin_trial(raw.batch, 0)
        n_slots = np.maximum(raw.slot_mask.sum(axis=1), 1)
        # Existing slots are the first n of the layout (spaces.SlotLayout), so the cursor is a count;
        # a review takes no slot and does not move it.
        choice = self._next % n_slots
        self._next = np.where(raw.review, self._next, choice + 1)
        return choice


class PowerOfTwo(_Seeded):
    """Power-of-two-choices: sample two distinct slots, keep the one with fewer runnable tasks."""

    name = "po2"

    def _choose(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
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

    def _choose(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        return _kernel_actions(raw, mask, "the kernel baseline")


def _kernel_actions(raw: RawObservation, mask: np.ndarray, who: str) -> np.ndarray:
    if not mask[:, KERNEL].all():
        raise UnsupportedPolicy(f"{who} needs a kernel balancer; these dynamics have none")
    return np.full(raw.batch, KERNEL, dtype=np.int64)


class ShareByThreshold(_Heuristic):
    """The share heuristics: the kernel places; the class follows a CPU-time threshold."""

    def __init__(self, rule: str, threshold: float, name: str) -> None:
        self.rule, self.threshold, self.name = rule, threshold, name

    @property
    def metadata(self) -> Mapping[str, Any]:
        return {**super().metadata, "threshold_s": self.threshold}

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        slot = _kernel_actions(raw, mask, self.name)
        if not mask[:, compose_action(KERNEL, BACKGROUND)].all():
            raise UnsupportedPolicy(f"{self.name} needs share control (a BACKGROUND class); these dynamics have none")
        review = np.asarray(raw.review, dtype=bool)
        # A milestone sits exactly at the attained time; the slack keeps 30ms from missing a 30 ms review.
        crossed = np.asarray(raw.attained) >= self.threshold * (1 - 1e-9)
        las = review & (np.asarray(raw.background_now, dtype=bool) | crossed)
        if self.rule == "las":
            demote = las
        elif self.rule == "sized":
            demote = las | (~review & ~np.asarray(raw.task_unknown, dtype=bool) & (raw.task_work > self.threshold))
        else:
            if "true_remaining" not in raw.extras:
                raise UnsupportedPolicy(f"{self.name} reads each task's true size: the simulator only")
            demote = raw.extras["true_remaining"] > self.threshold
        return compose_action(slot, np.where(demote, BACKGROUND, NORMAL))


class UnsupportedPolicy(RuntimeError):
    """A policy that has no meaning under the given dynamics (e.g. ``kernel`` on park)."""


def make_heuristic(name: str, seed: int = 0) -> Policy:
    """A fresh heuristic policy by name (see :data:`HEURISTICS`, :data:`SHARE_HEURISTICS`)."""
    rule, _, param = name.partition(":")
    if rule in SHARE_HEURISTICS:
        threshold = parse_threshold(param, name) if param else SHARE_HEURISTICS[rule]
        return ShareByThreshold(rule, threshold, name)
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
        raise KeyError(f"unknown heuristic {name!r}; known: {', '.join(HEURISTICS + tuple(SHARE_HEURISTICS))}")
    return factories[name]()


"""When a managed task's attained CPU time next needs reading: the daemon's REVIEW schedule.

A task's k-th review comes when its attained CPU time crosses ``m0 * 2**k`` (the contract's
milestones, as in the simulator). Reading every task's time at every snapshot would cost the
daemon per task and per snapshot, and a snapshot's granularity would make every review late by up
to its interval. Instead each task is read when it is expected to have crossed: a thread runs at
most one CPU-second per second, so a task ``d`` short of its milestone cannot get there sooner than
``d`` from now; at the share of a CPU it got since its last read it gets there in ``d / share``,
which is when it is read, but never later than :data:`MAX_LATE_NS` after the soonest possible
moment (its share can grow when others finish). So the cost per managed task stays at a few reads
per milestone, and a review is late by at most that bound (a multi-threaded task, which can run
faster than one CPU, may be later).
"""

from __future__ import annotations

import heapq

MIN_RECHECK_NS = 2_000_000
"""A task short of its milestone is not read again sooner than this (bounds the reads per review)."""
MAX_LATE_NS = 10_000_000
"""A read comes at most this long after the soonest moment the task could have crossed."""
MIN_SHARE = 0.05
"""The share of a CPU assumed for a task that got (almost) none since its last read."""


class ReviewClock:
    """A heap of (due time, tgid); an exited task's entry is dropped when it comes due."""

    def __init__(self, m0: float, max_reviews: int) -> None:
        self.m0_ns, self.max_reviews = round(m0 * 1e9), max_reviews
        self._due: list[tuple[int, int]] = []

    def milestone_ns(self, k: int) -> int:
        """Attained CPU ns at which the task's review number ``k`` (from 0) comes due."""
        return self.m0_ns << k

    def crossed(self, attained_ns: int, done: int) -> int:
        """How many reviews a task with ``done`` of them behind it has earned at ``attained_ns``
        (one decision covers them all when several milestones passed between two reads)."""
        k = done
        while k < self.max_reviews and attained_ns >= self.milestone_ns(k):
            k += 1
        return k

    def watch(self, tgid: int, now_ns: int, attained_ns: int, done: int, share: float = 1.0) -> None:
        """Schedule the next read of a task, unless it has had every review it may have; ``share``:
        the fraction of a CPU it got since its previous read (1 when unknown: the soonest moment)."""
        if done < self.max_reviews:
            short = self.milestone_ns(done) - attained_ns
            expected = min(short / max(share, MIN_SHARE), short + MAX_LATE_NS)
            heapq.heappush(self._due, (now_ns + max(int(expected), MIN_RECHECK_NS), tgid))

    def due(self, now_ns: int) -> list[int]:
        """The tasks to read now, each once."""
        out: dict[int, None] = {}
        while self._due and self._due[0][0] <= now_ns:
            out[heapq.heappop(self._due)[1]] = None
        return list(out)

    def next_due_ns(self) -> int | None:
        return self._due[0][0] if self._due else None

    def __len__(self) -> int:
        return len(self._due)

"""Park's load-balance dynamics for B environments at once, with numpy and no per-env loop in a step.

Park (park-project/park, ``load_balance``) is an event heap: FIFO servers, integer service times
``int(size / rate)``, events ordered by ``(time, insertion counter)``. This engine reproduces it
exactly without a heap, from three facts:

- **Finish times are known at assignment.** A FIFO server starts a job when the previous one ends,
  so job ``j`` finishes at ``max(arrival_j, finish_of_previous_on_that_server) + int(size_j / rate)``.
  Each server keeps its unfinished jobs in a ring buffer with three per-server counters: jobs
  assigned, jobs *started* (left Park's queue), jobs whose completion event was *processed*.
- **Everything between two decisions is one time window.** Decision ``k`` happens at the arrival of
  job ``k``; the next at ``T = arrival_{k+1}``. The completions processed in between are, per server,
  a prefix of its ring: a few gathers over a window of ``W`` ring slots decide them all at once.
  The reward is minus the integral of the number of jobs in the system over the window:
  ``jobs_in_system * (T - t) - sum over completions in the window of (T - finish)``.
- **Ties are decided by when an event was pushed.** Park pops an arrival and a completion at the
  same time in push order. Arrival ``k+1`` is pushed during step ``k`` right after the action, so a
  completion at exactly ``T`` is popped *after* it (not yet processed at decision ``k+1``) exactly
  when that job was started during step ``k``'s event loop, i.e. its ring index is at or beyond the
  server's started counter at the start of the loop. That single comparison reproduces Park's
  observation at tied times (the next job still counts as queued with its size, not running).
  Park's ``process()`` also starts the next queued job when the current one has finished but its
  completion is not yet popped and a new job is assigned there: the action phase checks the
  current job's finish time against ``now`` rather than the processed counter, as Park does.

Service times are assumed to be at least 1 (checked by :class:`ParkParams`): with Park's defaults
the shortest is ``int(100 / 1.05) = 95``.

Random draws: each env owns a ``numpy.random.RandomState`` seeded like Park's ``env.seed(k)``; Park
draws per job ``pareto(shape)`` then ``exponential(interval)``, one double each, lazily. Nothing
else draws, so an episode's whole job list can be drawn at its start from the same stream in the
same order (see :func:`draw_jobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

PARK_DEFAULT_SEED = 42
"""Park seeds every env with ``config.seed`` (42) in its constructor."""

_INF = np.iinfo(np.int64).max // 4
_WINDOW = 4
"""Ring slots examined per server per pass: more than four completions on one server between two
decisions is rare (service times are >= 95 with Park's defaults, gaps average 55), and is handled
by another pass."""


@dataclass(frozen=True)
class ParkParams:
    """Park's ``load_balance`` configuration (``park/param.py``); the defaults are Park's."""

    num_servers: int = 10
    service_rates: tuple[float, ...] = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.05)
    num_stream_jobs: int = 1000
    job_size_pareto_shape: float = 1.5
    job_size_pareto_scale: float = 100.0
    job_interval: float = 55
    obs_high: float = 500000.0
    """Park's ``load_balance_obs_high``: observations are clipped to it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "service_rates", tuple(float(r) for r in self.service_rates))
        if self.num_servers < 1:
            raise ValueError(f"park: num_servers must be >= 1, got {self.num_servers}")
        if len(self.service_rates) != self.num_servers:
            raise ValueError(
                f"park: service_rates has {len(self.service_rates)} entries, num_servers is {self.num_servers}"
            )
        if any(not (r > 0 and math.isfinite(r)) for r in self.service_rates):
            raise ValueError(f"park: service_rates must be positive and finite, got {self.service_rates}")
        if self.num_stream_jobs < 1:
            raise ValueError(f"park: num_stream_jobs must be >= 1, got {self.num_stream_jobs}")
        if not (self.job_size_pareto_shape > 0 and self.job_size_pareto_scale > 0 and self.job_interval >= 0):
            raise ValueError("park: job_size_pareto_shape and _scale must be > 0, job_interval >= 0")
        shortest = int(int(self.job_size_pareto_scale) / max(self.service_rates))
        if shortest < 1:
            raise ValueError(
                f"park: the smallest job ({int(self.job_size_pareto_scale)}) on the fastest server "
                f"({max(self.service_rates)}) would take {shortest} time units; this engine needs >= 1"
            )

    @property
    def max_rate(self) -> float:
        return max(self.service_rates)


def draw_jobs(rng: np.random.RandomState, params: ParkParams, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The next ``n`` jobs of Park's stream: sizes and inter-arrival gaps, as int64.

    Park calls ``rng.pareto(shape)`` then ``rng.exponential(interval)`` per job. Both are one legacy
    standard-exponential draw ``E`` each, transformed as ``exp(E / shape) - 1`` and ``interval * E``;
    drawing all ``2n`` values of ``E`` in one call and transforming them gives the same numbers.
    ``np.exp`` and the C library's ``exp`` may differ in the last bit on some CPUs, so the few sizes
    whose product lands within 1e-9 of an integer are recomputed with ``math.exp`` (the C one).
    """
    e = rng.standard_exponential(2 * n)
    factor = np.exp(e[0::2] / params.job_size_pareto_shape) - 1 + 1
    raw = factor * params.job_size_pareto_scale
    sizes = raw.astype(np.int64)
    close = np.flatnonzero(np.abs(raw - np.rint(raw)) < 1e-9 * np.maximum(raw, 1.0))
    for i in close:  # almost never runs: a guard for bit-exactness, not a per-step loop
        sizes[i] = int((math.exp(e[2 * i] / params.job_size_pareto_shape) - 1 + 1) * params.job_size_pareto_scale)
    gaps = (params.job_interval * e[1::2]).astype(np.int64)
    return sizes, gaps


@dataclass
class _Rings:
    """Per-server FIFO of unfinished jobs: finish time, cumulative size and cumulative service time."""

    fin: np.ndarray
    cum_size: np.ndarray
    cum_dur: np.ndarray

    @classmethod
    def empty(cls, rows: int, capacity: int) -> "_Rings":
        return cls(*(np.zeros((rows, capacity), dtype=np.int64) for _ in range(3)))

    @property
    def capacity(self) -> int:
        return self.fin.shape[1]


@dataclass
class ParkBatch:
    """The state of B Park environments in lockstep (every episode has exactly ``num_stream_jobs``
    decisions, so all envs start and end their episodes on the same step).

    Per-server arrays are flat, index ``env * num_servers + server``. Times, sizes and rewards are
    integers as in Park; callers convert.
    """

    params: ParkParams
    num_envs: int
    rngs: list[np.random.RandomState] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    drawn: np.ndarray | None = None
    """Jobs drawn from each env's stream since it was seeded (to re-derive Park's stream position)."""

    def __post_init__(self) -> None:
        p = self.params
        self.S = p.num_servers
        self.N = p.num_stream_jobs
        self.rates = np.asarray(p.service_rates, dtype=np.float64)
        self.row_base = np.arange(self.num_envs, dtype=np.int64) * self.S
        self.env_of_row = np.repeat(np.arange(self.num_envs, dtype=np.int64), self.S)
        self.window = np.arange(_WINDOW, dtype=np.int64)
        self.rings = _Rings.empty(self.num_envs * self.S, 16)
        self.k = 0
        self.active = False

    # ----------------------------------------------------------------------------------------
    # Seeding and episodes

    def seed(self, seeds: Sequence[int], skip_jobs: int = 0) -> None:
        """Like Park's ``env.seed(seeds[i])`` for every env (``skip_jobs`` jobs already drawn)."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"park: expected {self.num_envs} seeds, got {len(seeds)}")
        self.seeds = [int(s) for s in seeds]
        self.rngs = [np.random.RandomState(s) for s in self.seeds]
        for rng in self.rngs:
            rng.standard_exponential(2 * skip_jobs)
        self.drawn = np.full(self.num_envs, skip_jobs, dtype=np.int64)
        self.active = False

    def rewind_to_park_position(self) -> None:
        """Mid-episode reset without a seed: Park would have drawn only ``k + 1`` of this episode's
        jobs, while the engine drew all of them; re-derive each stream's position from its seed."""
        consumed = self.drawn - self.N + self.k + 1
        self.rngs = [np.random.RandomState(s) for s in self.seeds]
        for rng, n in zip(self.rngs, consumed):
            rng.standard_exponential(2 * int(n))
        self.drawn = consumed

    def new_episode(self) -> None:
        """Draw every env's next episode from its stream and empty the servers."""
        B, N = self.num_envs, self.N
        self.sizes = np.zeros((B, N + 1), dtype=np.int64)  # column N: "no incoming job" (Park shows 0)
        self.arrivals = np.zeros((B, N), dtype=np.int64)
        for i, rng in enumerate(self.rngs):  # one draw per env per episode, never per step
            sizes, gaps = draw_jobs(rng, self.params, N)
            self.sizes[i, :N] = sizes
            np.cumsum(gaps, out=self.arrivals[i])
        self.drawn += N
        rows = B * self.S
        z = lambda: np.zeros(rows, dtype=np.int64)  # noqa: E731
        self.n_assigned, self.n_started, self.n_done = z(), z(), z()
        self.last_fin, self.cur_fin, self.cum_size, self.cum_dur = z(), z(), z(), z()
        self.cur_cum_size, self.cur_cum_dur = z(), z()
        self.head_fin = np.full(rows, _INF, dtype=np.int64)
        self.in_system = np.zeros(B, dtype=np.int64)
        self.job_finish = np.zeros((B, N), dtype=np.int64)
        self.job_server = np.zeros((B, N), dtype=np.int64)
        self.returned = np.zeros(B, dtype=np.int64)
        self.k = 0
        self.active = True

    @property
    def now(self) -> np.ndarray:
        """Time of the pending decision (the incoming job's arrival), (B,)."""
        return self.arrivals[:, min(self.k, self.N - 1)]

    @property
    def incoming_size(self) -> np.ndarray:
        return self.sizes[:, self.k]

    # ----------------------------------------------------------------------------------------
    # One decision

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, bool]:
        """Apply one action per env, run to the next arrival (or drain at the end): Park's reward
        (int64, <= 0) and whether the episode ended."""
        if not self.active:
            raise RuntimeError("park: step() before reset() or after the episode ended")
        k, N = self.k, self.N
        a = self.arrivals[:, k]
        self._assign(np.asarray(actions, dtype=np.int64), a)
        if k == N - 1:
            # Park's last step pops every remaining completion: the reward is the rest of the
            # total sojourn time, which is known since every finish time is.
            total = (self.job_finish - self.arrivals).sum(axis=1)
            reward = -total - self.returned
            self.returned += reward
            self.k = N
            self.active = False
            return reward, True
        t_next = self.arrivals[:, k + 1]
        reward = self._advance(a, t_next)
        self.returned += reward
        self.k = k + 1
        return reward, False

    def _assign(self, actions: np.ndarray, now: np.ndarray) -> None:
        """Park's ``schedule`` + ``process`` on the chosen server: the job queues, and the head of
        the queue starts if the current job has finished (popped or not)."""
        if np.any((actions < 0) | (actions >= self.S)):
            bad = actions[(actions < 0) | (actions >= self.S)]
            raise ValueError(f"park: actions must lie in [0, {self.S}), got {bad.tolist()}")
        k = self.k
        row = self.row_base + actions
        size = self.sizes[:, k]
        dur = (size / self.rates[actions]).astype(np.int64)
        fin = np.maximum(now, self.last_fin[row]) + dur
        self.last_fin[row] = fin
        n = self.n_assigned[row]
        if np.any(n - self.n_done[row] >= self.rings.capacity):
            self._grow()
        r = self.rings
        slot = n & (r.capacity - 1)
        cs = self.cum_size[row] + size
        cd = self.cum_dur[row] + dur
        self.cum_size[row] = cs
        self.cum_dur[row] = cd
        r.fin[row, slot] = fin
        r.cum_size[row, slot] = cs
        r.cum_dur[row, slot] = cd
        self.n_assigned[row] = n + 1
        self.head_fin[row] = np.where(self.n_done[row] == n, fin, self.head_fin[row])
        # process(): start queue[0] (the oldest unstarted job, maybe an older one) if idle.
        start = self.cur_fin[row] <= now
        first = self.n_started[row]
        fslot = first & (r.capacity - 1)
        self.n_started[row] = first + start
        self.cur_fin[row] = np.where(start, r.fin[row, fslot], self.cur_fin[row])
        self.cur_cum_size[row] = np.where(start, r.cum_size[row, fslot], self.cur_cum_size[row])
        self.cur_cum_dur[row] = np.where(start, r.cum_dur[row, fslot], self.cur_cum_dur[row])
        self.job_finish[:, k] = fin
        self.job_server[:, k] = actions
        self.in_system += 1

    def _advance(self, now: np.ndarray, t_next: np.ndarray) -> np.ndarray:
        """Process the completions Park pops before the arrival at ``t_next``; returns the reward."""
        rows = np.flatnonzero(self.head_fin.reshape(self.num_envs, self.S) <= t_next[:, None])
        started_before = self.n_started[rows]
        done_count = np.zeros(self.num_envs, dtype=np.int64)
        done_fin_sum = np.zeros(self.num_envs, dtype=np.float64)
        r = self.rings
        mask = r.capacity - 1
        while rows.size:
            env = self.env_of_row[rows]
            t = t_next[env][:, None]
            head = self.n_done[rows]
            assigned = self.n_assigned[rows]
            idx = head[:, None] + self.window
            fin = r.fin[rows[:, None], idx & mask]
            popped = (idx < assigned[:, None]) & (
                (fin < t) | ((fin == t) & (idx < started_before[:, None]))
            )
            count = popped.sum(axis=1)
            done_count += np.bincount(env, weights=count, minlength=self.num_envs).astype(np.int64)
            done_fin_sum += np.bincount(env, weights=np.where(popped, fin, 0).sum(axis=1), minlength=self.num_envs)
            head = head + count
            self.n_done[rows] = head
            started = np.maximum(self.n_started[rows], np.minimum(head + 1, assigned))
            self.n_started[rows] = started
            cur = (started - 1) & mask
            self.cur_fin[rows] = r.fin[rows, cur]
            self.cur_cum_size[rows] = r.cum_size[rows, cur]
            self.cur_cum_dur[rows] = r.cum_dur[rows, cur]
            nxt = np.where(head < assigned, r.fin[rows, head & mask], _INF)
            self.head_fin[rows] = nxt
            # Another pass only where the whole window was popped and the next one pops too.
            more = (count == _WINDOW) & (
                (nxt < t[:, 0]) | ((nxt == t[:, 0]) & (head < started_before))
            )
            rows, started_before = rows[more], started_before[more]
        span = t_next - now
        in_system = self.in_system
        # Sum over jobs in the system of (min(finish, T) - now): the popped ones end before T.
        integral = in_system * span - (done_count * t_next - done_fin_sum.astype(np.int64))
        self.in_system = in_system - done_count
        return -integral

    def _grow(self) -> None:
        """Double every ring (rare: a server holding more unfinished jobs than the ring has slots)."""
        old, cap = self.rings, self.rings.capacity
        new = _Rings.empty(old.fin.shape[0], 2 * cap)
        live = self.n_assigned - self.n_done
        for offset in range(cap):  # a loop over ring slots, once per doubling
            pos = self.n_done + offset
            ok = np.flatnonzero(offset < live)
            for name in ("fin", "cum_size", "cum_dur"):
                getattr(new, name)[ok, pos[ok] & (2 * cap - 1)] = getattr(old, name)[ok, pos[ok] & (cap - 1)]
        # The current job's slot (one before the head when the server is idle) is cached in cur_*.
        self.rings = new

    # ----------------------------------------------------------------------------------------
    # What Park and the contract observe at the pending decision

    def park_loads(self) -> np.ndarray:
        """Park's per-server load, (B, S) int64: queued *sizes* plus the running job's remaining
        *time* (``finish - now``), Park's mixed units, not yet clipped."""
        if not self.active:
            return np.zeros((self.num_envs, self.S), dtype=np.int64)
        now = self.now
        queued = self.cum_size - self.cur_cum_size
        remaining = np.maximum(self.cur_fin.reshape(self.num_envs, self.S) - now[:, None], 0)
        return queued.reshape(self.num_envs, self.S) + remaining

    def park_obs(self) -> np.ndarray:
        """Park's observation, (B, S + 1) float64: loads and the incoming job's size, clipped."""
        out = np.empty((self.num_envs, self.S + 1), dtype=np.float64)
        out[:, : self.S] = self.park_loads()
        out[:, self.S] = self.sizes[:, self.k] if self.active else 0
        np.minimum(out, self.params.obs_high, out=out)
        return out

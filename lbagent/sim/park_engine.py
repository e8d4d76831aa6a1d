"""Park's load-balance dynamics for B environments at once, with numpy and no per-env loop in a step.

Park (park-project/park, ``load_balance``) is an event heap: FIFO servers, integer service times
``int(size / rate)``, events ordered by ``(time, insertion counter)``. This engine reproduces it
exactly without a heap, from three facts:

- **Finish times are known at assignment.** A FIFO server starts a job when the previous one ends,
  so job ``j`` finishes at ``max(arrival_j, finish_of_previous_on_that_server) + int(size_j / rate)``.
  Each server keeps its unfinished jobs in a ring buffer with three per-server counters: jobs
  assigned, jobs *started* (left Park's queue), jobs whose completion event was *processed*.
- **Everything between two decisions is one time window.** Decision ``k`` happens at the arrival
  of job ``k`` (time ``now``); the next at ``T = arrival_{k+1}``. A server's completions in the
  window are a prefix of its ring, popped in passes over the servers that still have one. The
  reward is minus the integral of the number of jobs in the system over the window:
  ``jobs_in_system * (T - now) - sum over popped jobs of (T - finish)``.
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
same order (see :func:`jobs_from_draws`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PARK_DEFAULT_SEED = 42
"""Park seeds every env with ``config.seed`` (42) in its constructor."""

_INF = np.iinfo(np.int64).max // 4


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


def jobs_from_draws(u: np.ndarray, params: ParkParams) -> tuple[np.ndarray, np.ndarray]:
    """Park's job sizes and inter-arrival gaps (int64) from its stream's uniform doubles ``u``.

    Park calls ``rng.pareto(shape)`` then ``rng.exponential(interval)`` per job. numpy's legacy
    sampler makes each from one double ``u`` as ``E = -log(1 - u)``, then ``exp(E / shape) - 1`` and
    ``interval * E``; so ``u[..., 0::2]`` make the sizes and ``u[..., 1::2]`` the gaps. numpy's
    vectorized ``log``/``exp`` may differ from the C library's (which the sampler calls) in the
    last bit, which can only matter where the truncation to int is within rounding of an integer:
    those rare values are recomputed with ``math.log``/``math.exp``, the C ones.
    """
    e = -np.log(1.0 - u)
    sizes = _truncate(
        (np.exp(e[..., 0::2] / params.job_size_pareto_shape) - 1 + 1) * params.job_size_pareto_scale,
        lambda x: (math.exp(-math.log(1.0 - x) / params.job_size_pareto_shape) - 1 + 1) * params.job_size_pareto_scale,
        u[..., 0::2],
    )
    gaps = _truncate(params.job_interval * e[..., 1::2], lambda x: params.job_interval * -math.log(1.0 - x), u[..., 1::2])
    return sizes, gaps


def _truncate(value: np.ndarray, exact, u: np.ndarray) -> np.ndarray:
    """``int(value)``, recomputing with ``exact(u)`` the values within 1e-9 (relative) of an integer."""
    out = value.astype(np.int64)
    frac = value - out
    tol = value * 1e-9 + 1e-12
    for i in np.flatnonzero((frac < tol) | (frac > 1 - tol)):  # a handful per million draws
        out.flat[i] = int(exact(float(u.flat[i])))
    return out


class _Rings:
    """Per-server FIFO of unfinished jobs, flat (index ``row * capacity + slot``, capacity a power
    of two): finish time and cumulative size of the server's jobs."""

    def __init__(self, rows: int, capacity: int) -> None:
        self.capacity = capacity
        self.mask = capacity - 1
        self.fin = np.zeros(rows * capacity, dtype=np.int64)
        self.cum_size = np.zeros(rows * capacity, dtype=np.int64)

    def at(self, rows: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Flat positions of the jobs with per-server sequence numbers ``index``."""
        return rows * self.capacity + (index & self.mask)


class ParkBatch:
    """The state of B Park environments in lockstep (every episode has exactly ``num_stream_jobs``
    decisions, so all envs start and end their episodes on the same step).

    Per-server state is kept in flat int64 arrays indexed ``row = env * num_servers + server``
    (one-dimensional gathers and scatters are several times cheaper in numpy than 2-D ones). At
    B = 1024 a step is bound by the number of numpy calls, not by data, so the code keeps that
    number small. Times and sizes are integers as in Park; rewards are float64 holding integers
    (exact below 2**53).
    """

    def __init__(self, params: ParkParams, num_envs: int) -> None:
        self.params = params
        self.num_envs = num_envs
        self.S = params.num_servers
        self.N = params.num_stream_jobs
        self.rates = np.asarray(params.service_rates, dtype=np.float64)
        self.row_base = np.arange(num_envs, dtype=np.int64) * self.S
        self.env_of_row = np.repeat(np.arange(num_envs, dtype=np.int64), self.S)
        self.rings = _Rings(num_envs * self.S, 64)
        self.rngs: list[np.random.RandomState] = []
        self.seeds: list[int] = []
        self.drawn = np.zeros(num_envs, dtype=np.int64)
        """Jobs drawn from each env's stream since it was seeded (to re-derive Park's position)."""
        self.k = 0
        self.episode = 0
        self._state_at: tuple[int, int] | None = None
        self.active = False

    # ----------------------------------------------------------------------------------------
    # Seeding and episodes

    def seed(self, seeds: Sequence[int]) -> None:
        """Like Park's ``env.seed(seeds[i])`` for every env."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"park: expected {self.num_envs} seeds, got {len(seeds)}")
        self.seeds = [int(s) for s in seeds]
        self.rngs = [np.random.RandomState(s) for s in self.seeds]
        self.drawn = np.zeros(self.num_envs, dtype=np.int64)
        self.active = False

    def rewind_to_park_position(self) -> None:
        """Mid-episode reset without a seed: Park would have drawn only ``k + 1`` of this episode's
        jobs, while the engine drew all of them; re-derive each stream's position from its seed."""
        consumed = self.drawn - self.N + self.k + 1
        self.rngs = [np.random.RandomState(s) for s in self.seeds]
        for rng, n in zip(self.rngs, consumed, strict=True):
            rng.random_sample(2 * int(n))
        self.drawn = consumed

    def new_episode(self) -> None:
        """Draw every env's next episode from its stream and empty the servers."""
        B, N = self.num_envs, self.N
        draws = np.empty((B, 2 * N))
        for i, rng in enumerate(self.rngs):  # one call per env per episode, never per step
            draws[i] = rng.random_sample(2 * N)
        self.drawn += N
        sizes, gaps = jobs_from_draws(draws, self.params)
        self.sizes_t = np.zeros((N + 1, B), dtype=np.int64)  # row N: "no incoming job" (Park shows 0)
        self.sizes_t[:N] = sizes.T
        self.arrivals_t = np.cumsum(gaps.T, axis=0)
        rows = B * self.S
        zeros = lambda: np.zeros(rows, dtype=np.int64)  # noqa: E731
        self.n_assigned, self.n_started, self.n_done = zeros(), zeros(), zeros()
        self.last_fin, self.cum_size = zeros(), zeros()
        """Finish time of the last job assigned to each server, and the total size assigned to it."""
        self.cur_fin, self.cur_cum_size = zeros(), zeros()
        """Finish time and cumulative size of the job Park calls current (the last started)."""
        self.head_fin = np.full(rows, _INF, dtype=np.int64)
        """Finish time of the oldest job whose completion is not processed yet (INF: none)."""
        self.in_system = np.zeros(B)
        self.job_finish_t = np.zeros((N, B), dtype=np.int64)
        self.returned = np.zeros(B)
        self.k = 0
        self.episode += 1
        self._now_rows: np.ndarray | None = None
        self.active = True

    @property
    def job_finish(self) -> np.ndarray:
        """Finish time of every job assigned so far, (B, N)."""
        return self.job_finish_t.T

    @property
    def arrivals(self) -> np.ndarray:
        """Arrival time of every job of the episode, (B, N)."""
        return self.arrivals_t.T

    @property
    def sizes(self) -> np.ndarray:
        """Size of every job of the episode, (B, N)."""
        return self.sizes_t[: self.N].T

    @property
    def now(self) -> np.ndarray:
        """Time of the pending decision (the incoming job's arrival), (B,)."""
        return self.arrivals_t[min(self.k, self.N - 1)]

    @property
    def incoming_size(self) -> np.ndarray:
        return self.sizes_t[self.k]

    # ----------------------------------------------------------------------------------------
    # One decision

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, bool]:
        """Apply one valid server index per env, run to the next arrival (or drain at the end):
        Park's reward (float64 holding an integer, <= 0) and whether the episode ended."""
        if not self.active:
            raise RuntimeError("park: step() before reset() or after the episode ended")
        k, N = self.k, self.N
        now = self.arrivals_t[k]
        self._assign(actions, now)
        if k == N - 1:
            # Park's last step pops every remaining completion: the reward is the rest of the
            # total sojourn time, which is known since every finish time is.
            total = (self.job_finish_t - self.arrivals_t).sum(axis=0)
            reward = -total - self.returned
            self.returned += reward
            self.k = N
            self.active = False
            return reward, True
        reward = self._advance(now, self.arrivals_t[k + 1])
        self.returned += reward
        self.k = k + 1
        return reward, False

    def _assign(self, actions: np.ndarray, now: np.ndarray) -> None:
        """Park's ``schedule`` + ``process`` on the chosen server: the job queues, and the head of
        the queue starts if the current job has finished (its completion popped or not)."""
        row = self.row_base + actions
        size = self.sizes_t[self.k]
        fin = np.maximum(now, self.last_fin[row]) + (size / self.rates[actions]).astype(np.int64)
        self.last_fin[row] = fin
        n = self.n_assigned[row]
        if self.in_system.max() >= self.rings.capacity and np.any(n - self.n_done[row] >= self.rings.capacity):
            self._grow()
        r = self.rings
        at = r.at(row, n)
        cs = self.cum_size[row] + size
        self.cum_size[row] = cs
        r.fin[at] = fin
        r.cum_size[at] = cs
        self.n_assigned[row] = n + 1
        self.head_fin[row] = np.minimum(self.head_fin[row], fin)  # INF when the server was empty
        # process(): queue[0] starts if the current job has finished. Usually queue[0] is the new
        # job on an idle server; rarely an older one whose predecessor ends exactly now.
        first = self.n_started[row]
        cur_fin = self.cur_fin[row]
        start = cur_fin <= now
        self.n_started[row] = first + start
        self.cur_fin[row] = np.where(start, fin, cur_fin)
        self.cur_cum_size[row] = np.where(start, cs, self.cur_cum_size[row])
        older = np.flatnonzero(start & (first < n))
        if older.size:
            rows = row[older]
            self._load_current(rows, rows * r.capacity, first[older])
        self.job_finish_t[self.k] = fin
        self.in_system += 1

    def _load_current(self, rows: np.ndarray, base: np.ndarray, index: np.ndarray) -> None:
        """Make job ``index`` of each server Park's current job (``base``: the rows' ring offsets)."""
        at = base + (index & self.rings.mask)
        self.cur_fin[rows] = self.rings.fin[at]
        self.cur_cum_size[rows] = self.rings.cum_size[at]

    def _advance(self, now: np.ndarray, t_next: np.ndarray) -> np.ndarray:
        """Process the completions Park pops before the arrival at ``t_next``; returns the reward.

        A head pops if it ends before ``T``, or at ``T`` having started before this loop (integer
        times: ``finish < T + started_before``). Every head selected here started before the loop,
        so it pops; its successors pop in further passes over the (few, shrinking) rows where they
        still end in the window. Only 1-D gathers and scatters: numpy's 2-D ones cost several
        times more per element at these sizes.
        """
        r = self.rings
        self._now_rows = np.repeat(t_next, self.S)  # the next decision's time, per server
        rows = np.flatnonzero(self.head_fin <= self._now_rows)
        env = self.env_of_row[rows]
        t = t_next[env]
        started_before = self.n_started[rows]
        assigned = self.n_assigned[rows]
        base = rows * r.capacity
        popped_before = self.n_done[rows]
        head = popped_before + 1
        early = t - self.head_fin[rows]  # per row: sum over its popped jobs of (T - finish)
        nxt = np.where(head < assigned, r.fin[base + (head & r.mask)], _INF)
        more = np.flatnonzero(nxt < t + (head < started_before))
        while more.size:
            fin, t_more = nxt[more], t[more]
            early[more] += t_more - fin
            h = head[more] + 1
            head[more] = h
            fin = np.where(h < assigned[more], r.fin[base[more] + (h & r.mask)], _INF)
            nxt[more] = fin
            more = more[fin < t_more + (h < started_before[more])]
        self.n_done[rows] = head
        self.head_fin[rows] = nxt
        # process() after each pop starts the next queued job if the popped one was current.
        started = np.maximum(started_before, np.minimum(head + 1, assigned))
        self.n_started[rows] = started
        self._load_current(rows, base, started - 1)
        # Sum over jobs in the system of (min(finish, T) - now): the popped ones end before T.
        integral = self.in_system * (t_next - now) - np.bincount(env, weights=early, minlength=self.num_envs)
        self.in_system -= np.bincount(env, weights=head - popped_before, minlength=self.num_envs)
        return -integral

    def _grow(self) -> None:
        """Double every ring (rare: a server holding more unfinished jobs than the ring has slots)."""
        old = self.rings
        new = _Rings(len(self.n_done), 2 * old.capacity)
        rows = np.arange(len(self.n_done), dtype=np.int64)
        live = self.n_assigned - self.n_done
        for offset in range(old.capacity):  # a loop over ring slots, once per doubling
            keep = offset < live
            pos = self.n_done[keep] + offset
            src, dst = old.at(rows[keep], pos), new.at(rows[keep], pos)
            new.fin[dst], new.cum_size[dst] = old.fin[src], old.cum_size[src]
        self.rings = new

    # ----------------------------------------------------------------------------------------
    # What Park observes at the pending decision

    def server_state(self) -> tuple[np.ndarray, np.ndarray]:
        """At the pending decision, per server (B, S) int64: the remaining service time of the
        current job, and the total size of the jobs waiting behind it. Computed once per decision."""
        if self._state_at != (self.k, self.episode):
            now = self._now_rows if self._now_rows is not None else np.repeat(self.now, self.S)
            remaining = self.cur_fin - now
            np.maximum(remaining, 0, out=remaining)
            self._state = (remaining.reshape(self.num_envs, self.S), (self.cum_size - self.cur_cum_size).reshape(self.num_envs, self.S))
            self._state_at = (self.k, self.episode)
        return self._state

    def park_obs(self) -> np.ndarray:
        """Park's observation, (B, S + 1) float64: per server the queued *sizes* plus the running
        job's remaining *time* (Park's mixed units), then the incoming job's size; clipped."""
        out = np.zeros((self.num_envs, self.S + 1), dtype=np.float64)
        if self.active:
            remaining, queued = self.server_state()
            np.add(remaining, queued, out=out[:, : self.S])
            out[:, self.S] = self.sizes_t[self.k]
            np.minimum(out, self.params.obs_high, out=out)
        return out

"""Host dynamics: Linux-like CPUs behind the contract, vectorized over B environments.

Weighted processor sharing, the fluid limit of CFS with one level of groups. On each CPU the
workload's NORMAL tasks have weight 1024 each, and its BACKGROUND tasks share one child group of
weight ``bg_weight`` (the lbagent-owned ``background`` cgroup: ``cpu.shares = 2`` / ``cpu.weight = 1``),
so with W = 1024 * (normal tasks + inside hog) + bg_weight * [any background task] a NORMAL task
is served at ``capacity * 1024 / W`` and each of the ``nb`` BACKGROUND tasks at
``capacity * bg_weight / W / nb``. That is simulated exactly with one *virtual time* per CPU and
class (the service one task of that class has received since time 0); a task finishes when its
class's virtual time reaches its *tag* (virtual time at placement + its work), and a class change
carries its remaining work over to the other clock.

Events. Between two decisions time advances event by event, each env on its own: the next
completion or review on any CPU, the next balancing tick when the balancer has a move, or the next
arrival. One iteration handles one event for each env that is still busy, so a step costs a few
array passes over the busy envs, never a Python loop over environments or tasks. A *review*
(contract: ``REVIEW``) is the moment a task's attained service reaches ``review_m0 * 2**k``
(k = reviews so far, at most ``max_reviews``, and only below its work): the env stops there and
asks the policy, like an arrival.

Capacity and neighbours. A CPU has a base capacity (what the topology reports) and a noisy
neighbour re-drawn at arrivals: it keeps its state for an exponential time (``bg_period`` time
units on average) and is then active with probability ``bg_prob``. An ``outside`` neighbour (another
group) takes ``background`` of the CPU whatever the workload's weights; an ``inside`` one is a
NORMAL-weight hog in the workload's group, which the workload's BACKGROUND tasks yield to as
well. Either is visible to a policy only through ``util``, as on a real host.

The kernel model (slot part ``KERNEL`` on an arrival). Load of a CPU = (normal tasks + inside hog +
``bg_weight / 1024`` per background task + the outside neighbour's share, or 1 for a neighbour
seen as a whole task) / capacity: the kernel balances weighted load. At wake-up the task goes to
the CPU with the lowest load, ties to the larger capacity then the lower index. On every periodic tick (``balance_interval`` s, 4 ms by default) the
balancer moves one unpinned task (the most recently arrived, the most cache-cold) from the most
loaded CPU that has one to the least loaded CPU, if the destination's load after taking a NORMAL
task stays below the source's, or if the destination is idle, the source has two tasks or more and
the task gets more capacity to itself there (an idle CPU pulls by count, as newidle balancing does,
so BACKGROUND tasks, almost weightless, still spread). Tasks placed on a slot are pinned. A tick
with no such move changes nothing, so only ticks while a move exists are events.

Observation (see :mod:`lbagent.spaces`): one slot per CPU, ``capacity`` the base capacity; ``util`` and
``placed`` are exponentially weighted over ``util_window`` time units; ``work_left`` is the host
predictor's estimate, sum over the CPU's tasks of max(predicted work - service received, 0);
``task_work`` the predicted work of the task under decision. The env's ``time_unit`` is its
workload's mean task work in seconds. ``info["raw"].extras`` carries the task's true work and true
remaining work, the env's clock and, with ``exact_state``, the exact per-task state (for tests,
replay reports and the oracle rules, never the policy).

Randomness. A trial's workload comes from a generator of its env row, and a task's size, gap and
the neighbours' re-draws from a counter-based stream keyed by (seed, row, episode, task), so every
policy sees the same workload whatever it decides (reviews make decision counts differ).

An episode is a fixed number of tasks; it ends when the last one has finished, so an episode's
rewards sum to minus the total sojourn time in time units.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from lbagent import spaces
from lbagent.errors import UserError
from lbagent.sim.base import EpisodeStats
from lbagent.sim.workload import (
    CAPACITY_RANGE,
    INSIDE,
    NEIGHBOURS,
    NORMAL_WEIGHT,
    SEEN_AS,
    Fixed,
    Shift,
    StepDraws,
    Workload,
    WorkloadSpace,
    next_gap,
    predicted_work,
    task_work,
)

INITIAL_TASK_TABLE = 32
MAX_TASK_TABLE = 8192
"""Tasks in one environment at once; the table doubles on demand up to this, then refuses."""
TICK_EPS = 1e-9
"""Relative slack so a tick computed from a clock that sits on a tick boundary is not missed."""
TIE_EPS = 1e-9
"""Load-per-capacity ties go to the larger capacity (subtracted as TIE_EPS * capacity)."""
N, B_ = spaces.NORMAL, spaces.BACKGROUND
_TASK_COLUMNS = ("t_active", "t_cpu", "t_cls", "t_tag", "t_rev", "t_nrev", "t_work", "t_pred",
                 "t_unknown", "t_pinned", "t_id", "t_arr")


class TaskTableFull(UserError, RuntimeError):
    """More tasks at once than :data:`MAX_TASK_TABLE`: a workload that overloads its CPUs."""


@dataclass(frozen=True)
class FixedSchedule:
    """A recorded workload: arrival times (s, ascending), true work (s at capacity 1), CPUs."""

    arrival: np.ndarray
    work: np.ndarray
    capacities: tuple[float, ...]
    predicted: np.ndarray | None = None
    """The host predictor's estimate per task; None models it (log-normal error, unknown share)."""

    def __post_init__(self) -> None:
        t, w = np.asarray(self.arrival, float), np.asarray(self.work, float)
        if t.ndim != 1 or t.shape != w.shape or t.size == 0:
            raise ValueError(f"trace needs equal, non-empty 1-D arrival and work arrays, got {t.shape} and {w.shape}")
        if not (np.isfinite(t).all() and np.isfinite(w).all()):
            raise ValueError("trace arrival times and work must be finite numbers")
        if np.any(np.diff(t) < 0) or t[0] < 0:
            raise ValueError("trace arrival times must be non-negative and ascending")
        if np.any(w <= 0):
            raise ValueError("trace work must be positive")
        lo, hi = CAPACITY_RANGE
        if not 1 <= len(self.capacities) <= spaces.MAX_SLOTS or not all(lo <= c <= hi for c in self.capacities):
            raise ValueError(f"trace needs 1 to {spaces.MAX_SLOTS} CPU capacities in [{lo}, {hi}]")
        if self.predicted is not None and np.shape(self.predicted) != w.shape:
            raise ValueError("trace predicted work must match the work array")


class HostVectorEnv(gymnasium.vector.VectorEnv):
    """B independent hosts; each trial draws a workload from ``space`` for ``episodes_per_trial`` episodes."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        space: WorkloadSpace | None = None,
        episodes_per_trial: int = 1,
        shift: Shift | None = None,
        trace: FixedSchedule | None = None,
        pin_placements: bool = True,
        exact_state: bool = False,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be at least 1, got {episodes_per_trial}")
        if shift is not None and not 0 < shift.at_episode < episodes_per_trial:
            raise ValueError(f"a shift at episode {shift.at_episode} needs 1 <= it < {episodes_per_trial}")
        self.num_envs = num_envs
        self.space = space if space is not None else WorkloadSpace({})
        self.episodes_per_trial = episodes_per_trial
        self.shift = shift
        self.trace = trace
        self.pin_placements = pin_placements
        """False: a task placed on a slot starts there but stays movable by the balancer (a hint, as
        if its affinity were widened right after the move). Not the contract's meaning of a slot
        action; ``lbagent experiment headroom --hints`` uses it to ask whether such an action would pay."""
        self.exact_state = exact_state
        """True: observations also carry the exact per-task state in ``extras`` (for oracles; it
        costs a few % of the simulator's speed, so training and ``lbagent eval`` leave it off)."""
        self.width = self.space.max_cpus
        if not 1 <= self.width <= spaces.MAX_SLOTS:
            raise ValueError(f"host dynamics need 1 to {spaces.MAX_SLOTS} CPUs, got {self.width}")
        self.single_observation_space, self.single_action_space = spaces.gym_spaces()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._seed = seed
        self._raw: spaces.RawObservation | None = None
        self.always_on = np.zeros(self.width, dtype=bool)
        """CPUs whose neighbour never leaves (a recorded hog)."""

    @classmethod
    def from_trace(
        cls,
        arrival: np.ndarray,
        work: np.ndarray,
        capacities: tuple[float, ...],
        *,
        predicted: np.ndarray | None = None,
        num_envs: int = 1,
        seed: int = 0,
        predict_noise: float = 0.3,
        unknown_prob: float = 0.1,
        balance_interval: float = 0.004,
        util_window: float = 4.0,
        neighbour: str = "outside",
        background: float = 0.0,
        neighbour_seen_as: str = "share",
        review_m0: float = 0.010,
        max_reviews: int = 0,
        bg_weight: float = 2.0,
        hog_cpus: int | None = None,
        exact_state: bool = False,
    ) -> HostVectorEnv:
        """Replay a recorded workload: one episode is the whole trace, every row the same tasks.

        Arrival times are taken relative to the first one (a recording's absolute clock does not
        matter); ``capacities`` are the CPUs' base capacities, one slot each (at most 16: group a
        bigger host into slots first). Without ``predicted`` the host predictor is modelled.
        ``neighbour`` and ``background`` add a CPU hog for the whole trace on the first ``hog_cpus``
        CPUs (all by default): an ``inside`` one competes at NORMAL weight, an ``outside`` one takes
        ``background`` of its CPU.
        """
        times = np.asarray(arrival, float)
        times = times - times[0] if times.size else times
        trace = FixedSchedule(times, np.asarray(work, float), tuple(capacities), predicted)
        if neighbour not in NEIGHBOURS or neighbour_seen_as not in SEEN_AS:
            raise ValueError(f"neighbour must be one of {NEIGHBOURS} seen as one of {SEEN_AS}, "
                             f"got {neighbour!r} seen as {neighbour_seen_as!r}")
        hog = neighbour == "inside" or background > 0
        hogs = len(capacities) if hog_cpus is None else hog_cpus
        space = WorkloadSpace(
            {
                "tasks": Fixed(int(trace.work.size)),
                "mean_work": Fixed(float(trace.work.mean())),
                "predict_noise": Fixed(predict_noise),
                "unknown_prob": Fixed(0.0 if predicted is not None else unknown_prob),
                "balance_interval": Fixed(balance_interval),
                "util_window": Fixed(util_window),
                "neighbour": Fixed(neighbour),
                "neighbour_seen_as": Fixed(neighbour_seen_as),
                "background": Fixed(background),
                "bg_prob": Fixed(0.0),
                "review_m0": Fixed(review_m0),
                "max_reviews": Fixed(max_reviews),
                "bg_weight": Fixed(bg_weight),
            },
            capacities=trace.capacities,
        )
        env = cls(num_envs, seed=seed, space=space, trace=trace, exact_state=exact_state)
        env.always_on = np.arange(len(capacities)) < (hogs if hog else 0)
        return env

    # --------------------------------------------------------------------------------------------
    # gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed = seed
        B, C = self.num_envs, self.width
        everyone = np.arange(B)
        self._row_rng = [np.random.default_rng([self._seed, b]) for b in range(B)]
        self.w = self._sample_trials(everyone)
        self._trial_base = self.w.take(everyone)
        self._shifted = self._shift_trials(self._trial_base, everyone) if self.shift else None
        self._alloc(B, C, int(self.w.tasks.max()))
        self._begin_episodes(everyone)
        ones = np.ones(B, dtype=bool)
        return self._observe(trial_start=ones, episode_start=ones)

    def step(self, actions):
        if self._raw is None:
            raise RuntimeError("host sim: call reset() before step()")
        a = spaces.validate_actions(actions, self._mask)
        B = self.num_envs
        slot, cls = spaces.split_action(a)
        reviewing = self.pend_review.copy()
        self._review(np.flatnonzero(reviewing), cls[reviewing])
        arriving = np.flatnonzero(~reviewing)
        self._place(arriving, slot[arriving], cls[arriving])
        self.k[arriving] += 1
        more = arriving[self.k[arriving] < self.w.tasks[arriving]]
        self.next_arr[arriving] = np.inf
        self.next_arr[more] = self._arrival_after(more)
        self._window = (self.w.util_window * self.w.mean_work)[:, None]  # seconds, this step
        task_time = self._advance()
        self._shrink_table()
        self.placed *= np.exp(-(self.now - self.last)[:, None] / self._window)
        rew = spaces.reward(task_time, self.w.mean_work)
        self.ep_return += rew

        ending = (self.k >= self.w.tasks) & (self._running() == 0)
        ended = np.flatnonzero(ending)
        trial_start = np.zeros(B, dtype=bool)
        info_episodes = None
        if ended.size:
            info_episodes = self._episode_stats(ended)
            trial_start[ended] = self._next_episode(ended)
            self._begin_episodes(ended)
        arrived = np.flatnonzero(~ending & ~self.pend_review)
        self._arrive(arrived)
        obs, info = self._observe(trial_start=trial_start, episode_start=ending)
        if info_episodes is not None:
            info["episode"] = info_episodes
        truncated = np.zeros(B, dtype=bool)
        return obs, rew, ending, truncated, info

    # --------------------------------------------------------------------------------------------
    # state

    def _alloc(self, B: int, C: int, T: int) -> None:
        self.now = np.zeros(B)
        self.last = np.zeros(B)
        self.k = np.zeros(B, dtype=np.int64)
        """Tasks of the episode that have arrived (and been placed)."""
        self.next_arr = np.full(B, np.inf)
        self.episode_index = np.zeros(B, dtype=np.int64)
        self.episode_count = np.zeros(B, dtype=np.int64)
        """Episodes since reset, the key of the per-task random stream."""
        self.ep_return = np.zeros(B)
        self.delivered = np.zeros(B)
        """Capacity-seconds the CPUs delivered to managed tasks since reset (work conservation)."""
        self.V = np.zeros((B, C, 2))
        self.n = np.zeros((B, C, 2), dtype=np.int64)
        self.nu = np.zeros((B, C), dtype=np.int64)
        self.minkey = np.full((B, C, 2), np.inf)
        """Per CPU and class, the smallest event key (tag or next review) and its table column."""
        self.minidx = np.zeros((B, C, 2), dtype=np.int64)
        self.capeff = np.zeros((B, C))
        self.bg_on = np.zeros((B, C), dtype=bool)
        self.bg = np.zeros((B, C))
        self.bg_seen = np.zeros((B, C))
        """The load the kernel's balancer counts for the outside neighbour (its share, or 1)."""
        self.hog = np.zeros((B, C))
        self.util = np.zeros((B, C))
        self.placed = np.zeros((B, C))
        self.bal_ok = np.zeros(B, dtype=bool)
        self.bal_src = np.zeros(B, dtype=np.int64)
        self.bal_dst = np.zeros(B, dtype=np.int64)
        self.hi = 0
        """Columns of the task table in use: no env has an active task at or beyond it."""
        n0 = INITIAL_TASK_TABLE
        self.t_active = np.zeros((B, n0), dtype=bool)
        self.t_cpu = np.zeros((B, n0), dtype=np.int64)
        self.t_cls = np.zeros((B, n0), dtype=np.int64)
        self.t_tag = np.zeros((B, n0))
        self.t_rev = np.zeros((B, n0))
        self.t_nrev = np.zeros((B, n0), dtype=np.int64)
        self.t_work = np.zeros((B, n0))
        self.t_pred = np.zeros((B, n0))
        self.t_unknown = np.zeros((B, n0), dtype=bool)
        self.t_pinned = np.zeros((B, n0), dtype=bool)
        self.t_id = np.zeros((B, n0), dtype=np.int64)
        self.t_arr = np.zeros((B, n0))
        self.ep_arrival = np.zeros((B, T))
        self.ep_exit = np.full((B, T), np.nan)
        self.ep_work = np.zeros((B, T))
        self.pend_review = np.zeros(B, dtype=bool)
        self.pend_task = np.zeros(B, dtype=np.int64)
        """The reviewed task's table column (rows with ``pend_review``)."""
        self.pend_work = np.zeros(B)
        self.pend_pred = np.zeros(B)
        self.pend_unknown = np.zeros(B, dtype=bool)
        self._mask = np.zeros((B, spaces.N_ACTIONS), dtype=bool)

    def _running(self) -> np.ndarray:
        return self.n.sum(axis=(1, 2))

    def _grow_tasks(self) -> None:
        width = self.t_active.shape[1]
        if 2 * width > MAX_TASK_TABLE:
            raise TaskTableFull(
                f"host sim: more than {width} tasks in one environment at once; the workload overloads "
                f"the CPUs (lower its load or tasks per episode)"
            )
        for name in _TASK_COLUMNS:
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.zeros_like(old)], axis=1))

    def _shrink_table(self) -> None:
        """Lower the in-use bound after completions, so scans skip columns nobody occupies."""
        used = np.flatnonzero(self.t_active[:, : self.hi].any(axis=0))
        self.hi = int(used[-1]) + 1 if used.size else 0

    def _grow_episode(self, T: int) -> None:
        pad = T - self.ep_arrival.shape[1]
        if pad > 0:
            B = self.num_envs
            self.ep_arrival = np.concatenate([self.ep_arrival, np.zeros((B, pad))], axis=1)
            self.ep_exit = np.concatenate([self.ep_exit, np.full((B, pad), np.nan)], axis=1)
            self.ep_work = np.concatenate([self.ep_work, np.zeros((B, pad))], axis=1)

    def _sample_trials(self, rows: np.ndarray) -> Workload:
        """A fresh workload per row, each from its own row's generator (independent of the others)."""
        drawn = _concat([self.space.sample(self._row_rng[b], 1, self.width) for b in rows])
        drawn.bg_always |= self.always_on
        return drawn

    def _shift_trials(self, base: Workload, rows: np.ndarray) -> Workload:
        assert self.shift is not None
        return _concat([self.shift.apply(base.take(np.array([i])), self._row_rng[b]) for i, b in enumerate(rows)])

    def _next_episode(self, rows: np.ndarray) -> np.ndarray:
        """Advance the episode counter of ``rows``; a new trial draws a new workload. Returns trial starts."""
        self.episode_index[rows] += 1
        self.episode_count[rows] += 1
        new_trial = self.episode_index[rows] >= self.episodes_per_trial
        fresh = rows[new_trial]
        if fresh.size:
            self.episode_index[fresh] = 0
            drawn = self._sample_trials(fresh)
            self._trial_base.assign(fresh, drawn)
            self.w.assign(fresh, drawn)
            if self.shift is not None and self._shifted is not None:
                self._shifted.assign(fresh, self._shift_trials(drawn, fresh))
            self._grow_episode(int(drawn.tasks.max()))
        if self.shift is not None and self._shifted is not None:
            shifting = rows[self.episode_index[rows] == self.shift.at_episode]
            if shifting.size:
                self.w.assign(shifting, self._shifted.take(shifting))
        return new_trial

    def _draws(self, rows: np.ndarray, task: np.ndarray) -> StepDraws:
        return StepDraws.for_tasks(self._seed, rows, self.episode_count[rows], task, self.width)

    def _begin_episodes(self, rows: np.ndarray) -> None:
        """Empty machines for ``rows``; the clock starts at 0 and jumps to the first arrival."""
        w = self.w.take(rows)
        d = self._draws(rows, np.zeros(rows.size, dtype=np.int64))
        self.k[rows] = 0
        self.ep_return[rows] = 0.0
        self.V[rows] = 0.0
        self.n[rows] = 0
        self.nu[rows] = 0
        self.minkey[rows] = np.inf
        self.t_active[rows] = False
        self._shrink_table()
        self.ep_exit[rows] = np.nan
        self.bal_ok[rows] = False
        self.pend_review[rows] = False
        self._set_neighbours(rows, (d.bg_v < w.bg_prob[:, None]) | w.bg_always)
        self.util[rows] = np.maximum(self.bg[rows], self.hog[rows])
        self.placed[rows] = 0.0
        self.last[rows] = 0.0
        if self.trace is not None:
            self.now[rows] = self.trace.arrival[0]
        else:
            self.now[rows] = next_gap(w, np.zeros(rows.size), d)
        self.next_arr[rows] = self.now[rows]
        self._arrive(rows)

    def _arrival_after(self, rows: np.ndarray) -> np.ndarray:
        """Arrival time of task k of ``rows`` (the one after the task that arrived now)."""
        if self.trace is not None:
            return self.trace.arrival[np.minimum(self.k[rows], self.trace.arrival.size - 1)]
        return self.now[rows] + next_gap(self.w.take(rows), self.now[rows], self._draws(rows, self.k[rows]))

    def _arrive(self, rows: np.ndarray) -> None:
        """Task k of ``rows`` arrives now: draw its work and prediction, re-draw the neighbours."""
        if rows.size == 0:
            return
        w = self.w.take(rows)
        d = self._draws(rows, self.k[rows])
        if self.trace is None:
            work = task_work(w, d)
            pred, unknown = predicted_work(w, work, d)
        else:
            i = np.minimum(self.k[rows], self.trace.work.size - 1)
            work = self.trace.work[i]
            pred, unknown = predicted_work(w, work, d)
            if self.trace.predicted is not None:
                pred, unknown = np.asarray(self.trace.predicted, float)[i], np.zeros_like(unknown)
        self.pend_work[rows], self.pend_pred[rows], self.pend_unknown[rows] = work, pred, unknown
        period = (w.bg_period * w.mean_work)[:, None]
        change = d.bg_u < -np.expm1(-(self.now[rows] - self.last[rows])[:, None] / period)
        self._set_neighbours(rows, np.where(change, d.bg_v < w.bg_prob[:, None], self.bg_on[rows]) | w.bg_always)

    def _set_neighbours(self, rows: np.ndarray, on: np.ndarray) -> None:
        w = self.w
        on = on & (w.capacity[rows] > 0)
        inside = (w.neighbour[rows] == INSIDE)[:, None]
        self.bg_on[rows] = on
        self.hog[rows] = on & inside
        self.bg[rows] = np.where(on & ~inside, w.bg_share[rows], 0.0)
        as_task = (w.neighbour_seen_as[rows] == SEEN_AS.index("task"))[:, None]
        self.bg_seen[rows] = np.where(as_task, self.bg[rows] > 0, self.bg[rows])
        self.capeff[rows] = w.capacity[rows] * (1.0 - self.bg[rows])

    # --------------------------------------------------------------------------------------------
    # decisions and the kernel model

    def _kernel_load(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted load per capacity of each CPU, as the kernel's balancer sees it."""
        cap = self.w.capacity[rows]
        present = cap > 0
        n = self.n[rows]
        weighted = n[..., N] + self.hog[rows] + n[..., B_] * (self.w.bg_weight[rows, None] / NORMAL_WEIGHT)
        load = np.where(present, (weighted + self.bg_seen[rows]) / np.where(present, cap, 1.0), np.inf)
        return load, cap

    def _place(self, rows: np.ndarray, slot: np.ndarray, cls: np.ndarray) -> None:
        """The arriving task of each row goes to its slot (or the kernel's pick) with its class."""
        if rows.size == 0:
            return
        kernel = slot == spaces.KERNEL
        load, cap = self._kernel_load(rows)
        cpu = np.where(kernel, np.argmin(load - TIE_EPS * cap, axis=1), slot)
        if self.hi == self.t_active.shape[1] and self.t_active[rows].all(axis=1).any():
            self._grow_tasks()
        free = np.argmin(self.t_active[rows, : self.hi + 1], axis=1)
        self.hi = max(self.hi, int(free.max()) + 1)
        work = self.pend_work[rows]
        tag = self.V[rows, cpu, cls] + work
        self.t_active[rows, free] = True
        self.t_cpu[rows, free] = cpu
        self.t_cls[rows, free] = cls
        self.t_tag[rows, free] = tag
        self.t_nrev[rows, free] = 0
        self.t_rev[rows, free] = self._next_review(rows, tag, work, np.zeros(rows.size, dtype=np.int64))
        self.t_work[rows, free] = work
        self.t_pred[rows, free] = self.pend_pred[rows]
        self.t_unknown[rows, free] = self.pend_unknown[rows]
        movable = kernel | (not self.pin_placements)
        self.t_pinned[rows, free] = ~movable
        self.t_id[rows, free] = self.k[rows]
        self.t_arr[rows, free] = self.now[rows]
        self.n[rows, cpu, cls] += 1
        self.nu[rows, cpu] += movable
        self._note_key(rows, cpu, cls, free)
        self.placed[rows, cpu] += 1.0
        self.ep_arrival[rows, self.k[rows]] = self.now[rows]
        self.ep_work[rows, self.k[rows]] = work
        self._update_balance(rows)

    def _next_review(self, rows: np.ndarray, tag: np.ndarray, work: np.ndarray, done: np.ndarray) -> np.ndarray:
        """Class-clock value of a task's next review: where its attained service reaches
        ``review_m0 * 2**done``, or inf once ``max_reviews`` are done or the milestone is past its work."""
        milestone = self.w.review_m0[rows] * 2.0 ** done
        due = (done < self.w.max_reviews[rows]) & (milestone < work)
        return np.where(due, tag - work + milestone, np.inf)

    def _review(self, rows: np.ndarray, cls: np.ndarray) -> None:
        """Apply the class chosen at each row's review, then schedule that task's next review."""
        if rows.size == 0:
            return
        j = self.pend_task[rows]
        cpu = self.t_cpu[rows, j]
        old = self.t_cls[rows, j]
        remaining = self.t_tag[rows, j] - self.V[rows, cpu, old]
        tag = self.V[rows, cpu, cls] + remaining
        done = self.t_nrev[rows, j] + 1
        self.t_nrev[rows, j] = done
        self.t_tag[rows, j] = tag
        self.t_cls[rows, j] = cls
        self.t_rev[rows, j] = self._next_review(rows, tag, self.t_work[rows, j], done)
        self.n[rows, cpu, old] -= 1
        self.n[rows, cpu, cls] += 1
        self._refresh_min(rows, cpu, old)
        self._refresh_min(rows, cpu, cls)
        self.pend_review[rows] = False
        self._update_balance(rows)

    def _update_balance(self, rows: np.ndarray) -> None:
        """Cache, per env, the move the kernel's balancer would make now (if any)."""
        if rows.size == 0:
            return
        load, cap = self._kernel_load(rows)
        r = np.arange(rows.size)
        count = self.n[rows].sum(axis=2) + (self.hog[rows] > 0)
        movable_src = self.nu[rows] > 0
        src_key = np.where(movable_src, load, -np.inf)
        src = np.argmax(src_key, axis=1)
        dst = np.argmin(load - TIE_EPS * cap, axis=1)
        dst_cap = np.maximum(cap[r, dst], 1e-12)
        after = load[r, dst] + 1.0 / dst_cap
        src_load = src_key[r, src]
        by_load = np.isfinite(src_load) & (src != dst) & (after < src_load * (1 - TIE_EPS))
        # An idle CPU pulls from the CPU with the most tasks per capacity, whatever their weights,
        # when the task would have more capacity to itself there than it shares now.
        idle = (count == 0) & (cap > 0)
        per_cap = count / np.where(cap > 0, cap, 1.0)
        pull_src = np.argmax(np.where(movable_src, per_cap, -1.0), axis=1)
        idle_dst = np.argmax(np.where(idle, cap, -1.0), axis=1)
        by_count = (idle.any(axis=1) & (count[r, pull_src] >= 2) & movable_src[r, pull_src]
                    & (1.0 / np.maximum(cap[r, idle_dst], 1e-12) < per_cap[r, pull_src] * (1 - TIE_EPS)))
        self.bal_ok[rows] = by_load | by_count
        self.bal_src[rows] = np.where(by_load, src, pull_src)
        self.bal_dst[rows] = np.where(by_load, dst, idle_dst)

    def _migrate(self, rows: np.ndarray) -> None:
        """Apply the cached balancing move of ``rows`` (all must have one)."""
        if rows.size == 0:
            return
        src, dst = self.bal_src[rows], self.bal_dst[rows]
        used = slice(0, self.hi)
        movable = self.t_active[rows, used] & ~self.t_pinned[rows, used] & (self.t_cpu[rows, used] == src[:, None])
        j = np.argmax(np.where(movable, self.t_arr[rows, used], -np.inf), axis=1)
        cls = self.t_cls[rows, j]
        shift = self.V[rows, dst, cls] - self.V[rows, src, cls]
        self.t_tag[rows, j] += shift
        self.t_rev[rows, j] += shift
        self.t_cpu[rows, j] = dst
        self.n[rows, src, cls] -= 1
        self.nu[rows, src] -= 1
        self.n[rows, dst, cls] += 1
        self.nu[rows, dst] += 1
        self._refresh_min(rows, src, cls)
        self._note_key(rows, dst, cls, j)

    def _note_key(self, b: np.ndarray, c: np.ndarray, k: np.ndarray, j: np.ndarray) -> None:
        """Task j joined (CPU c, class k) of env b (distinct envs): keep that queue's first event."""
        key = np.minimum(self.t_tag[b, j], self.t_rev[b, j])
        first = key < self.minkey[b, c, k]
        self.minkey[b[first], c[first], k[first]] = key[first]
        self.minidx[b[first], c[first], k[first]] = j[first]

    def _refresh_min(self, b: np.ndarray, c: np.ndarray, k: np.ndarray) -> None:
        """Recompute the first event of (CPU c, class k) in env b."""
        if b.size == 0:
            return
        used = slice(0, self.hi)
        mine = self.t_active[b, used] & (self.t_cpu[b, used] == c[:, None]) & (self.t_cls[b, used] == k[:, None])
        key = np.where(mine, np.minimum(self.t_tag[b, used], self.t_rev[b, used]), np.inf)
        j = np.argmin(key, axis=1)
        self.minidx[b, c, k] = j
        self.minkey[b, c, k] = key[np.arange(b.size), j]

    # --------------------------------------------------------------------------------------------
    # time

    def _rates(self, R: np.ndarray) -> np.ndarray:
        """Service rate of one task of each class on each CPU of R, (R, C, 2): weighted sharing."""
        n = self.n[R]
        bgw = self.w.bg_weight[R, None]
        normal_w = NORMAL_WEIGHT * (n[..., N] + self.hog[R])
        total = normal_w + bgw * (n[..., B_] > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_weight = np.where(total > 0, self.capeff[R] / total, 0.0)
            rate_b = np.where(n[..., B_] > 0, per_weight * bgw / n[..., B_], 0.0)
        return np.stack([per_weight * NORMAL_WEIGHT, rate_b], axis=-1)

    def _advance(self) -> np.ndarray:
        """Run every env to its next arrival or review (or, once every task has arrived, until a
        review or the machine is empty), one event per env and iteration. Returns the integral of
        tasks in the system over the advanced time (task-seconds)."""
        task_time = np.zeros(self.num_envs)
        R = np.arange(self.num_envs)
        while R.size:
            now = self.now[R]
            n = self.n[R]
            rate = self._rates(R)
            with np.errstate(divide="ignore", invalid="ignore"):
                tte = np.where(n > 0, np.maximum(self.minkey[R] - self.V[R], 0.0) / rate, np.inf)
            flat = tte.reshape(R.size, -1)
            where = np.argmin(flat, axis=1)
            t_event = now + flat[np.arange(R.size), where]
            interval = self.w.balance_interval[R]
            tick = np.where(self.bal_ok[R], (np.floor(now / interval + TICK_EPS) + 1.0) * interval, np.inf)
            target = self.next_arr[R]
            t_next = np.minimum(np.minimum(t_event, tick), target)
            empty = ~np.isfinite(t_next)  # nothing left: every task arrived and finished
            dt = np.where(empty, 0.0, t_next - now)
            count = n.sum(axis=2)
            task_time[R] += count.sum(axis=1) * dt
            busy_cpu = count > 0
            self.delivered[R] += (rate * n).sum(axis=(1, 2)) * dt
            busy = np.where(busy_cpu | (self.hog[R] > 0), 1.0, self.bg[R])
            self.util[R] = busy + (self.util[R] - busy) * np.exp(-dt[:, None] / self._window[R])
            self.V[R] += rate * dt[:, None, None]
            self.now[R] = np.where(empty, now, t_next)

            is_event = ~empty & (t_event <= tick) & (t_event <= target)
            is_tick = ~empty & ~is_event & (tick <= target)
            ev = R[is_event]
            cpu, cls = np.divmod(where[is_event], 2)
            j = self.minidx[ev, cpu, cls]
            review = self.t_rev[ev, j] < self.t_tag[ev, j]
            self._complete(ev[~review], cpu[~review], cls[~review])
            self.pend_review[ev[review]] = True
            self.pend_task[ev[review]] = j[review]
            self.V[ev[review], cpu[review], cls[review]] = self.t_rev[ev[review], j[review]]
            ticked = R[is_tick]
            self._migrate(ticked)
            R = np.concatenate([ev[~review], ticked])
            self._update_balance(R)
        return task_time

    def _complete(self, b: np.ndarray, c: np.ndarray, k: np.ndarray) -> None:
        """The first event of (env b, CPU c, class k), a completion, happens now (the caller then
        refreshes the balancer's cached move)."""
        if b.size == 0:
            return
        j = self.minidx[b, c, k]
        self.t_active[b, j] = False
        self.n[b, c, k] -= 1
        self.nu[b, c] -= ~self.t_pinned[b, j]
        self.ep_exit[b, self.t_id[b, j]] = self.now[b]
        self._refresh_min(b, c, k)

    # --------------------------------------------------------------------------------------------
    # observation and episode outcomes

    def _received(self, b: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self.t_work[b, j] - (self.t_tag[b, j] - self.V[b, self.t_cpu[b, j], self.t_cls[b, j]])

    def _work_left(self) -> np.ndarray:
        """Per CPU: sum of max(predicted work - service received, 0) over its tasks (the host's estimate)."""
        B, C = self.num_envs, self.width
        b, j = np.nonzero(self.t_active[:, : self.hi])
        est = np.maximum(self.t_pred[b, j] - self._received(b, j), 0.0)
        return np.bincount(b * C + self.t_cpu[b, j], weights=est, minlength=B * C).reshape(B, C)

    def _exact_state(self) -> dict[str, np.ndarray]:
        """What an oracle would know and a host cannot: each task's CPU (-1: no task in that table
        column), class and exact remaining work, and every CPU's capacity net of its neighbour."""
        used = slice(0, self.hi)
        active = self.t_active[:, used]
        cpu = self.t_cpu[:, used]
        cls = self.t_cls[:, used]
        clock = self.V[np.arange(self.num_envs)[:, None], cpu, cls]
        return {
            "task_cpu": np.where(active, cpu, -1),
            "task_class": np.where(active, cls, -1),
            "task_remaining": np.where(active, self.t_tag[:, used] - clock, 0.0),
            "capacity_now": self.capeff.copy(),
        }

    def _observe(self, trial_start: np.ndarray, episode_start: np.ndarray):
        B, C = self.num_envs, self.width

        def pad(x: np.ndarray) -> np.ndarray:
            out = np.zeros((B, spaces.MAX_SLOTS), dtype=np.float64)
            out[:, :C] = x
            return out

        rows = np.arange(B)
        review = self.pend_review.copy()
        j = self.pend_task
        attained = np.where(review, self._received(rows, j), 0.0)
        true_work = np.where(review, self.t_work[rows, j], self.pend_work)
        present = self.w.capacity > 0
        raw = spaces.RawObservation(
            slot_mask=pad(present).astype(bool),
            capacity=pad(self.w.capacity),
            runnable=pad(self.n.sum(axis=2)),
            runnable_bg=pad(self.n[..., B_]),
            util=pad(self.util),
            placed=pad(self.placed),
            work_left=pad(self._work_left()),
            task_work=np.where(review, self.t_pred[rows, j], self.pend_pred),
            task_unknown=np.where(review, self.t_unknown[rows, j], self.pend_unknown),
            since_last=self.now - self.last,
            time_unit=self.w.mean_work.copy(),
            kernel_allowed=np.ones(B, dtype=bool),
            share_allowed=np.ones(B, dtype=bool),
            review=review,
            attained=attained,
            current_slot=np.where(review, self.t_cpu[rows, j], -1),
            background_now=review & (self.t_cls[rows, j] == B_),
            extras={"true_work": true_work, "true_remaining": true_work - attained, "time": self.now.copy(),
                    **(self._exact_state() if self.exact_state else {})},
        )
        self.last = self.now.copy()
        self._raw = raw
        self._mask = spaces.action_mask(raw)
        info = {
            "raw": raw,
            "action_mask": self._mask,
            "trial_start": trial_start,
            "episode_start": episode_start,
        }
        return spaces.encode(raw), info

    def _episode_stats(self, rows: np.ndarray) -> list[EpisodeStats | None]:
        out: list[EpisodeStats | None] = [None] * self.num_envs
        unit = self.w.mean_work[rows]
        fastest = self.w.capacity[rows].max(axis=1)
        for i, b in enumerate(rows):  # one object per finished episode: the info format needs it
            t = int(self.w.tasks[b])
            jct_s = self.ep_exit[b, :t] - self.ep_arrival[b, :t]
            out[b] = EpisodeStats(
                jct=jct_s / unit[i],
                slowdown=jct_s / (self.ep_work[b, :t] / fastest[i]),
                episode_return=float(self.ep_return[b]),
            )
        return out


def _concat(parts: list[Workload]) -> Workload:
    """Rows of several workloads stacked into one (per-row trial draws)."""
    first = parts[0]
    return Workload(**{name: np.concatenate([getattr(p, name) for p in parts], axis=0)
                       for name in first.__dataclass_fields__})

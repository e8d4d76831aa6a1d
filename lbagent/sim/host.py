"""Host dynamics: Linux-like CPUs behind the contract, vectorized over B environments.

Each CPU shares its effective capacity equally among its runnable managed tasks (processor
sharing, the fluid limit of CFS). That is simulated exactly with one *virtual time* per CPU: the
service a task on it has received since time 0 grows at ``capacity / runnable``; a task finishes
when the virtual time reaches its *tag* (virtual time at placement + its work). Between two
decisions (task arrivals) time advances event by event: the next completion on any CPU, the next
balancing tick of the kernel model, or the next arrival. One iteration handles one event for each
environment that still has events before its next arrival, so a step costs a few array passes
over the environments that are still busy, never a Python loop over environments or tasks.

Capacity. A CPU has a base capacity (what the topology reports; the observation shows it) and a
noisy neighbour that, while active, takes ``bg_share`` of it. Neighbours are re-drawn at decision
points: a CPU's neighbour keeps its state for an exponential time (``bg_period`` time units on
average) and is then active with probability ``bg_prob``. The neighbour is visible to a policy only
through ``util`` (an idle CPU with an active neighbour is partly busy), as on a real host.

The kernel model (action ``KERNEL``). At wake-up the task goes to the CPU with the lowest load per
capacity, load = runnable managed tasks + the neighbour's share (the kernel sees the neighbour as
load), ties to the larger capacity then the lower index. On every periodic tick
(``balance_interval`` seconds of simulated time, 4 ms by default) the balancer moves one unpinned
task (the most recently arrived, the most cache-cold) from the busiest CPU that has one to the
least loaded CPU, if the destination's load per capacity after the move stays below the source's
before it. Tasks placed on a slot are pinned and never move. A tick where no such move exists
changes nothing, so only ticks that can matter are simulated: while no move exists, the first
tick after the next completion (a completion is the only thing that can create one before the
next arrival).

Observation (see :mod:`lbagent.spaces`): one slot per CPU, ``capacity`` the base capacity; ``util`` and ``placed`` are
exponentially weighted over ``util_window`` time units (util: busy fraction counting the
neighbour; placed: count of placements); ``work_left`` is the host predictor's estimate,
sum over the CPU's tasks of max(predicted work - service received, 0); ``task_work`` is the
predicted work of the arriving task (true work with log-normal error, or the mean work as a prior
with ``task_unknown`` set). The env's ``time_unit`` is its workload's mean task work in seconds,
so work and time features are O(1) whatever the scenario's scale. ``info["raw"].extras`` carries
the arriving task's true work, the env's clock and, with ``exact_state``, the exact per-task state
(for tests, replay reports and the headroom experiment's oracle rules, never the policy).

An episode is a fixed number of tasks (decisions); the last step's reward includes the drain of
every remaining task, so an episode's rewards sum to minus the total sojourn time in time units.
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
    Fixed,
    Shift,
    StepDraws,
    WorkloadSpace,
    next_gap,
    predicted_work,
    task_work,
)

INITIAL_TASK_TABLE = 32
MAX_TASK_TABLE = 8192
"""Tasks in one environment at once; the table doubles on demand up to this, then refuses."""


class TaskTableFull(UserError, RuntimeError):
    """More tasks at once than :data:`MAX_TASK_TABLE`: a workload that overloads its CPUs."""
TICK_EPS = 1e-9
"""Relative slack so a tick computed from a clock that sits on a tick boundary is not missed."""
TIE_EPS = 1e-9
"""Load-per-capacity ties go to the larger capacity (subtracted as TIE_EPS * capacity)."""


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
        costs 3-5 % of the simulator's speed, so training and ``lbagent eval`` leave it off)."""
        self.width = self.space.max_cpus
        if not 1 <= self.width <= spaces.MAX_SLOTS:
            raise ValueError(f"host dynamics need 1 to {spaces.MAX_SLOTS} CPUs, got {self.width}")
        self.single_observation_space, self.single_action_space = spaces.gym_spaces()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._raw: spaces.RawObservation | None = None

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
    ) -> HostVectorEnv:
        """Replay a recorded workload: one episode is the whole trace, every row the same tasks.

        Arrival times are taken relative to the first one (a recording's absolute clock does not
        matter); ``capacities`` are the CPUs' base capacities, one slot each (at most 16: group a
        bigger host into slots first). Without ``predicted`` the host predictor is modelled.
        """
        times = np.asarray(arrival, float)
        times = times - times[0] if times.size else times
        trace = FixedSchedule(times, np.asarray(work, float), tuple(capacities), predicted)
        space = WorkloadSpace(
            {
                "tasks": Fixed(int(trace.work.size)),
                "mean_work": Fixed(float(trace.work.mean())),
                "predict_noise": Fixed(predict_noise),
                "unknown_prob": Fixed(0.0 if predicted is not None else unknown_prob),
                "balance_interval": Fixed(balance_interval),
                "util_window": Fixed(util_window),
            },
            capacities=trace.capacities,
        )
        return cls(num_envs, seed=seed, space=space, trace=trace)

    # --------------------------------------------------------------------------------------------
    # gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed = seed
        self._rng = np.random.default_rng(self._seed)
        B, C = self.num_envs, self.width
        everyone = np.arange(B)
        self.w = self.space.sample(self._rng, B, C)
        self._trial_base = self.w.take(everyone)
        self._shifted = self.shift.apply(self._trial_base, self._rng) if self.shift else None
        self._alloc(B, C, int(self.w.tasks.max()))
        draws = StepDraws.draw(self._rng, B, C)
        self._begin_episodes(everyone, draws)
        self._draw_pending(draws)
        ones = np.ones(B, dtype=bool)
        return self._observe(trial_start=ones, episode_start=ones)

    def step(self, actions):
        if self._raw is None:
            raise RuntimeError("host sim: call reset() before step()")
        a = spaces.validate_actions(actions, self._mask)
        B, C = self.num_envs, self.width
        draws = StepDraws.draw(self._rng, B, C)
        self._place(a)
        self.k += 1
        ending = self.k >= self.w.tasks
        target = np.where(ending, np.inf, self._next_arrival(draws))
        self._window = (self.w.util_window * self.w.mean_work)[:, None]  # seconds, this step
        task_time = self._advance(target, ending)
        self._shrink_table()
        self.placed *= np.exp(-(self.now - self.last)[:, None] / self._window)
        rew = spaces.reward(task_time, self.w.mean_work)
        self.ep_return += rew
        self._redraw_background(draws)

        ended = np.flatnonzero(ending)
        episode_start = ending.copy()
        trial_start = np.zeros(B, dtype=bool)
        info_episodes = None
        if ended.size:
            info_episodes = self._episode_stats(ended)
            trial_start[ended] = self._next_episode(ended)
            self._begin_episodes(ended, draws.take(ended))
        self._draw_pending(draws)
        obs, info = self._observe(trial_start=trial_start, episode_start=episode_start)
        if info_episodes is not None:
            info["episode"] = info_episodes
        truncated = np.zeros(B, dtype=bool)
        return obs, rew, episode_start, truncated, info

    # --------------------------------------------------------------------------------------------
    # state

    def _alloc(self, B: int, C: int, T: int) -> None:
        N = INITIAL_TASK_TABLE
        self.now = np.zeros(B)
        self.last = np.zeros(B)
        self.k = np.zeros(B, dtype=np.int64)
        self.episode_index = np.zeros(B, dtype=np.int64)
        self.ep_return = np.zeros(B)
        self.delivered = np.zeros(B)
        """Capacity-seconds the CPUs delivered to managed tasks since reset (work conservation)."""
        self.V = np.zeros((B, C))
        self.n = np.zeros((B, C), dtype=np.int64)
        self.nu = np.zeros((B, C), dtype=np.int64)
        self.mintag = np.full((B, C), np.inf)
        """Per CPU, the smallest tag (its next task to finish) and, below, the second smallest."""
        self.min2tag = np.full((B, C), np.inf)
        self.minidx = np.zeros((B, C), dtype=np.int64)
        self.capeff = np.zeros((B, C))
        self.bg_on = np.zeros((B, C), dtype=bool)
        self.bg = np.zeros((B, C))
        self.util = np.zeros((B, C))
        self.placed = np.zeros((B, C))
        self.bal_ok = np.zeros(B, dtype=bool)
        self.bal_src = np.zeros(B, dtype=np.int64)
        self.bal_dst = np.zeros(B, dtype=np.int64)
        self.t_active = np.zeros((B, N), dtype=bool)
        self.hi = 0
        """Columns of the task table in use: no env has an active task at or beyond it."""
        self.t_cpu = np.zeros((B, N), dtype=np.int64)
        self.t_tag = np.zeros((B, N))
        self.t_work = np.zeros((B, N))
        self.t_pred = np.zeros((B, N))
        self.t_pinned = np.zeros((B, N), dtype=bool)
        self.t_id = np.zeros((B, N), dtype=np.int64)
        self.t_arr = np.zeros((B, N))
        self.ep_arrival = np.zeros((B, T))
        self.ep_exit = np.full((B, T), np.nan)
        self.ep_work = np.zeros((B, T))
        self.pend_work = np.zeros(B)
        self.pend_pred = np.zeros(B)
        self.pend_unknown = np.zeros(B, dtype=bool)
        self._mask = np.zeros((B, spaces.N_ACTIONS), dtype=bool)

    def _grow_tasks(self) -> None:
        N = self.t_active.shape[1]
        if 2 * N > MAX_TASK_TABLE:
            raise TaskTableFull(
                f"host sim: more than {N} tasks in one environment at once; the workload overloads "
                f"the CPUs (lower its load or tasks per episode)"
            )
        for name in ("t_active", "t_cpu", "t_tag", "t_work", "t_pred", "t_pinned", "t_id", "t_arr"):
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

    def _next_episode(self, rows: np.ndarray) -> np.ndarray:
        """Advance the episode counter of ``rows``; a new trial draws a new workload. Returns trial starts."""
        self.episode_index[rows] += 1
        new_trial = self.episode_index[rows] >= self.episodes_per_trial
        fresh = rows[new_trial]
        if fresh.size:
            self.episode_index[fresh] = 0
            drawn = self.space.sample(self._rng, fresh.size, self.width)
            self._trial_base.assign(fresh, drawn)
            self.w.assign(fresh, drawn)
            if self.shift is not None and self._shifted is not None:
                self._shifted.assign(fresh, self.shift.apply(drawn, self._rng))
            self._grow_episode(int(drawn.tasks.max()))
        if self.shift is not None and self._shifted is not None:
            shifting = rows[self.episode_index[rows] == self.shift.at_episode]
            if shifting.size:
                self.w.assign(shifting, self._shifted.take(shifting))
        return new_trial

    def _begin_episodes(self, rows: np.ndarray, d: StepDraws) -> None:
        """Empty machines for ``rows``; the clock starts at 0 and jumps to the first arrival."""
        w = self.w.take(rows)
        self.k[rows] = 0
        self.ep_return[rows] = 0.0
        self.V[rows] = 0.0
        self.n[rows] = 0
        self.nu[rows] = 0
        self.mintag[rows] = np.inf
        self.min2tag[rows] = np.inf
        self.t_active[rows] = False
        self._shrink_table()
        self.ep_exit[rows] = np.nan
        self.bal_ok[rows] = False
        self.bg_on[rows] = (d.bg_v < w.bg_prob[:, None]) | w.bg_always
        self.bg[rows] = self.bg_on[rows] * w.bg_share
        self.capeff[rows] = w.capacity * (1.0 - self.bg[rows])
        self.util[rows] = self.bg[rows]
        self.placed[rows] = 0.0
        self.last[rows] = 0.0
        zero = np.zeros(rows.size)
        if self.trace is not None:
            self.now[rows] = self.trace.arrival[0]
        else:
            self.now[rows] = next_gap(w, zero, d)

    def _next_arrival(self, d: StepDraws) -> np.ndarray:
        if self.trace is not None:
            return self.trace.arrival[np.minimum(self.k, self.trace.arrival.size - 1)]
        return self.now + next_gap(self.w, self.now, d)

    def _draw_pending(self, d: StepDraws) -> None:
        """The task arriving now in each env: its true work and the host's prediction of it."""
        if self.trace is None:
            work = task_work(self.w, d)
            pred, unknown = predicted_work(self.w, work, d)
        else:
            i = np.minimum(self.k, self.trace.work.size - 1)
            work = self.trace.work[i]
            pred, unknown = predicted_work(self.w, work, d)
            if self.trace.predicted is not None:
                pred, unknown = np.asarray(self.trace.predicted, float)[i], np.zeros_like(unknown)
        self.pend_work, self.pend_pred, self.pend_unknown = work, pred, unknown

    def _redraw_background(self, d: StepDraws) -> None:
        period = (self.w.bg_period * self.w.mean_work)[:, None]
        change = d.bg_u < -np.expm1(-(self.now - self.last)[:, None] / period)
        on = np.where(change, d.bg_v < self.w.bg_prob[:, None], self.bg_on) | self.w.bg_always
        self.bg_on = on & (self.w.capacity > 0)
        self.bg = self.bg_on * self.w.bg_share
        self.capeff = self.w.capacity * (1.0 - self.bg)

    # --------------------------------------------------------------------------------------------
    # placement and the kernel model

    def _kernel_load(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cap = self.w.capacity[rows]
        present = cap > 0
        load = np.where(present, (self.n[rows] + self.bg[rows]) / np.where(present, cap, 1.0), np.inf)
        return load, cap

    def _place(self, a: np.ndarray) -> None:
        B = self.num_envs
        rows = np.arange(B)
        kernel = a == spaces.KERNEL
        load, cap = self._kernel_load(rows)
        kernel_cpu = np.argmin(load - TIE_EPS * cap, axis=1)
        cpu = np.where(kernel, kernel_cpu, a)
        if self.hi == self.t_active.shape[1] and self.t_active.all(axis=1).any():
            self._grow_tasks()
        free = np.argmin(self.t_active[:, : self.hi + 1], axis=1)
        self.hi = max(self.hi, int(free.max()) + 1)
        tag = self.V[rows, cpu] + self.pend_work
        self.t_active[rows, free] = True
        self.t_cpu[rows, free] = cpu
        self.t_tag[rows, free] = tag
        self.t_work[rows, free] = self.pend_work
        self.t_pred[rows, free] = self.pend_pred
        movable = kernel | (not self.pin_placements)
        self.t_pinned[rows, free] = ~movable
        self.t_id[rows, free] = self.k
        self.t_arr[rows, free] = self.now
        self.n[rows, cpu] += 1
        self.nu[rows, cpu] += movable
        self._note_tag(rows, cpu, tag, free)
        self.placed[rows, cpu] += 1.0
        self.ep_arrival[rows, self.k] = self.now
        self.ep_work[rows, self.k] = self.pend_work

    def _update_balance(self, rows: np.ndarray) -> None:
        """Cache, per env, the move the kernel's balancer would make now (if any)."""
        if rows.size == 0:
            return
        load, cap = self._kernel_load(rows)
        r = np.arange(rows.size)
        src_key = np.where(self.nu[rows] > 0, load, -np.inf)
        src = np.argmax(src_key, axis=1)
        dst = np.argmin(load - TIE_EPS * cap, axis=1)
        dst_cap = np.maximum(cap[r, dst], 1e-12)
        after = (self.n[rows, dst] + 1 + self.bg[rows, dst]) / dst_cap
        src_load = src_key[r, src]
        self.bal_ok[rows] = np.isfinite(src_load) & (src != dst) & (after < src_load * (1 - TIE_EPS))
        self.bal_src[rows] = src
        self.bal_dst[rows] = dst

    def _migrate(self, rows: np.ndarray) -> None:
        """Apply the cached balancing move of ``rows`` (all must have one)."""
        if rows.size == 0:
            return
        src, dst = self.bal_src[rows], self.bal_dst[rows]
        used = slice(0, self.hi)
        movable = self.t_active[rows, used] & ~self.t_pinned[rows, used] & (self.t_cpu[rows, used] == src[:, None])
        j = np.argmax(np.where(movable, self.t_arr[rows, used], -np.inf), axis=1)
        old_tag = self.t_tag[rows, j]
        tag = self.V[rows, dst] + (old_tag - self.V[rows, src])
        self.t_tag[rows, j] = tag
        self.t_cpu[rows, j] = dst
        self.n[rows, src] -= 1
        self.nu[rows, src] -= 1
        self.n[rows, dst] += 1
        self.nu[rows, dst] += 1
        was_front = old_tag <= self.min2tag[rows, src]
        self._refresh_min(rows[was_front], src[was_front])
        self._note_tag(rows, dst, tag, j)

    def _note_tag(self, b: np.ndarray, c: np.ndarray, tag: np.ndarray, j: np.ndarray) -> None:
        """Task j with ``tag`` joined CPU c of env b (distinct envs): keep its two smallest tags."""
        first = tag < self.mintag[b, c]
        second = ~first & (tag < self.min2tag[b, c])
        self.min2tag[b[first], c[first]] = self.mintag[b[first], c[first]]
        self.mintag[b[first], c[first]] = tag[first]
        self.minidx[b[first], c[first]] = j[first]
        self.min2tag[b[second], c[second]] = tag[second]

    def _refresh_min(self, b: np.ndarray, c: np.ndarray) -> None:
        """Recompute the earliest-finishing task of CPU c in env b (pairs may repeat an env)."""
        if b.size == 0:
            return
        used = slice(0, self.hi)
        mine = self.t_active[b, used] & (self.t_cpu[b, used] == c[:, None])
        key = np.where(mine, self.t_tag[b, used], np.inf)
        j = np.argmin(key, axis=1)
        r = np.arange(b.size)
        self.minidx[b, c] = j
        self.mintag[b, c] = key[r, j]
        key[r, j] = np.inf
        self.min2tag[b, c] = key.min(axis=1)

    # --------------------------------------------------------------------------------------------
    # time

    def _advance(self, target: np.ndarray, draining: np.ndarray) -> np.ndarray:
        """Run every env to ``target`` (its next arrival, or until empty when draining).

        CPUs only interact through the balancer, so each round lets every CPU run on its own clock
        up to a horizon no balancing tick can precede: the next arrival, or the first tick after
        the balancer could have something to do. At that tick the balancer acts and a new round
        starts. Returns the integral of tasks in the system over the advanced time (task-seconds).
        """
        task_time = np.zeros(self.num_envs)
        R = np.arange(self.num_envs)
        self._update_balance(R)
        while R.size:
            R = R[~draining[R] | (self.n[R].sum(axis=1) > 0)]
            if R.size == 0:
                break
            H = self._horizon(R, target[R])
            self._run_cpus(R, H, task_time)
            ticked = R[H < target[R]]
            self._update_balance(ticked)
            moved = ticked[self.bal_ok[ticked]]
            self._migrate(moved)
            self._update_balance(moved)
            R = ticked
        return task_time

    def _horizon(self, R: np.ndarray, target: np.ndarray) -> np.ndarray:
        """How far the CPUs of R may run on their own clocks: no balancing move can happen before.

        With a move available, that is the next tick. Without one, only a completion can create
        a move, and only on a CPU that then becomes a good enough destination: after its k-th
        completion CPU c would take a task at load (n_c - k + 1 + bg_c) / cap_c, which must fall
        below the busiest other CPU holding an unpinned task (loads only fall until the next
        arrival, so today's value bounds it). Its first two completion times are exact from the
        two smallest tags; a later k is bounded below by the second. The horizon is the first
        tick after the earliest such completion (or the target when none can come). The cached
        balancing move (``bal_ok``) must describe the current state of R.
        """
        now = self.now[R]
        n = self.n[R]
        cap = self.w.capacity[R]
        bg = self.bg[R]
        capeff = self.capeff[R]
        present = cap > 0
        load = np.where(present, (n + bg) / np.where(present, cap, 1.0), -np.inf)
        src_load = np.where(self.nu[R] > 0, load, -np.inf)
        top = np.argmax(src_load, axis=1)
        r = np.arange(R.size)
        best = src_load[r, top]
        src_load[r, top] = -np.inf
        others = np.where(np.arange(self.width)[None, :] == top[:, None], src_load.max(axis=1)[:, None], best[:, None])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            k = np.maximum(np.floor(n + 1 + bg - others * cap - 1e-6) + 1, 1)
            t1 = np.maximum(self.mintag[R] - self.V[R], 0.0) * n / capeff
            t2 = t1 + np.maximum(self.min2tag[R] - self.mintag[R], 0.0) * (n - 1) / capeff
        can = present & (n > 0) & (k <= n)
        enabling = np.where(can, np.where(k <= 1, t1, t2), np.inf).min(axis=1)
        start = np.where(self.bal_ok[R], now, now + enabling)
        interval = self.w.balance_interval[R]
        with np.errstate(invalid="ignore"):
            tick = (np.floor(start / interval + TICK_EPS) + 1.0) * interval
        return np.where(np.isfinite(start), np.minimum(target, tick), target)

    def _run_cpus(self, R: np.ndarray, H: np.ndarray, task_time: np.ndarray) -> None:
        """Every CPU of the envs R runs on its own clock to H[R] (or until it is empty, H infinite)."""
        rows, horizon = R, H
        clock = np.repeat(self.now[R][:, None], self.width, axis=1)
        live = self.w.capacity[R] > 0
        while rows.size:
            n = self.n[rows]
            busy_cpu = n > 0
            capeff = self.capeff[rows]
            V = self.V[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                ttf = np.where(busy_cpu, np.maximum(self.mintag[rows] - V, 0.0) * n / capeff, np.inf)
            gap = horizon[:, None] - clock
            done = live & busy_cpu & (ttf <= gap)
            dt = np.where(done, ttf, np.where(live & np.isfinite(gap), gap, 0.0))
            task_time[rows] += (n * dt).sum(axis=1)
            self.delivered[rows] += (np.where(busy_cpu, capeff, 0.0) * dt).sum(axis=1)
            busy = np.where(busy_cpu, 1.0, self.bg[rows])
            self.util[rows] = busy + (self.util[rows] - busy) * np.exp(-dt / self._window[rows])
            with np.errstate(divide="ignore", invalid="ignore"):
                self.V[rows] = V + np.where(busy_cpu, capeff / n, 0.0) * dt
            clock = clock + dt
            b, c = np.nonzero(done)
            if b.size:
                self._complete(rows[b], c, clock[b, c])
            keep = done.any(axis=1)
            rows, horizon, clock, live = rows[keep], horizon[keep], clock[keep], done[keep]
        self.now[R] = np.where(np.isfinite(H), H, self.now[R])

    def _complete(self, b: np.ndarray, c: np.ndarray, t: np.ndarray) -> None:
        """The earliest-finishing task of each (env b, CPU c) pair exits at time t."""
        j = self.minidx[b, c]
        self.t_active[b, j] = False
        self.n[b, c] -= 1
        self.nu[b, c] -= ~self.t_pinned[b, j]
        self.ep_exit[b, self.t_id[b, j]] = t
        self._refresh_min(b, c)

    # --------------------------------------------------------------------------------------------
    # observation and episode outcomes

    def _work_left(self) -> np.ndarray:
        """Per CPU: sum of max(predicted work - service received, 0) over its tasks (the host's estimate)."""
        B, C = self.num_envs, self.width
        b, j = np.nonzero(self.t_active[:, : self.hi])
        cpu = self.t_cpu[b, j]
        received = self.t_work[b, j] - (self.t_tag[b, j] - self.V[b, cpu])
        est = np.maximum(self.t_pred[b, j] - received, 0.0)
        return np.bincount(b * C + cpu, weights=est, minlength=B * C).reshape(B, C)

    def _exact_state(self) -> dict[str, np.ndarray]:
        """What an oracle would know and a host cannot: each task's CPU (-1: no task in that table
        column) and exact remaining work, and every CPU's capacity net of its neighbour."""
        used = slice(0, self.hi)
        active = self.t_active[:, used]
        cpu = self.t_cpu[:, used]
        remaining = self.t_tag[:, used] - np.take_along_axis(self.V, cpu, axis=1)
        return {
            "task_cpu": np.where(active, cpu, -1),
            "task_remaining": np.where(active, remaining, 0.0),
            "capacity_now": self.capeff.copy(),
        }

    def _observe(self, trial_start: np.ndarray, episode_start: np.ndarray):
        B, C = self.num_envs, self.width

        def pad(x: np.ndarray) -> np.ndarray:
            out = np.zeros((B, spaces.MAX_SLOTS), dtype=np.float64)
            out[:, :C] = x
            return out

        present = self.w.capacity > 0
        raw = spaces.RawObservation(
            slot_mask=pad(present).astype(bool),
            capacity=pad(self.w.capacity),
            runnable=pad(self.n),
            util=pad(self.util),
            placed=pad(self.placed),
            work_left=pad(self._work_left()),
            task_work=self.pend_pred.copy(),
            task_unknown=self.pend_unknown.copy(),
            since_last=self.now - self.last,
            time_unit=self.w.mean_work.copy(),
            kernel_allowed=np.ones(B, dtype=bool),
            extras={"true_work": self.pend_work.copy(), "time": self.now.copy(),
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

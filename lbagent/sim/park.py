"""Park's ``load_balance`` environment (the paper's benchmark): exact, and speaking the contract.

Three environments, one dynamics:

- :class:`ParkLoadBalanceEnv`: a single ``gymnasium.Env``, a plain event heap written to be read
  next to Park's code. ``reset(seed=k)`` is Park's ``env.seed(k); env.reset()``; observations
  (Park's mixed units), rewards, episode length and termination match Park step for step. It is
  also the pure-Python reference that ``lbagent bench sim`` measures the vector env against.
- :class:`ParkLoadBalanceVectorEnv`: B exact Park envs in one numpy engine
  (:mod:`lbagent.sim.park_engine`); env ``i`` of a vector env seeded ``s`` is Park seeded ``s + i``.
- :class:`ParkContractVectorEnv`: the same engine behind the contract (:mod:`lbagent.spaces`),
  for the agent, ``lbagent eval`` and the heuristics. Park's raw observation stays in
  ``info["raw"].extras["park_obs"]``.

Both vector envs reset every env in the same step when an episode ends (gymnasium's
``AutoresetMode.SAME_STEP``): with Park every episode has exactly ``num_stream_jobs`` decisions,
so all envs end together. An ended episode's streams continue, as Park's ``reset()`` without a
new seed does.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces as gspaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from lbagent import spaces
from lbagent.sim.base import EpisodeStats
from lbagent.sim.park_engine import PARK_DEFAULT_SEED, ParkBatch, ParkParams

__all__ = [
    "PARK_TIME_UNIT",
    "ParkParams",
    "ParkLoadBalanceEnv",
    "ParkLoadBalanceVectorEnv",
    "ParkContractVectorEnv",
]

PARK_TIME_UNIT = 100.0
"""Park time units per contract time unit. Park's jobs take ~100-2000 units and wait ~1000 (mean
completion time ~840 for least-load); dividing by 100 puts times, work and rewards in the same
numeric range as the host dynamics' seconds before ``encode`` takes the symlog."""


def _observation_space(p: ParkParams) -> gspaces.Box:
    # Park declares Box(0, load_balance_obs_high) of float32, but returns int/float64 arrays; float64
    # keeps every value exact whatever obs_high is.
    return gspaces.Box(low=0.0, high=p.obs_high, shape=(p.num_servers + 1,), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# The single env: an event heap, as Park runs it.


class _Job:
    __slots__ = ("size", "arrival", "finish", "server")

    def __init__(self, size: int, arrival: int) -> None:
        self.size = size
        self.arrival = arrival
        self.finish = -1  # set when the job starts on its server
        self.server: int = -1


class ParkLoadBalanceEnv(gym.Env):
    """Park's load balancer, one env: 10 FIFO servers, Pareto job sizes, Poisson arrivals.

    Action: the server of the incoming job. Observation: each server's load (queued job *sizes*
    plus the running job's remaining *time*: Park's mixed units) and the incoming job's size,
    clipped at ``obs_high``. Reward: minus (elapsed time x jobs in the system) since the previous
    decision. The episode ends when all ``num_stream_jobs`` jobs are done; ``info["mean_jct"]``
    then holds the mean job completion time.

    Unseeded, it behaves like a freshly constructed Park env: seeded 42, with one episode already
    started (Park's constructor calls ``reset``), so ``reset()`` continues that stream.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, **park_params: Any) -> None:
        self.params = ParkParams(**park_params)
        self.observation_space = _observation_space(self.params)
        self.action_space = gspaces.Discrete(self.params.num_servers)
        self._rng = np.random.RandomState(PARK_DEFAULT_SEED)
        self._start_episode()

    # Park's helpers, one per method of its env and server classes.

    def _push(self, time: int, item: int | _Job) -> None:
        heapq.heappush(self._timeline, (time, next(self._counter), item))

    def _draw_next_job(self) -> None:
        if self._jobs_left > 0:
            p = self.params
            size = int((self._rng.pareto(p.job_size_pareto_shape) + 1) * p.job_size_pareto_scale)
            gap = int(self._rng.exponential(p.job_interval))
            self._push(self._now + gap, size)
            self._jobs_left -= 1

    def _process(self, server: int) -> None:
        """Start the head of the server's queue if the server is idle or its job has finished."""
        current = self._current[server]
        queue = self._queues[server]
        if (current is None or current.finish <= self._now) and queue:
            job = queue.popleft()
            job.finish = self._now + int(job.size / self.params.service_rates[server])
            self._current[server] = job
            self._push(job.finish, job)

    def _start_episode(self) -> None:
        n = self.params.num_servers
        self._timeline: list[tuple[int, int, int | _Job]] = []
        self._counter = itertools.count()
        self._queues: list[deque[_Job]] = [deque() for _ in range(n)]
        self._current: list[_Job | None] = [None] * n
        self._finished: list[_Job] = []
        self._jobs_left = self.params.num_stream_jobs
        self._now = 0
        self._draw_next_job()
        self._now, _, size = heapq.heappop(self._timeline)
        assert isinstance(size, int)  # the only entry yet is the first arrival
        self._incoming: _Job | None = _Job(size, self._now)

    def _observe(self) -> np.ndarray:
        high = self.params.obs_high
        loads = []
        for queue, current in zip(self._queues, self._current, strict=True):
            load = sum(job.size for job in queue)
            if current is not None:
                load += current.finish - self._now
            loads.append(min(load, high))
        loads.append(0 if self._incoming is None else min(self._incoming.size, high))
        return np.array(loads, dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)  # gymnasium's bookkeeping; Park's draws come from self._rng
        if seed is not None:
            self._rng = np.random.RandomState(seed)
        self._start_episode()
        return self._observe(), {"curr_time": self._now}

    def step(self, action):
        if self._incoming is None:
            raise RuntimeError("park: the episode has ended; call reset()")
        server = int(action)
        if not 0 <= server < self.params.num_servers:
            raise ValueError(f"park: action must lie in [0, {self.params.num_servers}), got {action!r}")
        job, self._incoming = self._incoming, None
        job.server = server
        self._queues[server].append(job)
        self._process(server)
        self._draw_next_job()
        reward = 0
        while self._timeline:
            time, _, item = heapq.heappop(self._timeline)
            in_system = sum(len(q) for q in self._queues) + sum(c is not None for c in self._current)
            reward -= (time - self._now) * in_system
            self._now = time
            if isinstance(item, _Job):
                self._finished.append(item)
                if self._current[item.server] is item:
                    self._current[item.server] = None
                self._process(item.server)
            else:
                self._incoming = _Job(item, time)
                break
        terminated = not self._timeline and self._incoming is None
        info: dict[str, Any] = {"curr_time": self._now}
        if terminated:
            info["mean_jct"] = float(np.mean([j.finish - j.arrival for j in self._finished]))
        return self._observe(), float(reward), terminated, False, info


# --------------------------------------------------------------------------------------------
# Vector envs on the numpy engine


def _seed_list(seed: int | Sequence[int], num_envs: int) -> list[int]:
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(num_envs)]
    seeds = [int(s) for s in seed]
    if len(seeds) != num_envs:
        raise ValueError(f"park: {len(seeds)} seeds given for {num_envs} envs")
    return seeds


class _ParkVector(VectorEnv):
    """Seeding, episodes and same-step autoreset around the engine; subclasses say what is observed."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, seed: int | Sequence[int], params: ParkParams) -> None:
        if num_envs < 1:
            raise ValueError(f"park: num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.params = params
        self.engine = ParkBatch(params, num_envs)
        self._initial_seeds = _seed_list(seed, num_envs)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        e = self.engine
        if seed is not None:
            e.seed(_seed_list(seed, self.num_envs))
        elif not e.rngs:
            e.seed(self._initial_seeds)
        elif e.active:
            e.rewind_to_park_position()
        e.new_episode()
        self._on_reset()
        return self._observe()

    def step(self, actions):
        actions = self._check_actions(actions)
        park_reward, ended = self.engine.step(actions)
        terminated = np.full(self.num_envs, ended)
        reward = self._reward(park_reward)
        final: dict[str, Any] = {}
        if ended:
            final = self._episode_end()
            self.engine.new_episode()
        obs, info = self._observe()
        info.update(final)
        return obs, reward, terminated, np.zeros(self.num_envs, dtype=bool), info

    def _jct(self) -> np.ndarray:
        """Completion time of every job of the episode that just ended, (B, N), Park time units."""
        e = self.engine
        return (e.job_finish - e.arrivals).astype(np.float64)

    # What the subclasses define: their actions, rewards, observations and episode summaries.
    def _on_reset(self) -> None:
        pass

    def _check_actions(self, actions) -> np.ndarray:
        raise NotImplementedError

    def _reward(self, park_reward: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _episode_end(self) -> dict[str, Any]:
        raise NotImplementedError

    def _observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        raise NotImplementedError


class ParkLoadBalanceVectorEnv(_ParkVector):
    """B exact Park envs: obs (B, num_servers + 1) as Park's, Park's rewards, Discrete actions.

    Env ``i`` uses Park's seed ``seed + i`` (``reset(seed=s)`` reseeds them ``s + i``; a list gives
    each env its seed). When the episodes end, ``info`` holds ``mean_jct`` (B,) and ``final_obs``
    (Park's observation after its last step) with gymnasium's ``_mean_jct``/``_final_obs`` masks.
    """

    def __init__(self, num_envs: int = 1, seed: int | Sequence[int] = 0, **park_params: Any) -> None:
        super().__init__(num_envs, seed, ParkParams(**park_params))
        self.single_observation_space = _observation_space(self.params)
        self.single_action_space = gspaces.Discrete(self.params.num_servers)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def _check_actions(self, actions) -> np.ndarray:
        a = np.asarray(actions, dtype=np.int64).reshape(-1)
        if a.shape != (self.num_envs,):
            raise ValueError(f"park: expected {self.num_envs} actions, got shape {np.shape(actions)}")
        if a.min() < 0 or a.max() >= self.params.num_servers:
            bad = a[(a < 0) | (a >= self.params.num_servers)]
            raise ValueError(f"park: actions must lie in [0, {self.params.num_servers}), got {bad.tolist()}")
        return a

    def _reward(self, park_reward: np.ndarray) -> np.ndarray:
        return park_reward

    def _episode_end(self) -> dict[str, Any]:
        every = np.ones(self.num_envs, dtype=bool)
        return {
            "final_obs": self.engine.park_obs(),
            "_final_obs": every,
            "mean_jct": self._jct().mean(axis=1),
            "_mean_jct": every,
        }

    def _observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        return self.engine.park_obs(), {"curr_time": self.engine.now.copy()}


class ParkContractVectorEnv(_ParkVector):
    """Park's dynamics speaking the contract (see :mod:`lbagent.sim.base`).

    Mapping: slot = server, capacity = service rate (work per Park time unit), runnable = jobs at
    the server (queued + running), util = busy fraction since the previous decision (when no time
    passed: whether it is busy now), placed = jobs placed there since the previous decision (the
    previous action), work_left = queued sizes + remaining service time x rate (true work, unlike
    Park's mixed-unit load), task_work = the incoming job's size (known: task_unknown is False),
    since_last = time since the previous decision. ``KERNEL`` is not allowed (Park has no kernel
    balancer); choosing it, or a server that does not exist, raises ``ValueError``.

    Rewards are ``spaces.reward`` of Park's task-time integral with ``time_unit`` (default
    :data:`PARK_TIME_UNIT`); episode stats report completion times in Park time units and slowdown
    as completion time / (size / the fastest rate). Trials are ``episodes_per_trial`` consecutive
    episodes of each env's stream.
    """

    def __init__(self, num_envs: int = 1, seed: int | Sequence[int] = 0, episodes_per_trial: int = 1,
                 time_unit: float = PARK_TIME_UNIT, **park_params: Any) -> None:
        params = ParkParams(**park_params)
        if params.num_servers > spaces.MAX_SLOTS:
            raise ValueError(f"park: the contract has {spaces.MAX_SLOTS} slots, got {params.num_servers} servers")
        if episodes_per_trial < 1:
            raise ValueError(f"park: episodes_per_trial must be >= 1, got {episodes_per_trial}")
        if not time_unit > 0:
            raise ValueError(f"park: time_unit must be > 0, got {time_unit}")
        super().__init__(num_envs, seed, params)
        self.episodes_per_trial = episodes_per_trial
        self.time_unit = float(time_unit)
        self.single_observation_space, self.single_action_space = spaces.gym_spaces()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        B, S = num_envs, params.num_servers
        self._slot_mask = np.zeros((B, spaces.MAX_SLOTS), dtype=bool)
        self._slot_mask[:, :S] = True
        self._capacity = np.zeros((B, spaces.MAX_SLOTS))
        self._capacity[:, :S] = params.service_rates
        self._rates = np.asarray(params.service_rates)
        self._max_rate = params.max_rate
        self._mask = np.zeros((B, spaces.N_ACTIONS), dtype=bool)
        self._mask[:, :S] = True

    def _on_reset(self) -> None:
        B, S = self.num_envs, self.params.num_servers
        self._episodes_in_trial = 0
        self._trial_start = True
        self._prev_time = np.zeros(B, dtype=np.int64)
        self._placed = np.zeros((B, S))
        self._return = np.zeros(B)

    def _check_actions(self, actions) -> np.ndarray:
        a = spaces.validate_actions(np.asarray(actions).reshape(-1), self._mask)
        self._placed = np.zeros((self.num_envs, self.params.num_servers))
        self._placed[np.arange(self.num_envs), a] = 1.0
        return a

    def _reward(self, park_reward: np.ndarray) -> np.ndarray:
        reward = spaces.reward(-park_reward, self.time_unit)
        self._return += reward
        return reward

    def _episode_end(self) -> dict[str, Any]:
        e = self.engine
        jct = self._jct()
        slowdown = jct / (e.sizes / self._max_rate)
        stats = [EpisodeStats(jct[i], slowdown[i], float(self._return[i])) for i in range(self.num_envs)]
        self._return = np.zeros(self.num_envs)
        self._prev_time = np.zeros(self.num_envs, dtype=np.int64)
        self._placed = np.zeros_like(self._placed)
        self._episodes_in_trial += 1
        self._trial_start = self._episodes_in_trial % self.episodes_per_trial == 0
        return {"episode": stats}

    def _observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        raw = self._raw()
        B = self.num_envs
        starting = np.full(B, self.engine.k == 0)
        info = {
            "raw": raw,
            "action_mask": spaces.action_mask(raw),
            "episode_start": starting,
            "trial_start": starting & self._trial_start,
        }
        self._trial_start = False
        return spaces.encode(raw), info

    def _raw(self) -> spaces.RawObservation:
        e, B, S = self.engine, self.num_envs, self.params.num_servers
        now = e.now
        remaining, queued_size = e.server_state()
        queued = (e.n_assigned - e.n_started).reshape(B, S)
        since = now - self._prev_time
        # A FIFO server never idles while it has work, and no job was assigned since the previous
        # decision but the one placed at it: the server was busy from then until its last job's
        # finish (or now).
        busy = np.clip(e.last_fin.reshape(B, S) - self._prev_time[:, None], 0, since[:, None])
        util = np.where(since[:, None] > 0, busy / np.maximum(since, 1)[:, None], (remaining > 0).astype(np.float64))
        self._prev_time = now.copy()

        def pad(x: np.ndarray) -> np.ndarray:
            out = np.zeros((B, spaces.MAX_SLOTS))
            out[:, :S] = x
            return out

        return spaces.RawObservation(
            slot_mask=self._slot_mask,
            capacity=self._capacity,
            runnable=pad(queued + (remaining > 0)),
            util=pad(util),
            placed=pad(self._placed),
            work_left=pad(queued_size + remaining * self._rates),
            task_work=e.incoming_size.astype(np.float64),
            task_unknown=np.zeros(B, dtype=bool),
            since_last=since.astype(np.float64),
            time_unit=self.time_unit,
            kernel_allowed=False,
            extras={"park_obs": e.park_obs()},
        )

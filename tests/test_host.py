"""Host dynamics: invariants of processor sharing, the kernel model, the contract's flow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbagent import spaces
from lbagent.sim.host import HostVectorEnv
from lbagent.sim.scenarios import load_suite, make_vector_env
from lbagent.sim.single import ContractEnv
from lbagent.sim.workload import Fixed, WorkloadSpace

FAST = settings(max_examples=25, deadline=None)


@st.composite
def traces(draw, max_cpus: int = 4, max_tasks: int = 30):
    """A small recorded workload and one pinned slot per task."""
    cpus = draw(st.integers(1, max_cpus))
    caps = draw(st.lists(st.floats(0.25, 2.0), min_size=cpus, max_size=cpus))
    n = draw(st.integers(1, max_tasks))
    gaps = draw(st.lists(st.floats(0.0, 0.05), min_size=n, max_size=n))
    works = draw(st.lists(st.floats(0.001, 0.2), min_size=n, max_size=n))
    slots = draw(st.lists(st.integers(0, cpus - 1), min_size=n, max_size=n))
    return np.cumsum(gaps), np.array(works), tuple(caps), np.array(slots)


def replay(arrival, work, caps, actions) -> tuple[list[float], object]:
    """One episode of a recorded workload with the given actions; returns rewards and EpisodeStats."""
    env = HostVectorEnv.from_trace(arrival, work, tuple(caps))
    env.reset(seed=0)
    rewards = []
    for a in actions:
        _, r, term, _, info = env.step(np.array([a]))
        rewards.append(float(r[0]))
        if term[0]:
            return rewards, info["episode"][0]
    raise AssertionError("episode did not end after its tasks")


def exit_times(stats, arrival: np.ndarray, unit: float) -> np.ndarray:
    return arrival + stats.jct * unit


def busy_period_end(arrival: np.ndarray, work: np.ndarray, capacity: float) -> float:
    """When a work-conserving CPU of this capacity is next idle after the last arrival (Lindley)."""
    backlog, last = 0.0, arrival[0]
    for t, w in zip(arrival, work, strict=True):
        backlog = max(backlog - (t - last), 0.0) + w / capacity
        last = t
    return last + backlog


@FAST
@given(traces())
def test_work_is_conserved_per_cpu(trace):
    """A busy CPU delivers exactly its capacity: it empties when its work / capacity is done."""
    arrival, work, caps, slots = trace
    _, stats = replay(*trace)
    exits = exit_times(stats, arrival, work.mean())
    for cpu, cap in enumerate(caps):
        mine = slots == cpu
        if mine.any():
            assert exits[mine].max() == pytest.approx(busy_period_end(arrival[mine], work[mine], cap), rel=1e-9)


@FAST
@given(traces())
def test_rewards_sum_to_minus_total_sojourn(trace):
    rewards, stats = replay(*trace)
    assert sum(rewards) == pytest.approx(-stats.jct.sum(), rel=1e-9, abs=1e-9)
    assert stats.episode_return == pytest.approx(sum(rewards), rel=1e-12, abs=1e-12)


@FAST
@given(traces(), st.floats(0.1, 0.95))
def test_a_slower_cpu_never_finishes_the_same_work_sooner(trace, factor):
    arrival, work, caps, _ = trace
    everything_on_0 = np.zeros(arrival.size, dtype=int)
    _, fast_stats = replay(arrival, work, (caps[0],), everything_on_0)
    _, slow_stats = replay(arrival, work, (caps[0] * factor,), everything_on_0)
    assert np.all(slow_stats.jct >= fast_stats.jct * (1 - 1e-9))
    assert slow_stats.jct.sum() > fast_stats.jct.sum()


SHORT = 40


def one_short_train_episode(seed: int, num_envs: int = 16) -> tuple[HostVectorEnv, dict]:
    """The training distribution with SHORT-task episodes and random actions (KERNEL and BACKGROUND
    included), stepped until every env has finished its first episode (without reviews they all end at
    the same step; tests/test_share_v2.py checks the same invariants with reviews)."""
    space = load_suite("train").scenarios[0].space.with_overrides({"tasks": Fixed(SHORT), "max_reviews": Fixed(0)})
    env = HostVectorEnv(num_envs, seed=seed, space=space, episodes_per_trial=2)
    _, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(SHORT):
        mask = info["action_mask"]
        _, _, term, _, info = env.step(np.argmax(rng.random(mask.shape) * mask, axis=1))
    assert term.all()
    return env, info


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_work_done_equals_capacity_time_of_busy_cpus(seed):
    """With noisy neighbours, KERNEL tasks and their migrations: no work created or lost."""
    env, _ = one_short_train_episode(seed)
    np.testing.assert_allclose(env.delivered, env.ep_work[:, :SHORT].sum(axis=1), rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_no_task_finishes_before_its_work_at_full_capacity(seed):
    _, info = one_short_train_episode(seed)
    for stats in info["episode"]:
        assert stats.slowdown.min() >= 1 - 1e-9
        assert np.isfinite(stats.jct).all()


@FAST
@given(
    st.lists(st.floats(0.25, 2.0), min_size=2, max_size=6),
    st.lists(st.integers(0, 5), min_size=0, max_size=12),
)
def test_kernel_places_on_the_least_loaded_cpu(caps, pinned):
    """Long tasks arriving together: the KERNEL task goes to the lowest runnable/capacity CPU."""
    pinned = [p % len(caps) for p in pinned]
    n = len(pinned) + 2  # the KERNEL task is not the episode's last (that step resets)
    env = HostVectorEnv.from_trace(np.arange(n) * 1e-6, np.full(n, 100.0), tuple(caps))
    _, info = env.reset(seed=0)
    for slot in pinned:
        _, _, _, _, info = env.step(np.array([slot]))
    before = info["raw"].runnable[0, : len(caps)].copy()
    load = before / np.array(caps)
    best = np.flatnonzero(load == load.min())
    expected = best[np.argmax(np.array(caps)[best])]
    env.step(np.array([spaces.KERNEL]))
    after = env.n[0, : len(caps)].sum(axis=1)
    assert np.flatnonzero(after - before).tolist() == [expected]


def test_pinned_tasks_never_move_while_kernel_tasks_are_balanced():
    scenario = load_suite("train").scenarios[0]
    env = make_vector_env(scenario, 32, 7)
    _, info = env.reset(seed=7)
    rng = np.random.default_rng(7)
    where_pinned: dict[tuple[int, int], int] = {}
    kernel_moves = 0
    kernel_seen: dict[tuple[int, int], int] = {}
    for _ in range(600):
        mask = info["action_mask"].copy()
        actions = np.where(rng.random(32) < 0.5, spaces.KERNEL, np.argmax(rng.random(mask.shape) * mask, axis=1))
        _, _, term, _, info = env.step(actions)
        b, j = np.nonzero(env.t_active)
        keys = zip(b.tolist(), env.t_id[b, j].tolist(), env.t_cpu[b, j].tolist(), env.t_pinned[b, j].tolist(), strict=True)
        for row, tid, cpu, pinned in keys:
            store = where_pinned if pinned else kernel_seen
            previous = store.setdefault((row, tid), cpu)
            if pinned:
                assert previous == cpu, f"pinned task {tid} of env {row} moved from CPU {previous} to {cpu}"
            elif previous != cpu:
                kernel_moves += 1
                store[(row, tid)] = cpu
        for row in np.flatnonzero(term):  # task ids restart with the next episode
            for store in (where_pinned, kernel_seen):
                for key in [k for k in store if k[0] == row]:
                    del store[key]
    assert kernel_moves > 0, "the balancer never moved a KERNEL task: the test would prove nothing"


def test_trial_and_episode_flags():
    space = WorkloadSpace({"tasks": Fixed(5), "cpus": Fixed(2)})
    env = HostVectorEnv(3, seed=1, space=space, episodes_per_trial=4)
    _, info = env.reset(seed=1)
    assert info["trial_start"].all() and info["episode_start"].all()
    for step in range(1, 41):
        _, _, term, _, info = env.step(np.full(3, spaces.KERNEL))
        assert term.all() == (step % 5 == 0)
        assert info["episode_start"].all() == (step % 5 == 0)
        assert info["trial_start"].all() == (step % 20 == 0)
        assert ("episode" in info) == (step % 5 == 0)


def test_same_seed_same_workload_whatever_the_policy():
    """Arrivals and sizes do not depend on actions: policies are compared on the same tasks (step by
    step here, without reviews; with them, tests/test_share_v2.py compares arrival by arrival)."""
    scenario = load_suite("train").scenarios[0]
    space = scenario.space.with_overrides({"max_reviews": Fixed(0)})
    seen = []
    for policy in (lambda m: np.full(m.shape[0], spaces.KERNEL), lambda m: np.zeros(m.shape[0], dtype=int)):
        env = HostVectorEnv(8, seed=3, space=space, episodes_per_trial=scenario.episodes_per_trial)
        _, info = env.reset(seed=3)
        works, times = [], []
        for _ in range(300):
            _, _, _, _, info = env.step(policy(info["action_mask"]))
            works.append(info["raw"].extras["true_work"])
            times.append(info["raw"].extras["time"])
        seen.append((np.array(works), np.array(times)))
    np.testing.assert_array_equal(seen[0][0], seen[1][0])
    np.testing.assert_array_equal(seen[0][1], seen[1][1])


def test_observation_follows_the_contract():
    scenario = load_suite("train").scenarios[0]
    env = make_vector_env(scenario, 64, 0)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, spaces.OBS_DIM) and obs.dtype == np.float32
    for _ in range(50):
        obs, rew, _, _, info = env.step(np.full(64, spaces.KERNEL))
    raw = info["raw"]
    np.testing.assert_array_equal(obs, spaces.encode(raw))
    np.testing.assert_array_equal(info["action_mask"], spaces.action_mask(raw))
    cpus = env.w.cpus
    assert (raw.slot_mask.sum(axis=1) == cpus).all()
    assert (raw.runnable[~raw.slot_mask] == 0).all() and (raw.util >= 0).all() and (raw.util <= 1 + 1e-12).all()
    assert np.all(rew <= 0) and env.observation_space.shape == (64, spaces.OBS_DIM)


def test_masked_action_is_refused():
    env = HostVectorEnv.from_trace([0.0, 0.1], [0.01, 0.01], (1.0, 1.0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="masked actions"):
        env.step(np.array([5]))


def test_task_table_grows_under_a_pile_up():
    n = 200  # all in the system at once: the 32-task table must double three times
    rewards, stats = replay(np.arange(n) * 1e-4, np.full(n, 0.5), (1.0,), np.zeros(n, dtype=int))
    assert stats.jct.size == n and np.isfinite(stats.jct).all()
    assert sum(rewards) == pytest.approx(-stats.jct.sum(), rel=1e-9)


def test_trace_replay_arrives_on_time():
    arrival = np.array([0.5, 0.6, 0.9, 1.4])
    env = HostVectorEnv.from_trace(arrival, [0.2, 0.1, 0.3, 0.2], (1.0, 0.5), predicted=np.array([0.2, 0.2, 0.2, 0.2]))
    _, info = env.reset(seed=0)
    times = [info["raw"].extras["time"][0]]
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([0]))
        times.append(info["raw"].extras["time"][0])
        assert not info["raw"].task_unknown[0] and info["raw"].task_work[0] == 0.2
    np.testing.assert_allclose(times, arrival - arrival[0])  # the recording's clock starts at 0
    with pytest.raises(ValueError, match="ascending"):
        HostVectorEnv.from_trace([1.0, 0.5], [0.1, 0.1], (1.0,))


def test_contract_env_keeps_the_trial_flowing():
    space = WorkloadSpace({"tasks": Fixed(4), "cpus": Fixed(2)})
    env = ContractEnv(HostVectorEnv(1, seed=0, space=space, episodes_per_trial=2))
    obs, info = env.reset(seed=0)
    assert obs.shape == (spaces.OBS_DIM,) and info["trial_start"]
    for step in range(1, 9):
        obs, reward, terminated, truncated, info = env.step(spaces.KERNEL)
        assert terminated == (step % 4 == 0) and not truncated and reward <= 0
        if terminated:
            assert info["episode_stats"].jct.size == 4
            again, again_info = env.reset()
            np.testing.assert_array_equal(again, obs)
            assert again_info["trial_start"] == (step % 8 == 0)
    assert env.action_masks()[spaces.KERNEL] and env.action_masks()[:2].all() and not env.action_masks()[2]

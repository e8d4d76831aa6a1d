"""Park's load_balance dynamics: hand-computed episodes, vector == single step for step, invariants,
and the contract-speaking variant."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbagent import spaces
from lbagent.sim.park import (
    PARK_TIME_UNIT,
    ParkContractVectorEnv,
    ParkLoadBalanceEnv,
    ParkLoadBalanceVectorEnv,
    ParkParams,
)
from lbagent.sim.park_engine import ParkBatch, jobs_from_draws

TWO_SERVERS = dict(num_servers=2, service_rates=(0.5, 1.0), num_stream_jobs=4)
ONE_FAST_SERVER = dict(num_servers=1, service_rates=(2.0,), num_stream_jobs=4)
# Small jobs, arrivals 0-3 apart, uneven rates: ties between arrivals and completions everywhere.
TIES = dict(num_servers=3, service_rates=(0.01, 1.0, 0.5), job_interval=3, job_size_pareto_scale=2.0,
            num_stream_jobs=150)


def run_single(env: ParkLoadBalanceEnv, actions, seed: int):
    obs, _ = env.reset(seed=seed)
    trace = [(obs, None, False)]
    for a in actions:
        obs, reward, terminated, _, info = env.step(a)
        trace.append((obs, reward, terminated))
    return trace, info


def test_golden_two_servers_seed0():
    # RandomState(0): pareto(1.5), exponential(55) per job -> (size, gap) = (169, 69), (185, 43),
    # (144, 57), (146, 122); arrivals 69, 112, 169, 291. Rates 0.5 and 1.0.
    trace, info = run_single(ParkLoadBalanceEnv(**TWO_SERVERS), [0, 0, 1, 1], seed=0)
    expected = [
        # t=69: servers idle, incoming size 169.
        ([0, 0, 169], None, False),
        # job0 -> server0: int(169/0.5)=338, ends 69+338=407. Next arrival at 112:
        # reward -(112-69)*1 = -43; load0 = 407-112 = 295 (remaining *time*).
        ([295, 0, 185], -43.0, False),
        # job1 -> server0, queued behind job0. At 169: reward -(169-112)*2 = -114;
        # load0 = queued size 185 + remaining time 407-169=238 = 423 (Park's mixed units).
        ([423, 0, 144], -114.0, False),
        # job2 -> server1: 144/1.0, ends 169+144=313. At 291: reward -(291-169)*3 = -366;
        # load0 = 185 + (407-291) = 301, load1 = 313-291 = 22.
        ([301, 22, 146], -366.0, False),
        # job3 -> server1, queued. Drain: 313 job2 ends, job3 starts (ends 313+146=459): -(22*4)=-88;
        # 407 job0 ends, job1 starts (ends 407+370=777): -(94*3)=-282; 459: -(52*2)=-104;
        # 777: -(318*1)=-318. Total -792; Park observes zeros at the end.
        ([0, 0, 0], -792.0, True),
    ]
    for (obs, reward, done), (e_obs, e_reward, e_done) in zip(trace, expected, strict=True):
        assert obs.tolist() == e_obs
        assert reward == e_reward and done == e_done
    # JCTs 338, 665, 144, 168: mean 328.75, and the rewards sum to minus their total (1315).
    assert info["mean_jct"] == 328.75
    assert sum(r for _, r, _ in trace[1:]) == -1315


def test_golden_tie_arrival_before_completion_pushed_later():
    # RandomState(416), one server of rate 2.0: sizes 137, 126, 313, 128; arrivals 15, 25, 31, 146;
    # service times int(size/2): 68, 63, 156, 64.
    trace, info = run_single(ParkLoadBalanceEnv(**ONE_FAST_SERVER), [0, 0, 0, 0], seed=416)
    expected = [
        ([0, 137], None),
        # job0 runs 15..83. At 25: -(10*1); load 83-25 = 58.
        ([58, 126], -10.0),
        # job1 queued. At 31: -(6*2); load = 126 + (83-31) = 178.
        ([178, 313], -12.0),
        # job2 queued; the arrival at 146 is pushed now. At 83 job0 ends: -(52*3) = -156, and job1
        # starts, ending at 83+63 = 146, pushed *after* the arrival. So at 146 the arrival pops
        # first: -(63*2) = -126; job1 still counts as current (146-146 = 0) and job2 as queued
        # with its size: load 313 (the other order would show job2 running: 156).
        ([313, 128], -282.0),
        # job3: job1 has finished (not popped), so process() starts job2 now (146..302), job3 waits.
        # Drain: 146 job1 pops (0); 302: -(156*2) = -312, job3 runs to 366: -(64*1). Total -376.
        ([0, 0], -376.0),
    ]
    for (obs, reward, _), (e_obs, e_reward) in zip(trace, expected, strict=True):
        assert obs.tolist() == e_obs and reward == e_reward
    assert trace[-1][2] is True
    assert info["mean_jct"] == (68 + 121 + 271 + 220) / 4


def test_draws_match_parks_scalar_calls():
    params = ParkParams()
    for seed in (0, 7, 123456):
        rng = np.random.RandomState(seed)
        expected = [(int((rng.pareto(1.5) + 1) * 100.0), int(rng.exponential(55))) for _ in range(20_000)]
        sizes, gaps = jobs_from_draws(np.random.RandomState(seed).random_sample(40_000), params)
        assert list(zip(sizes.tolist(), gaps.tolist(), strict=True)) == expected


def test_draws_recompute_values_on_an_integer_boundary_with_the_c_library():
    # u chosen so that 55 * -log(1 - u) is 110 up to rounding: the guard recomputes it exactly.
    params = ParkParams()
    u = np.array([0.5, -np.expm1(-2.0)])
    _, gaps = jobs_from_draws(u, params)
    assert gaps.tolist() == [int(55 * -math.log(1.0 - float(u[1])))]


def lockstep(params: dict, num_envs: int, episodes: int, seed: int, policy: str) -> int:
    """Step a vector env and ``num_envs`` single envs together; returns the steps compared."""
    vec = ParkLoadBalanceVectorEnv(num_envs=num_envs, seed=seed, **params)
    singles = [ParkLoadBalanceEnv(**params) for _ in range(num_envs)]
    obs, _ = vec.reset()
    assert np.array_equal(obs, [s.reset(seed=seed + i)[0] for i, s in enumerate(singles)])
    rng = np.random.default_rng(seed)
    steps = 0
    for _ in range(episodes):
        for _ in range(vec.params.num_stream_jobs):
            if policy == "random":
                actions = rng.integers(0, vec.params.num_servers, num_envs)
            else:
                actions = np.argmin(obs[:, :-1], axis=1)
            obs, reward, terminated, truncated, info = vec.step(actions)
            results = [s.step(int(a)) for s, a in zip(singles, actions, strict=True)]
            assert np.array_equal(reward, [r[1] for r in results])
            assert np.array_equal(terminated, [r[2] for r in results]) and not truncated.any()
            if terminated.any():
                assert np.array_equal(info["final_obs"], [r[0] for r in results])
                assert np.array_equal(info["mean_jct"], [r[4]["mean_jct"] for r in results])
                expected_obs = [s.reset()[0] for s in singles]  # Park's reset() continues the stream
            else:
                expected_obs = [r[0] for r in results]
            assert np.array_equal(obs, expected_obs)
            steps += 1
    return steps


@pytest.mark.parametrize("policy", ["random", "least_load"])
def test_vector_equals_single_with_autoresets(policy):
    assert lockstep(dict(num_stream_jobs=300), num_envs=4, episodes=3, seed=11, policy=policy) == 900


def test_vector_equals_single_default_config():
    lockstep({}, num_envs=3, episodes=1, seed=1000, policy="random")


@pytest.mark.parametrize("seed", [3, 50])
def test_vector_equals_single_under_ties_and_long_queues(seed):
    # Rate 0.01 builds queues of ~100 jobs: the rings grow while the episode runs.
    lockstep(TIES, num_envs=5, episodes=2, seed=seed, policy="random")


def test_single_env_passes_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    check_env(ParkLoadBalanceEnv(num_stream_jobs=30), skip_render_check=True)


def test_unseeded_single_env_is_a_fresh_park_env():
    # Park's constructor seeds 42 and resets once; a later reset() continues that stream.
    fresh = ParkLoadBalanceEnv()
    manual = ParkLoadBalanceEnv()
    manual.reset(seed=42)
    assert np.array_equal(fresh.reset()[0], manual.reset()[0])


def test_vector_reset_without_seed_mid_episode_continues_like_park():
    vec = ParkLoadBalanceVectorEnv(num_envs=2, seed=5, num_stream_jobs=50)
    single = ParkLoadBalanceEnv(num_stream_jobs=50)
    vec.reset()
    single.reset(seed=5)
    for _ in range(7):
        vec.step([1, 3])
        single.step(1)
    assert np.array_equal(vec.reset()[0][0], single.reset()[0])


def test_bad_actions_and_params_are_refused():
    vec = ParkLoadBalanceVectorEnv(num_envs=2)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        vec.step([0, 10])
    with pytest.raises(ValueError, match="expected 2 actions"):
        vec.step([0])
    with pytest.raises(ValueError, match="service_rates has 2 entries"):
        ParkParams(num_servers=3, service_rates=(1.0, 2.0))
    with pytest.raises(ValueError, match="needs >= 1"):
        ParkParams(num_servers=1, service_rates=(200.0,))


# --------------------------------------------------------------------------------------------
# Invariants, for any action sequence


def episode(params: dict, seed: int, actions: list[int]) -> tuple[ParkBatch, np.ndarray]:
    """Run one episode on the engine with the given actions: the engine (it keeps its job tables)
    and the rewards."""
    engine = ParkBatch(ParkParams(**params), 1)
    engine.seed([seed])
    engine.new_episode()
    return engine, np.array([engine.step(np.array([a]))[0][0] for a in actions])


SMALL = dict(num_servers=3, service_rates=(0.3, 0.7, 1.1), num_stream_jobs=40, job_interval=20)
actions_strategy = st.lists(st.integers(0, 2), min_size=40, max_size=40)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), actions=actions_strategy)
def test_work_conserved_and_no_job_faster_than_its_service_time(seed, actions):
    e, _ = episode(SMALL, seed, actions)
    arrival, finish, size = e.arrivals[0], e.job_finish[0], e.sizes[0]
    rates = np.asarray(SMALL["service_rates"])[actions]
    service = (size / rates).astype(np.int64)
    assert np.all(finish - arrival >= service)
    for s in range(3):
        on = np.flatnonzero(np.asarray(actions) == s)
        start = finish[on] - service[on]
        # A FIFO server works whenever it has work: each job starts at its arrival or when the
        # previous one ends, never later, and busy periods never overlap, so its busy time equals
        # the service time of its jobs (work is neither lost nor created).
        previous_end = np.concatenate([[0], finish[on][:-1]])
        assert np.array_equal(start, np.maximum(arrival[on], previous_end))
        assert np.all(start[1:] >= finish[on][:-1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), actions=actions_strategy, slowdown=st.floats(0.2, 0.95))
def test_slower_servers_never_finish_a_job_sooner(seed, actions, slowdown):
    fast, _ = episode(SMALL, seed, actions)
    slow_params = dict(SMALL, service_rates=tuple(r * slowdown for r in SMALL["service_rates"]))
    slow, _ = episode(slow_params, seed, actions)
    assert np.all(slow.job_finish >= fast.job_finish)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), actions=actions_strategy)
def test_rewards_sum_to_minus_total_sojourn_time(seed, actions):
    e, rewards = episode(SMALL, seed, actions)
    total = (e.job_finish - e.arrivals).sum()
    assert rewards.sum() == -total
    assert np.all(rewards <= 0)
    single = ParkLoadBalanceEnv(**SMALL)
    single.reset(seed=seed)
    for a in actions:
        *_, info = single.step(a)
    assert info["mean_jct"] * SMALL["num_stream_jobs"] == pytest.approx(total, rel=1e-12)


# --------------------------------------------------------------------------------------------
# The contract-speaking variant


def test_contract_env_speaks_the_contract_on_a_hand_computed_step():
    env = ParkContractVectorEnv(num_envs=1, seed=0, **TWO_SERVERS)
    obs, info = env.reset()
    raw = info["raw"]
    assert obs.shape == (1, spaces.OBS_DIM) and obs.dtype == np.float32
    assert np.array_equal(obs, spaces.encode(raw))
    assert info["trial_start"].all() and info["episode_start"].all()
    assert raw.kernel_allowed is False and not info["action_mask"][0, spaces.KERNEL]
    assert info["action_mask"][0].tolist() == [True, True] + [False] * (spaces.N_ACTIONS - 2)
    assert raw.capacity[0, :2].tolist() == [0.5, 1.0] and raw.task_work.tolist() == [169.0]

    # Same episode as test_golden_two_servers_seed0: job0 (169) to server0 at 69, next arrival 112.
    obs, reward, terminated, _, info = env.step(np.array([0]))
    raw = info["raw"]
    assert reward.tolist() == [-43 / PARK_TIME_UNIT] and not terminated.any()
    assert raw.extras["park_obs"].tolist() == [[295, 0, 185]]
    assert raw.runnable[0, :2].tolist() == [1, 0]
    assert raw.work_left[0, 0] == pytest.approx(295 * 0.5)  # remaining time x rate: true work
    assert raw.util[0, :2].tolist() == [1.0, 0.0]  # busy all of 69..112
    assert raw.placed[0, :2].tolist() == [1.0, 0.0]
    assert raw.since_last.tolist() == [43.0] and not raw.task_unknown.any()
    assert not info["episode_start"].any() and not info["trial_start"].any()


def park_sizes(seed: int, n: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    sizes = []
    for _ in range(n):
        sizes.append(int((rng.pareto(1.5) + 1) * 100.0))
        rng.exponential(55)
    return np.array(sizes)


def test_contract_env_episodes_trials_and_same_step_autoreset():
    env = ParkContractVectorEnv(num_envs=3, seed=7, episodes_per_trial=2, **TWO_SERVERS)
    exact = ParkLoadBalanceVectorEnv(num_envs=3, seed=7, **TWO_SERVERS)
    _, info = env.reset()
    exact.reset()
    rng = np.random.default_rng(0)
    starts = []
    for step in range(12):
        actions = rng.integers(0, 2, 3)
        _, reward, terminated, _, info = env.step(actions)
        park_obs, park_reward, *_ = exact.step(actions)
        assert np.array_equal(info["raw"].extras["park_obs"], park_obs)
        assert np.allclose(reward, park_reward / PARK_TIME_UNIT)
        assert terminated.all() == ((step + 1) % 4 == 0)
        starts.append((bool(info["episode_start"][0]), bool(info["trial_start"][0])))
        if terminated.any():
            stats = info["episode"]
            assert len(stats) == 3
            for i, s in enumerate(stats):
                sizes = park_sizes(7 + i, step + 1)[-4:]  # this episode's jobs in env i's stream
                assert np.allclose(s.slowdown, s.jct / (sizes / 1.0))  # fastest rate is 1.0
                assert s.episode_return == pytest.approx(-s.jct.sum() / PARK_TIME_UNIT)
    # Episodes end at steps 4, 8, 12; trials (2 episodes each) open after steps 8 (and at reset).
    assert [i for i, (ep, _) in enumerate(starts) if ep] == [3, 7, 11]
    assert [i for i, (_, tr) in enumerate(starts) if tr] == [7]


def test_contract_env_refuses_masked_actions_and_loses_nothing():
    env = ParkContractVectorEnv(num_envs=2, seed=3)
    twin = ParkContractVectorEnv(num_envs=2, seed=3)
    env.reset()
    twin.reset()
    for bad in ([spaces.KERNEL, 0], [0, 10], [0, spaces.MAX_SLOTS - 1]):
        with pytest.raises(ValueError, match="masked actions"):
            env.step(np.array(bad))
    obs, reward, *_ = env.step(np.array([4, 5]))
    twin_obs, twin_reward, *_ = twin.step(np.array([4, 5]))
    assert np.array_equal(obs, twin_obs) and np.array_equal(reward, twin_reward)


# --------------------------------------------------------------------------------------------
# lbagent bench sim (structure only: speed is reported, never asserted in tests)


def test_bench_sim_cli_reports_park_rows_as_json():
    import json

    from click.testing import CliRunner

    from lbagent.cli import main

    result = CliRunner().invoke(main, ["bench", "sim", "--dynamics", "park", "--repeats", "1", "--scale", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [(r["dynamics"], r["num_envs"]) for r in rows] == [("park", 1), ("park", 1), ("park", 64), ("park", 1024)]
    assert all(r["steps_per_s"] > 0 for r in rows) and rows[0]["vs_reference"] == 1.0
    assert rows[3]["vs_reference"] == pytest.approx(rows[3]["steps_per_s"] / rows[0]["steps_per_s"])

    bad = CliRunner().invoke(main, ["bench", "sim", "--dynamics", "nope"])
    assert bad.exit_code == 2 and "unknown nope" in bad.output

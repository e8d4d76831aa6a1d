"""Host dynamics v2: weighted processor sharing, share classes, reviews, neighbours in and out of
the workload's group. Golden cases are computed by hand; invariants are checked with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbagent import spaces
from lbagent.policy.heuristics import make_heuristic
from lbagent.sim.host import HostVectorEnv
from lbagent.sim.workload import Fixed, StepDraws, WorkloadSpace

BG = spaces.compose_action(spaces.KERNEL, spaces.BACKGROUND)
KEEP = spaces.KERNEL
FAST = settings(max_examples=25, deadline=None)


def run(env: HostVectorEnv, choose) -> tuple[list[float], object, list]:
    """One episode of a one-row env; ``choose(raw)`` gives the action. Returns rewards, stats, raws."""
    _, info = env.reset(seed=0)
    rewards, seen = [], []
    for _ in range(10_000):
        raw = info["raw"]
        seen.append(raw)
        _, r, term, _, info = env.step(np.array([choose(raw)]))
        rewards.append(float(r[0]))
        if term[0]:
            return rewards, info["episode"][0], seen
    raise AssertionError("episode did not end")


def exits(env: HostVectorEnv, stats, arrival) -> np.ndarray:
    return np.asarray(arrival) - arrival[0] + stats.jct * env.w.mean_work[0]


def test_golden_normal_beside_background_on_one_cpu():
    """One CPU, A (1 s, NORMAL) and B (1 s, BACKGROUND, weight 2) both from t=0: A is served at
    1024/1026, so it ends at 1026/1024 s; B got 2/1026 of that time and then runs alone."""
    env = HostVectorEnv.from_trace([0.0, 0.0], [1.0, 1.0], (1.0,), bg_weight=2.0)
    actions = iter([0, spaces.compose_action(0, spaces.BACKGROUND)])
    _, stats, _ = run(env, lambda raw: next(actions))
    t_a = 1026 / 1024
    b_done_by_then = t_a * 2 / 1026
    np.testing.assert_allclose(exits(env, stats, [0.0, 0.0]), [t_a, t_a + (1 - b_done_by_then)], rtol=1e-12)


def test_golden_two_background_tasks_share_the_group():
    """Two BACKGROUND tasks and one NORMAL on one CPU (weight 64 for the group): the group gets
    64/1088 and each background task half of it, until the NORMAL task leaves."""
    env = HostVectorEnv.from_trace([0.0, 0.0, 0.0], [0.5, 1.0, 1.0], (1.0,), bg_weight=64.0)
    actions = iter([0, spaces.compose_action(0, spaces.BACKGROUND), spaces.compose_action(0, spaces.BACKGROUND)])
    _, stats, _ = run(env, lambda raw: next(actions))
    t_a = 0.5 * 1088 / 1024
    each = t_a * 64 / 1088 / 2
    t_bc = t_a + 2 * (1.0 - each)  # then two tasks share the CPU equally
    np.testing.assert_allclose(exits(env, stats, [0, 0, 0]), [t_a, t_bc, t_bc], rtol=1e-12)


def test_inside_hog_takes_its_weight_and_background_yields_to_it():
    """An inside hog competes like a NORMAL task (half the CPU to a lone NORMAL task), and a
    BACKGROUND task beside it gets only bg_weight / (1024 + bg_weight)."""
    normal = HostVectorEnv.from_trace([0.0], [1.0], (1.0,), neighbour="inside")
    _, stats, _ = run(normal, lambda raw: 0)
    assert stats.jct[0] == pytest.approx(2.0, rel=1e-12)  # time unit = the mean work, 1 s
    low = HostVectorEnv.from_trace([0.0], [1.0], (1.0,), neighbour="inside", bg_weight=2.0)
    _, stats, _ = run(low, lambda raw: spaces.compose_action(0, spaces.BACKGROUND))
    assert stats.jct[0] == pytest.approx(1026 / 2, rel=1e-12)


def test_outside_neighbour_takes_its_share_whatever_the_class():
    for action in (0, spaces.compose_action(0, spaces.BACKGROUND)):
        env = HostVectorEnv.from_trace([0.0], [1.0], (1.0,), neighbour="outside", background=0.5)
        _, stats, _ = run(env, lambda raw, a=action: a)
        assert stats.jct[0] == pytest.approx(2.0, rel=1e-12)


def test_reviews_fire_exactly_at_milestones_and_at_most_max_reviews():
    env = HostVectorEnv.from_trace([0.0], [1.0], (1.0,), review_m0=0.01, max_reviews=5)
    _, _, seen = run(env, lambda raw: KEEP if raw.review[0] else 0)
    reviews = [r for r in seen if r.review[0]]
    np.testing.assert_allclose([r.attained[0] for r in reviews], [0.01, 0.02, 0.04, 0.08, 0.16], rtol=1e-9)
    np.testing.assert_allclose([r.extras["time"][0] for r in reviews], [0.01, 0.02, 0.04, 0.08, 0.16], rtol=1e-9)
    assert all(r.current_slot[0] == 0 and not r.background_now[0] for r in reviews)
    short = HostVectorEnv.from_trace([0.0], [0.03], (1.0,), review_m0=0.01, max_reviews=5)
    _, _, seen = run(short, lambda raw: KEEP if raw.review[0] else 0)
    assert [round(float(r.attained[0]), 9) for r in seen if r.review[0]] == [0.01, 0.02]  # 0.04 is past its work


def test_a_demoted_task_reports_its_class_and_attained_time_on_later_reviews():
    env = HostVectorEnv.from_trace([0.0, 0.0], [1.0, 1.0], (1.0,), review_m0=0.01, max_reviews=3)
    _, _, seen = run(env, lambda raw: BG if raw.review[0] else 0)
    later = [r for r in seen if r.review[0] and r.background_now[0]]
    assert later and all(r.attained[0] in (pytest.approx(0.02), pytest.approx(0.04)) for r in later)
    assert all(r.runnable_bg[0, 0] >= 1 for r in later)


@st.composite
def share_traces(draw):
    cpus = draw(st.integers(1, 3))
    caps = draw(st.lists(st.floats(0.25, 2.0), min_size=cpus, max_size=cpus))
    n = draw(st.integers(1, 20))
    gaps = draw(st.lists(st.floats(0.0, 0.05), min_size=n, max_size=n))
    works = draw(st.lists(st.floats(0.001, 0.3), min_size=n, max_size=n))
    demote_at = draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))
    neighbour = draw(st.sampled_from(["outside", "inside"]))
    bg_weight = draw(st.sampled_from([1.0, 2.0, 64.0]))
    return np.cumsum(gaps), np.array(works), tuple(caps), demote_at, neighbour, bg_weight


def share_replay(trace):
    """Replay with reviews; task i goes BACKGROUND at its review number demote_at[i] (0: arrival)."""
    arrival, work, caps, demote_at, neighbour, bg_weight = trace
    env = HostVectorEnv.from_trace(arrival, work, caps, review_m0=0.005, max_reviews=4, neighbour=neighbour,
                                   background=0.3 if neighbour == "outside" else 0.0, bg_weight=bg_weight,
                                   exact_state=True)
    counts: dict[int, int] = {}
    arrivals = iter(range(len(work)))
    task_of = {}

    def choose(raw):
        if not raw.review[0]:
            i = next(arrivals)
            slot = i % len(caps)
            return spaces.compose_action(slot, spaces.BACKGROUND if demote_at[i] == 0 else spaces.NORMAL)
        key = round(float(raw.extras["true_work"][0]), 12), int(raw.current_slot[0])
        i = task_of.setdefault(key, len(task_of))
        counts[i] = counts.get(i, 0) + 1
        return BG if raw.background_now[0] or demote_at[min(i, len(work) - 1)] == counts[i] else KEEP

    rewards, stats, seen = run(env, choose)
    return env, rewards, stats, seen


@FAST
@given(share_traces())
def test_v2_work_is_conserved_and_return_is_minus_total_sojourn(trace):
    env, rewards, stats, _ = share_replay(trace)
    _, work, *_ = trace
    assert env.delivered[0] == pytest.approx(work.sum(), rel=1e-9)
    assert sum(rewards) == pytest.approx(-stats.jct.sum(), rel=1e-9, abs=1e-9)
    assert stats.slowdown.min() >= 1 - 1e-9  # never more than capacity x time


@FAST
@given(share_traces())
def test_v2_reviews_sit_on_milestones(trace):
    _, _, _, seen = share_replay(trace)
    for raw in seen:
        if raw.review[0]:
            k = np.log2(raw.attained[0] / 0.005)
            assert k == pytest.approx(round(k), abs=1e-6) and 0 <= round(k) < 4


@FAST
@given(share_traces())
def test_background_never_gets_more_than_its_weight_share_beside_normal(trace):
    """Whenever a NORMAL task is runnable on a CPU, each BACKGROUND task there is served at most
    bg_weight / (1024 + bg_weight) of the CPU: check it through the rates the dynamics use."""
    env, *_ = share_replay(trace)
    bgw = env.w.bg_weight[0]
    rng = np.random.default_rng(0)
    for _ in range(20):  # random states of the same env: the rate function is what moves service
        env.n[0] = rng.integers(0, 4, size=env.n[0].shape)
        rate = env._rates(np.array([0]))[0]
        for c in range(env.width):
            if env.n[0, c, spaces.NORMAL] > 0 and env.n[0, c, spaces.BACKGROUND] > 0:
                assert rate[c, spaces.BACKGROUND] <= env.capeff[0, c] * bgw / (1024 + bgw) + 1e-12
                assert rate[c, spaces.BACKGROUND] <= rate[c, spaces.NORMAL] * bgw / 1024 + 1e-12


def test_task_draws_are_a_pure_function_of_seed_row_episode_and_task():
    a = StepDraws.for_tasks(7, np.array([0, 1, 2]), np.array([0, 0, 5]), np.array([3, 3, 3]), 4)
    b = StepDraws.for_tasks(7, np.array([2, 0]), np.array([5, 0]), np.array([3, 3]), 4)
    np.testing.assert_array_equal(a.size_u[[2, 0]], b.size_u)
    np.testing.assert_array_equal(a.bg_v[[2, 0]], b.bg_v)
    assert len(set(a.size_u.tolist())) == 3 and (a.size_u > 0).all() and (a.size_u < 1).all()


def test_demotions_do_not_change_the_workload():
    space = WorkloadSpace({"cpus": Fixed(2), "load": Fixed(0.9), "size": Fixed("pareto"),
                           "max_reviews": Fixed(6), "commands": Fixed(3), "tasks": Fixed(60)})
    seen = []
    for name in ("kernel", "las:10ms"):
        env = HostVectorEnv(4, seed=5, space=space, episodes_per_trial=2)
        policy = make_heuristic(name)
        obs, info = env.reset()
        works: dict[tuple[int, float], float] = {}
        finished = 0
        while finished < 8:
            raw = info["raw"]
            for b in np.flatnonzero(~raw.review):
                works[(int(b), round(float(raw.extras["time"][b]), 12))] = float(raw.extras["true_work"][b])
            obs, _, term, _, info = env.step(policy.act(obs, raw, info["action_mask"]))
            finished += int(term.sum())
        seen.append(works)
    common = set(seen[0]) & set(seen[1])
    assert len(common) > 100 and all(seen[0][k] == seen[1][k] for k in common)


def test_share_heuristics_order_on_a_heavy_tail():
    """On heavy-tailed CPU-bound work at high load, demoting long tasks pays and the oracle pays most."""
    space = WorkloadSpace({"cpus": Fixed(2), "load": Fixed(0.9), "size": Fixed("pareto"), "mean_work": Fixed(0.05),
                           "max_reviews": Fixed(8), "tasks": Fixed(200)})
    means = {}
    for name in ("kernel", "las:30ms", "oracle"):
        env = HostVectorEnv(32, seed=11, space=space)
        policy = make_heuristic(name)
        obs, info = env.reset()
        jct: list[float] = []
        while len(jct) < 32:
            obs, _, _, _, info = env.step(policy.act(obs, info["raw"], info["action_mask"]))
            jct += [e.mean_jct for e in info.get("episode") or [] if e is not None]
        means[name] = np.mean(jct)
    assert means["oracle"] < 0.85 * means["kernel"]
    assert means["oracle"] < means["las:30ms"] < 0.95 * means["kernel"]


def test_threshold_specs_parse_and_refuse_in_one_line():
    from lbagent.policy.specs import BadPolicySpec, is_heuristic, parse_threshold

    assert parse_threshold("30ms", "las:30ms") == pytest.approx(0.030)
    assert parse_threshold("0.1s", "x") == pytest.approx(0.1) and parse_threshold("2000us", "x") == pytest.approx(0.002)
    assert parse_threshold("0.5", "x") == 0.5
    for bad in ("abc", "0ms", "-3ms", "nanms", "1e9s"):
        with pytest.raises(BadPolicySpec, match="threshold"):
            parse_threshold(bad, f"las:{bad}")
    assert is_heuristic("las:30ms") and is_heuristic("oracle") and is_heuristic("sed") and not is_heuristic("default")
    assert make_heuristic("las:80ms").metadata["threshold_s"] == pytest.approx(0.08)


def test_every_share_heuristic_end_to_end_through_lbagent_eval(tmp_path):
    """The batch problem in miniature, through the command line: every v2 heuristic runs, figures are
    finite, the oracle is best, and a bad threshold is one line with exit code 2."""
    import json

    from click.testing import CliRunner

    from lbagent.cli import main

    suite = tmp_path / "mini.toml"
    suite.write_text('[suite]\nname = "mini"\nepisodes_per_trial = 3\n\n[[scenario]]\nname = "tail"\n'
                     'dynamics = "host"\ncpus = 2\ntasks = 80\nload = 0.9\nsize = "pareto"\nmean_work = 0.05\n'
                     'commands = 3\nmax_reviews = 8\n')
    out = tmp_path / "r.json"
    specs = "las:30ms,sized:40ms,oracle,kernel"
    r = CliRunner().invoke(main, ["eval", "--suite", str(suite), "--policies", specs, "--episodes", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    figures = {row["policy"]: row["mean_jct"] for row in json.loads(out.read_text())["results"]}
    assert set(specs.split(",")) <= set(figures) and all(np.isfinite(v) for v in figures.values())
    assert figures["oracle"] == min(figures.values())
    bad = CliRunner().invoke(main, ["eval", "--suite", str(suite), "--policies", "las:soon", "--episodes", "1"])
    assert bad.exit_code == 2 and "las:soon" in bad.output and "Traceback" not in bad.output


def test_an_idle_tiny_cpu_does_not_ping_pong_a_task_with_a_big_one():
    """Found by the trace fuzzer: a task on a 0.0036-capacity CPU moved to a 28.7 one by load, and
    the idle tiny CPU pulled it back by count, forever. The pull now needs a capacity gain."""
    caps = (0.0035676884338426565, 3.1899057866071083, 28.665948291947355)
    arrival = np.array([0.14706304965369288, 8.636400902455758, 9.572101796109635, 9.811950400663443])
    work = np.array([1.7039630912703201e-07, 388536.84325706813, 22337.43675140353, 2165.7454623692943])
    env = HostVectorEnv.from_trace(arrival, work, caps, predicted=work)
    _, stats, _ = run(env, lambda raw: KEEP)
    assert np.isfinite(stats.jct).all() and stats.jct.size == 4


def test_an_outside_busy_loop_counts_as_a_whole_task_for_the_kernel_but_takes_only_its_share():
    """A hog in another group: the balancer sees its full load (1), a duty-cycled neighbour its share;
    either way the workload loses exactly the share of capacity."""
    for seen_as, expected in (("share", 0.75), ("task", 1.0)):
        env = HostVectorEnv.from_trace([0.0], [1.0], (1.0, 1.0), neighbour="outside", background=0.75,
                                       neighbour_seen_as=seen_as, hog_cpus=1)
        env.reset(seed=0)
        load, _ = env._kernel_load(np.array([0]))
        assert load[0].tolist() == [expected, 0.0]
        _, stats, _ = run(env, lambda raw: 0)  # pinned beside the hog
        assert stats.jct[0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="seen as"):
        HostVectorEnv.from_trace([0.0], [1.0], (1.0,), neighbour_seen_as="ghost")

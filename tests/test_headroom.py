"""The headroom experiment: its oracle reads the simulator's exact state correctly, its rules choose
what they claim, and placement hints really leave a task to the balancer."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from lbagent import spaces
from lbagent.cli import main
from lbagent.eval.evaluate import run_suite, summarize
from lbagent.eval.headroom import RULES, Rule, _exact_marginal_cost, headroom
from lbagent.sim.scenarios import make_vector_env, parse_suite


def _suite(cpus: int, **params):
    scenario = {"name": "s", "dynamics": "host", "cpus": cpus, "tasks": 64, **params}
    return parse_suite({"suite": {"name": "t", "episodes_per_trial": 1}, "scenario": [scenario]})


def test_exact_remaining_work_is_what_was_asked_minus_what_the_cpus_delivered():
    env = make_vector_env(_suite(3, load=0.9).scenarios[0], num_envs=4, seed=7, host_options={"exact_state": True})
    env.reset(seed=7)
    rng = np.random.default_rng(0)
    for _ in range(40):  # inside the first episode (64 tasks): nothing has been reset yet
        _, _, _, _, info = env.step(rng.integers(0, 3, size=4))
        raw = info["raw"]
        asked = env.ep_work[:, : env.k.max()].sum(axis=1)
        left = np.where(raw.extras["task_cpu"] >= 0, raw.extras["task_remaining"], 0.0).sum(axis=1)
        assert np.allclose(asked - env.delivered, left, atol=1e-9)
        assert (raw.extras["task_remaining"] >= -1e-12).all()
    assert (raw.extras["task_cpu"] >= 0).any()
    plain = make_vector_env(_suite(3, load=0.9).scenarios[0], num_envs=4, seed=7)
    _, info = plain.reset(seed=7)
    assert "task_remaining" not in info["raw"].extras  # training and eval do not pay for the oracle's state


def test_oracle_marginal_cost_prefers_short_co_runners_to_fewer_long_ones():
    # slot 0: one task with 10 left; slot 1: two tasks with 0.1 left each; the arriving task is 1.
    # Counting tasks (the kernel) picks slot 0; the marginal cost is 1 + 1 there, 1 + 0.2 on slot 1.
    raw = spaces.RawObservation(
        slot_mask=np.array([[True, True] + [False] * 14]), capacity=np.array([[1.0, 1.0] + [0.0] * 14]),
        runnable=np.array([[1, 2] + [0] * 14], float), util=np.zeros((1, 16)), placed=np.zeros((1, 16)),
        work_left=np.array([[10.0, 0.2] + [0.0] * 14]), task_work=np.array([1.0]),
        task_unknown=np.array([False]), since_last=np.array([0.1]),
        extras={"true_work": np.array([1.0]), "task_cpu": np.array([[0, 1, 1, -1]]),
                "task_remaining": np.array([[10.0, 0.1, 0.1, 0.0]]), "capacity_now": np.array([[1.0, 1.0]])},
    )
    assert _exact_marginal_cost(raw)[0] == 1
    raw.extras["capacity_now"] = np.array([[1.0, 0.1]])  # a neighbour takes 90 % of slot 1
    assert _exact_marginal_cost(raw)[0] == 0


def test_a_hint_lets_the_balancer_spread_what_a_pin_piles_up():
    suite = _suite(2, load=0.6, mean_work=0.05)
    always_slot_0 = Rule("slot 0", lambda raw: np.zeros(raw.batch, dtype=np.int64))
    pinned = summarize("pin", run_suite(always_slot_0, suite, 2, 5)).mean_jct
    hinted = summarize("hint", run_suite(always_slot_0, suite, 2, 5, host_options={"pin_placements": False})).mean_jct
    kernel = summarize("kernel", run_suite(Rule("k", lambda raw: np.full(raw.batch, spaces.KERNEL)), suite, 2, 5)).mean_jct
    assert hinted < 0.5 * pinned  # one CPU at load 1.2 piles up; the balancer spreads the hints
    assert abs(hinted - kernel) < 0.15 * kernel


def test_on_one_cpu_every_rule_is_the_kernel():
    report = headroom(_suite(1, load=0.7), episodes=2, seed=3)
    figures = {r.policy: r.mean_jct for r in report.results}
    assert set(figures) >= {rule.name for rule in RULES} | {"kernel", "sed"}
    for rule in RULES:
        assert abs(figures[rule.name] - figures["kernel"]) < 1e-9, rule.name


def test_headroom_refuses_park_with_a_clear_error():
    result = CliRunner().invoke(main, ["experiment", "headroom", "--suite", "park", "--episodes", "1"])
    assert result.exit_code == 2 and "need host dynamics" in result.output


def test_share_rules_and_the_gap_to_the_oracle_are_reported():
    """On a heavy tail with reviews: every las threshold, sized and oracle run beside the baselines,
    the oracle beats the kernel, and the notes put figures on the gap."""
    suite = _suite(2, load=0.9, size="pareto", mean_work=0.05, max_reviews=8, tasks=120)
    report = headroom(suite, episodes=2, seed=3)
    figures = {r.policy: r.mean_jct for r in report.results}
    assert {"las:10ms", "las:320ms", "sized:40ms", "oracle:100ms", "las", "sized"} <= set(figures)
    assert min(v for k, v in figures.items() if k.startswith("oracle")) < 0.9 * figures["kernel"]
    assert len(report.notes) == 2 and "x the kernel" in report.notes[0] and "% worse than the oracle" in report.notes[1]
    assert report.to_json()["notes"] == report.notes

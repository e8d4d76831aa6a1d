"""Each heuristic makes the choice its definition names, on hand-built observations."""

import numpy as np
import pytest

from lbagent.policy.heuristics import HEURISTICS, UnsupportedPolicy, make_heuristic
from lbagent.spaces import KERNEL, MAX_SLOTS, N_ACTIONS, RawObservation, action_mask, encode


def raw_from(runnable, work_left, capacity, task_work=1.0, kernel_allowed=True) -> RawObservation:
    n = len(runnable)
    mask = np.zeros((1, MAX_SLOTS), bool)
    mask[0, :n] = True

    def pad(v):
        out = np.zeros((1, MAX_SLOTS))
        out[0, :n] = v
        return out

    return RawObservation(
        slot_mask=mask,
        capacity=pad(capacity),
        runnable=pad(runnable),
        util=pad([0.5] * n),
        placed=pad([0] * n),
        work_left=pad(work_left),
        task_work=np.array([task_work]),
        task_unknown=np.array([False]),
        since_last=np.array([0.1]),
        kernel_allowed=kernel_allowed,
    )


def decide(name: str, raw: RawObservation, seed: int = 0) -> int:
    pol = make_heuristic(name, seed)
    pol.begin_trial(raw.batch, seed)
    return int(pol.act(encode(raw), raw, action_mask(raw))[0])


def test_jsq_picks_fewest_runnable_and_breaks_ties_by_work():
    raw = raw_from(runnable=[3, 1, 1, 2], work_left=[1, 5, 2, 0], capacity=[1, 1, 1, 1])
    assert decide("jsq", raw) == 2


def test_lwl_picks_least_work_left():
    raw = raw_from(runnable=[0, 4, 1], work_left=[2.0, 0.5, 1.0], capacity=[1, 1, 1])
    assert decide("lwl", raw) == 1


def test_sed_accounts_for_capacity():
    # Slot 0 has less work but is 4x slower: (1 + 1) / 0.25 = 8 > (3 + 1) / 1 = 4.
    raw = raw_from(runnable=[1, 3], work_left=[1.0, 3.0], capacity=[0.25, 1.0], task_work=1.0)
    assert decide("sed", raw) == 1
    assert decide("lwl", raw) == 0


def test_round_robin_cycles_over_existing_slots_per_env():
    raw = raw_from(runnable=[0, 0, 0], work_left=[0, 0, 0], capacity=[1, 1, 1])
    pol = make_heuristic("round_robin")
    pol.begin_trial(1, 0)
    picks = [int(pol.act(encode(raw), raw, action_mask(raw))[0]) for _ in range(7)]
    assert picks == [0, 1, 2, 0, 1, 2, 0]


def test_random_is_uniform_over_valid_slots_and_seeded():
    b = 6000
    mask = np.zeros((b, MAX_SLOTS), bool)
    mask[:, :3] = True
    raw = RawObservation(
        slot_mask=mask,
        capacity=mask * 1.0,
        runnable=np.zeros((b, MAX_SLOTS)),
        util=np.zeros((b, MAX_SLOTS)),
        placed=np.zeros((b, MAX_SLOTS)),
        work_left=np.zeros((b, MAX_SLOTS)),
        task_work=np.ones(b),
        task_unknown=np.zeros(b, bool),
        since_last=np.zeros(b),
    )
    pol = make_heuristic("random", seed=3)
    a = pol.act(encode(raw), raw, action_mask(raw))
    counts = np.bincount(a, minlength=N_ACTIONS)
    assert counts[3:].sum() == 0
    assert np.all(np.abs(counts[:3] / b - 1 / 3) < 0.03)
    pol.begin_trial(b, 3)
    again = make_heuristic("random", seed=3)
    again.begin_trial(b, 3)
    assert np.array_equal(pol.act(None, raw, None), again.act(None, raw, None))


def test_po2_takes_the_better_of_two_distinct_samples():
    # Loads rank the slots 1 < 2 < 3 < 0. Of the 6 equally likely pairs, the k-th best slot wins
    # the (3 - k) pairs with a worse partner: 1/2, 1/3, 1/6, and the worst never. A uniform pick
    # (random) gives 1/4 each, always-the-best (jsq) gives 1 for slot 1.
    b = 6000
    raw = raw_from(runnable=[3, 0, 1, 2], work_left=[3, 0, 1, 2], capacity=[1, 1, 1, 1]).take(np.zeros(b, int))
    pol = make_heuristic("po2", seed=5)
    pol.begin_trial(b, 5)
    share = np.bincount(pol.act(encode(raw), raw, action_mask(raw)), minlength=N_ACTIONS) / b
    assert share[0] == 0 and share[4:].sum() == 0
    assert np.allclose(share[[1, 2, 3]], [1 / 2, 1 / 3, 1 / 6], atol=0.03)
    single = raw_from(runnable=[2], work_left=[1], capacity=[1])
    assert all(decide("po2", single, seed=s) == 0 for s in range(10))


def test_kernel_defers_and_refuses_dynamics_without_a_balancer():
    raw = raw_from(runnable=[1, 1], work_left=[1, 1], capacity=[1, 1])
    assert decide("kernel", raw) == KERNEL
    park_like = raw_from(runnable=[1, 1], work_left=[1, 1], capacity=[1, 1], kernel_allowed=False)
    with pytest.raises(UnsupportedPolicy):
        decide("kernel", park_like)


def test_every_named_heuristic_exists_and_unknown_names_are_refused():
    for name in HEURISTICS:
        assert make_heuristic(name).name == name
    with pytest.raises(KeyError, match="known: random"):
        make_heuristic("fastest")


def test_every_policy_a_spec_names_says_where_it_came_from():
    """``resolve_policy`` is the one reader of a ``--policy`` spec; whatever it returns answers
    ``metadata`` (the Policy protocol), so callers need not know heuristics from policy files."""
    from lbagent.errors import UserError
    from lbagent.policy import resolve_policy
    from lbagent.spaces import CONTRACT_VERSION

    for name in HEURISTICS:
        assert dict(resolve_policy(name, seed=3).metadata) == {"algorithm": "heuristic", "name": name}
    shipped = resolve_policy("default")
    assert shipped.metadata["algorithm"] == "dreamer" and shipped.metadata["contract_version"] == CONTRACT_VERSION
    with pytest.raises(UserError, match="no shipped policy named 'nope'"):
        resolve_policy("nope")


@pytest.mark.parametrize("spec", ["sed", "round_robin", "default"])
def test_decision_latency_is_measured_for_any_policy(spec):
    """The latency bench hands the policy a real observation, so heuristics (which read the raw
    quantities, not the encoded vector) can be timed beside learned policies."""
    from lbagent.policy import resolve_policy
    from lbagent.policy.latency import measure_latency

    figures = measure_latency(resolve_policy(spec), decisions=100, warmup=5)
    assert figures["policy"] == spec and figures["decisions"] == 100
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"] < 1000

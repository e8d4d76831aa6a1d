"""Workload families: every size family has the scenario's mean work, every arrival family its rate."""

from __future__ import annotations

import numpy as np
import pytest

from lbagent.sim.workload import ARRIVALS, SIZES, Fixed, StepDraws, WorkloadSpace, next_gap, predicted_work, task_work

ROWS = 4000


def workload(**values):
    space = WorkloadSpace({k: Fixed(v) for k, v in values.items()})
    return space.sample(np.random.default_rng(0), ROWS, space.max_cpus)


def draws(seed: int, width: int = 4) -> StepDraws:
    """The per-task stream of ROWS envs: task ``seed`` of episode 0 (a pure function of the key)."""
    return StepDraws.for_tasks(0, np.arange(ROWS), np.zeros(ROWS, dtype=np.int64), np.full(ROWS, seed), width)


@pytest.mark.parametrize("size", SIZES)
def test_each_size_family_has_the_mean_work(size):
    w = workload(size=size, mean_work=0.03, pareto_shape=2.5)
    sizes = np.concatenate([task_work(w, draws(seed)) for seed in range(25)])
    assert sizes.min() > 0
    assert sizes.mean() == pytest.approx(0.03, rel=0.03)


def test_families_differ_in_spread():
    cv = {}
    for size in SIZES:
        w = workload(size=size, mean_work=1.0, pareto_shape=2.5, lognormal_sigma=1.0, uniform_spread=0.5)
        x = np.concatenate([task_work(w, draws(seed)) for seed in range(10)])
        cv[size] = x.std() / x.mean()
    assert cv["uniform"] == pytest.approx(0.5 / np.sqrt(3), rel=0.05)
    assert cv["lognormal"] == pytest.approx(np.sqrt(np.e - 1), rel=0.1)
    assert cv["bimodal"] > 1.0 > cv["uniform"]


def gaps_over_time(w, steps: int = 150) -> np.ndarray:
    """Successive gaps of every row, as the env draws them (one per decision)."""
    now = np.zeros(ROWS)
    out = []
    for seed in range(steps):
        g = next_gap(w, now, draws(seed))
        out.append(g)
        now = now + g
    return np.array(out)


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_each_arrival_family_offers_the_load(arrival):
    """load = arrival rate x mean work / mean effective capacity, whatever the family."""
    w = workload(arrival=arrival, cpus=4, capacity=0.75, load=0.7, mean_work=0.02, diurnal_period=20.0)
    gaps = gaps_over_time(w)
    rate = gaps.shape[0] / gaps.sum(axis=0).mean()
    assert rate == pytest.approx(0.7 * 4 * 0.75 / 0.02, rel=0.04)


def test_bursty_arrivals_are_burstier_than_poisson():
    cv = {}
    for arrival in ("poisson", "bursty"):
        gaps = gaps_over_time(workload(arrival=arrival, burst_factor=3.0, burst_period=20.0), steps=60)
        cv[arrival] = gaps.std() / gaps.mean()
    assert cv["poisson"] == pytest.approx(1.0, abs=0.03)
    assert cv["bursty"] > 1.3


def test_background_load_is_part_of_the_capacity_the_load_refers_to():
    quiet = workload(load=0.5, cpus=2)
    noisy = workload(load=0.5, cpus=2, background=0.5, bg_prob=1.0)
    assert noisy.arrival_rate() == pytest.approx(quiet.arrival_rate() / 2)


def test_predictor_is_unbiased_and_sometimes_unknown():
    w = workload(predict_noise=0.5, unknown_prob=0.2, mean_work=0.05)
    d = draws(1)
    work = task_work(w, d)
    pred, unknown = predicted_work(w, work, d)
    assert unknown.mean() == pytest.approx(0.2, abs=0.03)
    assert np.all(pred[unknown] == 0.05)
    ratio = pred[~unknown] / work[~unknown]
    assert ratio.mean() == pytest.approx(1.0, abs=0.04) and ratio.std() > 0.3


def test_commands_keep_the_mean_and_the_predictor_knows_only_the_command():
    """Several commands: sizes keep the scenario's mean; the predictor gives each task its command's
    mean (one value per command), so it tracks sizes across commands but not within one."""
    w = workload(size="lognormal", mean_work=0.03, lognormal_sigma=0.8, commands=4, command_spread=1.0,
                 predict_noise=0.0, unknown_prob=0.0)
    d = draws(1)
    work = task_work(w, d)
    pred, unknown = predicted_work(w, work, d)
    assert not unknown.any()
    assert np.concatenate([task_work(w, draws(s)) for s in range(10)]).mean() == pytest.approx(0.03, rel=0.05)
    row_zero = {round(float(predicted_work(w, task_work(w, draws(s)), draws(s))[0][0]), 12) for s in range(60)}
    assert len(row_zero) == 4  # one env's tasks: four commands, four predictions
    assert 0.3 < np.corrcoef(np.log(pred), np.log(work))[0, 1] < 0.95
    np.testing.assert_allclose((w.cmd_scale[:, :4]).mean(axis=1), 1.0)
    assert (w.cmd_scale[:, 4:] == 0).all()


def test_the_predictors_error_is_independent_of_the_tasks_size():
    """Each normal draw has its own pair of uniforms: sharing one (as a first version did) made the
    predictor's error agree in sign with the size draw every time, a leak of the true size."""
    d = draws(0)
    assert abs(np.corrcoef(d.size_z, d.pred_z)[0, 1]) < 0.05
    assert 0.45 < np.mean(np.sign(d.size_z) == np.sign(d.pred_z)) < 0.55

"""The demo's workload: seeded, bursty, heavy-tailed, and really run (forked tasks burning CPU)."""

from __future__ import annotations

import numpy as np

from lbagent.bench import taskgen


def test_schedule_is_seeded_bursty_and_heavy_tailed():
    a = taskgen.make_schedule(3, 200.0, cpu_load=0.9)
    assert a == taskgen.make_schedule(3, 200.0, cpu_load=0.9) and a != taskgen.make_schedule(4, 200.0, cpu_load=0.9)
    at = np.array([t.at for t in a])
    work = np.array([t.work for t in a])
    assert np.all(np.diff(at) >= 0) and at[-1] < 200.0
    assert 0.6 < work.sum() / 200.0 < 1.2  # about the asked CPU load
    per_second = np.bincount(at.astype(int), minlength=200)
    assert per_second.var() > 2 * per_second.mean()  # a Poisson stream has var == mean: this one bursts
    assert work.max() > 8 * np.median(work)  # Pareto tail


def test_generator_runs_tasks_and_kills_what_outlives_the_drain():
    tasks = [taskgen.Task(0.0, 0.02), taskgen.Task(0.05, 0.01, hold=0.03), taskgen.Task(0.1, 30.0)]
    results = taskgen.run(tasks, None, drain=0.4)
    assert [done for _, _, done in results] == [True, True, False]
    assert results[0][1] >= 0.02 and results[1][1] >= 0.04  # at least its work (and its hold)
    assert 0.3 < results[2][1] < 5.0  # killed at the drain limit, reported with its time so far

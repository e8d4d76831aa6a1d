"""The demo's workload: seeded, bursty, heavy-tailed, and really run (forked tasks burning CPU)."""

from __future__ import annotations

import numpy as np

from lbagent.bench import taskgen

COMMANDS = (taskgen.Command("cc", 0.8, 0.01), taskgen.Command("ld", 0.2, 0.05))
SHIFTED = (taskgen.Command("cc", 0.2, 0.01), taskgen.Command("ld", 0.8, 0.05))


def test_build_schedule_is_seeded_bursty_heavy_tailed_and_shifts_its_mix():
    def build(seed: int) -> list[taskgen.Task]:
        return taskgen.make_build(seed, 200.0, 0.45, 2, (COMMANDS, SHIFTED), max_work=2.0)

    a = build(3)
    assert a == build(3) and a != build(4)
    at = np.array([t.at for t in a])
    work = np.array([t.work for t in a])
    assert np.all(np.diff(at) >= 0) and at[-1] < 200.0
    assert 0.6 < work.sum() / 200.0 < 1.2  # about the asked CPU load: 45 % of 2 CPUs
    per_second = np.bincount(at.astype(int), minlength=200)
    assert per_second.var() > 2 * per_second.mean()  # a Poisson stream has var == mean: this one bursts
    assert work.max() > 8 * np.median(work)  # Pareto tail
    first, second = ([t.comm for t in a if (t.at < 100) == early] for early in (True, False))
    assert first.count("cc") > 3 * first.count("ld") and second.count("ld") > second.count("cc")
    assert {t.comm for t in a} == {"cc", "ld"} and len(first) > len(second)  # ld's tasks are larger: fewer


def test_batch_schedule_is_poisson():
    at = np.array([t.at for t in taskgen.make_batch(3, 400.0, 0.8, 2, COMMANDS)])
    per_second = np.bincount(at.astype(int), minlength=400)
    assert 0.7 < per_second.var() / per_second.mean() < 1.4


def test_generator_runs_tasks_and_kills_what_outlives_the_drain():
    tasks = [taskgen.Task(0.0, 0.02), taskgen.Task(0.05, 0.01, hold=0.03), taskgen.Task(0.1, 30.0)]
    results = taskgen.run(tasks, drain=0.4)
    assert [done for _, _, done in results] == [True, True, False]
    assert results[0][1] >= 0.02 and results[1][1] >= 0.04  # at least its work (and its hold)
    assert 0.3 < results[2][1] < 5.0  # killed at the drain limit, reported with its time so far

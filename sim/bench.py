"""Simulator speed: steps per second of each dynamics with random valid actions (``lbagent bench sim``).

A step is one decision per environment, so a vector env of B rows counts B steps per call. Each
figure is the median of a few timed repeats after a warm-up, so one noisy moment on a shared
machine does not decide it.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

REPEATS = 3


def host_rows(seconds: float = 2.0, batches: tuple[int, ...] = (64, 1024), suite: str = "train") -> list[dict]:
    """Host dynamics on the training distribution: the single-env wrapper and vector envs."""
    from lbagent.sim.scenarios import load_suite, make_vector_env
    from lbagent.sim.single import ContractEnv

    scenario = load_suite(suite).scenarios[0]
    rows = [
        _row("host", "single (ContractEnv)", 1, _single_rate(ContractEnv(make_vector_env(scenario, 1, 0)), seconds))
    ]
    for b in batches:
        rows.append(_row("host", "vector", b, _vector_rate(make_vector_env(scenario, b, 0), seconds)))
    return rows


def numpy_call_overhead_us(calls: int = 20_000) -> float:
    """Microseconds per tiny numpy operation right now: the unit a vectorized sim's per-event cost
    is made of, so figures from a loaded machine can be read against an idle one's (~0.5 us)."""
    a = np.ones(8)
    start = time.perf_counter()
    for _ in range(calls):
        a + 1.0
    return (time.perf_counter() - start) / calls * 1e6


def _row(dynamics: str, kind: str, batch: int, rate: float) -> dict:
    return {"dynamics": dynamics, "env": kind, "batch": batch, "steps_per_s": rate}


def _vector_rate(env, seconds: float) -> float:
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=0)
    state = {"info": info}

    def step() -> int:
        mask = state["info"]["action_mask"]
        actions = np.argmax(rng.random(mask.shape) * mask, axis=1)
        state["info"] = env.step(actions)[4]
        return env.num_envs

    return _median_rate(step, seconds)


def _single_rate(env, seconds: float) -> float:
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=0)
    state = {"mask": info["action_mask"]}

    def step() -> int:
        action = int(np.argmax(rng.random(state["mask"].shape) * state["mask"]))
        state["mask"] = env.step(action)[4]["action_mask"]
        return 1

    return _median_rate(step, seconds)


def _median_rate(step: Callable[[], int], seconds: float) -> float:
    """Steps per second: warm up, then the median of REPEATS timed stretches of seconds/REPEATS."""
    for _ in range(3):
        step()
    rates = []
    for _ in range(REPEATS):
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / REPEATS:
            steps += step()
        rates.append(steps / elapsed)
    return statistics.median(rates)

"""Steps per second of each dynamics, for ``lbagent bench sim``.

Each dynamics contributes a function returning :class:`BenchRow` rows, registered in
:data:`ROW_MAKERS`. Speed claims are ratios measured in one run: every figure is the median over
``repeats`` timed chunks, and the chunks of all configurations are interleaved so that a noisy
neighbour slows them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import median

import numpy as np

BATCHES = (1, 64, 1024)


@dataclass
class BenchRow:
    dynamics: str
    env: str
    num_envs: int
    steps_per_s: float
    """Environment steps (decisions) per second, summed over the batch."""
    vs_reference: float | None = None
    """Ratio to the dynamics' pure-Python single env measured in the same run."""

    def to_json(self) -> dict:
        return asdict(self)


Runner = Callable[[], int]
"""Runs one timed chunk and returns the number of env steps it made."""


def _timed(runners: dict[str, Runner], repeats: int) -> dict[str, float]:
    """Median steps/s of each runner, chunks interleaved round-robin."""
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            steps = run()
            rates[name].append(steps / (time.perf_counter() - start))
    return {name: median(r) for name, r in rates.items()}


def _park_single(episodes: int) -> Runner:
    from lbagent.sim.park import ParkLoadBalanceEnv

    env = ParkLoadBalanceEnv()
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, env.params.num_servers, 1_000_000).tolist()
    n = env.params.num_stream_jobs

    def run() -> int:
        for i in range(episodes * n):  # whole episodes: resets are part of the cost
            if env.step(actions[i])[2]:
                env.reset()
        return episodes * n

    return run


def _park_vector(num_envs: int, steps: int) -> Runner:
    from lbagent.sim.park import ParkLoadBalanceVectorEnv

    env = ParkLoadBalanceVectorEnv(num_envs=num_envs, seed=0)
    env.reset()
    actions = np.random.default_rng(0).integers(0, env.params.num_servers, (steps, num_envs))

    def run() -> int:
        for a in actions:
            env.step(a)
        return steps * num_envs

    return run


def park_rows(repeats: int = 3, scale: float = 1.0) -> list[BenchRow]:
    """Park's pure-Python single env (the reference) against the numpy vector env at B = 1, 64, 1024.

    A vector chunk is one full episode (1000 steps, its autoreset included) times ``scale``.
    """
    n = max(1, int(1000 * scale))
    runners: dict[str, Runner] = {"single": _park_single(max(1, round(3 * scale)))}
    for b in BATCHES:
        runners[f"vector/{b}"] = _park_vector(b, n)
    rates = _timed(runners, repeats)
    reference = rates["single"]
    rows = [BenchRow("park", "single (pure Python, event heap)", 1, reference, 1.0)]
    for b in BATCHES:
        rate = rates[f"vector/{b}"]
        rows.append(BenchRow("park", "vector (numpy)", b, rate, rate / reference))
    return rows


def _random_valid(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    return np.argmax(rng.random(mask.shape) * mask, axis=-1)


def _host_single(steps: int) -> Runner:
    from lbagent.sim.scenarios import load_suite, make_vector_env
    from lbagent.sim.single import ContractEnv

    env = ContractEnv(make_vector_env(load_suite("train").scenarios[0], 1, 0))
    rng = np.random.default_rng(0)
    state = {"mask": env.reset(seed=0)[1]["action_mask"]}

    def run() -> int:
        for _ in range(steps):
            state["mask"] = env.step(int(_random_valid(rng, state["mask"])))[4]["action_mask"]
        return steps

    return run


def _host_vector(num_envs: int, steps: int) -> Runner:
    from lbagent.sim.scenarios import load_suite, make_vector_env

    env = make_vector_env(load_suite("train").scenarios[0], num_envs, 0)
    rng = np.random.default_rng(0)
    state = {"mask": env.reset(seed=0)[1]["action_mask"]}

    def run() -> int:
        for _ in range(steps):
            state["mask"] = env.step(_random_valid(rng, state["mask"]))[4]["action_mask"]
        return steps * num_envs

    return run


def host_rows(repeats: int = 3, scale: float = 1.0) -> list[BenchRow]:
    """Host dynamics on the training distribution: the single-env wrapper and the vector env.

    There is no pure-Python host reference, so the ratio column is to the single-env wrapper.
    """
    n = max(1, int(256 * scale))
    runners: dict[str, Runner] = {"single": _host_single(n)}
    for b in BATCHES:
        runners[f"vector/{b}"] = _host_vector(b, n)
    rates = _timed(runners, repeats)
    rows = [BenchRow("host", "single (ContractEnv)", 1, rates["single"], 1.0)]
    rows += [BenchRow("host", "vector (numpy)", b, rates[f"vector/{b}"], rates[f"vector/{b}"] / rates["single"])
             for b in BATCHES]
    return rows


ROW_MAKERS: dict[str, Callable[..., list[BenchRow]]] = {"park": park_rows, "host": host_rows}


def render_table(rows: list[BenchRow]):
    from rich.table import Table

    table = Table(title="lbagent bench sim: random actions, median of interleaved chunks")
    for col in ("dynamics", "env", "B", "steps/s", "vs single env"):
        table.add_column(col, justify="left" if col in ("dynamics", "env") else "right")
    for r in rows:
        ratio = "" if r.vs_reference is None else f"{r.vs_reference:,.1f}x"
        table.add_row(r.dynamics, r.env, str(r.num_envs), f"{r.steps_per_s:,.0f}", ratio)
    return table

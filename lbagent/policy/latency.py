"""Per-decision latency of a policy as the daemon calls it: one decision (B = 1) at a time, on one core."""

from __future__ import annotations

import os
import time

import numpy as np

from lbagent.policy import Policy
from lbagent.spaces import MAX_SLOTS, RawObservation, action_mask, encode


def measure_latency(policy: Policy, decisions: int, seed: int = 0, warmup: int = 200) -> dict:
    """p50/p99/max of ``act`` + ``observe`` in milliseconds, pinned to the CPU we are running on.

    Pinning keeps the figure about the policy, not about migrations between cores; the inputs are
    random observations with a random number of valid slots (a numpy actor's cost does not depend
    on their values), built as the daemon builds them so that heuristics, which read the raw
    quantities, can be measured too. Encoding is left out of the figure: it is the same for all.
    """
    rng = np.random.default_rng(seed)
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {sorted(previous)[0]})
    try:
        policy.begin_trial(1, seed)
        times = np.empty(decisions)
        for i in range(warmup + decisions):
            raw = _random_raw(rng)
            obs, mask = encode(raw), action_mask(raw)
            start = time.perf_counter_ns()
            policy.act(obs, raw, mask)
            policy.observe(np.array([-rng.exponential()]), np.array([False]))
            if i >= warmup:
                times[i - warmup] = (time.perf_counter_ns() - start) / 1e6
    finally:
        os.sched_setaffinity(0, previous)
    return {
        "policy": policy.name,
        "decisions": decisions,
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "max_ms": float(times.max()),
        "target_p99_ms": 0.5,
    }


def _random_raw(rng: np.random.Generator) -> RawObservation:
    """One decision's observation on a host of 1 to MAX_SLOTS slots, with plausible magnitudes."""
    exists = np.zeros((1, MAX_SLOTS), dtype=bool)
    exists[0, : rng.integers(1, MAX_SLOTS + 1)] = True

    def per_slot(values: np.ndarray) -> np.ndarray:
        return np.where(exists, values, 0.0)

    return RawObservation(
        slot_mask=exists,
        capacity=per_slot(np.ones((1, MAX_SLOTS))),
        runnable=per_slot(rng.poisson(2.0, (1, MAX_SLOTS)).astype(float)),
        util=per_slot(rng.random((1, MAX_SLOTS))),
        placed=per_slot(rng.poisson(1.0, (1, MAX_SLOTS)).astype(float)),
        work_left=per_slot(rng.exponential(0.5, (1, MAX_SLOTS))),
        task_work=rng.exponential(0.05, 1),
        task_unknown=np.array([False]),
        since_last=rng.exponential(0.01, 1),
    )

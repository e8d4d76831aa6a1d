"""Declarative scenarios: TOML suites of workloads, validated, and the factory of their vector envs.

A suite file (``lbagent/sim/scenarios/NAME.toml``) looks like::

    [suite]
    name = "train"
    episodes_per_trial = 4          # a trial: this many consecutive episodes of one drawn workload

    [[scenario]]
    name = "train"
    dynamics = "host"               # or "park" (Park's load_balance, parameters in [scenario.params])
    cpus = [2, 8]                   # a number is fixed; [lo, hi] is drawn uniformly at each trial start
    arrival = ["poisson", "bursty"] # a name is fixed; a list of names is drawn from at each trial start
    capacities = [1.0, 0.5]         # optional explicit per-CPU capacities (instead of cpus/capacity)

    [scenario.shift]                # optional: the workload changes at the start of an episode
    at_episode = 2
    load = 0.9                      # any of workload.SHIFTABLE
    slow_cpus = 2                   # the first 2 CPUs get a permanent noisy neighbour...
    slow_share = 0.6                # ...taking this share of each

Host keys, their defaults and meaning are those of :mod:`lbagent.sim.workload` (``DEFAULTS``).
Every fault (bad TOML, unknown key, wrong type, out-of-range value, missing key) raises
:class:`ScenarioError` naming the file, the key as a dotted path and the reason.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbagent.bounded import NotReadable, read_regular
from lbagent.errors import UserError
from lbagent.sim.workload import (
    ARRIVALS,
    CAPACITY_RANGE,
    DEFAULTS,
    MAX_COMMANDS,
    NEIGHBOURS,
    SEEN_AS,
    SHIFTABLE,
    SIZES,
    Choice,
    Fixed,
    Range,
    Shift,
    Slowdown,
    Spec,
    WorkloadSpace,
)

SUITE_DIR = Path(__file__).parent / "scenarios"
MAX_SUITE_BYTES = 1 << 20
"""A suite is a few dozen lines; a path naming a FIFO, a device or a huge file is refused unread."""
DYNAMICS = ("host", "park")


class ScenarioError(UserError, ValueError):
    """A scenario file or name that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Bound:
    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False

    def check(self, x: float) -> str | None:
        low_ok = x > self.lo if self.lo_open else x >= self.lo
        if not (low_ok and x <= self.hi and math.isfinite(x)):
            bracket = "(" if self.lo_open else "["
            return f"{x} is outside {bracket}{self.lo}, {self.hi}]"
        return None


NUMERIC: dict[str, Bound] = {
    "cpus": Bound(1, 16, integer=True),
    "tasks": Bound(1, 100_000, integer=True),
    "capacity": Bound(*CAPACITY_RANGE),
    "background": Bound(0, 0.95),
    "bg_prob": Bound(0, 1),
    "bg_period": Bound(0, 1e6, lo_open=True),
    "load": Bound(0, 0.99, lo_open=True),
    "burst_factor": Bound(1, 100),
    "burst_period": Bound(0, 1e6, lo_open=True),
    "diurnal_amplitude": Bound(0, 0.99),
    "diurnal_period": Bound(0, 1e6, lo_open=True),
    "mean_work": Bound(0, 1e4, lo_open=True),
    "pareto_shape": Bound(1, 100, lo_open=True),
    "lognormal_sigma": Bound(0, 5),
    "bimodal_ratio": Bound(1, 1e4),
    "bimodal_prob": Bound(0, 1),
    "uniform_spread": Bound(0, 0.99),
    "predict_noise": Bound(0, 5),
    "unknown_prob": Bound(0, 1),
    "balance_interval": Bound(0, 10, lo_open=True),
    "util_window": Bound(0, 1e4, lo_open=True),
    "commands": Bound(0, MAX_COMMANDS, integer=True),
    "command_spread": Bound(0, 3),
    "review_m0": Bound(0, 100, lo_open=True),
    "max_reviews": Bound(0, 16, integer=True),
    "bg_weight": Bound(1, 1024),
}
FAMILIES: dict[str, tuple[str, ...]] = {"arrival": ARRIVALS, "size": SIZES, "neighbour": NEIGHBOURS,
                                        "neighbour_seen_as": SEEN_AS}
assert set(NUMERIC) | set(FAMILIES) == set(DEFAULTS)


@dataclass(frozen=True)
class Scenario:
    """One workload of a suite: the dynamics, their parameter space, an optional mid-trial shift."""

    name: str
    dynamics: str
    episodes_per_trial: int
    space: WorkloadSpace | None = None
    shift: Shift | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the park dynamics (``[scenario.params]``)."""
    source: str = "<memory>"


@dataclass(frozen=True)
class Suite:
    name: str
    scenarios: list[Scenario]
    episodes_per_trial: int
    description: str = ""
    source: str = "<memory>"


def known_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.toml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (``train``, ``park``, ``shift``, ``heldout``) or a .toml file by path.

    A bare word is a name, even when the working directory holds a file or directory of that name
    (a run directory called ``park`` must not shadow the ``park`` suite); a path has a ``/`` or ``.toml``."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or "/" in text):
        if text not in known_suites():
            raise ScenarioError(f"unknown suite {text!r}: known suites are {', '.join(known_suites())}, or give a .toml path")
        path = SUITE_DIR / f"{text}.toml"
    try:
        data = tomllib.loads(read_regular(path, MAX_SUITE_BYTES).decode())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except NotReadable as exc:
        raise ScenarioError(f"{path}: not read: it {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: TOML nested too deeply for a scenario suite") from None
    return parse_suite(data, str(path))


def parse_suite(data: Mapping[str, Any], source: str = "<memory>") -> Suite:
    """Validate a decoded suite; every error names ``source`` and the dotted key."""

    def fail(key: str, reason: str) -> ScenarioError:
        return ScenarioError(f"{source}: {key}: {reason}")

    _known_keys(data, {"suite", "scenario"}, "", fail)
    suite = _table(data, "suite", "suite", fail)
    _known_keys(suite, {"name", "episodes_per_trial", "description"}, "suite.", fail)
    name = _string(suite, "name", "suite.name", fail)
    episodes = _integer(suite, "episodes_per_trial", "suite.episodes_per_trial", Bound(1, 1000, True), fail)
    description = _string(suite, "description", "suite.description", fail) if "description" in suite else ""
    raw = data.get("scenario")
    if not isinstance(raw, list) or not raw:
        raise fail("scenario", "missing: a suite needs at least one [[scenario]] table")
    scenarios = [_scenario(s, f"scenario[{i}]", episodes, source, fail) for i, s in enumerate(raw)]
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise fail("scenario", f"duplicate scenario names {dupes}")
    return Suite(name, scenarios, episodes, description, source)


def _scenario(raw: Any, where: str, episodes: int, source: str, fail) -> Scenario:
    if not isinstance(raw, dict):
        raise fail(where, f"expected a table, got {type(raw).__name__}")
    name = _string(raw, "name", f"{where}.name", fail)
    dynamics = _string(raw, "dynamics", f"{where}.dynamics", fail)
    if dynamics not in DYNAMICS:
        raise fail(f"{where}.dynamics", f"unknown dynamics {dynamics!r}, expected one of {list(DYNAMICS)}")
    if dynamics == "park":
        _known_keys(raw, {"name", "dynamics", "params"}, f"{where}.", fail)
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise fail(f"{where}.params", f"expected a table, got {type(params).__name__}")
        return Scenario(name, dynamics, episodes, params=dict(params), source=source)

    _known_keys(raw, {"name", "dynamics", "capacities", "shift", *DEFAULTS}, f"{where}.", fail)
    specs = {k: _spec(raw[k], k, f"{where}.{k}", fail) for k in DEFAULTS if k in raw}
    capacities = None
    if "capacities" in raw:
        capacities = _capacities(raw["capacities"], f"{where}.capacities", fail)
        for clash in ("cpus", "capacity"):
            if clash in raw:
                raise fail(f"{where}.{clash}", "conflicts with capacities (give one or the other)")
    shift = _shift(raw["shift"], f"{where}.shift", episodes, fail) if "shift" in raw else None
    space = WorkloadSpace(specs, capacities)
    return Scenario(name, dynamics, episodes, space=space, shift=shift, source=source)


def _shift(raw: Any, where: str, episodes: int, fail) -> Shift:
    if not isinstance(raw, dict):
        raise fail(where, f"expected a table, got {type(raw).__name__}")
    _known_keys(raw, {"at_episode", "slow_cpus", "slow_share", *SHIFTABLE}, f"{where}.", fail)
    at = _integer(raw, "at_episode", f"{where}.at_episode", Bound(1, max(1, episodes - 1), True), fail)
    if episodes < 2:
        raise fail(f"{where}.at_episode", "a shift needs suite.episodes_per_trial >= 2")
    overrides = {k: _spec(raw[k], k, f"{where}.{k}", fail) for k in SHIFTABLE if k in raw}
    slowdown = None
    if ("slow_cpus" in raw) != ("slow_share" in raw):
        missing = "slow_share" if "slow_cpus" in raw else "slow_cpus"
        raise fail(f"{where}.{missing}", "missing: slow_cpus and slow_share go together")
    if "slow_cpus" in raw:
        slowdown = Slowdown(
            _integer(raw, "slow_cpus", f"{where}.slow_cpus", Bound(1, 16, True), fail),
            _number(raw["slow_share"], f"{where}.slow_share", NUMERIC["background"], fail),
        )
    return Shift(at, overrides, slowdown)


def _spec(value: Any, key: str, where: str, fail) -> Spec:
    if key in FAMILIES:
        names = FAMILIES[key]
        options = value if isinstance(value, list) else [value]
        if not options or not all(isinstance(o, str) for o in options):
            raise fail(where, f"expected a name or a list of names from {list(names)}, got {value!r}")
        unknown = [o for o in options if o not in names]
        if unknown:
            raise fail(where, f"unknown {key} family {unknown[0]!r}, expected one of {list(names)}")
        return Fixed(value) if isinstance(value, str) else Choice(tuple(value))
    bound = NUMERIC[key]
    if isinstance(value, list):
        if len(value) != 2:
            raise fail(where, f"a range is [lo, hi], got {len(value)} values")
        lo, hi = (_number(v, where, bound, fail) for v in value)
        if lo > hi:
            raise fail(where, f"range [{lo}, {hi}] has lo > hi")
        return Range(lo, hi, bound.integer)
    return Fixed(_number(value, where, bound, fail))


def _number(value: Any, where: str, bound: Bound, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if bound.integer else "a number"
        raise fail(where, f"expected {kind} or a [lo, hi] range, got {type(value).__name__} {value!r}")
    if bound.integer and not isinstance(value, int):
        raise fail(where, f"expected an integer, got {value!r}")
    problem = bound.check(float(value))
    if problem:
        raise fail(where, problem)
    return value


def _capacities(value: Any, where: str, fail) -> tuple[float, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 16:
        raise fail(where, f"expected a list of 1 to 16 capacities, got {value!r}")
    return tuple(float(_number(v, where, NUMERIC["capacity"], fail)) for v in value)


def _integer(table: Mapping, key: str, where: str, bound: Bound, fail) -> int:
    if key not in table:
        raise fail(where, "missing")
    return int(_number(table[key], where, bound, fail))


def _string(table: Mapping, key: str, where: str, fail) -> str:
    if key not in table:
        raise fail(where, "missing")
    if not isinstance(table[key], str) or not table[key]:
        raise fail(where, f"expected a non-empty string, got {table[key]!r}")
    return table[key]


def _table(data: Mapping, key: str, where: str, fail) -> Mapping:
    if key not in data:
        raise fail(where, "missing")
    if not isinstance(data[key], dict):
        raise fail(where, f"expected a table, got {type(data[key]).__name__}")
    return data[key]


def _known_keys(table: Mapping, allowed: set[str], prefix: str, fail) -> None:
    for key in table:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key (expected one of {sorted(allowed)})")


# ------------------------------------------------------------------------------------------------


def make_vector_env(scenario: Scenario, num_envs: int, seed: int, host_options: Mapping[str, Any] | None = None):
    """The contract-speaking vector env of a scenario, running its trials of ``episodes_per_trial``.

    ``host_options`` are extra :class:`lbagent.sim.host.HostVectorEnv` arguments for experiments
    (``pin_placements``, ``exact_state``); a park scenario refuses them."""
    if scenario.dynamics == "park":
        if host_options:
            raise ScenarioError(f"{scenario.source}: scenario {scenario.name!r}: {sorted(host_options)} "
                                f"apply to host dynamics only")
        try:
            from lbagent.sim.park import ParkContractVectorEnv
        except ImportError as exc:
            raise ScenarioError(
                f"{scenario.source}: scenario {scenario.name!r}: park dynamics unavailable "
                f"(lbagent.sim.park.ParkContractVectorEnv: {exc})"
            ) from None
        return ParkContractVectorEnv(
            num_envs, seed, episodes_per_trial=scenario.episodes_per_trial, **scenario.params
        )
    from lbagent.sim.host import HostVectorEnv

    return HostVectorEnv(
        num_envs,
        seed=seed,
        space=scenario.space,
        episodes_per_trial=scenario.episodes_per_trial,
        shift=scenario.shift,
        **(host_options or {}),
    )

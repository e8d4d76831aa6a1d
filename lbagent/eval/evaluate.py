"""``lbagent eval``: every policy on the same seeded episodes, one table.

Fairness is the point: each policy sees exactly the same scenarios, seeds, arrivals and sizes,
because env ``i`` of a vector env seeded ``s`` is seeded ``s + i`` whoever drives it. Each vector env
row runs one trial (``episodes_per_trial`` consecutive episodes of its scenario), so an RL² policy
meets episodes in the order it was trained to adapt over.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lbagent.policy import Policy, resolve_policy
from lbagent.policy.heuristics import UnsupportedPolicy
from lbagent.policy.specs import BASELINES
from lbagent.sim.base import EpisodeStats

ProgressHook = Callable[[int], None]
"""Called with the number of episodes just finished (drives a progress bar)."""


@dataclass
class PolicyResult:
    policy: str
    mean_jct: float | None
    p99_jct: float | None
    mean_slowdown: float | None
    ratio_to_best_heuristic: float | None = None
    per_scenario: dict[str, float] = field(default_factory=dict)
    """Mean job completion time on each scenario of the suite."""
    episode_mean_jct: list[float] = field(default_factory=list)
    """Per-episode mean completion time, in trial order (for plots and significance checks)."""
    note: str | None = None
    """Why a policy has no figures (e.g. ``kernel`` under dynamics without a kernel balancer)."""


@dataclass
class EvalReport:
    suite: str
    episodes: int
    seed: int
    results: list[PolicyResult]
    notes: list[str] = field(default_factory=list)
    """Conclusions drawn from the table (the headroom experiment's gap between rules)."""

    def to_json(self) -> dict:
        return {
            "suite": self.suite,
            "episodes": self.episodes,
            "seed": self.seed,
            "results": [asdict(r) for r in self.results],
            "notes": self.notes,
        }


def run_trials(policy: Policy, make_env, num_envs: int, episodes_per_env: int, seed: int,
               on_episode: ProgressHook | None = None) -> list[list[EpisodeStats]]:
    """Drive ``num_envs`` envs until each finished ``episodes_per_env`` episodes; stats per env.

    Rows that are done keep stepping (the vector env steps all rows at once) but their episodes
    are not counted, so every env contributes the same number of episodes.
    """
    env = make_env(num_envs, seed)
    obs, info = env.reset(seed=seed)
    policy.begin_trial(num_envs, seed)
    done: list[list[EpisodeStats]] = [[] for _ in range(num_envs)]
    remaining = num_envs * episodes_per_env
    try:
        while remaining > 0:
            actions = policy.act(obs, info["raw"], info["action_mask"])
            obs, rew, _terminated, _truncated, info = env.step(actions)
            policy.observe(rew, info["episode_start"])
            for i, stats in enumerate(info.get("episode") or ()):
                if stats is not None and len(done[i]) < episodes_per_env:
                    done[i].append(stats)
                    remaining -= 1
                    if on_episode:
                        on_episode(1)
    finally:
        env.close()
    return done


def summarize(name: str, per_scenario: dict[str, list[EpisodeStats]]) -> PolicyResult:
    episodes = [ep for eps in per_scenario.values() for ep in eps]
    jct = np.concatenate([ep.jct for ep in episodes])
    slowdown = np.concatenate([ep.slowdown for ep in episodes])
    return PolicyResult(
        policy=name,
        mean_jct=float(jct.mean()),
        p99_jct=float(np.percentile(jct, 99)),
        mean_slowdown=float(slowdown.mean()),
        per_scenario={k: float(np.concatenate([ep.jct for ep in v]).mean()) for k, v in per_scenario.items()},
        episode_mean_jct=[ep.mean_jct for ep in episodes],
    )


def run_suite(policy: Policy, suite, episodes: int, seed: int, scenarios=None,
              on_episode: ProgressHook | None = None,
              host_options: Mapping[str, object] | None = None) -> dict[str, list[EpisodeStats]]:
    """The first ``episodes`` episodes of every scenario (trial-major), seeded ``seed + 1000 j``
    for scenario ``j``: the protocol both ``lbagent eval`` and training's held-out checks use.
    ``host_options`` go to every env (see :func:`lbagent.sim.scenarios.make_vector_env`)."""
    from lbagent.sim.scenarios import make_vector_env

    trials = math.ceil(episodes / suite.episodes_per_trial)
    per_env = min(episodes, suite.episodes_per_trial)
    per_scenario: dict[str, list[EpisodeStats]] = {}
    for j, scenario in enumerate(scenarios or suite.scenarios):
        stats = run_trials(
            policy,
            lambda b, s, sc=scenario: make_vector_env(sc, num_envs=b, seed=s, host_options=host_options),
            trials,
            per_env,
            seed + 1000 * j,
            on_episode,
        )
        per_scenario[scenario.name] = [ep for row in stats for ep in row][:episodes]
    return per_scenario


def evaluate_policy(spec: str, suite, episodes: int, seed: int,
                    on_episode: ProgressHook | None = None) -> PolicyResult:
    policy = resolve_policy(spec, seed)
    try:
        per_scenario = run_suite(policy, suite, episodes, seed, on_episode=on_episode)
    except UnsupportedPolicy as exc:
        return PolicyResult(spec, None, None, None, note=str(exc))
    return summarize(spec, per_scenario)


def evaluate(suite, specs: Sequence[str], episodes: int, seed: int,
             on_episode: ProgressHook | None = None) -> EvalReport:
    """Evaluate ``specs``; the ratio is always to the best of *all* heuristics on the same episodes,
    so asking for ``--policies default,random`` cannot flatter a policy by a weak reference."""
    results = [evaluate_policy(s, suite, episodes, seed, on_episode) for s in specs]
    reference = [r for r in results if r.policy in BASELINES]
    reference += [evaluate_policy(h, suite, episodes, seed, on_episode) for h in BASELINES if h not in specs]
    add_ratios(results, reference)
    return EvalReport(suite.name, episodes, seed, results)


def add_ratios(results: Iterable[PolicyResult], heuristics: Iterable[PolicyResult]) -> None:
    figures = [r.mean_jct for r in heuristics if r.mean_jct is not None]
    if not figures:
        return
    best = min(figures)
    for r in results:
        if r.mean_jct is not None:
            r.ratio_to_best_heuristic = r.mean_jct / best


def render_table(report: EvalReport, title: str | None = None):
    from rich.table import Table

    table = Table(title=title or f"suite {report.suite}: {report.episodes} episodes per scenario, seed {report.seed}")
    for col in ("policy", "mean JCT", "p99 JCT", "mean slowdown", "vs best heuristic"):
        table.add_column(col, justify="left" if col == "policy" else "right")

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for r in report.results:
        table.add_row(
            r.policy,
            fmt(r.mean_jct, ".2f"),
            fmt(r.p99_jct, ".2f"),
            fmt(r.mean_slowdown, ".2f"),
            fmt(r.ratio_to_best_heuristic, ".3f") + ("x" if r.ratio_to_best_heuristic is not None else ""),
        )
    return table


def write_json(report: EvalReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def plot(report: EvalReport, path: Path) -> None:
    """Bars of mean completion time with the p99 as a marker: the two figures the table ranks by."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r.policy, r.mean_jct, r.p99_jct) for r in report.results if r.mean_jct is not None and r.p99_jct is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6))
    x = np.arange(len(rows))
    ax.bar(x, [mean for _, mean, _ in rows], color="#4C72B0", label="mean JCT")
    ax.scatter(x, [p99 for _, _, p99 in rows], color="#C44E52", marker="_", s=400, label="p99 JCT", zorder=3)
    ax.set_xticks(x, [policy for policy, _, _ in rows], rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("job completion time (time units, log)")
    ax.set_title(f"lbagent eval: suite {report.suite}, seed {report.seed}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

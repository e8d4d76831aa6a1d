"""The paper's two experiments beyond the headline table, as table + JSON + PNG.

- **Adaptation curve**: mean job completion time per episode index within a trial, on a suite whose
  workload changes mid-trial (``shift``). A DreamerV3+RL² policy is run twice: carrying its memory
  across the trial's episodes (as trained) and resetting it at every episode (the ablation); if the
  memory helps, the carried curve recovers faster after the shift. Stateless policies (A2C,
  heuristics) give one curve.
- **Forgetting**: train on scenario A, evaluate on A; continue training on scenario B; evaluate on A
  again. The figure is the relative change of A's mean completion time (positive = forgot).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

ADAPT_SEED = 700_000
"""Base seed of the adaptation runs (disjoint from training and ``EVAL_SEED``)."""


def _variants(spec: str) -> list[tuple[str, object]]:
    """(label, policy) pairs to run for one spec: both memory modes for a recurrent policy."""
    from lbagent.eval.evaluate import resolve_policy
    from lbagent.policy.files import load_policy
    from lbagent.policy.heuristics import HEURISTICS

    if spec in HEURISTICS:
        return [(spec, resolve_policy(spec, ADAPT_SEED))]
    policy = load_policy(spec)
    if policy.metadata["algorithm"] != "dreamer":
        return [(spec, policy)]
    return [(f"{spec} (carried memory)", policy),
            (f"{spec} (reset each episode)", load_policy(spec, reset_each_episode=True))]


def adaptation(specs: list[str], suite_name: str = "shift", trials: int = 4, seed: int = ADAPT_SEED) -> dict:
    """Per policy variant and scenario, mean JCT at each episode index of a trial (averaged over trials)."""
    from lbagent.eval.evaluate import run_trials
    from lbagent.sim.scenarios import load_suite, make_vector_env

    suite = load_suite(suite_name)
    curves: dict[str, dict[str, list[float]]] = {}
    for spec in specs:
        for label, policy in _variants(spec):
            per_scenario = {}
            for j, scenario in enumerate(suite.scenarios):
                rows = run_trials(policy, lambda b, s, sc=scenario: make_vector_env(sc, num_envs=b, seed=s),
                                  trials, suite.episodes_per_trial, seed + 1000 * j)
                per_scenario[scenario.name] = [float(np.mean([row[k].mean_jct for row in rows]))
                                               for k in range(suite.episodes_per_trial)]
            per_scenario["mean"] = [float(np.mean([c[k] for c in per_scenario.values()]))
                                    for k in range(suite.episodes_per_trial)]
            curves[label] = per_scenario
    shifts = {sc.name: getattr(getattr(sc, "shift", None), "at_episode", None) for sc in suite.scenarios}
    return {"experiment": "adaptation", "suite": suite.name, "trials": trials, "seed": seed,
            "episodes_per_trial": suite.episodes_per_trial, "shift_at_episode": shifts, "curves": curves}


def forgetting(algo: str, preset_name: str, suite_name: str, scenario_a: str, scenario_b: str,
               env_steps: int, seed: int, out: Path, episodes: int = 4, overrides: dict | None = None) -> dict:
    """Train ``env_steps`` on A, evaluate on A, train ``env_steps`` on B, evaluate on A again.

    ``overrides`` replaces fields of the preset's DreamerConfig (e.g. a shorter prefill)."""
    from lbagent.agent.train import PRESETS, evaluate_actor
    from lbagent.sim.scenarios import load_suite, make_vector_env

    suite = load_suite(suite_name)
    by_name = {sc.name: sc for sc in suite.scenarios}
    for name in (scenario_a, scenario_b):
        if name not in by_name:
            from lbagent.errors import UserError

            raise UserError(f"suite {suite_name!r} has no scenario {name!r} (has: {', '.join(by_name)})")
    a, b = by_name[scenario_a], by_name[scenario_b]
    preset = PRESETS[preset_name]
    num_envs = preset.config.num_envs

    def env_of(scenario):
        return make_vector_env(scenario, num_envs=num_envs, seed=seed)

    def score(policy) -> float:
        return evaluate_actor(policy, suite_name, episodes, scenarios=[a])["mean_jct"]

    if algo == "dreamer":
        from lbagent.agent.train import DreamerTrainer

        cfg = replace(preset.config, env_steps=2 * env_steps, wall_minutes=1e9, eval_every=10**12,
                      checkpoint_every=10**12, **(overrides or {}))
        trainer = DreamerTrainer(preset, seed, out, cfg, env=env_of(a))
        trainer.run(until_env_steps=env_steps)
        after_a = score(trainer.eval_policy())
        trainer.switch_env(env_of(b), seed + 1)
        trainer.run(until_env_steps=2 * env_steps)
        after_b = score(trainer.eval_policy())
        updates = trainer.counters.updates
    else:
        from stable_baselines3 import A2C

        from lbagent.agent.a2c import ContractVecEnv, export_weights
        from lbagent.policy.numpy_actor import MlpActor

        model = A2C("MlpPolicy", ContractVecEnv(env_of(a), num_envs), seed=seed, device="cpu")
        model.learn(total_timesteps=env_steps)
        after_a = score(MlpActor(*export_weights(model), name="a2c"))
        model.set_env(ContractVecEnv(env_of(b), num_envs))
        model.learn(total_timesteps=env_steps, reset_num_timesteps=False)
        after_b = score(MlpActor(*export_weights(model), name="a2c"))
        updates = model._n_updates
    return {"experiment": "forgetting", "algo": algo, "preset": preset_name, "suite": suite_name,
            "scenario_a": scenario_a, "scenario_b": scenario_b, "env_steps_each": env_steps, "seed": seed,
            "updates": updates, "a_mean_jct_after_a": after_a, "a_mean_jct_after_b": after_b,
            "forgetting": after_b / after_a - 1.0}


# ------------------------------------------------------------------------------------------------
# Output


def adaptation_table(result: dict):
    from rich.table import Table

    n = result["episodes_per_trial"]
    table = Table(title=f"adaptation on suite {result['suite']}: mean JCT per episode of a trial "
                        f"({result['trials']} trials per scenario, seed {result['seed']})")
    table.add_column("policy")
    for k in range(n):
        table.add_column(f"ep {k + 1}", justify="right")
    for label, curves in result["curves"].items():
        table.add_row(label, *(f"{v:.3f}" for v in curves["mean"]))
    return table


def forgetting_table(results: list[dict]):
    from rich.table import Table

    table = Table(title="forgetting: train on A, then on B; evaluate on A (mean JCT)")
    for col in ("algo", "A", "B", "env steps each", "A after A", "A after B", "change"):
        table.add_column(col, justify="left" if col in ("algo", "A", "B") else "right")
    for r in results:
        table.add_row(r["algo"], r["scenario_a"], r["scenario_b"], str(r["env_steps_each"]),
                      f"{r['a_mean_jct_after_a']:.3f}", f"{r['a_mean_jct_after_b']:.3f}", f"{100 * r['forgetting']:+.1f}%")
    return table


def plot_adaptation(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result["episodes_per_trial"]
    x = np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, curves in result["curves"].items():
        ax.plot(x, curves["mean"], marker="o", label=label)
    shifts = {v for v in result["shift_at_episode"].values() if v is not None}
    for at in shifts:
        # at_episode counts from 0: the change falls between (1-based) episodes at and at + 1
        ax.axvline(at + 0.5, color="grey", linestyle=":", label="workload shift")
    ax.set_xticks(x)
    ax.set_yscale("log")  # policies can differ by 100x (an untrained A2C vs SED)
    ax.set_xlabel("episode within the trial")
    ax.set_ylabel("mean job completion time (log)")
    ax.set_title(f"adaptation within a trial: suite {result['suite']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_forgetting(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = np.arange(len(results))
    ax.bar(x - 0.2, [r["a_mean_jct_after_a"] for r in results], 0.4, label="on A after training on A")
    ax.bar(x + 0.2, [r["a_mean_jct_after_b"] for r in results], 0.4, label="on A after continuing on B")
    ax.set_xticks(x, [r["algo"] for r in results])
    ax.set_ylabel("mean job completion time on A")
    ax.set_title("forgetting")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(result, path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")

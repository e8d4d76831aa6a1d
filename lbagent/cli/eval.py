"""Offline evaluation commands: eval, replay and the experiments."""

from __future__ import annotations

import click

from lbagent.cli.common import csv_list, show_report
from lbagent.policy.specs import SPEC_HELP


@click.command("eval")
@click.option("--suite", required=True, help="A suite name (train, park, shift, heldout, batch) or a scenario .toml file.")
@click.option("--policies", required=True, help="Comma-separated policy specs. " + SPEC_HELP)
@click.option("--episodes", default=8, show_default=True, type=click.IntRange(1), help="Episodes per scenario.")
@click.option("--seed", default=1000, show_default=True, type=int, help="Base seed (keep it away from training seeds).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), help="Write a PNG bar chart.")
def eval_cmd(suite: str, policies: str, episodes: int, seed: int, json_path: str | None, plot_path: str | None) -> None:
    """Run policies on the same seeded episodes and compare them.

    The ratio column is each policy's mean job completion time over the best heuristic's (all
    heuristics are run on the same episodes as the reference).

    \b
    Example:
      lbagent eval --suite park --policies lwl,sed,random --episodes 8 --seed 1000 --json park.json
    """
    from rich.console import Console
    from rich.progress import Progress

    from lbagent.eval import evaluate
    from lbagent.policy.specs import BASELINES
    from lbagent.sim.scenarios import load_suite

    specs = csv_list(policies)
    loaded = load_suite(suite)
    runs = len(set(specs) | set(BASELINES))
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"eval {loaded.name}", total=runs * episodes * len(loaded.scenarios))
        report = evaluate.evaluate(loaded, specs, episodes, seed, lambda n: progress.advance(task, n))
    show_report(report, json_path, plot_path)


@click.command("replay")
@click.argument("trace_path", metavar="TRACE", type=click.Path(dir_okay=False))
@click.option("--policies", default="jsq,lwl,sed,po2,round_robin,random,kernel", show_default=True,
              help="Comma-separated: heuristic names, shipped policy names or policy files.")
@click.option("--episodes", default=4, show_default=True, type=click.IntRange(1), help="Replays per policy (predictor noise seeds).")
@click.option("--seed", default=1000, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the results as JSON.")
def replay_cmd(trace_path: str, policies: str, episodes: int, seed: int, json_path: str | None) -> None:
    """Replay a recorded trace's arrivals and task sizes on its CPUs in the simulator, per policy.

    The table is the one `lbagent eval` prints, on the trace's tasks instead of a scenario suite.

    \b
    Example:
      lbagent replay host.jsonl.gz --policies lwl,sed,kernel --episodes 4
    """
    from pathlib import Path

    from rich.console import Console

    from lbagent.eval.replay import replay, replay_jobs
    from lbagent.eval.trace import read_trace

    jobs = replay_jobs(read_trace(trace_path), trace_path)
    title = f"replay {Path(trace_path).name}: {jobs.work.size} tasks on {len(jobs.capacities)} CPUs, {episodes} episodes"
    report = replay(jobs, csv_list(policies), episodes, seed, title)
    show_report(report, json_path, title=title)
    if jobs.unfinished or jobs.unsized:
        Console(stderr=True).print(f"left out: {jobs.unfinished} tasks without an exit, {jobs.unsized} without a CPU time")


@click.group("experiment")
def experiment() -> None:
    """The adaptation-curve, forgetting and headroom experiments (table, JSON, PNG)."""


@experiment.command("adaptation")
@click.option("--policies", required=True, help="Comma-separated policy files/names (and heuristics for reference).")
@click.option("--suite", default="shift", show_default=True, help="A suite whose workload changes within a trial.")
@click.option("--trials", default=4, show_default=True, type=click.IntRange(1), help="Trials per scenario.")
@click.option("--seed", default=700_000, show_default=True, type=int, help="Base seed (held out from training).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the curves as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), help="Write a PNG plot.")
def experiment_adaptation(policies: str, suite: str, trials: int, seed: int, json_path: str | None,
                          plot_path: str | None) -> None:
    """Mean JCT per episode of a trial around a workload shift; RL² policies run with their memory
    carried across episodes and reset at each episode.

    \b
    Example:
      lbagent experiment adaptation --policies runs/host/policy.safetensors,sed --suite shift \\
          --json docs/adaptation.json --plot docs/adaptation.png
    """
    from pathlib import Path

    from rich.console import Console

    from lbagent.eval import experiments

    result = experiments.adaptation(csv_list(policies), suite, trials, seed)
    Console().print(experiments.adaptation_table(result))
    if json_path:
        experiments.write_json(result, Path(json_path))
    if plot_path:
        experiments.plot_adaptation(result, Path(plot_path))


@experiment.command("headroom")
@click.option("--suite", default="shift", show_default=True, help="A host suite name or a scenario .toml file.")
@click.option("--episodes", default=8, show_default=True, type=click.IntRange(1), help="Episodes per scenario.")
@click.option("--seed", default=1000, show_default=True, type=int, help="Base seed (the eval protocol's).")
@click.option("--hints", is_flag=True, help="Slot actions start the task there but leave it movable (not the contract's pin).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the results as JSON.")
def experiment_headroom(suite: str, episodes: int, seed: int, hints: bool, json_path: str | None) -> None:
    """Informed and oracle placement rules, las and sized at several thresholds and the share
    oracle, next to every baseline: how far below the best baseline can any rule go on this suite,
    and how far is the best fixed share rule from the oracle?

    \b
    Example:
      lbagent experiment headroom --suite batch --episodes 8 --seed 1000 --json headroom-batch.json
    """
    from lbagent.eval.headroom import headroom
    from lbagent.sim.scenarios import load_suite

    loaded = load_suite(suite)
    if any(sc.dynamics != "host" for sc in loaded.scenarios):
        raise click.UsageError(f"suite {loaded.name!r}: the headroom rules need host dynamics (a kernel balancer)")
    mode = "slot actions are movable hints" if hints else "slot actions pin"
    show_report(headroom(loaded, episodes, seed, hints), json_path,
                 title=f"headroom on {loaded.name}: {episodes} episodes per scenario, seed {seed}, {mode}")


@experiment.command("forgetting")
@click.option("--algos", default="dreamer,a2c", show_default=True, help="Comma-separated: dreamer, a2c.")
@click.option("--preset", type=click.Choice(["smoke", "host", "park"]), default="host", show_default=True,
              help="Model sizes and schedule to train with.")
@click.option("--suite", default="heldout", show_default=True, help="Suite holding scenarios A and B.")
@click.option("--a", "scenario_a", required=True, help="Scenario trained on first and evaluated on.")
@click.option("--b", "scenario_b", required=True, help="Scenario trained on second.")
@click.option("--env-steps", required=True, type=click.IntRange(1), help="Environment steps on each scenario.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(file_okay=False), default="runs/forgetting", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), help="Write a PNG plot.")
def experiment_forgetting(algos: str, preset: str, suite: str, scenario_a: str, scenario_b: str, env_steps: int,
                          seed: int, out: str, json_path: str | None, plot_path: str | None) -> None:
    """Train on A, evaluate on A, continue on B, evaluate on A again; for each algorithm.

    \b
    Example:
      lbagent experiment forgetting --preset host --suite heldout --a high-load --b wide-capacity \\
          --env-steps 100000 --json docs/forgetting.json --plot docs/forgetting.png
    """
    from pathlib import Path

    from rich.console import Console

    from lbagent.eval import experiments

    results = [experiments.forgetting(algo, preset, suite, scenario_a, scenario_b, env_steps, seed,
                                      Path(out) / algo) for algo in csv_list(algos)]
    Console().print(experiments.forgetting_table(results))
    if json_path:
        experiments.write_json(results, Path(json_path))
    if plot_path:
        experiments.plot_forgetting(results, Path(plot_path))

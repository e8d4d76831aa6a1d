"""The ``lbagent`` command line. Each command imports its machinery lazily, so ``lbagent run`` never
pays for (or needs) the simulator or torch."""

from __future__ import annotations

import sys

import click

from lbagent import __version__
from lbagent.errors import UserError


class _Group(click.Group):
    """Turns a :class:`UserError` from any command into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"lbagent: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lbagent")
def main() -> None:
    """lbagent: a live CPU load-balancing agent for Linux with a learned policy.

    \b
    Example:
      lbagent eval --suite park --policies lwl,sed,random --episodes 8 --seed 1000
    """


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give at least one name")
    return items


@main.command("eval")
@click.option("--suite", required=True, help="A suite name (train, park, shift, heldout) or a scenario .toml file.")
@click.option("--policies", required=True, help="Comma-separated: heuristic names, shipped policy names or policy files.")
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
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress

    from lbagent import evaluate
    from lbagent.policy.heuristics import HEURISTICS
    from lbagent.sim.scenarios import load_suite

    specs = _csv(policies)
    loaded = load_suite(suite)
    runs = len(set(specs) | set(HEURISTICS))
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"eval {loaded.name}", total=runs * episodes * len(loaded.scenarios))
        report = evaluate.evaluate(loaded, specs, episodes, seed, lambda n: progress.advance(task, n))
    Console().print(evaluate.render_table(report))
    for r in report.results:
        if r.note:
            console.print(f"{r.policy}: {r.note}")
    if json_path:
        evaluate.write_json(report, Path(json_path))
    if plot_path:
        evaluate.plot(report, Path(plot_path))


@main.command("sim-train")
@click.option("--algo", type=click.Choice(["dreamer", "a2c"]), default="dreamer", show_default=True,
              help="DreamerV3 + RL², or stable-baselines3's A2C baseline with its defaults.")
@click.option("--preset", type=click.Choice(["smoke", "host", "park"]), default="host", show_default=True,
              help="smoke: <2 min check; host: the default policy (<=60 min); park: Park's benchmark.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the run (model, replay, env rows).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (checkpoint, metrics.jsonl, policy.safetensors). Default runs/ALGO-PRESET-sSEED.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt exactly where it stopped.")
@click.option("--env-steps", type=click.IntRange(1), default=None, help="Override the preset's env-step limit.")
@click.option("--match-run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A2C only: train for as many env steps as the dreamer run in this directory did.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still go to metrics.jsonl).")
def sim_train(algo: str, preset: str, seed: int, out: str | None, resume: bool, env_steps: int | None,
              match_run: str | None, no_progress: bool) -> None:
    """Train a policy in the simulator and write OUT/policy.safetensors.

    \b
    Example:
      lbagent sim-train --preset smoke --seed 0 --out runs/smoke
      lbagent sim-train --preset host --seed 1 --out runs/host        # the default policy, <= 60 min
      lbagent sim-train --algo a2c --preset host --match-run runs/host --out runs/host-a2c
    """
    from pathlib import Path

    from rich.console import Console

    run_dir = Path(out or f"runs/{algo}-{preset}-s{seed}")
    if algo == "dreamer":
        if match_run:
            raise click.UsageError("--match-run is for --algo a2c")
        from lbagent.agent.train import train_dreamer

        path, final = train_dreamer(preset, seed, run_dir, resume, progress=not no_progress, env_steps=env_steps)
    else:
        from lbagent.agent.a2c import steps_of_run, train_a2c

        steps = env_steps or (steps_of_run(Path(match_run)) if match_run else None)
        path, final = train_a2c(preset, seed, run_dir, steps, progress=not no_progress)
    Console().print(f"policy: {path}\nheld-out mean JCT {final['mean_jct']:.2f} "
                    f"(random {final['random_mean_jct']:.2f}) on suite {final['suite']}")


@main.group("bench")
def bench() -> None:
    """Speed measurements (tables; --json for machines)."""


@bench.command("policy")
@click.option("--policy", "spec", default="default", show_default=True, help="A shipped policy name or a policy file.")
@click.option("--decisions", default=5000, show_default=True, type=click.IntRange(100), help="Timed decisions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_policy(spec: str, decisions: int, as_json: bool) -> None:
    """Per-decision latency of an exported policy (B = 1, numpy, pinned to one core).

    \b
    Example:
      lbagent bench policy --policy runs/host/policy.safetensors --decisions 5000
    """
    from lbagent.policy.files import load_policy
    from lbagent.policy.latency import measure_latency

    _report(measure_latency(load_policy(spec), decisions), f"decision latency: {spec}", as_json)


@bench.command("train")
@click.option("--preset", type=click.Choice(["smoke", "host", "park"]), default="host", show_default=True)
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(1.0), help="Time per phase.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_train(preset: str, seconds: float, as_json: bool) -> None:
    """Training speed of a preset: environment steps/s while collecting, gradient updates/s.

    \b
    Example:
      lbagent bench train --preset host --seconds 20
    """
    from lbagent.agent.train import bench_training

    _report(bench_training(preset, seconds), f"training speed: preset {preset}", as_json)


@bench.command("sim")
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(0.3), help="Time per row.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_sim(seconds: float, as_json: bool) -> None:
    """Simulator steps/s (one decision per env) with random valid actions, per dynamics and batch.

    \b
    Example:
      lbagent bench sim --seconds 3
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from lbagent.sim.bench import host_rows, numpy_call_overhead_us

    rows = host_rows(seconds)
    overhead = numpy_call_overhead_us()
    if as_json:
        click.echo(json.dumps({"rows": rows, "numpy_call_us": overhead}, indent=2))
        return
    table = Table(title=f"simulator speed (random actions, median of 3; a tiny numpy op takes {overhead:.2f} us here)")
    for column in ("dynamics", "env", "batch", "steps/s"):
        table.add_column(column, justify="right" if column in ("batch", "steps/s") else "left")
    for r in rows:
        table.add_row(r["dynamics"], r["env"], str(r["batch"]), f"{r['steps_per_s']:,.0f}")
    Console().print(table)


def _report(figures: dict, title: str, as_json: bool) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@main.group("experiment")
def experiment() -> None:
    """The adaptation-curve and forgetting experiments (table, JSON, PNG)."""


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

    from lbagent import experiments

    result = experiments.adaptation(_csv(policies), suite, trials, seed)
    Console().print(experiments.adaptation_table(result))
    if json_path:
        experiments.write_json(result, Path(json_path))
    if plot_path:
        experiments.plot_adaptation(result, Path(plot_path))


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

    from lbagent import experiments

    results = [experiments.forgetting(algo, preset, suite, scenario_a, scenario_b, env_steps, seed,
                                      Path(out) / algo) for algo in _csv(algos)]
    Console().print(experiments.forgetting_table(results))
    if json_path:
        experiments.write_json(results, Path(json_path))
    if plot_path:
        experiments.plot_forgetting(results, Path(plot_path))


if __name__ == "__main__":
    main()

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


if __name__ == "__main__":
    main()

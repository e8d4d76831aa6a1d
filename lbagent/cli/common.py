"""What every command group shares: one-line errors, logging set-up, CSV options, report output."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lbagent.errors import UserError
from lbagent.live.config import PROBE_MODES, PROBES

PROBE_CHOICE = click.Choice(PROBES)
PROBE_MODE_OPTION = click.option(
    "--mode", "mode", default="lite", show_default=True, type=click.Choice(PROBE_MODES),
    help="BPF probe mode: lite (nothing on the context-switch path, run queues sampled at each window's end) "
         "or exact (run-queue integrals from sched_switch/wakeup, costs more). The procfs probe ignores it.",
)


class Group(click.Group):
    """Turns a :class:`UserError` from any command into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"lbagent: error: {exc}", err=True)
            sys.exit(2)


def setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="lbagent: %(message)s")


def check_json_target(path: str | None) -> None:
    """Refuse an unwritable ``--json`` before minutes of measuring, not after."""
    if path and path != "-":
        parent = Path(path).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UserError(f"--json {path}: cannot write into {parent}")


def csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give at least one name")
    return items


def report(figures: dict, title: str, as_json: bool) -> None:
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


def show_report(report, json_path: str | None, plot_path: str | None = None, title: str | None = None) -> None:
    """What ``eval`` and ``replay`` print and write: the table, why a policy has no figures, JSON, PNG."""
    from pathlib import Path

    from rich.console import Console

    from lbagent.eval import evaluate

    Console().print(evaluate.render_table(report, title))
    for note in report.notes:
        Console().print(note)
    for r in report.results:
        if r.note:
            Console(stderr=True).print(f"{r.policy}: {r.note}")
    if json_path:
        evaluate.write_json(report, Path(json_path))
    if plot_path:
        evaluate.plot(report, Path(plot_path))

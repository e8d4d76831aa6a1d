"""The ``lbagent`` command line. Each command imports its machinery lazily, so ``lbagent run`` never
pays for (or needs) the simulator or torch."""

from __future__ import annotations

import click

from lbagent import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lbagent")
def main() -> None:
    """lbagent: a live CPU load-balancing agent for Linux with a learned policy.

    \b
    Example:
      lbagent eval --suite park --policies lwl,sed,random --episodes 8 --seed 1000
    """


PROBE_CHOICE = click.Choice(["auto", "bpf", "procfs"])


class Failure(click.ClickException):
    """A clear one-line error for bad input or an unusable host: exit code 2, no traceback."""

    exit_code = 2


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="lbagent: %(message)s")


def _open_probe_or_exit(kind: str, scope=None):
    """A probe, or a one-line reason and exit code 2 (missing root, BTF, object, failed load)."""
    from lbagent.probe import ProbeUnavailable, open_probe

    _setup_logging()
    try:
        return open_probe(kind, scope)
    except ProbeUnavailable as exc:
        raise Failure(str(exc)) from None


def _probe_table(snapshot, t: float, kind: str):
    from rich.table import Table

    window = snapshot.window_ns / 1e9
    table = Table(title=f"lbagent probe ({kind})  t={t:.1f}s  lost={snapshot.lost}")
    for column in ("cpu", "runq", "util", "arrivals/s"):
        table.add_column(column, justify="right")
    for c in snapshot.cpus:
        table.add_row(str(c.cpu), f"{c.runq:.2f}", f"{c.util:.0%}", f"{c.arrivals / window:.1f}")
    return table


@main.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01), help="Window, s.")
@click.option("--duration", default=None, type=click.FloatRange(min=0), help="Stop after S seconds (default: Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per window on stdout.")
@click.option("--probe", "kind", default="auto", show_default=True, type=PROBE_CHOICE)
def probe(interval: float, duration: float | None, as_json: bool, kind: str) -> None:
    """Watch the scheduler per CPU: mean run-queue length, utilization and new tasks per window.

    With --json each line is {"t", "probe", "cpus": [{"cpu", "runq", "util", "arrivals"}], "lost"}
    where runq is the window's mean number of runnable tasks and arrivals the window's new tasks.

    \b
    Example:
      lbagent probe --interval 0.5 --duration 10 --json --probe bpf
    """
    import json
    import time

    from lbagent.probe.stream import snapshot_record, windows

    p = _open_probe_or_exit(kind)
    start = time.monotonic()
    try:
        if as_json:
            for snap, _ in windows(p, interval, duration):
                click.echo(json.dumps(snapshot_record(snap, time.monotonic() - start, p.kind)))
        else:
            from rich.live import Live

            with Live(auto_refresh=False) as live:
                for snap, _ in windows(p, interval, duration):
                    live.update(_probe_table(snap, time.monotonic() - start, p.kind), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        p.close()


if __name__ == "__main__":
    main()

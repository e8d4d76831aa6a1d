"""Commands that run on a host: probe, record, run, status, service."""

from __future__ import annotations

import sys

import click

from lbagent.cli.common import PROBE_CHOICE, PROBE_MODE_OPTION, setup_logging
from lbagent.errors import UserError
from lbagent.policy.specs import SPEC_HELP


def _open_probe(kind: str, mode: str, scope=None):
    """A probe; ProbeUnavailable (a UserError) becomes one line and exit code 2."""
    from lbagent.live.probe import open_probe

    setup_logging()
    return open_probe(kind, scope, mode=mode)


def _probe_table(snapshot, t: float, kind: str):
    from rich.table import Table

    window = snapshot.window_ns / 1e9
    table = Table(title=f"lbagent probe ({kind})  t={t:.1f}s  lost={snapshot.lost}")
    for column in ("cpu", "runq", "util", "arrivals/s"):
        table.add_column(column, justify="right")
    for c in snapshot.cpus:
        table.add_row(str(c.cpu), f"{c.runq:.2f}", f"{c.util:.0%}", f"{c.arrivals / window:.1f}")
    return table


def _scope(directories: tuple[str, ...], comms: tuple[str, ...], uids: tuple[int, ...]):
    """The daemon's Scope from command-line names: a cgroup v2 directory covers its subtree.

    A directory elsewhere (a v1 hierarchy, a plain directory) is refused: its inode number could
    equal some cgroup's id by chance and quietly record the wrong tasks."""
    from pathlib import Path

    from lbagent.hostinfo import unified_root
    from lbagent.live import cgroups
    from lbagent.live.config import ScopeConfig

    root = unified_root()
    paths = []
    for d in directories:
        if root is None:
            raise UserError(f"--scope-cgroup {d}: this host has no cgroup v2 hierarchy")
        try:
            paths.append("/" + "/".join(Path(d).resolve().relative_to(root).parts))
        except (TypeError, ValueError):
            raise UserError(f"--scope-cgroup {d}: not a cgroup v2 directory (the v2 hierarchy is at {root})") from None
    return cgroups.resolve_scope(ScopeConfig(tuple(paths), comms, uids), "--scope-cgroup")


@click.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01), help="Window, s.")
@click.option("--duration", default=None, type=click.FloatRange(min=0), help="Stop after S seconds (default: Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per window on stdout.")
@click.option("--probe", "kind", default="auto", show_default=True, type=PROBE_CHOICE)
@PROBE_MODE_OPTION
def probe(interval: float, duration: float | None, as_json: bool, kind: str, mode: str) -> None:
    """Watch the scheduler per CPU: run-queue length, utilization and new tasks per window.

    With --json each line is {"t", "probe", "cpus": [{"cpu", "runq", "util", "arrivals"}], "lost"}
    where runq is the number of runnable tasks (the window's mean with --mode exact or the procfs
    probe; at the window's end with --mode lite) and arrivals the window's new tasks.

    \b
    Example:
      lbagent probe --interval 0.5 --duration 10 --json --probe bpf
    """
    import json
    import time

    from lbagent.live.probe.stream import snapshot_record, windows

    p = _open_probe(kind, mode)
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


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Trace file (.jsonl or .jsonl.gz).")
@click.option("--duration", type=click.FloatRange(min=0.01), help="Seconds to record from the live probe.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01), help="Sample window, s.")
@click.option("--probe", "kind", default="auto", show_default=True, type=PROBE_CHOICE)
@PROBE_MODE_OPTION
@click.option("--scope-cgroup", multiple=True, type=click.Path(exists=True, file_okay=False), help="cgroup v2 directory in scope (repeatable).")
@click.option("--scope-comm", multiple=True, help="Command name in scope (repeatable).")
@click.option("--scope-uid", multiple=True, type=click.IntRange(min=0), help="User id in scope (repeatable).")
@click.option("--from-perf", type=click.Path(exists=True, dir_okay=False), help="Import `perf script` output (or a perf.data) instead.")
def record(output, duration, interval, kind, mode, scope_cgroup, scope_comm, scope_uid, from_perf) -> None:
    """Record a host trace (arrivals, exits with CPU time, per-CPU samples) for `lbagent replay`.

    \b
    Examples:
      lbagent record -o host.jsonl.gz --duration 60 --scope-cgroup /sys/fs/cgroup/unified/build
      perf sched record -- make -j8 && lbagent record --from-perf perf.data -o make.jsonl.gz
    """
    from lbagent.eval import trace

    if from_perf:
        imported = trace.import_perf_script(from_perf)
        trace.write_trace(output, imported)
        times, _, unfinished = imported.jobs()
        click.echo(f"imported {len(times)} finished tasks ({unfinished} unfinished) on "
                   f"{len(imported.header.cpus)} CPUs from {from_perf} to {output}")
        return
    if duration is None:
        raise UserError("record needs --duration S (or --from-perf FILE)")
    p = _open_probe(kind, mode, _scope(scope_cgroup, scope_comm, scope_uid))
    try:
        events, samples = trace.record(p, output, duration, interval)
        lost = p.lost()
    finally:
        p.close()
    click.echo(f"recorded {events} task events and {samples} samples with the {p.kind} probe to {output} (lost {lost})")


@click.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default /etc/lbagent/lbagent.toml).")
@click.option("--dry-run", is_flag=True, help="Decide and log every decision, change nothing.")
@click.option("--policy", help="Override the config's policy. " + SPEC_HELP)
def run_cmd(config_path: str | None, dry_run: bool, policy: str | None) -> None:
    """Run the agent in the foreground (what the systemd unit starts).

    SIGHUP reloads config and policy; SIGTERM restores every task it changed and exits 0.

    \b
    Example:
      sudo lbagent run --config systemd/lbagent.toml --policy sed --dry-run
    """
    from lbagent.live import daemon

    sys.exit(daemon.run(config_path, dry_run=dry_run, policy=policy))


@click.command("status")
@click.option("--address", default="127.0.0.1:9469", show_default=True, help="The daemon's metrics address.")
@click.option("--json", "as_json", is_flag=True, help="Print the parsed metrics as JSON.")
def status_cmd(address: str, as_json: bool) -> None:
    """Show what the running daemon is doing, read from its metrics endpoint.

    \b
    Example:
      lbagent status --address 127.0.0.1:9469
    """
    from lbagent.live import status

    try:
        text = status.fetch(address)
    except OSError as e:
        raise UserError(f"no lbagent daemon answering at {address}: {getattr(e, 'reason', None) or e}") from None
    click.echo(status.render(text, as_json))


@click.group("service")
def service_group() -> None:
    """Install or remove the systemd unit and its default config.

    \b
    Example:
      sudo lbagent service install
    """


@service_group.command("install")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False), help="Install under this root (packaging, tests).")
@click.option("--force", is_flag=True, help="Overwrite an existing config file (the unit is always replaced).")
def service_install(root: str, force: bool) -> None:
    """Put lbagent.service and lbagent.toml in place (an existing config is kept).

    \b
    Example:
      sudo lbagent service install && sudo systemctl daemon-reload && sudo systemctl enable --now lbagent
    """
    from lbagent.live import service

    for line in service.install(root, force=force):
        click.echo(line)


@service_group.command("uninstall")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False), help="Remove from under this root.")
@click.option("--purge", is_flag=True, help="Also remove the config file.")
def service_uninstall(root: str, purge: bool) -> None:
    """Remove the unit (and with --purge the config).

    \b
    Example:
      sudo systemctl disable --now lbagent; sudo lbagent service uninstall
    """
    from lbagent.live import service

    for line in service.uninstall(root, purge=purge):
        click.echo(line)

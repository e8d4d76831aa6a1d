"""The ``lbagent`` command line. Each command imports its machinery lazily, so ``lbagent run`` never
pays for (or needs) the simulator or torch."""

from __future__ import annotations

import os
import sys

# Before numpy loads: one OpenBLAS thread (why: lbagent/blas.py, which does the same after loading).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from lbagent import __version__  # noqa: E402
from lbagent.errors import UserError  # noqa: E402


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


PROBE_CHOICE = click.Choice(["auto", "bpf", "procfs"])


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="lbagent: %(message)s")


def _open_probe(kind: str, scope=None):
    """A probe; ProbeUnavailable (a UserError) becomes one line and exit code 2."""
    from lbagent.probe import open_probe

    _setup_logging()
    return open_probe(kind, scope)


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

    p = _open_probe(kind)
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
    _show_report(report, json_path, plot_path)


def _show_report(report, json_path: str | None, plot_path: str | None = None, title: str | None = None) -> None:
    """What ``eval`` and ``replay`` print and write: the table, why a policy has no figures, JSON, PNG."""
    from pathlib import Path

    from rich.console import Console

    from lbagent import evaluate

    Console().print(evaluate.render_table(report, title))
    for r in report.results:
        if r.note:
            Console(stderr=True).print(f"{r.policy}: {r.note}")
    if json_path:
        evaluate.write_json(report, Path(json_path))
    if plot_path:
        evaluate.plot(report, Path(plot_path))


def _scope(cgroups: tuple[str, ...], comms: tuple[str, ...], uids: tuple[int, ...]):
    """A Scope from command-line names: cgroup directories become their v2 ids (inode numbers)."""
    import os

    from lbagent.probe.types import Scope

    ids = set()
    for path in cgroups:
        try:
            ids.add(os.stat(path).st_ino)
        except OSError as exc:
            raise UserError(f"--scope-cgroup {path}: {exc.strerror}") from None
    return Scope(cgroup_ids=frozenset(ids), comms=frozenset(comms), uids=frozenset(uids))


@main.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Trace file (.jsonl or .jsonl.gz).")
@click.option("--duration", type=click.FloatRange(min=0.01), help="Seconds to record from the live probe.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01), help="Sample window, s.")
@click.option("--probe", "kind", default="auto", show_default=True, type=PROBE_CHOICE)
@click.option("--scope-cgroup", multiple=True, type=click.Path(exists=True, file_okay=False), help="cgroup v2 directory in scope (repeatable).")
@click.option("--scope-comm", multiple=True, help="Command name in scope (repeatable).")
@click.option("--scope-uid", multiple=True, type=click.IntRange(min=0), help="User id in scope (repeatable).")
@click.option("--from-perf", type=click.Path(exists=True, dir_okay=False), help="Import `perf script` output (or a perf.data) instead.")
def record(output, duration, interval, kind, scope_cgroup, scope_comm, scope_uid, from_perf) -> None:
    """Record a host trace (arrivals, exits with CPU time, per-CPU samples) for `lbagent replay`.

    \b
    Examples:
      lbagent record -o host.jsonl.gz --duration 60 --scope-cgroup /sys/fs/cgroup/unified/build
      perf sched record -- make -j8 && lbagent record --from-perf perf.data -o make.jsonl.gz
    """
    from lbagent import trace

    if from_perf:
        imported = trace.import_perf_script(from_perf)
        trace.write_trace(output, imported)
        times, _, unfinished = imported.jobs()
        click.echo(f"imported {len(times)} finished tasks ({unfinished} unfinished) on "
                   f"{len(imported.header.cpus)} CPUs from {from_perf} to {output}")
        return
    if duration is None:
        raise UserError("record needs --duration S (or --from-perf FILE)")
    p = _open_probe(kind, _scope(scope_cgroup, scope_comm, scope_uid))
    try:
        events, samples = trace.record(p, output, duration, interval)
        lost = p.lost()
    finally:
        p.close()
    click.echo(f"recorded {events} task events and {samples} samples with the {p.kind} probe to {output} (lost {lost})")


@main.command("replay")
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

    from lbagent.replay import replay, replay_jobs
    from lbagent.trace import read_trace

    jobs = replay_jobs(read_trace(trace_path), trace_path)
    title = f"replay {Path(trace_path).name}: {jobs.work.size} tasks on {len(jobs.capacities)} CPUs, {episodes} episodes"
    report = replay(jobs, _csv(policies), episodes, seed, title)
    _show_report(report, json_path, title=title)
    if jobs.unfinished or jobs.unsized:
        Console(stderr=True).print(f"left out: {jobs.unfinished} tasks without an exit, {jobs.unsized} without a CPU time")


@main.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default /etc/lbagent/lbagent.toml).")
@click.option("--dry-run", is_flag=True, help="Decide and log every decision, change nothing.")
@click.option("--policy", help="Override the config's policy: a heuristic, a shipped policy name or a file.")
def run_cmd(config_path: str | None, dry_run: bool, policy: str | None) -> None:
    """Run the agent in the foreground (what the systemd unit starts).

    SIGHUP reloads config and policy; SIGTERM restores every task it changed and exits 0.

    \b
    Example:
      sudo lbagent run --config systemd/lbagent.toml --policy sed --dry-run
    """
    from lbagent import daemon

    sys.exit(daemon.run(config_path, dry_run=dry_run, policy=policy))


@main.command("status")
@click.option("--address", default="127.0.0.1:9469", show_default=True, help="The daemon's metrics address.")
@click.option("--json", "as_json", is_flag=True, help="Print the parsed metrics as JSON.")
def status_cmd(address: str, as_json: bool) -> None:
    """Show what the running daemon is doing, read from its metrics endpoint.

    \b
    Example:
      lbagent status --address 127.0.0.1:9469
    """
    from lbagent import status

    try:
        text = status.fetch(address)
    except OSError as e:
        raise UserError(f"no lbagent daemon answering at {address}: {getattr(e, 'reason', None) or e}") from None
    click.echo(status.render(text, as_json))


@main.group("service")
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
    from lbagent import service

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
    from lbagent import service

    for line in service.uninstall(root, purge=purge):
        click.echo(line)


@main.command("demo")
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(3, 40), help="Arrival period of each run.")
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--heuristic", default="sed", show_default=True, help="The heuristic row.")
@click.option("--policy", "learned", default="default", show_default=True, help="The learned policy row.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
def demo_cmd(seconds: float, seed: int, heuristic: str, learned: str, json_path: str | None) -> None:
    """Run one seeded workload under the kernel alone, a heuristic and the learned policy; compare.

    A bursty, heavy-tailed set of CPU-burning tasks runs in its own cgroup next to a noisy
    neighbour that takes part of one CPU; the daemon (a real `lbagent run`) places the tasks.

    \b
    Example:
      sudo lbagent demo --seconds 20 --seed 7
    """
    from lbagent import demo

    demo.main(seconds=seconds, seed=seed, heuristic=heuristic, learned=learned, json_path=json_path)


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
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Dreamer only: change one field of the preset's config (repeatable), e.g. --set bc_floor=0.3.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still go to metrics.jsonl).")
def sim_train(algo: str, preset: str, seed: int, out: str | None, resume: bool, env_steps: int | None,
              match_run: str | None, overrides: tuple[str, ...], no_progress: bool) -> None:
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

        path, final = train_dreamer(preset, seed, run_dir, resume, progress=not no_progress, env_steps=env_steps,
                                    overrides=overrides)
    else:
        if overrides:
            raise click.UsageError("--set is for --algo dreamer (A2C keeps stable-baselines3's defaults)")
        from lbagent.agent.a2c import steps_of_run, train_a2c

        steps = env_steps or (steps_of_run(Path(match_run)) if match_run else None)
        path, final = train_a2c(preset, seed, run_dir, steps, progress=not no_progress)
    Console().print(f"policy: {path}\nheld-out mean JCT {final['mean_jct']:.2f} "
                    f"(random {final['random_mean_jct']:.2f}) on suite {final['suite']}")


@main.group("bench")
def bench() -> None:
    """Measure speed: simulator, training, policy latency, probe overhead, daemon latency.

    \b
    Example:
      lbagent bench sim --repeats 5
    """


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


@bench.command("probe")
@click.option("--probe", "kind", default="bpf", show_default=True, type=PROBE_CHOICE)
@click.option("--rounds", default=7, show_default=True, type=click.IntRange(1), help="Alternating pipe runs per side.")
@click.option("--loops", default=50_000, show_default=True, type=click.IntRange(1000), help="Messages per pipe run.")
@click.option("--storm-tasks", default=10_000, show_default=True, type=click.IntRange(0), help="Fork storm size (0: skip).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench_probe(kind: str, rounds: int, loops: int, storm_tasks: int, as_json: bool) -> None:
    """Probe overhead on a context-switch-heavy workload, and event loss in a fork storm.

    \b
    Example:
      lbagent bench probe --rounds 7 --loops 50000 --storm-tasks 10000
    """
    import json
    import statistics

    from rich.console import Console
    from rich.table import Table

    from lbagent.probe.bench import fork_storm, pipe_overhead

    _setup_logging()
    pipe = pipe_overhead(kind, rounds, loops)
    storm = fork_storm(kind, storm_tasks) if storm_tasks else None
    if as_json:
        click.echo(json.dumps({"pipe": pipe.to_json(), "storm": storm.to_json() if storm else None}))
        return
    table = Table(title=f"perf bench sched pipe on one CPU, {rounds} alternating pairs of {loops} messages")
    for column in ("probe", "measure", "median without", "median with", "slowdown (median pair ratio)"):
        table.add_column(column, justify="right")
    for measure, without, with_probe, slowdown in (
        ("wall us/msg", pipe.wall_us_without, pipe.wall_us_with, pipe.wall_slowdown_pct),
        ("CPU us/msg", pipe.cpu_us_without, pipe.cpu_us_with, pipe.cpu_slowdown_pct),
    ):
        table.add_row(pipe.probe, measure, f"{statistics.median(without):.3f}", f"{statistics.median(with_probe):.3f}",
                      f"{slowdown:+.2f}%")
    Console().print(table)
    if storm:
        table = Table(title="fork storm (tasks in scope by command name)")
        for column in ("probe", "tasks", "tasks/s", "arrivals seen", "exits seen", "lost"):
            table.add_column(column, justify="right")
        table.add_row(storm.probe, str(storm.expected), f"{storm.rate:.0f}", str(storm.arrivals), str(storm.exits),
                      str(storm.lost))
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

    from lbagent import experiments

    result = experiments.adaptation(_csv(policies), suite, trials, seed)
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
    """Informed and oracle placement rules next to every heuristic: how far below the best heuristic
    can any placement go on this suite?

    \b
    Example:
      lbagent experiment headroom --suite shift --episodes 8 --seed 1000
    """
    from lbagent.headroom import headroom
    from lbagent.sim.scenarios import load_suite

    loaded = load_suite(suite)
    if any(sc.dynamics != "host" for sc in loaded.scenarios):
        raise click.UsageError(f"suite {loaded.name!r}: the headroom rules need host dynamics (a kernel balancer)")
    mode = "slot actions are movable hints" if hints else "slot actions pin"
    _show_report(headroom(loaded, episodes, seed, hints), json_path,
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

    from lbagent import experiments

    results = [experiments.forgetting(algo, preset, suite, scenario_a, scenario_b, env_steps, seed,
                                      Path(out) / algo) for algo in _csv(algos)]
    Console().print(experiments.forgetting_table(results))
    if json_path:
        experiments.write_json(results, Path(json_path))
    if plot_path:
        experiments.plot_forgetting(results, Path(plot_path))


@bench.command("sim")
@click.option("--dynamics", default=None, help="Comma-separated dynamics to measure (default: all).")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Timed chunks per figure (the median is kept).")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.001, 100.0), help="Chunk length (1.0: one 1000-step episode per vector chunk).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def bench_sim(dynamics: str | None, repeats: int, scale: float, as_json: bool) -> None:
    """Steps per second of each simulator dynamics: the pure-Python single env (the reference)
    and the numpy vector env at B = 1, 64 and 1024, with random actions.

    \b
    Example:
      lbagent bench sim --dynamics park --repeats 5 --json
    """
    import json

    from rich.console import Console

    from lbagent.sim import bench as simbench

    names = _csv(dynamics) if dynamics else list(simbench.ROW_MAKERS)
    unknown = [n for n in names if n not in simbench.ROW_MAKERS]
    if unknown:
        raise UserError(f"--dynamics: unknown {', '.join(unknown)} (known: {', '.join(simbench.ROW_MAKERS)})")
    rows = [row for name in names for row in simbench.ROW_MAKERS[name](repeats=repeats, scale=scale)]
    if as_json:
        click.echo(json.dumps({"rows": [r.to_json() for r in rows]}, indent=2))
    else:
        Console().print(simbench.render_table(rows))


@bench.command("daemon")
@click.option("--rate", default=500.0, show_default=True, type=click.FloatRange(1, 5000), help="Arrivals per second.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(1, 600))
@click.option("--policy", default="sed", show_default=True)
@click.option("--probe", default="auto", show_default=True, type=click.Choice(["auto", "bpf", "procfs"]))
@click.option("--json", "as_json", is_flag=True)
def bench_daemon(rate: float, seconds: float, policy: str, probe: str, as_json: bool) -> None:
    """Arrival-to-affinity latency, daemon CPU and RSS, start-to-READY time of a real `lbagent run`.

    \b
    Example:
      sudo lbagent bench daemon --rate 500 --seconds 10 --json
    """
    from lbagent import daemon_bench

    daemon_bench.main(rate=rate, seconds=seconds, policy=policy, probe=probe, as_json=as_json)


@bench.command("storm")
@click.option("--rate", default=5000.0, show_default=True, type=click.FloatRange(1), help="Tasks per second asked for.")
@click.option("--seconds", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600))
@click.option("--policy", default="round_robin", show_default=True)
@click.option("--probe", default="bpf", show_default=True, type=PROBE_CHOICE)
@click.option("--ring-bytes", type=int, default=None, help="The probe's ring buffer size (default: the config's).")
@click.option("--json", "as_json", is_flag=True)
def bench_storm(rate: float, seconds: float, policy: str, probe: str, ring_bytes: int | None, as_json: bool) -> None:
    """A real `lbagent run` under a fork storm of RATE x SECONDS tiny tasks, forked as fast as the host
    allows: achieved tasks/s, events seen and lost (all accounted for), latency, RSS growth, fds, links.

    \b
    Example:
      sudo lbagent bench storm --rate 5000 --seconds 30 --json
    """
    from lbagent.storm import storm

    r = storm(rate, seconds, policy, probe, ring_bytes=ring_bytes)
    _report({k: (str(v) if isinstance(v, dict) else v) for k, v in r.items()},
            f"fork storm: {r['tasks']} tasks asked at {rate:.0f}/s", as_json)


@bench.command("soak")
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(0.1, 1440))
@click.option("--rate", default=200.0, show_default=True, type=click.FloatRange(1), help="Tasks per second.")
@click.option("--interval", default=10.0, show_default=True, type=click.FloatRange(1), help="Seconds between samples.")
@click.option("--policy", default="round_robin", show_default=True)
@click.option("--probe", default="bpf", show_default=True, type=PROBE_CHOICE)
@click.option("--json", "as_json", is_flag=True)
def bench_soak(minutes: float, rate: float, interval: float, policy: str, probe: str, as_json: bool) -> None:
    """Steady arrivals into a real `lbagent run` for MINUTES: RSS, open fds and BPF links sampled
    every INTERVAL s must stay flat; every probe event seen or counted lost.

    \b
    Example:
      sudo lbagent bench soak --minutes 10 --rate 200
    """
    from lbagent.storm import soak

    def show(sample: dict) -> None:
        if not as_json:
            click.echo(" ".join(f"{k}={v}" for k, v in sample.items()), err=True)

    r = soak(minutes, rate, policy, probe, interval, show)
    samples = r.pop("samples")
    _report({**r, "fds": str(r["fds"]), "bpf_links": str(r["bpf_links"]), **({"samples": samples} if as_json else {})},
            f"soak: {minutes:g} min at {rate:.0f} tasks/s", as_json)


if __name__ == "__main__":
    main()

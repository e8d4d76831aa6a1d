"""Speed benchmarks and the demo (most need root)."""

from __future__ import annotations

import click

from lbagent.cli.common import PROBE_CHOICE, check_json_target, csv_list, report, setup_logging
from lbagent.errors import UserError


@click.group("bench")
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

    report(measure_latency(load_policy(spec), decisions), f"decision latency: {spec}", as_json)


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

    report(bench_training(preset, seconds), f"training speed: preset {preset}", as_json)


@bench.command("probe")
@click.option("--probe", "kind", default="bpf", show_default=True, type=PROBE_CHOICE,
              help="The probe the fork storm runs (bpf: once per mode). The pipe always compares no probe, lite, exact.")
@click.option("--rounds", default=7, show_default=True, type=click.IntRange(1), help="Rounds of pipe runs (one per configuration).")
@click.option("--loops", default=50_000, show_default=True, type=click.IntRange(1000), help="Messages per pipe run.")
@click.option("--storm-tasks", default=10_000, show_default=True, type=click.IntRange(0), help="Fork storm size (0: skip).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench_probe(kind: str, rounds: int, loops: int, storm_tasks: int, as_json: bool) -> None:
    """Probe overhead on a context-switch-heavy workload (no probe, lite, exact), and event loss in
    a fork storm.

    With --json: {"lite": {"cpu_overhead", "wall_overhead", ...}, "exact": {...}, "none": {...},
    "rounds", "loops", "reruns", "storm": {MODE: {...}}}, overheads as fractions (0.01 = 1 %).

    \b
    Example:
      sudo lbagent bench probe --rounds 7 --loops 50000 --storm-tasks 10000 --json
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from lbagent.bench.probe import NO_PROBE, fork_storm, pipe_overhead
    from lbagent.live.config import PROBE_MODES

    setup_logging()
    pipe = pipe_overhead(rounds, loops)
    modes = PROBE_MODES if kind == "bpf" else ("lite",)
    storms = [fork_storm(kind, storm_tasks, mode=mode) for mode in modes] if storm_tasks else []
    if as_json:
        click.echo(json.dumps({**pipe.to_json(), "storm": {s.mode if s.probe == "bpf" else s.probe: s.to_json() for s in storms}}))
        return
    table = Table(title=f"perf bench sched pipe on one CPU, {rounds} rounds of {loops} messages, "
                        f"{pipe.reruns} disturbed runs rerun")
    for column in ("probe", "median wall us/msg", "median CPU us/msg", "wall overhead", "CPU overhead"):
        table.add_column(column, justify="right")
    for config in pipe.runs:
        medians = pipe.medians(config)
        overheads = ("", "") if config == NO_PROBE else (
            f"{pipe.overhead(config, 'wall_us'):+.2%}", f"{pipe.overhead(config, 'cpu_us'):+.2%}")
        table.add_row(config, f"{medians['wall_us']:.3f}", f"{medians['cpu_us']:.3f}", *overheads)
    Console().print(table)
    if storms:
        table = Table(title="fork storm (tasks in scope by command name)")
        for column in ("probe", "mode", "tasks", "tasks/s", "arrivals seen", "exits seen", "lost"):
            table.add_column(column, justify="right")
        for storm in storms:
            table.add_row(storm.probe, storm.mode, str(storm.expected), f"{storm.rate:.0f}", str(storm.arrivals),
                          str(storm.exits), str(storm.lost))
        Console().print(table)


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

    from lbagent.bench import sim as simbench

    names = csv_list(dynamics) if dynamics else list(simbench.ROW_MAKERS)
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
@click.option("--probe", default="auto", show_default=True, type=PROBE_CHOICE)
@click.option("--json", "as_json", is_flag=True)
def bench_daemon(rate: float, seconds: float, policy: str, probe: str, as_json: bool) -> None:
    """Arrival-to-affinity latency, daemon CPU and RSS, start-to-READY time of a real `lbagent run`.

    \b
    Example:
      sudo lbagent bench daemon --rate 500 --seconds 10 --json
    """
    from lbagent.bench import daemon as daemon_bench

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
    from lbagent.bench.storm import storm

    r = storm(rate, seconds, policy, probe, ring_bytes=ring_bytes)
    report({k: (str(v) if isinstance(v, dict) else v) for k, v in r.items()},
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
    from lbagent.bench.storm import soak

    def show(sample: dict) -> None:
        if not as_json:
            click.echo(" ".join(f"{k}={v}" for k, v in sample.items()), err=True)

    r = soak(minutes, rate, policy, probe, interval, show)
    samples = r.pop("samples")
    report({**r, "fds": str(r["fds"]), "bpf_links": str(r["bpf_links"]), **({"samples": samples} if as_json else {})},
            f"soak: {minutes:g} min at {rate:.0f} tasks/s", as_json)


@click.command("demo")
@click.option("--seconds", default=12.0, show_default=True, type=click.FloatRange(3, 40), help="Arrival period of each run.")
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 10), help="Alternated rounds of every row.")
@click.option("--placement", default="jsq", show_default=True, help="The placement-heuristic row (jsq: the best one on the simulator's batch suite).")
@click.option("--policy", "learned", default="default", show_default=True, help="The learned policy row.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
def demo_cmd(seconds: float, seed: int, repeats: int, placement: str, learned: str, json_path: str | None) -> None:
    """Run one seeded build-like workload under the kernel alone, the best placement heuristic,
    las:30ms and the learned policy, each through a real `lbagent run`; compare, and check that the
    daemon left nothing behind.

    Several commands with their own heavy-tailed sizes arrive in bursts at about 85 % of the CPUs,
    the mix shifting halfway, beside two interactive loops (1 ms CPU / 3 ms sleep) whose
    wake-to-done p99 is reported. About 4 minutes on 2 CPUs at the defaults.

    \b
    Example:
      sudo lbagent demo --seconds 12 --json demo.json
    """
    from lbagent.bench import demo
    from lbagent.policy.specs import HEURISTICS

    check_json_target(json_path)
    if placement not in HEURISTICS or placement == "kernel":
        raise UserError(f"--placement: {placement!r} is not a placement heuristic (one of {', '.join(h for h in HEURISTICS if h != 'kernel')})")
    demo.main(seconds=seconds, seed=seed, repeats=repeats, placement=placement, learned=learned, json_path=json_path)


@bench.command("fidelity")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Alternated rounds: every policy on every workload per round.")
@click.option("--seconds", default=15.0, show_default=True, type=click.FloatRange(1, 600), help="Arrivals per run (a few hundred tasks at the default).")
@click.option("--workloads", default=None, help="Comma-separated workloads (default: all).")
@click.option("--policies", default=None,
              help="Comma-separated policies, kernel among them (default: kernel,las:30ms,oracle; las takes any threshold, las:<N>ms).")
@click.option("--max-elsewhere", default=0.4, show_default=True, type=click.FloatRange(0),
              help="CPU-s other processes may take during a run before it is discarded and rerun.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0), help="Reruns of a disturbed run before that cell is left without it.")
@click.option("--json", "json_path", default=None, help="Write the results as JSON to this file ('-': stdout, the table then goes to stderr).")
def bench_fidelity(repeats: int, seconds: float, workloads: str | None, policies: str | None, max_elsewhere: float,
                   retries: int, json_path: str | None) -> None:
    """Share policies on the real host beside the simulator: per workload and policy the mean task
    completion time and its ratio to the kernel's, real and simulated, and the run-to-run spread.

    Seeded heavy-tailed CPU-bound workloads (80 % and 95 % load; 80 % with a CPU hog inside the
    workload's cgroup and in another cgroup) run under kernel, las:30ms (demote to an lbagent-owned
    low-weight cgroup after 30 ms of CPU) and oracle (tasks over 100 ms start there). Needs root and
    a quiet machine: a run another process disturbed is discarded and rerun.

    \b
    Example:
      sudo lbagent bench fidelity --repeats 3 --json fidelity.json
    """
    from rich.console import Console

    from lbagent.bench import fidelity
    from lbagent.eval.fidelity import POLICIES, WORKLOADS

    setup_logging()
    known = {w.name: w for w in WORKLOADS}
    names = csv_list(workloads) if workloads else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--workloads: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    specs = csv_list(policies) if policies else list(POLICIES)
    for spec in specs:
        fidelity.parse_policy(spec)
    check_json_target(json_path)
    report = fidelity.measure([known[n] for n in names], specs, repeats, seconds, max_elsewhere, retries)
    console = Console(stderr=json_path == "-")
    console.print(fidelity.render_table(report, f"real and simulated mean completion time, ratio to the kernel ({repeats} x {seconds:g} s)"))
    for r in report.rows:
        if r.note:
            console.print(f"{r.workload} {r.policy}: {r.note}")
    console.print(f"discarded and rerun: {report.discarded} (more than {max_elsewhere:g} CPU-s elsewhere)")
    if json_path:
        fidelity.write_json(report, json_path)

"""Trace format: round trip, atomic 0600 writes, every reader fault named with exit code 2,
the perf-script importer on a real committed sample, and replay through the host dynamics."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lbagent.cli import main
from lbagent.eval.trace import (
    Arrival,
    CpuInfo,
    Exit,
    Header,
    Sample,
    Trace,
    TraceError,
    TraceWriter,
    import_perf_script,
    read_trace,
    write_trace,
)

SAMPLE = Path(__file__).parent / "data" / "perf-sched-sample.txt"
HEADER = Header(kernel="6.18.0-test", start=1764045000.0, source="bpf", cpus=(CpuInfo(0, 1.0), CpuInfo(1, 0.5)))


def small_trace() -> Trace:
    return Trace(HEADER, [
        Arrival(0.10, 10, 10, "a", 0, 7),
        Arrival(0.20, 11, 11, "b", 1),
        Exit(0.50, 10, 10, "a", 1, 0.25),
        Sample(1.0, ({"cpu": 0, "runq": 1.5, "util": 0.9, "arrivals": 1},
                     {"cpu": 1, "runq": 0.0, "util": 0.1, "arrivals": 1}), lost=0),
        Exit(1.20, 11, 11, "b", 1, 0.75),
        Arrival(1.30, 10, 10, "a", 0),  # PID 10 reused: a new task, never finished
    ])


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_round_trip_and_private_mode(tmp_path, name):
    path = tmp_path / name
    write_trace(path, small_trace())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind
    back = read_trace(path)
    assert back.header == HEADER and back.events == small_trace().events
    times, sizes, unfinished = back.jobs()
    assert times.tolist() == [0.10, 0.20] and sizes.tolist() == [0.25, 0.75] and unfinished == 1
    assert back.capacities.tolist() == [1.0, 0.5]


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "t.jsonl"
    with pytest.raises(RuntimeError), TraceWriter(path, HEADER) as w:
        w.write(Arrival(0.1, 1, 1, "a", 0))
        raise RuntimeError("crash mid-recording")
    assert list(tmp_path.iterdir()) == []


def _lines(tmp_path, name, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _header(**over) -> str:
    record = {"type": "header", "schema": 1, "kernel": "k", "start": 0.0, "source": "bpf",
              "cpus": [{"cpu": 0, "capacity": 1.0}]}
    return json.dumps({**record, **over})


ARRIVAL = json.dumps({"type": "arrival", "t": 0.1, "pid": 5, "tgid": 5, "comm": "x", "cpu": 0})


@pytest.mark.parametrize("lines, message", [
    ([], "empty trace (no header line)"),
    ([_header(schema=2)], ":1: schema version 2 is not supported"),
    ([_header(), ARRIVAL, '{"type": "exit", "t": 0.3,'], ":3: not valid JSON"),
    ([_header(), ARRIVAL.replace('"pid": 5', '"pid": "five"')], ":2: field 'pid' must be a finite int, got 'five'"),
    ([_header(), ARRIVAL.replace('"t": 0.1, ', "")], ":2: missing field 't'"),
    ([_header(), ARRIVAL.replace('"cpu": 0', '"cpu": 3')], ":2: field 'cpu' is 3 but the header lists 1 CPUs"),
    ([_header(), ARRIVAL.replace("arrival", "spawn")], ":2: field 'type' must be one of"),
    ([ARRIVAL], ":1: the first line must be the header"),
    ([_header(cpus=[])], ":1: field 'cpus' must be a non-empty list"),
])
def test_reader_names_line_and_field(tmp_path, lines, message):
    path = _lines(tmp_path, "bad.jsonl", lines)
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    write_trace(path, small_trace())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="truncated gzip stream"):
        read_trace(path)


def test_size_guard(tmp_path):
    path = tmp_path / "big.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(_header() + "\n" + (ARRIVAL + "\n") * 2000)
    with pytest.raises(TraceError, match="decompressed size exceeds the 10000-byte limit"):
        read_trace(path, max_bytes=10_000)


@pytest.mark.parametrize("content, message", [
    ("", "empty trace (no header line)"),
    (_header(schema=99) + "\n", "schema version 99 is not supported"),
    (_header() + "\n{oops\n", ":2: not valid JSON"),
])
def test_cli_replay_bad_trace_exits_2_without_traceback(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.count("\n") == 1


def test_cli_replay_truncated_gzip_exits_2(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    write_trace(path, small_trace())
    path.write_bytes(path.read_bytes()[:-12])
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exit_code == 2 and "truncated gzip stream" in result.output


def test_import_perf_sample():
    """The committed sample: `perf sched record` of a shell running sh, true, sh, true, sh. No exec
    or exit events were recorded, so exits come from the final switch (state Z) and names from it."""
    trace = import_perf_script(SAMPLE)
    assert trace.header.source == "perf" and trace.header.kernel.startswith("6.18")
    assert len(trace.header.cpus) == 2
    arrivals = [e for e in trace.events if isinstance(e, Arrival)]
    exits = [e for e in trace.events if isinstance(e, Exit)]
    assert [e.comm for e in arrivals] == ["sh", "true", "sh", "true", "sh"]
    assert sorted(e.pid for e in exits) == sorted(e.pid for e in arrivals)
    times, sizes, unfinished = trace.jobs()
    assert unfinished == 0 and np.all(np.diff(times) > 0) and times[0] >= 0
    # Sizes are the sums of sched_stat_runtime: the busy shells ran about 5 ms, the `true`s about 1 ms.
    assert sizes[[0, 2]].min() > 0.004 and sizes[[1, 3]].max() < 0.0015
    assert sizes.sum() == pytest.approx(0.012898751, abs=1e-9)


def test_import_perf_without_sched_lines(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("# just a header\nnot a perf line\n")
    with pytest.raises(TraceError, match="no sched tracepoint lines found"):
        import_perf_script(path)


def test_cli_import_then_replay(tmp_path):
    out = tmp_path / "perf.jsonl.gz"
    runner = CliRunner()
    result = runner.invoke(main, ["record", "--from-perf", str(SAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "imported 5 finished tasks" in result.output
    result = runner.invoke(main, ["replay", str(out), "--policies", "lwl,random", "--episodes", "2"])
    assert result.exit_code == 0, result.output
    assert "5 tasks on 2 CPUs" in result.output
    assert "lwl" in result.output and "random" in result.output


def test_replay_orders_policies_on_a_contended_trace(tmp_path):
    """Bursts of equal tasks on two CPUs: spreading them (lwl) must beat stacking them at random
    on the same tasks, a difference the replay must show."""
    events = []
    for burst in range(20):
        for k in range(4):
            pid = 100 + 4 * burst + k
            events.append(Arrival(burst * 0.5 + 0.001 * k, pid, pid, "w", 0))
            events.append(Exit(burst * 0.5 + 0.3, pid, pid, "w", 0, 0.1))
    path = tmp_path / "bursts.jsonl"
    write_trace(path, Trace(HEADER, sorted(events, key=lambda e: e.t)))
    result = CliRunner().invoke(main, ["replay", str(path), "--policies", "lwl,random", "--episodes", "3", "--json",
                                       str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    results = {r["policy"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert results["lwl"]["mean_jct"] < results["random"]["mean_jct"]


def test_cli_unwritable_output_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["record", "--from-perf", str(SAMPLE), "-o", str(tmp_path / "no" / "t.jsonl")])
    assert result.exit_code == 2 and "cannot write the trace here" in result.output, result.output


def test_not_gzip_but_named_gz_reads_as_text(tmp_path):
    """The reader goes by content (gzip magic), not by name: a plain file called .gz still reads."""
    path = tmp_path / "plain.jsonl.gz"
    path.write_text(_header() + "\n" + ARRIVAL + "\n")
    assert len(read_trace(path).events) == 1


# ---- hostile values, sizes and shapes (issue 13, item 8): one line, exit 2, through the real CLI


def _jobs_trace(tmp_path, capacities, jobs, name="hostile.jsonl") -> Path:
    """A trace of tasks (arrival t, runtime) on CPUs of the given capacities, written by the real writer."""
    header = Header(kernel="k", start=0.0, source="bpf", cpus=tuple(CpuInfo(i, c) for i, c in enumerate(capacities)))
    events = [Arrival(t, 100 + i, 100 + i, "w", 0) for i, (t, _) in enumerate(jobs)]
    events += [Exit(t + 1.0, 100 + i, 100 + i, "w", 0, runtime) for i, (t, runtime) in enumerate(jobs)]
    path = tmp_path / name
    write_trace(path, Trace(header, events))
    return path


def _replay_fails(path, message, policies="lwl") -> None:
    result = CliRunner().invoke(main, ["replay", str(path), "--policies", policies, "--episodes", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"lbagent: error: {path}") and result.output.count("\n") == 1, result.output
    assert message in result.output, result.output


@pytest.mark.parametrize("capacities, message", [
    ((0.0, 1.0), ":1: cpus[0]: field 'capacity' must be in [0.001, 64], got 0.0"),
    ((1.0, 1e300), ":1: cpus[1]: field 'capacity' must be in [0.001, 64], got 1e+300"),
    ((1e-300, 1.0), ":1: cpus[0]: field 'capacity' must be in [0.001, 64], got 1e-300"),
])
def test_cli_replay_refuses_absurd_capacities(tmp_path, capacities, message):
    _replay_fails(_jobs_trace(tmp_path, capacities, [(0.1, 0.2), (0.2, 0.3)]), message)


@pytest.mark.parametrize("jobs, message", [
    ([(1e307, 0.2), (1.7e308, 0.3)], ":2: field 't' must be in [-1e+06, 1e+06], got 1e+307"),
    ([(-1.7e308, 0.2), (0.2, 0.3)], ":2: field 't' must be in [-1e+06, 1e+06], got -1.7e+308"),
    ([(0.1, 1e300), (0.2, 0.3)], ":4: field 'runtime' must be in [0, 1e+06], got 1e+300"),
    ([(0.1, 5e-324), (0.2, 0.3)], ":4: field 'runtime' must be 0 (unknown) or at least 1e-09 s, got 5e-324"),
])
def test_cli_replay_refuses_absurd_times_and_runtimes(tmp_path, jobs, message):
    _replay_fails(_jobs_trace(tmp_path, (1.0,), jobs), message)


def test_replay_at_the_value_bounds_gives_finite_results(tmp_path):
    """The extremes the reader admits, together: every number in the report is finite."""
    path = _jobs_trace(tmp_path, (64.0, 0.001), [(-1e6, 1e6), (-1e6 + 1e-9, 1e-9), (0.0, 1e-9), (1e6 - 2, 1e6)])
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["replay", str(path), "--policies", "lwl,random", "--episodes", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    numbers = [v for r in json.loads(out.read_text())["results"]
               for v in (r["mean_jct"], r["p99_jct"], r["mean_slowdown"], r["ratio_to_best_heuristic"])]
    assert len(numbers) >= 4 * 2
    assert all(np.isfinite(numbers)), numbers


def test_cli_replay_refuses_very_deep_json(tmp_path):
    path = _lines(tmp_path, "deep.jsonl", [_header(), "[" * 200_000 + "]" * 200_000])
    _replay_fails(path, ":2: JSON nested too deeply for a trace record")


def test_cli_replay_refuses_more_tasks_at_one_instant_than_the_task_table(tmp_path):
    from lbagent.sim.host import MAX_TASK_TABLE

    path = _jobs_trace(tmp_path, (1.0,), [(0.5, 1.0)] * (MAX_TASK_TABLE + 1))
    _replay_fails(path, f": {MAX_TASK_TABLE + 1} tasks arrive at t = 0.5 s, the simulator holds at most "
                        f"{MAX_TASK_TABLE} tasks at once")


def test_cli_replay_names_the_task_table_limit_when_the_trace_overloads_its_cpu(tmp_path):
    """Distinct instants, but each task needs a second and they come every microsecond."""
    from lbagent.sim.host import MAX_TASK_TABLE

    path = _jobs_trace(tmp_path, (1.0,), [(i * 1e-6, 1.0) for i in range(MAX_TASK_TABLE + 10)])
    _replay_fails(path, f": under lwl, more than {MAX_TASK_TABLE} tasks are in the simulator at once")


def _policy_with(tmp_path, name: str, arch: dict | None = None, meta_text: str | None = None) -> Path:
    """A real MLP policy file, its arch or whole metadata replaced (the writer would refuse neither)."""
    from safetensors.numpy import save_file

    from lbagent.spaces import CONTRACT_VERSION, N_ACTIONS, OBS_DIM

    meta = {"format": "lbagent-policy", "format_version": 1, "contract_version": CONTRACT_VERSION, "obs_dim": OBS_DIM,
            "n_actions": N_ACTIONS, "algorithm": "a2c", "arch": arch or {"layers": 0}}
    path = tmp_path / name
    save_file({"action.weight": np.zeros((N_ACTIONS, OBS_DIM), np.float32), "action.bias": np.zeros(N_ACTIONS, np.float32)},
              str(path), metadata={"lbagent": meta_text or json.dumps(meta)})
    return path


@pytest.mark.parametrize("command", ["replay", "eval"])
def test_cli_replay_and_eval_refuse_a_huge_architecture_or_deeply_nested_metadata(tmp_path, command):
    trace = _jobs_trace(tmp_path, (1.0,), [(0.1, 0.2), (0.2, 0.3)])
    target = [str(trace)] if command == "replay" else ["--suite", "park"]
    for policy, message in (
        (_policy_with(tmp_path, "huge.safetensors", arch={"layers": 2**31}), "arch.layers is 2147483648, outside [0, 16]"),
        (_policy_with(tmp_path, "deep.safetensors", meta_text="{\"a\":" * 100_000 + "1" + "}" * 100_000),
         "policy metadata is nested too deeply to be a policy's"),
    ):
        result = CliRunner().invoke(main, [command, *target, "--policies", str(policy), "--episodes", "1"])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"lbagent: error: {policy}: {message}"  # (rich's live display adds a blank line)


def test_cli_eval_refuses_a_deeply_nested_suite_file(tmp_path):
    suite = tmp_path / "deep.toml"
    suite.write_text('[suite]\nname = "x"\n[[scenario]]\nname = "a"\ndynamics = "host"\ncpus = '
                     + "[" * 100_000 + "]" * 100_000 + "\n")
    result = CliRunner().invoke(main, ["eval", "--suite", str(suite), "--policies", "lwl", "--episodes", "1"])
    assert result.exit_code == 2, result.output
    assert result.output == f"lbagent: error: {suite}: TOML nested too deeply for a scenario suite\n"


def test_a_gzip_member_inflating_without_a_newline_stops_at_the_line_limit_in_bounded_memory(tmp_path):
    """256 MiB of one line (256 KiB compressed): the reader stops at 1 MiB, and its peak memory shows
    it never held the line (measured in a fresh interpreter: VmHWM, the peak of its own memory map;
    getrusage's max RSS would carry over the forking pytest's peak across exec)."""
    from lbagent.eval.trace import MAX_LINE_BYTES

    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(_header().encode() + b"\n")
        block = b"a" * (1 << 20)
        for _ in range(256):
            f.write(block)
    assert path.stat().st_size < 2 << 20
    code = ("import re, sys\nfrom lbagent.eval.trace import read_trace, TraceError\n"
            "try:\n    read_trace(sys.argv[1])\nexcept TraceError as e:\n    print(e)\n"
            "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    message, peak_mib = out.stdout.splitlines()
    assert message == f"{path}:2: line longer than the {MAX_LINE_BYTES}-byte limit"
    assert int(peak_mib) < 100, f"peak {peak_mib} MiB"  # 33 measured; 601 before the chunked reader


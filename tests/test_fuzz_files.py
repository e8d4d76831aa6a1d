"""Malformed traces and policy files end in their reader's own one-line error naming the file, the CLI
exits 2 without a traceback, huge files are refused by size before they are read, odd paths work,
and a failed write leaves nothing half-written behind."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lbagent import spaces
from lbagent.cli import main
from lbagent.eval.trace import MAX_TRACE_BYTES, TraceError, TraceWriter, read_trace, write_trace
from lbagent.live.config import MAX_CONFIG_BYTES, ConfigError, load_config
from lbagent.live.state import MAX_STATE_BYTES, Placement, StateFile, StateFileError
from lbagent.policy.files import MAX_POLICY_BYTES, PolicyFileError, load_policy
from test_daemon import write_policy
from test_trace import HEADER, SAMPLE, small_trace

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_trace_bytes(gz: bool) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("t.jsonl.gz" if gz else "t.jsonl")
        write_trace(path, small_trace())
        return path.read_bytes()


def valid_policy_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        write_policy(Path(d) / "p.safetensors", favourite=1)
        return (Path(d) / "p.safetensors").read_bytes()


TRACE, TRACE_GZ, POLICY = valid_trace_bytes(False), valid_trace_bytes(True), valid_policy_bytes()
HEADER_LINE = TRACE.decode().splitlines()[0]
edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)


def mutate(data: bytes, changes: list[tuple[int, int]], cut: int | None) -> bytes:
    """Overwrite some bytes, then maybe cut the file short: the damage real files suffer."""
    out = bytearray(data)
    for pos, byte in changes:
        out[pos % len(out)] = byte
    return bytes(out[: cut % (len(out) + 1)] if cut is not None else out)


def expect_trace_error_or_trace(path: Path) -> None:
    try:
        read_trace(path)
    except TraceError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)


def expect_policy_error_or_policy(path: Path) -> None:
    try:
        load_policy(path)
    except PolicyFileError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)


# ------------------------------------------------------------------ traces
@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_a_trace(tmp_path, data):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    expect_trace_error_or_trace(path)


@FUZZ
@given(st.booleans(), edits, st.none() | st.integers(0, 10**6))
def test_damaged_traces_plain_and_gzip(tmp_path, gz, changes, cut):
    path = tmp_path / ("fuzz.jsonl.gz" if gz else "fuzz.jsonl")
    path.write_bytes(mutate(TRACE_GZ if gz else TRACE, changes, cut))
    expect_trace_error_or_trace(path)


json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
json_any = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=8)
FIELDS = ["type", "t", "pid", "tgid", "comm", "cpu", "cgroup", "runtime", "cpus", "lost", "schema", "kernel", "start",
          "source"]


@FUZZ
@given(st.integers(0, 6), st.sampled_from(FIELDS), json_any)
def test_wrong_types_in_any_field_are_named_with_the_line(tmp_path, line_no, field, value):
    lines = TRACE.decode().splitlines()
    record = json.loads(lines[line_no])
    record[field] = value
    lines[line_no] = json.dumps(record)
    path = tmp_path / "typed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        read_trace(path)
    except TraceError as e:
        assert str(e).startswith(f"{path}:{line_no + 1}: ") and "\n" not in str(e)


def test_cli_replay_of_damaged_traces_exits_2_without_traceback(tmp_path):
    runner = CliRunner()
    for i, data in enumerate([b"\x1f\x8b" + TRACE_GZ[2:40], TRACE[:-30], b"\xff\xfe garbage", TRACE_GZ[:-12]]):
        path = tmp_path / f"bad{i}.jsonl.gz"
        path.write_bytes(data)
        result = runner.invoke(main, ["replay", str(path), "--policies", "lwl", "--episodes", "1"])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"lbagent: error: {path}") and "Traceback" not in result.output


# ------------------------------------------------------------------ policy files
@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_policy_file(tmp_path, data):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    expect_policy_error_or_policy(path)


@FUZZ
@given(edits, st.none() | st.integers(0, 10**6))
def test_damaged_policy_files(tmp_path, changes, cut):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(mutate(POLICY, changes, cut))
    expect_policy_error_or_policy(path)


@FUZZ
@given(st.dictionaries(st.sampled_from(["format", "format_version", "contract_version", "obs_dim", "n_actions",
                                        "algorithm", "arch", "bogus"]), json_any, max_size=4),
       st.dictionaries(st.sampled_from(["layers", "greedy", "stoch", "classes", "units"]), json_any, max_size=3))
def test_policy_metadata_of_wrong_types(tmp_path, meta_changes, arch):
    from safetensors.numpy import save_file

    meta = {"format": "lbagent-policy", "format_version": 1, "contract_version": spaces.CONTRACT_VERSION,
            "obs_dim": spaces.OBS_DIM, "n_actions": spaces.N_ACTIONS, "algorithm": "a2c", "arch": arch, **meta_changes}
    weights = {"pi.0.weight": np.zeros((8, spaces.OBS_DIM), np.float32), "pi.0.bias": np.zeros(8, np.float32),
               "action.weight": np.zeros((spaces.N_ACTIONS, 8), np.float32),
               "action.bias": np.zeros(spaces.N_ACTIONS, np.float32)}
    path = tmp_path / "meta.safetensors"
    save_file(weights, str(path), metadata={"lbagent": json.dumps(meta)})
    expect_policy_error_or_policy(path)


@pytest.mark.parametrize("data", [b"", b"\x00garbage", POLICY[: len(POLICY) // 2]])
def test_cli_run_dry_run_with_a_bad_policy_exits_2_and_touches_nothing(tmp_path, data):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[scope]\ncomms = ["nothing-here"]\n[daemon]\nstate_file = "{tmp_path}/state.json"\n'
                   '[metrics]\nenabled = false\n')
    result = CliRunner().invoke(main, ["run", "--config", str(cfg), "--policy", str(bad), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"lbagent: error: {bad}: ") and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "c.toml"]


# ------------------------------------------------------------------ size guards (sparse files: nothing is read)
def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_huge_files_are_refused_by_size_before_reading(tmp_path):
    with pytest.raises(TraceError, match=rf"{MAX_TRACE_BYTES + 1} bytes exceeds the {MAX_TRACE_BYTES}-byte limit"):
        read_trace(sparse(tmp_path / "huge.jsonl", MAX_TRACE_BYTES + 1))
    with pytest.raises(PolicyFileError, match=rf"{MAX_POLICY_BYTES + 1} bytes exceeds the {MAX_POLICY_BYTES}-byte limit"):
        load_policy(sparse(tmp_path / "huge.safetensors", MAX_POLICY_BYTES + 1))
    with pytest.raises(ConfigError, match=rf"{MAX_CONFIG_BYTES + 1} bytes, over the {MAX_CONFIG_BYTES} byte limit"):
        load_config(sparse(tmp_path / "huge.toml", MAX_CONFIG_BYTES + 1))
    huge_state = sparse(tmp_path / "state.json", MAX_STATE_BYTES + 1)
    huge_state.chmod(0o600)  # as the daemon writes it: only the size is wrong
    with pytest.raises(StateFileError, match=rf"{MAX_STATE_BYTES + 1} bytes, over the {MAX_STATE_BYTES} byte limit"):
        StateFile.load(huge_state)
    result = CliRunner().invoke(main, ["replay", str(tmp_path / "huge.jsonl")])
    assert result.exit_code == 2 and "byte limit" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ odd paths
ODD_NAMES = ["with space.jsonl", "ünïcødé-トレース.jsonl", "new\nline.jsonl", "-leading-dash.jsonl.gz"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_paths_record_and_replay(tmp_path, name):
    out = tmp_path / name
    runner = CliRunner()
    result = runner.invoke(main, ["record", "--from-perf", str(SAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and os.listdir(tmp_path) == [name]
    result = runner.invoke(main, ["replay", "--policies", "lwl", "--episodes", "1", "--", str(out)])
    assert result.exit_code == 0 and "5 tasks on 2 CPUs" in result.output, result.output
    policy = tmp_path / (name + ".safetensors")
    write_policy(policy, favourite=1)
    assert load_policy(policy).act(np.zeros((1, spaces.OBS_DIM)), None, np.ones((1, spaces.N_ACTIONS), bool))[0] == 1


# ------------------------------------------------------------------ no partial writes
@contextmanager
def tiny_tmpfs(tmp_path: Path, size: str = "64k"):
    """A real file system that fills up: writes fail with ENOSPC part way through."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.kernel
def test_a_trace_write_that_runs_out_of_space_leaves_nothing(tmp_path):
    from lbagent.eval.trace import Arrival

    with tiny_tmpfs(tmp_path) as mnt:
        with pytest.raises(TraceError, match=rf"^{mnt}/t.jsonl: cannot write the trace \(No space left on device\)"):
            with TraceWriter(mnt / "t.jsonl", HEADER) as w:
                for i in range(5000):
                    w.write(Arrival(i * 0.001, 100 + i, 100 + i, "filler-task-name", 0))
        assert os.listdir(mnt) == []


@pytest.mark.kernel
def test_a_state_write_that_runs_out_of_space_keeps_the_previous_file(tmp_path):
    with tiny_tmpfs(tmp_path) as mnt:
        state = StateFile(mnt / "state.json")
        state.placements[2] = Placement(2, 5, "x", "affinity", (1,), {2: (0, 1)})
        state.save()
        before = (mnt / "state.json").read_bytes()
        assert stat.S_IMODE((mnt / "state.json").stat().st_mode) == 0o600
        for pid in range(3, 3000):
            state.placements[pid] = Placement(pid, 5, "filler-task-name", "affinity", (1,), {pid: (0, 1)})
        with pytest.raises(StateFileError, match=rf"^state file {mnt}/state.json: cannot write: No space left on device"):
            state.save()
        assert os.listdir(mnt) == ["state.json"] and (mnt / "state.json").read_bytes() == before
        assert len(StateFile.load(mnt / "state.json").placements) == 1


@pytest.mark.kernel
def test_placements_are_refused_not_crashed_when_the_state_file_cannot_be_written(tmp_path):
    """Write-ahead: with no room for the record, the task is left alone and the failure counted."""
    from lbagent.live.actuate import Actuator
    from lbagent.live.cgroups import resolve_scope
    from lbagent.live.config import ScopeConfig
    from livehost import masks, spawn_in, stop, v2_cgroup

    with tiny_tmpfs(tmp_path, "4k") as mnt, v2_cgroup("lbagent-t-full") as (path, d):
        (mnt / "filler").write_bytes(b"x" * 4096)
        proc = spawn_in(d, threads=1)
        try:
            act = Actuator("affinity", resolve_scope(ScopeConfig(cgroups=(path,)), "test"), StateFile(mnt / "state.json"))
            before = masks(proc.pid)
            assert act.place_many([(proc.pid, frozenset({1}))]) == ["error:state_write"]
            assert act.errors == {"state_write": 1} and masks(proc.pid) == before and act.state.placements == {}
            assert sorted(os.listdir(mnt)) == ["filler"]
        finally:
            stop(proc)


@pytest.mark.kernel
def test_record_to_a_read_only_directory_exits_2_and_leaves_nothing(tmp_path):
    """Root ignores directory permissions, so the unwritable place is a read-only mount."""
    with tiny_tmpfs(tmp_path) as mnt:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        result = CliRunner().invoke(main, ["record", "--from-perf", str(SAMPLE), "-o", str(mnt / "t.jsonl")])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.output == f"lbagent: error: {mnt}/t.jsonl: cannot write the trace here (Read-only file system)\n"
        assert os.listdir(mnt) == []


# ------------------------------------------------------------------ hostile values, depths and lengths
extreme_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 5e-324, 1e-300, 1e-9, 1e-3, 64.0, 1e6, 1e300, 1.7e308, -1e6, -1.7e308])
"""Any double, and the values at and past the edges of the ranges the trace reader admits."""


@st.composite
def trace_numbers(draw):
    """CPU capacities and (arrival, runtime) pairs from the admitted ranges, with at most one
    number replaced by an extreme one: each hostile value meets an otherwise valid trace."""
    caps = draw(st.lists(st.floats(1e-3, 64.0), min_size=1, max_size=3))
    jobs = draw(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(1e-9, 1e6)), min_size=1, max_size=4))
    numbers = caps + [x for job in jobs for x in job]
    hostile = draw(st.integers(-1, len(numbers) - 1))
    if hostile >= 0:
        numbers[hostile] = draw(extreme_floats)
    flat = numbers[len(caps):]
    return numbers[: len(caps)], list(zip(flat[::2], flat[1::2], strict=True))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace_numbers())
@example(([0.0, 1.0], [(0.1, 0.2)]))
@example(([1e-300], [(0.1, 0.2), (0.2, 0.3)]))
@example(([1.0], [(0.1, 5e-324), (0.2, 0.3)]))
@example(([1.0], [(-1.7e308, 0.2), (1.7e308, 0.3)]))
def test_any_capacities_times_and_runtimes_are_refused_in_one_line_or_replay_finitely(tmp_path, numbers):
    """Whatever numbers a trace holds: the reader names the line and field, or every figure of the
    replay is finite."""
    from lbagent.errors import UserError
    from lbagent.eval.replay import replay, replay_jobs

    caps, jobs = numbers
    lines = [json.dumps({"type": "header", "schema": 1, "kernel": "k", "start": 0.0, "source": "bpf",
                         "cpus": [{"cpu": i, "capacity": c} for i, c in enumerate(caps)]})]
    for i, (t, runtime) in enumerate(jobs):
        lines.append(json.dumps({"type": "arrival", "t": t, "pid": i, "tgid": i, "comm": "w", "cpu": 0}))
        lines.append(json.dumps({"type": "exit", "t": t, "pid": i, "tgid": i, "comm": "w", "cpu": 0, "runtime": runtime}))
    path = tmp_path / "values.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        jobs_in = replay_jobs(read_trace(path), str(path))
    except UserError as e:
        assert str(e).startswith(f"{path}") and "\n" not in str(e)
        event("refused")
        return
    event("replayed")
    report = replay(jobs_in, ["lwl"], 1, 0, "fuzz")
    for r in report.results:
        assert np.isfinite([r.mean_jct, r.p99_jct, r.mean_slowdown]).all(), (caps, jobs, r)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 300_000), st.sampled_from("[{"))
def test_any_nesting_depth_is_a_trace_error_never_a_recursion_error(tmp_path, depth, opener):
    nested = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth
    path = tmp_path / "deep.jsonl"
    path.write_text(HEADER_LINE + "\n" + nested + "\n")
    with pytest.raises(TraceError, match=rf"^{path}:2: "):
        read_trace(path)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(-300, 300), st.booleans(), st.booleans())
def test_lines_are_read_up_to_the_limit_and_refused_past_it(tmp_path, over, gz, final_newline):
    """A record ``over`` bytes from the line limit: read when within it, refused past it, gzip or not,
    last line or not."""
    from lbagent.eval.trace import MAX_LINE_BYTES

    stub = json.dumps({"type": "arrival", "t": 0.1, "pid": 5, "tgid": 5, "comm": "", "cpu": 0})
    line = stub.replace('"comm": ""', '"comm": "' + "x" * (MAX_LINE_BYTES + over - len(stub)) + '"')
    assert len(line) == MAX_LINE_BYTES + over
    data = (HEADER_LINE + "\n" + line + ("\n" if final_newline else "")).encode()
    path = tmp_path / ("long.jsonl.gz" if gz else "long.jsonl")
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    if over <= 0:
        assert len(read_trace(path).events) == 1
    else:
        with pytest.raises(TraceError, match=rf"^{path}:2: line longer than the {MAX_LINE_BYTES}-byte limit$"):
            read_trace(path)

"""Malformed config and state files end in their own one-line error, never another exception."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lbagent.live.config import Config, ConfigError, load_config, parse_config
from lbagent.live.state import StateFile, StateFileError, boot_id
from livehost import NOBODY, bounded

KEYS = ["cgroups", "comms", "uids", "mode", "policy", "probe", "state_file", "dry_run", "log_level",
        "snapshot_interval", "enabled", "address", "bogus"]
SECTIONS = ["scope", "daemon", "metrics", "other"]
scalars = st.one_of(st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.text(max_size=20))
values = st.one_of(scalars, st.lists(scalars, max_size=4))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else "0.0"
    return json.dumps(v) if isinstance(v, str) else str(v)


def toml_text(doc: dict[str, dict]) -> str:
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in body.items()) for s, body in doc.items())


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), values, max_size=5), max_size=4))
def test_structured_configs_either_load_or_name_the_fault(doc):
    text = toml_text(doc)
    try:
        assert isinstance(parse_config(text, "fuzz.toml"), Config)
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml: ") and "\n" not in str(e)


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_configs_never_escape_as_another_exception(text):
    try:
        parse_config(text, "fuzz.toml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml: ")


json_values = st.recursive(scalars | st.none(), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=10)
placements = st.fixed_dictionaries(
    {"tgid": json_values | st.integers(2, 10**6), "start": json_values | st.integers(0, 10**9),
     "comm": json_values, "mode": st.sampled_from(["affinity", "cpuset", "x"]),
     "applied": json_values | st.lists(st.integers(0, 3), max_size=3),
     "originals": json_values | st.dictionaries(st.sampled_from(["12", "x", "13"]), st.lists(st.integers(0, 3), max_size=2), max_size=2),
     "cgroup": json_values})


@settings(max_examples=120, deadline=None)
@given(st.lists(placements, max_size=3), st.binary(max_size=40), st.booleans())
def test_state_files_either_load_or_are_refused_with_a_reason(entries, junk, truncate):
    body = json.dumps({"format": "lbagent-state", "version": 1, "boot_id": boot_id(), "placements": entries}).encode()
    body = body[: len(body) // 2] + junk if truncate else body
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.json"
        path.write_bytes(body)
        try:
            assert isinstance(StateFile.load(path), StateFile)
        except StateFileError as e:
            assert str(e).startswith(f"state file {path}") and "\n" not in str(e)


# ------------------------------------------------------------------ the readers, on real files of every kind
BOUNDED = settings(max_examples=60, deadline=timedelta(milliseconds=500))
"""Each fuzzer runs in a few seconds; a hang or a flood is cut short by :func:`livehost.bounded`."""

FILE_KINDS = ["regular", "mode 0644", "owned by nobody", "hard link", "fifo", "directory", "link to /dev/zero",
              "link to a regular file"]


def nested(n: int) -> str:
    return "[" * n + "]" * n


def make(path: Path, kind: str, body: bytes) -> None:
    """The file a reader is handed: the content given, in one of the shapes a path can take."""
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    else:
        target = path.with_name("target") if kind == "link to a regular file" else path
        target.write_bytes(body)
        target.chmod(0o644 if kind == "mode 0644" else 0o600)
        if kind == "owned by nobody":
            os.chown(target, NOBODY, NOBODY)
        elif kind == "hard link":
            os.link(target, path.with_name("second-name"))
        elif target != path:
            path.symlink_to(target)


def read_or_one_line_error(name: str, kind: str, body: bytes, read, result: type, error: type[Exception], prefix: str,
                           readable: tuple[str, ...]) -> None:
    """``read`` on the file either returns a ``result`` (and only for a ``readable`` kind) or raises ``error``
    with one short line that starts with ``prefix`` naming the path; never another exception, a hang
    or a flood of memory."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        make(path, kind, body)
        try:
            with bounded(2):
                assert isinstance(read(path), result)
            assert kind in readable
        except error as e:
            assert str(e).startswith(prefix.format(path=path)) and "\n" not in str(e) and len(str(e)) < 500


state_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda e: json.dumps({"format": "lbagent-state", "version": 1, "boot_id": boot_id(), "placements": e}).encode(),
              st.lists(placements, max_size=3)),
    st.integers(1, 20_000).map(lambda n: nested(n).encode()),
    st.builds(lambda tid: json.dumps({"format": "lbagent-state", "version": 1, "boot_id": boot_id(), "placements": [
        {"tgid": 4242, "start": 1, "comm": "x", "mode": "affinity", "applied": [0], "originals": {tid: [0]}}]}).encode(),
        st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=4)),
)


@BOUNDED
@given(st.sampled_from(FILE_KINDS), state_bodies)
def test_the_state_file_reader_gives_a_state_or_its_one_line_error_for_any_file(kind, body):
    # a regular file is the only shape of a state file root may trust
    read_or_one_line_error("state.json", kind, body, StateFile.load, StateFile, StateFileError, "state file {path}: ", ("regular",))


config_bodies = st.one_of(
    st.text(max_size=200),
    st.builds(lambda n, table: SCOPE_LINE + ("x = " + "{a = " * n + "1" + "}" * n if table else "[daemon]\npolicy = " + nested(n)),
              st.integers(1, 20_000), st.booleans()),
    st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), values, max_size=5), max_size=4).map(toml_text),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
SCOPE_LINE = '[scope]\ncomms = ["burn"]\n'


@BOUNDED
@given(st.sampled_from(["regular", "fifo", "directory", "link to /dev/zero", "link to a regular file"]), config_bodies)
def test_the_config_reader_gives_a_config_or_its_one_line_error_for_any_file(kind, body):
    read_or_one_line_error("lbagent.toml", kind, body, load_config, Config, ConfigError, "{path}: ",
                           ("regular", "link to a regular file"))

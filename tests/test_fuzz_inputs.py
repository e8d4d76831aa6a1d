"""Malformed config and state files end in their own one-line error, never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lbagent.live.config import Config, ConfigError, parse_config
from lbagent.live.state import StateFile, StateFileError, boot_id

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


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), values, max_size=5), max_size=4))
def test_structured_configs_either_load_or_name_the_fault(doc):
    text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in body.items()) for s, body in doc.items())
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

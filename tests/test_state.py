"""The state file: atomic, private, and refused loudly when it cannot be trusted."""

from __future__ import annotations

import json
import stat

import pytest

from lbagent.live.state import Placement, StateFile, StateFileError


def _state(tmp_path, directory: str = "run") -> StateFile:
    s = StateFile(tmp_path / directory / "state.json")
    s.placements[4242] = Placement(4242, 777, "burn", "affinity", (1,), {4242: (0, 1), 4243: (0, 1)})
    s.placements[4300] = Placement(4300, 778, "burn", "cpuset", (0,), {4300: (0, 1)}, "/work")
    return s


@pytest.mark.parametrize("directory", ["run", "odd dir ÿ 'quote\" \\back\nline"])
def test_round_trip_private_and_atomic(tmp_path, directory):
    s = _state(tmp_path, directory)
    s.save()
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(s.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in s.path.parent.iterdir()] == ["state.json"]  # no temporary left behind
    back = StateFile.load(s.path)
    assert back.placements == s.placements
    assert back.placements[4242].original_for(9999) == (0, 1)


def test_missing_file_is_empty_state(tmp_path):
    assert StateFile.load(tmp_path / "nope.json").placements == {}


def test_state_of_another_boot_is_ignored(tmp_path):
    s = _state(tmp_path)
    s.save()
    data = json.loads(s.path.read_text())
    data["boot_id"] = "00000000-0000-0000-0000-000000000000"
    s.path.write_text(json.dumps(data))
    assert StateFile.load(s.path).placements == {}


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda t: t[: len(t) // 2], "corrupt or truncated JSON"),
        (lambda t: "", "corrupt or truncated JSON"),
        (lambda t: t.replace('"lbagent-state"', '"other"'), "not an lbagent state file"),
        (lambda t: t.replace('"version":1', '"version":9'), "version 9"),
        (lambda t: t.replace('"tgid":4242', '"tgid":"x"'), "placement 0: 'tgid' must be int"),
        (lambda t: t.replace('"applied":[1]', '"applied":[]'), "'applied' must be a non-empty list"),
        (lambda t: t.replace('"mode":"cpuset"', '"mode":"pin"'), "placement 1: 'mode' must be affinity or cpuset"),
        (lambda t: t.replace('"tgid":4242', '"tgid":1'), "out of range"),
    ],
)
def test_bad_state_file_is_refused_with_a_clear_message(tmp_path, mangle, message):
    s = _state(tmp_path)
    s.save()
    s.path.write_text(mangle(s.path.read_text()))
    with pytest.raises(StateFileError, match=message) as e:
        StateFile.load(s.path)
    assert str(s.path) in str(e.value) and "\n" not in str(e.value)

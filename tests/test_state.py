"""The state file: atomic, private, out of other users' reach, and refused loudly when it cannot be trusted."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lbagent.live.state import Placement, StateFile, StateFileError, boot_id
from livehost import NOBODY, as_nobody, bounded, shared_directory


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
        (lambda t: t.replace('"version":2', '"version":9'), "version 9, this lbagent reads 1 and 2"),
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


# ------------------------------------------------------------------ another user must not redirect or supply it
def _saved(directory) -> StateFile:
    """A valid state file of this boot in ``directory``, written by the daemon's own code."""
    s = StateFile(directory / "state.json")
    s.placements[4242] = Placement(4242, 777, "burn", "affinity", (1,), {4242: (0, 1)})
    s.save()
    return s


@pytest.fixture
def shared():
    with shared_directory() as d:
        yield d


def test_a_directory_other_users_can_write_is_refused_and_their_links_are_not_followed(tmp_path, shared):
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    through_lock = tmp_path / "created-through-the-lock-link"
    state = StateFile(shared / "state.json")
    state.placements[4242] = Placement(4242, 777, "burn", "affinity", (1,), {4242: (0, 1)})

    def plant() -> None:  # at the names the daemon uses, before it starts
        os.symlink(victim, shared / f".state.json.{os.getppid()}.tmp")
        os.symlink(through_lock, shared / "state.json.lock")
        (shared / "state.json").write_text(json.dumps({"format": "lbagent-state", "version": 1, "placements": []}))

    as_nobody(plant)
    refused = f"^state file {shared}/state.json: directory {shared} is writable by other users \\(mode 1777\\)"
    for attempt in (state.lock, state.save, lambda: StateFile.load(shared / "state.json")):
        with pytest.raises(StateFileError, match=refused):
            attempt()
    assert victim.read_text() == "root's file" and not through_lock.exists()
    assert not state.locked


def test_a_directory_another_user_owns_or_a_linked_directory_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(StateFileError, match=f"directory {theirs} is owned by uid {NOBODY}, not root"):
        _saved(theirs)
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StateFileError, match=f"{tmp_path}/link is a symbolic link"):
        _saved(tmp_path / "link")
    assert os.listdir(tmp_path / "real") == []


@pytest.mark.parametrize("spoil, reason", [
    (lambda p: p.chmod(0o644), "has mode 0644, not private to root"),
    (lambda p: os.chown(p, NOBODY, NOBODY), f"is owned by uid {NOBODY}, not root"),
    (lambda p: os.link(p, p.with_name("second-name")), "has 2 hard links"),
    (lambda p: (p.rename(p.with_name("real.json")), p.symlink_to(p.with_name("real.json"))),
     "is a symbolic link, not a regular file"),
])
def test_a_state_file_that_is_not_roots_private_regular_file_is_not_trusted(tmp_path, spoil, reason):
    s = _saved(tmp_path)
    spoil(s.path)
    with pytest.raises(StateFileError, match=f"^state file {s.path}: {reason}"):
        StateFile.load(s.path)


def test_stale_temporary_files_are_removed_when_the_lock_is_taken(tmp_path):
    for name in (".state.json.4242.tmp", ".state.json.9f2c1d0e5a6b7c8d.tmp", ".other.json.1.tmp", "keep.tmp"):
        (tmp_path / name).write_text("half")
    state = StateFile(tmp_path / "state.json")
    state.lock()
    assert sorted(os.listdir(tmp_path)) == [".other.json.1.tmp", "keep.tmp", "state.json.lock"]
    assert stat.S_IMODE((tmp_path / "state.json.lock").stat().st_mode) == 0o600


# ------------------------------------------------------------------ files that hang, crash or flood a reader
def _write_private(path: Path, text: str) -> None:
    """As the daemon writes it (0600), so that only the content is wrong."""
    path.write_text(text)
    path.chmod(0o600)


def _valid_body(**placement) -> str:
    entry = {"tgid": 4242, "start": 777, "comm": "burn", "mode": "affinity", "applied": [1],
             "originals": {"4242": [0, 1]}, "cgroup": None, **placement}
    return json.dumps({"format": "lbagent-state", "version": 1, "boot_id": boot_id(), "placements": [entry]})


STRANGE_STATE = {
    "fifo": (lambda p: os.mkfifo(p, 0o600), "is a FIFO, not a regular file"),
    "directory": (lambda p: p.mkdir(mode=0o700), "is a directory, not a regular file"),
    "link to /dev/zero": (lambda p: p.symlink_to("/dev/zero"), "is a symbolic link, not a regular file"),
    "deeply nested JSON": (lambda p: _write_private(p, "[" * 200_000 + "]" * 200_000), "JSON nested too deeply"),
    "arabic-indic digits as a thread id": (lambda p: _write_private(p, _valid_body(originals={"١٢": [0]})),
                                           "thread id '١٢' is not a number"),
    "superscript digit as a thread id": (lambda p: _write_private(p, _valid_body(originals={"²": [0]})),
                                         "thread id '²' is not a number"),
    "thread id beyond PID_MAX": (lambda p: _write_private(p, _valid_body(originals={"99999999": [0]})),
                                 "thread id '99999999' is not a number"),
    "a megabyte comm": (lambda p: _write_private(p, _valid_body(comm=["x" * 1_000_000])), r"'comm' must be str, got \['xxx"),
}


@pytest.mark.parametrize("case", STRANGE_STATE)
def test_strange_state_files_are_refused_at_once_in_one_short_line(tmp_path, case):
    make, reason = STRANGE_STATE[case]
    path = tmp_path / "state.json"
    make(path)
    with bounded(5), pytest.raises(StateFileError, match=f"^state file {path}: .*{reason}") as e:
        StateFile.load(path)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400

"""Scenario suites: every shipped suite runs, every kind of bad file is refused with file and key."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lbagent import spaces
from lbagent.sim.scenarios import ScenarioError, known_suites, load_suite, make_vector_env
from lbagent.sim.workload import ARRIVALS, SIZES

GOOD = """
[suite]
name = "mine"
episodes_per_trial = 2

[[scenario]]
name = "small"
dynamics = "host"
cpus = [2, 3]
load = 0.6
size = ["pareto", "uniform"]
tasks = 6
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["train", "park", "shift", "heldout", "batch"])
def test_each_shipped_suite_loads_and_runs(name):
    suite = load_suite(name)
    assert suite.name == name and suite.scenarios and suite.episodes_per_trial >= 1
    for scenario in suite.scenarios:
        env = make_vector_env(scenario, 4, 0)
        obs, info = env.reset(seed=0)
        assert obs.shape == (4, spaces.OBS_DIM)
        for _ in range(20):
            mask = info["action_mask"]
            obs, reward, _, _, info = env.step(np.argmax(mask, axis=1))
            assert np.isfinite(obs).all() and np.all(reward <= 0)


def test_shipped_names_are_the_five_suites():
    assert known_suites() == ["batch", "heldout", "park", "shift", "train"]


def test_train_draws_a_new_workload_at_each_trial_start(tmp_path):
    scenario = load_suite(write_train_short(tmp_path)).scenarios[0]
    env = make_vector_env(scenario, 64, 0)
    _, info = env.reset(seed=0)
    first = (env.w.cpus.copy(), env.w.load.copy())
    assert len(set(first[0].tolist())) > 1 and {*env.w.arrival.tolist()} == set(range(len(ARRIVALS)))
    assert {*env.w.size.tolist()} == set(range(len(SIZES)))
    for step in range(1, 9):  # 2 episodes of 4 tasks = one trial
        _, _, _, _, info = env.step(np.full(64, spaces.KERNEL))
        same = np.array_equal(env.w.load, first[1])
        assert same == (step < 8)
    assert info["trial_start"].all()


def write_train_short(tmp_path: Path) -> Path:
    """The shipped training suite with 4-task episodes, 2-episode trials and no reviews (same ranges)."""
    text = Path(load_suite("train").source).read_text()
    text = text.replace("tasks = 256", "tasks = 4").replace("episodes_per_trial = 4", "episodes_per_trial = 2")
    text = text.replace("max_reviews = 6", "max_reviews = 0")  # one decision per task: steps count tasks
    return write(tmp_path, text)


def test_train_ranges_hold_every_drawn_workload():
    env = make_vector_env(load_suite("train").scenarios[0], 256, 1)
    env.reset(seed=1)
    w = env.w
    assert w.cpus.min() >= 2 and w.cpus.max() <= 8
    assert w.load.min() >= 0.5 and w.load.max() <= 0.9
    present = w.capacity > 0
    assert (present.sum(axis=1) == w.cpus).all()
    assert w.capacity[present].min() >= 0.5 and w.capacity.max() <= 1.0


def test_shift_changes_the_workload_at_its_episode():
    suite = load_suite("shift")
    surge = next(s for s in suite.scenarios if s.name == "load-surge")
    slowdown = next(s for s in suite.scenarios if s.name == "cpu-slowdown")
    mix = next(s for s in suite.scenarios if s.name == "size-mix")
    for scenario, changed in ((surge, lambda w: w.load), (slowdown, lambda w: w.bg_always), (mix, lambda w: w.size)):
        env = make_vector_env(scenario, 1, 0)
        _, info = env.reset(seed=0)
        per_episode = []
        while len(per_episode) < suite.episodes_per_trial:  # reviews make episodes differ in steps
            if info["episode_start"][0]:
                per_episode.append(np.array(changed(env.w)).copy())
            _, _, _, _, info = env.step(np.full(1, spaces.KERNEL))
        at = scenario.shift.at_episode
        assert all(np.array_equal(per_episode[0], p) for p in per_episode[:at])
        assert all(not np.array_equal(per_episode[0], p) for p in per_episode[at:])


def test_heldout_lies_outside_the_training_ranges():
    train = load_suite("train").scenarios[0].space
    for scenario in load_suite("heldout").scenarios:
        env = make_vector_env(scenario, 8, 0)
        env.reset(seed=0)
        w = env.w
        outside = [
            w.cpus.max() > train.spec("cpus").hi,
            w.load.max() > train.spec("load").hi,
            w.pareto_shape.min() < train.spec("pareto_shape").lo and (w.size == 0).all(),
            w.bg_share.max() > train.spec("background").hi,
            w.capacity.max() > train.spec("capacity").hi,
        ]
        assert any(outside), f"heldout scenario {scenario.name} lies inside the training ranges"


def test_a_path_loads_like_a_name(tmp_path):
    suite = load_suite(write(tmp_path, GOOD))
    assert suite.name == "mine" and suite.episodes_per_trial == 2
    env = make_vector_env(suite.scenarios[0], 3, 0)
    env.reset(seed=0)
    assert set(env.w.cpus.tolist()) <= {2, 3}


def test_unknown_suite_name_lists_the_known_ones():
    with pytest.raises(ScenarioError, match="unknown suite 'nope'.*batch, heldout, park, shift, train"):
        load_suite("nope")


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_suite(tmp_path / "absent.toml")


BAD = {
    "bad TOML": (GOOD.replace('load = 0.6', 'load = = 0.6'), "not valid TOML", None),
    "unknown key": (GOOD.replace("load = 0.6", "lod = 0.6"), "unknown key", "scenario[0].lod"),
    "wrong type": (GOOD.replace("load = 0.6", 'load = "high"'), "expected a number", "scenario[0].load"),
    "out of range": (GOOD.replace("load = 0.6", "load = 1.5"), "outside", "scenario[0].load"),
    "missing key": (GOOD.replace('dynamics = "host"\n', ""), "missing", "scenario[0].dynamics"),
    "missing suite key": (GOOD.replace("episodes_per_trial = 2\n", ""), "missing", "suite.episodes_per_trial"),
    "reversed range": (GOOD.replace("cpus = [2, 3]", "cpus = [3, 2]"), "lo > hi", "scenario[0].cpus"),
    "unknown family": (GOOD.replace('"uniform"', '"zipf"'), "unknown size family 'zipf'", "scenario[0].size"),
    "integer wanted": (GOOD.replace("tasks = 6", "tasks = 6.5"), "expected an integer", "scenario[0].tasks"),
    "unknown dynamics": (GOOD.replace('"host"', '"quantum"'), "unknown dynamics", "scenario[0].dynamics"),
    "bad shift key": (GOOD + "[scenario.shift]\nat_episode = 1\ncpus = 4\n", "unknown key", "scenario[0].shift.cpus"),
    "shift too late": (GOOD + "[scenario.shift]\nat_episode = 2\n", "outside", "scenario[0].shift.at_episode"),
    "half a slowdown": (GOOD + "[scenario.shift]\nat_episode = 1\nslow_cpus = 1\n", "missing", "scenario[0].shift.slow_share"),
}


@pytest.mark.parametrize("fault", sorted(BAD))
def test_bad_file_names_file_key_and_reason(tmp_path, fault):
    text, reason, key = BAD[fault]
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert str(path) in message and reason in message
    if key is not None:
        assert f": {key}: " in message
    assert "\n" not in message.strip() or fault == "bad TOML"


def test_park_scenario_speaks_the_contract_without_kernel():
    env = make_vector_env(load_suite("park").scenarios[0], 2, 0)
    _, info = env.reset(seed=0)
    assert not info["action_mask"][:, spaces.KERNEL].any()


def test_a_suite_name_is_not_shadowed_by_a_directory_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "park").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_suite("park").name == "park"


def test_a_fifo_or_an_oversized_file_is_refused_unread(tmp_path):
    """A FIFO would block the reader forever and /dev/zero never ends: neither is opened for reading."""
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    with pytest.raises(ScenarioError, match="pipe.toml: not read: it is a FIFO"):
        load_suite(str(fifo))
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n" + GOOD)
    with pytest.raises(ScenarioError, match="over the 1048576 byte limit"):
        load_suite(str(big))
    with pytest.raises(ScenarioError, match="not read: it is a character device"):
        load_suite("/dev/zero")  # a path (it has a /): refused on its stat, never opened

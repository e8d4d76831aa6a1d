"""The adaptation and forgetting experiments on small real scenarios (tasks per episode cut down)."""

from __future__ import annotations

import json

import pytest

from lbagent.agent.config import DreamerConfig
from lbagent.agent.dreamer import DreamerAgent
from lbagent.eval import experiments
from lbagent.policy.files import save_policy

SHIFT_TOML = """
[suite]
name = "tiny-shift"
episodes_per_trial = 3

[[scenario]]
name = "surge"
dynamics = "host"
capacities = [1.0, 0.5, 0.5]
load = 0.4
tasks = 24
[scenario.shift]
at_episode = 1
load = 0.95

[[scenario]]
name = "calm"
dynamics = "host"
capacities = [1.0, 1.0]
load = 0.3
tasks = 24
"""


@pytest.fixture()
def tiny_suite(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SHIFT_TOML)
    return str(path)


def test_adaptation_runs_dreamer_with_and_without_memory_and_stateless_policies_once(tmp_path, tiny_suite):
    agent = DreamerAgent(DreamerConfig(deter=16, stoch=2, classes=4, units=16, actor_hidden=8))
    policy = save_policy(tmp_path / "d.safetensors", agent.export_weights(),
                         {"algorithm": "dreamer", "arch": agent.arch()})
    result = experiments.adaptation([str(policy), "sed"], tiny_suite, trials=2, seed=5)
    labels = list(result["curves"])
    assert labels == [f"{policy} (carried memory)", f"{policy} (reset each episode)", "sed"]
    for curves in result["curves"].values():
        assert set(curves) == {"surge", "calm", "mean"}
        assert all(len(c) == 3 and all(v > 0 for v in c) for c in curves.values())
    # the shift to load 0.95 makes the later episodes of "surge" slower for a fixed heuristic
    assert result["curves"]["sed"]["surge"][2] > result["curves"]["sed"]["surge"][0]
    assert result["shift_at_episode"] == {"surge": 1, "calm": None}
    experiments.plot_adaptation(result, tmp_path / "a.png")
    experiments.write_json(result, tmp_path / "a.json")
    assert (tmp_path / "a.png").stat().st_size > 1000
    assert json.loads((tmp_path / "a.json").read_text())["suite"] == "tiny-shift"


def test_forgetting_names_an_unknown_scenario(tiny_suite, tmp_path):
    from lbagent.errors import UserError

    with pytest.raises(UserError, match="no scenario 'nope'"):
        experiments.forgetting("a2c", "smoke", tiny_suite, "surge", "nope", 10, 0, tmp_path)


@pytest.mark.parametrize("algo", ["a2c", "dreamer"])
def test_forgetting_trains_on_a_then_b_and_scores_a_twice(tiny_suite, tmp_path, algo):
    result = experiments.forgetting(algo, "smoke", tiny_suite, "surge", "calm", 96, 0, tmp_path / algo, episodes=2,
                                    overrides={"prefill": 32, "seq_len": 8, "batch": 4, "deter": 16, "units": 16,
                                               "stoch": 4, "classes": 4, "actor_hidden": 8, "train_ratio": 8.0})
    assert result["updates"] >= 4
    assert result["a_mean_jct_after_a"] > 0 and result["a_mean_jct_after_b"] > 0
    assert result["forgetting"] == pytest.approx(result["a_mean_jct_after_b"] / result["a_mean_jct_after_a"] - 1)

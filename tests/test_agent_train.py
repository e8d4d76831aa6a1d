"""sim-train end to end on the real simulator: exact resume, the smoke preset, the A2C export."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lbagent.agent.train import PRESETS, DreamerTrainer, Preset, train_dreamer
from lbagent.policy.files import load_policy

TINY = replace(
    PRESETS["smoke"].config, deter=16, stoch=4, classes=4, units=16, actor_hidden=8, num_envs=4, batch=4,
    seq_len=8, prefill=64, train_ratio=8.0, replay_capacity=2_000, eval_every=10**9, checkpoint_every=10**9,
)
"""One update every 4 env steps (one lock-step row of 4 envs) after 64 steps of prefill."""


def test_a_resumed_run_equals_the_uninterrupted_run(tmp_path):
    preset = Preset("smoke", "park", "park", TINY, "test")
    whole = DreamerTrainer(preset, 5, tmp_path / "whole", TINY)
    whole.run(until_env_steps=112)
    first = DreamerTrainer(preset, 5, tmp_path / "split", TINY)
    first.run(until_env_steps=88)
    first.save_checkpoint()
    assert first.counters.updates == 6
    resumed = DreamerTrainer.restore(tmp_path / "split")
    resumed.run(until_env_steps=112)
    assert resumed.counters.updates == whole.counters.updates == 12
    for (name, a), (_, b) in zip(whole.agent.state_dict().items(), resumed.agent.state_dict().items()):
        assert torch.equal(a, b), name
    for key in whole.replay.data:
        assert np.array_equal(whole.replay.data[key], resumed.replay.data[key]), key
    assert np.array_equal(whole.actor.hidden, resumed.actor.hidden)
    # and the run really moved: weights differ from a fresh agent's
    fresh = DreamerTrainer(preset, 5, tmp_path / "fresh", TINY)
    assert not torch.equal(fresh.agent.state_dict()["wm.encoder.hidden.0.weight"],
                           whole.agent.state_dict()["wm.encoder.hidden.0.weight"])


@pytest.mark.slow
def test_smoke_preset_learns_and_beats_random_on_held_out_seeds(tmp_path):
    path, final = train_dreamer("smoke", 0, tmp_path, resume=False, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["model_loss"] for r in records if r["kind"] == "train"]
    assert len(losses) >= 4
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])
    assert final["mean_jct"] < final["random_mean_jct"]
    policy = load_policy(path)
    assert policy.metadata["preset"] == "smoke" and policy.metadata["evaluation"]["mean_jct"] == final["mean_jct"]
    assert policy.metadata["command"].startswith("lbagent")

"""The teacher-guided start (per-row teacher, stored labels, schedules, BC loss) and imagination from a
subset of starts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lbagent.agent.nets import masked_log_probs
from lbagent.agent.teacher import Teacher, bc_loss, bc_weight, teacher_rows
from lbagent.agent.train import PRESETS, DreamerTrainer, Preset, make_suite_env
from lbagent.policy.heuristics import make_heuristic
from lbagent.spaces import KERNEL, N_ACTIONS

TINY = replace(
    PRESETS["smoke"].config, deter=16, stoch=4, classes=4, units=16, actor_hidden=8, num_envs=4, batch=4,
    seq_len=8, prefill=32, train_ratio=8.0, replay_capacity=2_000, eval_every=10**9, checkpoint_every=10**9,
    teacher="kernel,sed", teacher_share=0.5, teacher_decay=64, bc_start=1.0, bc_floor=0.1, bc_decay=100,
)


def test_bc_loss_is_the_cross_entropy_toward_labelled_allowed_actions():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True], [True, False, True]])
    log_probs = masked_log_probs(logits, mask, 0.0)
    teacher = torch.tensor([0, 1, -1, 1])  # row 2 unlabelled, row 3's label is masked out
    expected = -(torch.log_softmax(logits[0], -1)[0] + torch.log_softmax(logits[1, :2], -1)[1]) / 2
    assert torch.allclose(bc_loss(log_probs, teacher), expected)
    # and minimizing it moves probability onto the teacher's action
    param = logits.clone().requires_grad_(True)
    bc_loss(masked_log_probs(param, mask, 0.01), teacher).backward()
    assert param.grad[0, 0] < 0 and param.grad[1, 1] < 0 and param.grad[0, 1] > 0
    assert torch.all(param.grad[2] == 0) and torch.all(param.grad[3] == 0)


def test_bc_loss_without_any_label_is_zero_and_keeps_the_graph():
    logits = torch.zeros(2, N_ACTIONS, requires_grad=True)
    loss = bc_loss(masked_log_probs(logits, torch.ones(2, N_ACTIONS, dtype=torch.bool), 0.01), torch.tensor([-1, -1]))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_schedules_fade_from_all_teacher_to_the_actor_and_to_the_bc_floor():
    assert teacher_rows(TINY, 0) == 4 and teacher_rows(TINY, 31) == 4  # prefill: every row
    assert teacher_rows(TINY, 32) == 1 and teacher_rows(TINY, 52) == 0  # 4 rows * 0.5 * (1 - 32/64)
    assert teacher_rows(TINY, 64) == 0 and teacher_rows(TINY, 10**6) == 0
    assert bc_weight(TINY, 0) == pytest.approx(1.0)
    assert bc_weight(TINY, 50) == pytest.approx(0.55)
    assert bc_weight(TINY, 100) == bc_weight(TINY, 10**6) == pytest.approx(0.1)
    assert teacher_rows(replace(TINY, teacher=""), 0) == 0 and bc_weight(replace(TINY, teacher=""), 0) == 0.0


def test_teacher_defers_to_the_kernel_only_where_the_mask_offers_it():
    host = make_suite_env("train", 3, 1)
    obs, info = host.reset(seed=1)
    assert info["action_mask"][:, KERNEL].all()
    assert np.all(Teacher("kernel,sed").act(obs, info["raw"], info["action_mask"]) == KERNEL)
    park = make_suite_env("park", 3, 1)
    obs, info = park.reset(seed=1)
    for _ in range(20):  # a few steps so the slots' queues differ
        obs, _, _, _, info = park.step(make_heuristic("random", 3).act(obs, info["raw"], info["action_mask"]))
    sed = make_heuristic("sed").act(obs, info["raw"], info["action_mask"])
    assert np.array_equal(Teacher("kernel,sed").act(obs, info["raw"], info["action_mask"]), sed)
    with pytest.raises(ValueError, match="last choice"):
        Teacher("sed,kernel")


def test_replay_stores_the_teachers_action_at_every_state_and_prefill_follows_it(tmp_path):
    trainer = DreamerTrainer(Preset("smoke", "park", "park", TINY, "test"), 2, tmp_path, TINY)
    sed = make_heuristic("sed")
    expected, taken = [], []
    for _ in range(24):  # 96 env steps: prefill (all teacher), the fading share, then the actor alone
        expected.append(sed.act(trainer.obs, trainer.raw, trainer.mask))
        trainer.collect_step()
        taken.append(trainer.actor.prev_action.copy())
    replay = trainer.replay.data
    assert np.array_equal(replay["teacher_action"][:24], np.stack(expected))
    assert np.array_equal(replay["action"][:24], np.stack(taken))
    assert np.array_equal(replay["action"][:8], replay["teacher_action"][:8])  # prefill: 8 lock-steps of 4
    assert np.array_equal(replay["action"][8:12, 0], replay["teacher_action"][8:12, 0])  # row 0 still taught
    assert not np.array_equal(replay["action"][16:24], replay["teacher_action"][16:24])  # the actor's own
    metrics = trainer.agent.update(trainer.replay.sample(4, 8), bc_weight(TINY, 200))
    assert metrics["bc_weight"] == pytest.approx(0.1) and metrics["bc_loss"] > 0


def test_imagination_from_a_subset_of_starts_still_trains_actor_and_critic(tmp_path):
    cfg = replace(TINY, imag_starts=5)
    trainer = DreamerTrainer(Preset("smoke", "park", "park", cfg, "test"), 3, tmp_path, cfg)
    for _ in range(12):
        trainer.collect_step()
    before = {k: v.clone() for k, v in trainer.agent.state_dict().items() if k.startswith(("actor.", "critic."))}
    assert trainer.agent._imagination_starts(32).shape == (5,)
    assert torch.equal(trainer.agent._imagination_starts(4), torch.arange(4))
    trainer.agent.update(trainer.replay.sample(4, 8), 0.5)
    after = trainer.agent.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("linear.weight"))


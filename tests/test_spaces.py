"""Pins the contract's layout: a change here means a new CONTRACT_VERSION."""

import numpy as np
import pytest

from lbagent import spaces
from lbagent.spaces import (
    KERNEL,
    MAX_SLOTS,
    N_ACTIONS,
    OBS_DIM,
    Cpu,
    RawObservation,
    action_mask,
    build_slots,
    encode,
    feature_index,
    validate_actions,
)


def make_raw(b: int = 2, n: int = 4, **over) -> RawObservation:
    mask = np.zeros((b, MAX_SLOTS), bool)
    mask[:, :n] = True
    cap = np.where(mask, 1.0, 0.0)
    kw = dict(
        slot_mask=mask,
        capacity=cap,
        runnable=np.where(mask, 2.0, 0.0),
        util=np.where(mask, 0.5, 0.0),
        placed=np.where(mask, 1.0, 0.0),
        work_left=np.where(mask, 3.0, 0.0),
        task_work=np.full(b, 1.0),
        task_unknown=np.zeros(b, bool),
        since_last=np.full(b, 0.5),
    )
    kw.update(over)
    return RawObservation(**kw)


def test_layout_is_pinned():
    assert spaces.CONTRACT_VERSION == 2
    assert MAX_SLOTS == 16 and KERNEL == 16 and spaces.N_CLASSES == 2 and N_ACTIONS == 34
    assert (spaces.NORMAL, spaces.BACKGROUND, spaces.ARRIVAL, spaces.REVIEW) == (0, 1, 0, 1)
    assert spaces.SLOT_FEATURES == (
        "mask", "capacity", "runnable", "background", "util", "placed", "work_left", "expected_delay", "current",
    )
    assert OBS_DIM == 16 * 9 + 7 == 151
    assert feature_index("mask", 0) == 0
    assert feature_index("current", 15) == 15 * 9 + 8
    names = ("review", "task_work", "task_unknown", "attained", "background_now", "since_last", "load")
    assert [feature_index(n) for n in names] == list(range(144, 151))
    with pytest.raises(KeyError):
        feature_index("nope")
    with pytest.raises(ValueError):
        feature_index("util", 16)


def test_encode_values_and_masking():
    raw = make_raw()
    raw.capacity[:, 1] = 0.5
    obs = encode(raw)
    assert obs.shape == (2, OBS_DIM) and obs.dtype == np.float32
    assert obs[0, feature_index("mask", 3)] == 1 and obs[0, feature_index("mask", 4)] == 0
    assert obs[0, feature_index("capacity", 1)] == pytest.approx(0.5)
    assert obs[0, feature_index("runnable", 0)] == pytest.approx(np.log1p(2.0))
    # expected delay = (work_left + task) / capacity = (3 + 1) / 0.5 = 8
    assert obs[0, feature_index("expected_delay", 1)] == pytest.approx(np.log1p(8.0), rel=1e-6)
    assert obs[0, feature_index("expected_delay", 0)] == pytest.approx(np.log1p(4.0), rel=1e-6)
    # every feature of a missing slot is zero, whatever the raw data says
    raw.runnable[:, 10] = 99.0
    obs = encode(raw)
    s = feature_index("mask", 10)
    assert np.all(obs[:, s : s + spaces.N_SLOT_FEATURES] == 0)
    assert obs[0, feature_index("load")] == pytest.approx(np.log1p(2.0))


def test_time_unit_scales_work_and_time():
    a = encode(make_raw(work_left=np.full((2, 16), 300.0), task_work=np.full(2, 300.0), since_last=np.full(2, 50.0), time_unit=100.0))
    b = encode(make_raw(work_left=np.full((2, 16), 3.0), task_work=np.full(2, 3.0), time_unit=1.0))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_compose_and_split_are_inverse_and_normal_actions_are_version_1s():
    slots = np.arange(spaces.N_PLACEMENTS)
    for cls in (spaces.NORMAL, spaces.BACKGROUND):
        a = spaces.compose_action(slots, cls)
        back_slot, back_cls = spaces.split_action(a)
        assert back_slot.tolist() == slots.tolist() and (back_cls == cls).all()
    assert spaces.compose_action(KERNEL, spaces.NORMAL) == KERNEL
    assert spaces.compose_action(3, spaces.BACKGROUND) == 17 + 3
    assert spaces.split_action(N_ACTIONS - 1) == (KERNEL, spaces.BACKGROUND)


def test_review_and_share_masks():
    """A review may only keep its task; BACKGROUND exists only where share control does."""
    raw = make_raw(n=3, review=np.array([False, True]), share_allowed=np.array([True, True]))
    m = action_mask(raw)
    bg = spaces.compose_action(np.arange(17), spaces.BACKGROUND)
    assert m[0, :3].all() and m[0, KERNEL] and m[0, bg[:3]].all() and m[0, bg[KERNEL]]
    assert m[1].tolist() == [i in (KERNEL, bg[KERNEL]) for i in range(N_ACTIONS)]
    parked = action_mask(make_raw(n=3))  # share_allowed defaults to False: park, the daemon in v1 mode
    assert not parked[:, 17:].any() and parked[:, :3].all()


def test_review_fields_reach_the_encoding():
    raw = make_raw(review=np.array([True, False]), attained=np.array([2.0, 0.0]),
                   current_slot=np.array([2, -1]), background_now=np.array([True, False]),
                   runnable_bg=np.where(make_raw().slot_mask, 1.0, 0.0))
    obs = encode(raw)
    assert obs[:, feature_index("review")].tolist() == [1, 0]
    assert obs[0, feature_index("attained")] == pytest.approx(np.log1p(2.0))
    assert obs[0, feature_index("current", 2)] == 1 and obs[0, [feature_index("current", s) for s in (0, 1, 3)]].sum() == 0
    assert obs[1, [feature_index("current", s) for s in range(16)]].sum() == 0
    assert obs[:, feature_index("background_now")].tolist() == [1, 0]
    assert obs[0, feature_index("background", 0)] == pytest.approx(np.log1p(1.0))
    assert obs[0, feature_index("background", 5)] == 0  # a missing slot stays all zero


def test_action_mask_and_validation():
    raw = make_raw(n=3, kernel_allowed=np.array([True, False]))
    m = action_mask(raw)
    assert m.shape == (2, N_ACTIONS)
    assert m[0, :3].all() and not m[0, 3:16].any() and m[0, KERNEL] and not m[1, KERNEL]
    assert validate_actions(np.array([2, 0]), m).tolist() == [2, 0]
    with pytest.raises(ValueError, match="masked"):
        validate_actions(np.array([3, 0]), m)
    with pytest.raises(ValueError, match="masked"):
        validate_actions(np.array([0, KERNEL]), m)
    with pytest.raises(ValueError):
        validate_actions(np.array([N_ACTIONS, 0]), m)


def test_reward_is_minus_task_time():
    assert spaces.reward(np.array([2.0, 0.0]), 1.0).tolist() == [-2.0, -0.0]
    assert spaces.reward(np.array([300.0]), 100.0).tolist() == [-3.0]


def test_small_host_one_slot_per_cpu():
    layout = build_slots([Cpu(i, capacity=1.0 if i else 0.5) for i in range(4)])
    assert layout.n_slots == 4
    assert [s.cpus for s in layout.slots] == [(0,), (1,), (2,), (3,)]
    assert layout.capacities[:4].tolist() == [0.5, 1, 1, 1] and layout.mask.sum() == 4


def test_big_host_grouped_by_llc_then_core():
    # 64 CPUs in 4 LLCs -> 4 slots of 16
    layout = build_slots([Cpu(i, llc=i // 16, core=i // 2) for i in range(64)])
    assert layout.n_slots == 4 and layout.slots[1].cpus == tuple(range(16, 32))
    assert layout.slots[0].capacity == 16.0
    # 32 CPUs, one LLC, SMT pairs -> 16 cores
    layout = build_slots([Cpu(i, llc=0, core=i // 2) for i in range(32)])
    assert layout.n_slots == 16 and layout.slots[0].cpus == (0, 1)
    # 256 CPUs, one LLC, no SMT -> merged pairwise down to 16
    layout = build_slots([Cpu(i) for i in range(256)])
    assert layout.n_slots == 16 and len(layout.slots[0].cpus) == 16
    assert sorted(c for s in layout.slots for c in s.cpus) == list(range(256))


def test_take_selects_rows():
    raw = make_raw(b=3)
    raw.task_work[:] = [1, 2, 3]
    sub = raw.take(np.array([0, 2]))
    assert sub.batch == 2 and sub.task_work.tolist() == [1, 3]


def test_gym_spaces_hold_every_encoded_observation_and_action():
    obs_space, action_space = spaces.gym_spaces()
    assert obs_space.shape == (OBS_DIM,) and obs_space.dtype == np.float32
    assert all(obs_space.contains(row) for row in encode(make_raw()))
    assert action_space.n == N_ACTIONS and action_space.contains(KERNEL) and not action_space.contains(N_ACTIONS)
    assert spaces.gym_spaces()[1] is not action_space  # fresh objects: each space has its own sampling RNG


def test_the_contract_module_does_not_import_gymnasium():
    """The daemon's install has no gymnasium: the spaces are built only when asked for."""
    import subprocess
    import sys

    code = "import sys, lbagent.spaces; print('gymnasium' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr

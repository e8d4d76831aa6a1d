"""Policy files: round trip, and every kind of bad file refused with a clear message (no torch needed
to load; the torch agent only makes the weights)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from lbagent.agent.config import DreamerConfig
from lbagent.agent.dreamer import DreamerAgent
from lbagent.cli import main
from lbagent.policy.files import PolicyFileError, load_policy, read_policy_file, save_policy
from lbagent.policy.numpy_actor import DreamerActor, MlpActor, remap_masked_actions
from lbagent.spaces import CONTRACT_VERSION, N_ACTIONS, OBS_DIM

TINY = DreamerConfig(deter=16, stoch=2, classes=4, units=16, actor_hidden=8)


@pytest.fixture()
def policy_path(tmp_path):
    agent = DreamerAgent(TINY)
    meta = {"algorithm": "dreamer", "arch": agent.arch(), "preset": "test", "seed": 3, "command": "pytest"}
    return save_policy(tmp_path / "p.safetensors", agent.export_weights(), meta)


def test_round_trip_keeps_weights_and_metadata(policy_path):
    weights, meta = read_policy_file(policy_path)
    assert meta["contract_version"] == CONTRACT_VERSION and meta["seed"] == 3 and meta["algorithm"] == "dreamer"
    policy = load_policy(policy_path)
    assert isinstance(policy, DreamerActor) and policy.metadata["command"] == "pytest"
    policy.begin_trial(3, 0)
    mask = np.zeros((3, N_ACTIONS), bool)
    mask[:, :4] = True
    actions = policy.act(np.zeros((3, OBS_DIM), np.float32), None, mask)
    assert actions.shape == (3,) and (actions < 4).all()


def test_loading_a_policy_never_imports_torch(policy_path):
    code = (f"import sys; from lbagent.policy.files import load_policy; load_policy({str(policy_path)!r}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_truncated_file_is_refused(policy_path):
    data = policy_path.read_bytes()
    policy_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PolicyFileError, match="truncated or corrupt"):
        load_policy(policy_path)


def test_garbage_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 7)
    with pytest.raises(PolicyFileError, match="junk.safetensors"):
        load_policy(junk)
    with pytest.raises(PolicyFileError, match="not found"):
        load_policy(tmp_path / "absent.safetensors")
    with pytest.raises(PolicyFileError, match="no shipped policy named 'nonesuch'"):
        load_policy("nonesuch")


def test_wrong_contract_version_is_refused(tmp_path, policy_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(policy_path), framework="numpy") as f:
        meta = json.loads(f.metadata()["lbagent"])
    meta["contract_version"] = CONTRACT_VERSION + 1
    bad = tmp_path / "old.safetensors"
    save_file(load_file(str(policy_path)), str(bad), metadata={"lbagent": json.dumps(meta)})
    with pytest.raises(PolicyFileError, match=f"contract version {CONTRACT_VERSION + 1}"):
        load_policy(bad)


def test_a_safetensors_file_without_our_metadata_or_with_wrong_shapes_is_refused(tmp_path, policy_path):
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(PolicyFileError, match="without lbagent metadata"):
        load_policy(plain)
    weights, meta = read_policy_file(policy_path)
    weights["actor.head.out.weight"] = weights["actor.head.out.weight"][:, :-1]
    save_policy(tmp_path / "shapes.safetensors", weights, meta)
    with pytest.raises(PolicyFileError, match="shapes"):
        load_policy(tmp_path / "shapes.safetensors")
    del weights["actor.gru.linear.weight"]
    save_policy(tmp_path / "missing.safetensors", weights, meta)
    with pytest.raises(PolicyFileError, match="missing tensor"):
        load_policy(tmp_path / "missing.safetensors")


def test_cli_reports_a_bad_policy_file_in_one_line_with_exit_code_2(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a policy")
    result = CliRunner().invoke(main, ["bench", "policy", "--policy", str(junk), "--decisions", "100"])
    assert result.exit_code == 2
    assert "junk.safetensors" in result.output and "Traceback" not in result.output


def test_remap_sends_invalid_actions_to_valid_slots_and_keeps_valid_ones():
    mask = np.zeros((3, N_ACTIONS), bool)
    mask[:, [1, 4, 6]] = True
    out = remap_masked_actions(np.array([4, 16, 0]), mask)
    assert out.tolist() == [4, [1, 4, 6][16 % 3], 1]


def test_mlp_actor_runs_the_sb3_network_shape(tmp_path):
    rng = np.random.default_rng(0)
    w = {"pi.0.weight": rng.normal(size=(64, OBS_DIM)), "pi.0.bias": rng.normal(size=64),
         "pi.1.weight": rng.normal(size=(64, 64)), "pi.1.bias": rng.normal(size=64),
         "action.weight": rng.normal(size=(N_ACTIONS, 64)), "action.bias": rng.normal(size=N_ACTIONS)}
    path = save_policy(tmp_path / "a2c.safetensors", w, {"algorithm": "a2c", "arch": {"layers": 2}})
    policy = load_policy(path)
    assert isinstance(policy, MlpActor)
    obs = rng.normal(size=(5, OBS_DIM)).astype(np.float32)
    expected = np.tanh(np.tanh(obs @ w["pi.0.weight"].T + w["pi.0.bias"]) @ w["pi.1.weight"].T + w["pi.1.bias"])
    expected = expected @ w["action.weight"].T + w["action.bias"]
    assert np.abs(policy.logits(obs) - expected).max() < 1e-4
    mask = np.ones((5, N_ACTIONS), bool)
    assert (policy.act(obs, None, mask) == expected.argmax(-1)).all()


def _rewritten(policy_path, dest, weights=None, meta_text=None, **arch):
    """A copy of the fixture's policy with some weights, arch fields or the raw metadata replaced."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(policy_path), framework="numpy") as f:
        meta = json.loads(f.metadata()["lbagent"])
    meta["arch"].update(arch)
    save_file({**load_file(str(policy_path)), **(weights or {})}, str(dest),
              metadata={"lbagent": meta_text if meta_text is not None else json.dumps(meta)})
    return dest


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_weight_is_refused_naming_the_tensor(tmp_path, policy_path, value):
    weights, _ = read_policy_file(policy_path)
    head = weights["actor.head.out.bias"].copy()
    head[3] = value
    bad = _rewritten(policy_path, tmp_path / "nan.safetensors", weights={"actor.head.out.bias": head})
    with pytest.raises(PolicyFileError, match=r"nan\.safetensors: tensor 'actor\.head\.out\.bias' holds 1 NaN or Inf"):
        load_policy(bad)


@pytest.mark.parametrize(("field", "value", "why"), [
    ("classes", 2**24, r"arch\.classes is 16777216, outside \[1, 256\]"),
    ("stoch", 0, r"arch\.stoch is 0, outside"),
    ("deter", 10**9, r"arch\.deter is 1000000000, outside \[1, 4096\]"),
    ("actor_hidden", "8", r"arch\.actor_hidden is '8', expected an integer"),
    ("deter", 16.0, r"arch\.deter is 16\.0, expected an integer"),
    ("unimix", float("nan"), r"arch\.unimix is nan, outside"),
    ("ln_eps", True, r"arch\.ln_eps is True, expected a number"),
    ("layers", 10**6, r"arch\.layers is 1000000, outside \[1, 16\]"),
    ("greedy", "yes", r"arch\.greedy is 'yes', expected true or false"),
])
def test_an_architecture_beyond_sane_bounds_is_refused_before_allocating(tmp_path, policy_path, field, value, why):
    bad = _rewritten(policy_path, tmp_path / "arch.safetensors", **{field: value})
    with pytest.raises(PolicyFileError, match=rf"arch\.safetensors: {why}"):
        load_policy(bad)


def test_an_a2c_policy_with_an_absurd_layer_count_is_refused(tmp_path):
    w = {"action.weight": np.zeros((N_ACTIONS, OBS_DIM)), "action.bias": np.zeros(N_ACTIONS)}
    path = save_policy(tmp_path / "a2c.safetensors", w, {"algorithm": "a2c", "arch": {"layers": 2**40}})
    with pytest.raises(PolicyFileError, match=r"a2c\.safetensors: arch\.layers is 1099511627776, outside \[0, 16\]"):
        load_policy(path)
    assert isinstance(load_policy(save_policy(path, w, {"algorithm": "a2c", "arch": {"layers": 0}})), MlpActor)


def test_deeply_nested_metadata_is_refused_in_one_line(tmp_path, policy_path):
    bad = _rewritten(policy_path, tmp_path / "deep.safetensors", meta_text="[" * 100_000 + "]" * 100_000)
    with pytest.raises(PolicyFileError, match=r"deep\.safetensors: policy metadata is nested too deeply"):
        load_policy(bad)


def test_cli_eval_refuses_a_nan_policy_in_one_line(tmp_path, policy_path):
    weights, _ = read_policy_file(policy_path)
    bad = _rewritten(policy_path, tmp_path / "nan.safetensors",
                     weights={"wm.encoder.hidden.0.weight": np.full_like(weights["wm.encoder.hidden.0.weight"], np.nan)})
    result = CliRunner().invoke(main, ["eval", "--policies", str(bad), "--suite", "park", "--episodes", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and "tensor 'wm.encoder.hidden.0.weight' holds" in result.output

"""The exported actors in plain numpy: what the daemon, ``lbagent eval`` and the trainer's own data
collection run. No torch here (the daemon never pays for it).

:class:`DreamerActor` mirrors the torch forward pass of the world model's acting path (encoder,
RSSM successor, posterior) and of the RL² actor, layer for layer (``lbagent.agent.nets``: MLP =
Linear -> LayerNorm -> SiLU blocks; the layer-normed GRU); a test checks the log-probabilities agree
to 1e-5. :class:`MlpActor` runs stable-baselines3's A2C policy network (tanh MLP).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lbagent.spaces import N_ACTIONS, RawObservation, symlog

Weights = dict[str, np.ndarray]
DTYPE = np.float32
"""The actors compute in float32, as torch trains: half the memory traffic of float64 (a decision
reads every weight once, so at B = 1 bandwidth sets the latency) and well within the 1e-5 match."""
_EYE_ACTIONS = np.eye(N_ACTIONS, dtype=DTYPE)
MAX_WIDTH = 4096
"""Widest layer an actor may ask for (the shipped ones use 128): a 4096-wide square weight is 64 MiB,
so anything the 256 MiB policy-file limit admits stays under it."""
MAX_CATEGORIES = 256
"""Stochastic latents and their classes; ``np.eye(classes)`` and the one-hot state grow with them."""
MAX_LAYERS = 16
ARCH_LIMITS: dict[str, dict[str, tuple[type, float, float]]] = {
    "dreamer": {"deter": (int, 1, MAX_WIDTH), "stoch": (int, 1, MAX_CATEGORIES), "classes": (int, 1, MAX_CATEGORIES),
                "actor_hidden": (int, 1, MAX_WIDTH), "unimix": (float, 0.0, 1.0), "ln_eps": (float, 1e-12, 1.0)},
    "a2c": {"layers": (int, 0, MAX_LAYERS)},
}
"""What each actor reads from its ``arch`` table, with the type and the closed range a file may give;
checked by :func:`arch_fault` before anything is allocated from it."""
OPTIONAL_ARCH = {"units": (int, 1, MAX_WIDTH), "layers": (int, 1, MAX_LAYERS)}
"""Recorded by the trainer for humans; bounded all the same when present."""


def arch_fault(algorithm: str, arch: dict) -> str | None:
    """Why an ``arch`` table must not be built (a missing, mistyped, non-finite or out-of-range
    size: a file asking for ``classes = 2**24`` would allocate TiBs), or None when it may."""
    limits = ARCH_LIMITS[algorithm]
    for key, (kind, lo, hi) in {**OPTIONAL_ARCH, **limits}.items():
        if key not in arch:
            if key in limits:
                return f"arch.{key} is missing"
            continue
        value = arch[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return f"arch.{key} is {value!r}, expected {'a number' if kind is float else 'an integer'}"
        if not (lo <= value <= hi):  # also false for NaN
            return f"arch.{key} is {value!r}, outside [{lo}, {hi}]"
    if "greedy" in arch and not isinstance(arch["greedy"], bool):
        return f"arch.greedy is {arch['greedy']!r}, expected true or false"
    return None


def remap_masked_actions(actions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Turn an invalid action into a valid one: the (a mod n_valid)-th valid action of its row.

    Used by the A2C baseline, whose SB3 policy cannot mask: the adapter applies this map in training
    and the exported actor applies the same one, so the trained behaviour is reproduced exactly.
    Valid actions map to themselves.
    """
    actions = np.asarray(actions, dtype=np.int64)
    rows = np.arange(actions.size)
    ok = mask[rows, actions]
    if ok.all():
        return actions
    out = actions.copy()
    for r in np.flatnonzero(~ok):
        valid = np.flatnonzero(mask[r])
        out[r] = valid[actions[r] % valid.size]
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _Mlp:
    """Linear(no bias) -> LayerNorm -> SiLU blocks and an optional linear output, from torch names."""

    def __init__(self, w: Weights, prefix: str, eps: float):
        self.eps = eps
        self.blocks = []
        i = 0
        while f"{prefix}hidden.{i}.weight" in w:
            self.blocks.append((w[f"{prefix}hidden.{i}.weight"].T, w[f"{prefix}hidden.{i + 1}.weight"],
                                w[f"{prefix}hidden.{i + 1}.bias"]))
            i += 3
        has_out = f"{prefix}out.weight" in w
        self.out = (w[f"{prefix}out.weight"].T, w[f"{prefix}out.bias"]) if has_out else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for weight_t, gain, bias in self.blocks:
            x = _layer_norm(x @ weight_t, gain, bias, self.eps)
            x = x * _sigmoid(x)
        if self.out is not None:
            x = x @ self.out[0] + self.out[1]
        return x


def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    # ufunc reductions instead of ndarray.mean: the daemon decides one task at a time, where
    # numpy's Python-level wrappers cost more than the arithmetic.
    n = x.shape[-1]
    d = x - np.add.reduce(x, axis=-1, keepdims=True) / n
    return d * (gain / np.sqrt(np.add.reduce(d * d, axis=-1, keepdims=True) / n + eps)) + bias


class _Gru:
    def __init__(self, w: Weights, prefix: str, eps: float):
        self.weight_t = w[f"{prefix}linear.weight"].T
        self.gain, self.bias = w[f"{prefix}norm.weight"], w[f"{prefix}norm.bias"]
        self.eps = eps

    def __call__(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        parts = _layer_norm(np.concatenate([x, h], -1) @ self.weight_t, self.gain, self.bias, self.eps)
        n = h.shape[-1]
        reset, cand, update = parts[:, :n], parts[:, n : 2 * n], parts[:, 2 * n :]
        cand = np.tanh(_sigmoid(reset) * cand)
        update = _sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


def _masked_log_probs(logits: np.ndarray, mask: np.ndarray, unimix: float) -> np.ndarray:
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(-1, keepdims=True)
    e = np.where(mask, np.exp(z), 0.0)
    probs = e / e.sum(-1, keepdims=True)
    valid = mask.astype(logits.dtype)
    probs = (1.0 - unimix) * probs + unimix * valid / valid.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.where(mask, np.log(np.maximum(probs, 1e-30)), -np.inf)


class DreamerActor:
    """The DreamerV3 world model's filtering path plus the RL² actor, batched over B rows.

    Per row it keeps the world model's state (reset at every episode start) and the actor's memory
    (hidden state, previous action and reward; reset only at a trial start, or, for the ablation,
    at every episode start with ``reset_each_episode``). ``greedy`` takes the posterior's mode and the
    most likely action (evaluation, deployment); otherwise both are sampled (training data).
    """

    metadata: dict  # the policy file's, set by load_policy

    def __init__(self, weights: Weights, arch: dict, name: str = "dreamer", greedy: bool = True,
                 reset_each_episode: bool = False):
        self.name = name
        self.metadata: dict[str, Any] = {"algorithm": "dreamer", "arch": arch}
        """What a policy file records; :func:`~lbagent.policy.files.load_policy` puts the file's here."""
        self.greedy = greedy
        self.reset_each_episode = reset_each_episode
        self.eps = float(arch["ln_eps"])
        self.deter, self.stoch, self.classes = int(arch["deter"]), int(arch["stoch"]), int(arch["classes"])
        self.actor_hidden, self.unimix = int(arch["actor_hidden"]), float(arch["unimix"])
        self.eye_classes = np.eye(self.classes, dtype=DTYPE)
        self.set_weights(weights)
        self.begin_trial(1, 0)

    def set_weights(self, weights: Weights) -> None:
        """Swap in new weights and keep every row's memory (the trainer refreshes after each update)."""
        eps = self.eps
        w = {k: np.asarray(v, dtype=DTYPE) for k, v in weights.items()}
        self.encoder = _Mlp(w, "wm.encoder.", eps)
        self.img_in = _Mlp(w, "wm.rssm.img_in.", eps)
        self.rssm_gru = _Gru(w, "wm.rssm.gru.", eps)
        self.post = _Mlp(w, "wm.rssm.post_net.", eps)
        self.actor_gru = _Gru(w, "actor.gru.", eps)
        self.head = _Mlp(w, "actor.head.", eps)
        zero = tuple(np.zeros((1, n), DTYPE) for n in (self.stoch * self.classes, N_ACTIONS, self.deter))
        self.init_deter = self.rssm_gru(self.img_in(np.concatenate(zero[:2], -1)), zero[2])

    # -- Policy protocol
    def begin_trial(self, batch: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.deter_state = np.repeat(self.init_deter, batch, 0)
        self.stoch_state = np.zeros((batch, self.stoch * self.classes), DTYPE)
        self.hidden = np.zeros((batch, self.actor_hidden), DTYPE)
        self.prev_action = np.zeros(batch, dtype=np.int64)
        self.prev_reward = np.zeros(batch, DTYPE)
        self.prev_valid = np.zeros(batch, dtype=bool)
        self.first = np.ones(batch, dtype=bool)

    def act(self, obs: np.ndarray, raw: RawObservation | None, mask: np.ndarray) -> np.ndarray:
        logits = self._advance(obs)
        if self.greedy:
            # unimix and the softmax keep the order of the valid logits: no need to normalize
            action = np.where(mask, logits, -np.inf).argmax(-1)
        else:
            log_probs = _masked_log_probs(logits, mask, self.unimix)
            gumbel = -np.log(-np.log(self.rng.random(log_probs.shape)))
            action = (log_probs + gumbel).argmax(-1)
        self.prev_action = action.astype(np.int64)
        return self.prev_action

    def observe(self, reward: np.ndarray, episode_start: np.ndarray, trial_start: np.ndarray | None = None) -> None:
        self.prev_reward = np.asarray(reward, dtype=DTYPE)
        self.prev_valid = np.ones_like(self.prev_valid)
        self.first = np.asarray(episode_start, dtype=bool).copy()
        reset = self.first if self.reset_each_episode else trial_start
        if reset is not None:
            self.reset_memory(np.asarray(reset, dtype=bool))

    def reset_memory(self, rows: np.ndarray) -> None:
        """Forget the RL² memory of some rows (a new trial)."""
        self.hidden[rows] = 0.0
        self.prev_action[rows] = 0
        self.prev_reward[rows] = 0.0
        self.prev_valid[rows] = False

    # -- the forward pass
    def step(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Advance the world model and the actor by one decision; masked log-probabilities (B, A)."""
        return _masked_log_probs(self._advance(obs), mask, self.unimix)

    def _advance(self, obs: np.ndarray) -> np.ndarray:
        """One decision's filtering and memory update; the actor's raw logits (B, A)."""
        prev_a = _EYE_ACTIONS[self.prev_action] * self.prev_valid[:, None]
        succ = self.rssm_gru(self.img_in(np.concatenate([self.stoch_state, prev_a], -1)), self.deter_state)
        deter = np.where(self.first[:, None], self.init_deter, succ)
        logits = self.post(np.concatenate([deter, self.encoder(np.asarray(obs, dtype=DTYPE))], -1))
        logits = logits.reshape(-1, self.stoch, self.classes)
        if self.greedy:
            idx = logits.argmax(-1)  # the mode; unimix does not change it
        else:
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs = (1.0 - self.unimix) * probs / probs.sum(-1, keepdims=True) + self.unimix / self.classes
            idx = (probs.cumsum(-1) > self.rng.random(probs.shape[:-1] + (1,))).argmax(-1)
        stoch = self.eye_classes[idx].reshape(len(obs), -1)
        feat = np.concatenate([deter, stoch], -1)
        x = np.concatenate(
            [feat, prev_a, symlog(self.prev_reward)[:, None], self.first[:, None].astype(DTYPE)], -1
        )
        self.hidden = self.actor_gru(x, self.hidden)
        self.deter_state, self.stoch_state = deter, stoch
        return self.head(np.concatenate([self.hidden, feat], -1))


class MlpActor:
    """stable-baselines3's ``MlpPolicy`` actor (tanh hidden layers, linear action net), greedy.

    Invalid choices are remapped exactly as the training adapter did (:func:`remap_masked_actions`).
    """

    metadata: dict  # the policy file's, set by load_policy

    def __init__(self, weights: Weights, arch: dict, name: str = "a2c"):
        self.name = name
        self.metadata: dict[str, Any] = {"algorithm": "a2c", "arch": arch}
        n = int(arch["layers"])
        w = {k: np.asarray(v, dtype=DTYPE) for k, v in weights.items()}
        self.layers = [(w[f"pi.{i}.weight"].T, w[f"pi.{i}.bias"]) for i in range(n)]
        self.out = (w["action.weight"].T, w["action.bias"])

    def begin_trial(self, batch: int, seed: int) -> None:
        """Stateless: nothing to forget."""

    def logits(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=DTYPE)
        for weight_t, bias in self.layers:
            x = np.tanh(x @ weight_t + bias)
        return x @ self.out[0] + self.out[1]

    def act(self, obs: np.ndarray, raw: RawObservation | None, mask: np.ndarray) -> np.ndarray:
        return remap_masked_actions(self.logits(obs).argmax(-1), mask)

    def observe(self, reward: np.ndarray, episode_start: np.ndarray, trial_start: np.ndarray | None = None) -> None:
        """Stateless: nothing to remember."""

"""The RL² actor and the critic, learned in imagination as in DreamerV3.

The actor is a GRU whose input is the world-model state, the previous action (one-hot), the symlog of
the previous reward and the episode-boundary flag. Its hidden state is carried across the episodes
of a trial and reset only when a trial starts, so it can infer the workload and the host from the
trial's history (RL², Duan et al. 2016). Its head reads [hidden, world-model state]; invalid actions
get -inf logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lbagent.agent.config import DreamerConfig
from lbagent.agent.nets import MLP, LayerNormGRUCell, make_bins, masked_log_probs, symlog, twohot_loss, twohot_mean
from lbagent.agent.world_model import LatentState, WorldModel


@dataclass
class ActorInput:
    """The RL² inputs that accompany the world-model state at one decision (all (N, ...))."""

    hidden: torch.Tensor  # (N, actor_hidden), state before this decision
    prev_action: torch.Tensor  # (N,) long; 0 with prev_valid False at a trial's start
    prev_reward: torch.Tensor  # (N,) raw contract reward
    first: torch.Tensor  # (N,) bool: this decision opens an episode
    prev_valid: torch.Tensor  # (N,) bool: there is a previous action in this trial

    def index(self, rows: torch.Tensor) -> ActorInput:
        return ActorInput(self.hidden[rows], self.prev_action[rows], self.prev_reward[rows], self.first[rows],
                          self.prev_valid[rows])


class RL2Actor(nn.Module):
    def __init__(self, cfg: DreamerConfig, n_actions: int):
        super().__init__()
        self.cfg = cfg
        self.n_actions = n_actions
        self.gru = LayerNormGRUCell(cfg.feat_dim + n_actions + 2, cfg.actor_hidden)
        self.head = MLP(cfg.actor_hidden + cfg.feat_dim, cfg.units, cfg.layers, out=n_actions)

    def recur(self, feat: torch.Tensor, inp: ActorInput) -> torch.Tensor:
        """The memory after this decision's inputs."""
        prev_a = F.one_hot(inp.prev_action, self.n_actions).float() * inp.prev_valid.unsqueeze(-1).float()
        x = torch.cat(
            [feat, prev_a, symlog(inp.prev_reward.float()).unsqueeze(-1), inp.first.float().unsqueeze(-1)], -1
        )
        return self.gru(x, inp.hidden)

    def step(self, feat: torch.Tensor, inp: ActorInput) -> tuple[torch.Tensor, torch.Tensor]:
        """(new hidden, raw logits) for one decision."""
        hidden = self.recur(feat, inp)
        return hidden, self.head(torch.cat([hidden, feat], -1))

    def log_probs(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_log_probs(logits, mask, self.cfg.unimix)


class Critic(nn.Module):
    """Two-hot value head over symexp bins, on the world-model state."""

    bins: torch.Tensor  # a buffer, which nn.Module's __getattr__ would type as Tensor | Module

    def __init__(self, cfg: DreamerConfig):
        super().__init__()
        self.net = MLP(cfg.feat_dim, cfg.units, cfg.layers, out=cfg.bins, zero_out=True)
        self.register_buffer("bins", make_bins(cfg.bins, cfg.bin_range), persistent=False)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        return twohot_mean(self.net(feat), self.bins)


# ------------------------------------------------------------------------------------------------
# Returns and their normalization


def lambda_returns(
    rewards: torch.Tensor, conts: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """TD(lambda) targets over an imagined trajectory.

    ``rewards[k]``, ``conts[k]`` belong to the transition k -> k+1 (H of them); ``values`` has H + 1
    entries. R_H = v_H and R_k = r_k + gamma c_k ((1 - lam) v_{k+1} + lam R_{k+1}); returns R_0..R_{H-1}.
    """
    H = rewards.shape[0]
    out = [values[H]]
    for k in reversed(range(H)):
        out.append(rewards[k] + gamma * conts[k] * ((1.0 - lam) * values[k + 1] + lam * out[-1]))
    return torch.stack(out[::-1][:H])


class ReturnNormalizer:
    """EMA of the 5th and 95th percentiles of the lambda-returns; the scale is max(floor, P95 - P5).

    Dividing advantages by this scale makes the entropy bonus mean the same thing whatever the reward
    magnitude, while the floor keeps near-zero returns (sparse rewards) from being amplified.
    """

    def __init__(self, decay: float, floor: float):
        self.decay = decay
        self.floor = floor
        self.low: float | None = None
        self.high: float | None = None

    def update(self, returns: torch.Tensor) -> float:
        flat = returns.detach().flatten().double()
        lo = torch.quantile(flat, 0.05).item()
        hi = torch.quantile(flat, 0.95).item()
        if self.low is None or self.high is None:
            self.low, self.high = lo, hi
        else:
            self.low = self.decay * self.low + (1.0 - self.decay) * lo
            self.high = self.decay * self.high + (1.0 - self.decay) * hi
        return self.scale

    @property
    def scale(self) -> float:
        if self.low is None or self.high is None:
            return self.floor
        return max(self.floor, self.high - self.low)

    def state_dict(self) -> dict:
        return {"low": self.low, "high": self.high}

    def load_state_dict(self, state: dict) -> None:
        self.low, self.high = state["low"], state["high"]


def actor_loss(
    log_probs: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor, values: torch.Tensor,
    weights: torch.Tensor, scale: float, entropy_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE with the critic as baseline on normalized advantages, plus an entropy bonus.

    ``log_probs`` (H, N, A) masked log-probabilities; ``actions`` (H, N); ``returns``/``values``
    (H, N); ``weights`` (H, N) the discounted probability that the imagined trajectory is still alive.
    """
    adv = ((returns - values) / scale).detach()
    logp = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    entropy = -(probs * torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))).sum(-1)
    loss = -(weights * (logp * adv + entropy_coef * entropy)).mean()
    return loss, {"actor_loss": loss.item(), "entropy": entropy.mean().item(), "adv_abs": adv.abs().mean().item()}


def critic_loss(
    logits: torch.Tensor, returns: torch.Tensor, slow_values: torch.Tensor, weights: torch.Tensor,
    bins: torch.Tensor, slow_reg: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Two-hot cross-entropy toward the lambda-returns, regularized toward the slow critic."""
    loss = twohot_loss(logits, returns.detach(), bins) + slow_reg * twohot_loss(logits, slow_values.detach(), bins)
    loss = (weights * loss).mean()
    return loss, {"critic_loss": loss.item()}


# ------------------------------------------------------------------------------------------------
# Imagination


@dataclass
class Imagined:
    states: LatentState  # (H + 1, N, ...)
    actions: torch.Tensor  # (H, N)
    log_probs: torch.Tensor  # (H, N, A)
    rewards: torch.Tensor  # (H, N)
    conts: torch.Tensor  # (H, N)


def imagine(
    wm: WorldModel, actor: RL2Actor, start: LatentState, inp: ActorInput, mask: torch.Tensor, horizon: int
) -> Imagined:
    """Roll the actor forward in the world model from real start states and real actor memories.

    The action mask of the start decision holds throughout (a scenario's slots do not change within
    an episode). Imagined steps never cross an episode boundary (the continue head discounts instead),
    so the boundary flag is 0 after the first step; the imagined reward feeds the actor's reward input.
    """
    state = start.detach()
    hidden = inp.hidden
    prev_action, prev_reward, first, prev_valid = inp.prev_action, inp.prev_reward, inp.first, inp.prev_valid
    states, actions, log_probs, rewards, conts = [state], [], [], [], []
    for _ in range(horizon):
        hidden, logits = actor.step(state.feat(), ActorInput(hidden, prev_action, prev_reward, first, prev_valid))
        lp = actor.log_probs(logits, mask)
        action = torch.multinomial(lp.detach().exp(), 1).squeeze(-1)
        with torch.no_grad():
            state = wm.rssm.imagine_step(state, F.one_hot(action, actor.n_actions).float())
            reward = wm.reward(state)
            cont = wm.cont(state)
        states.append(state)
        actions.append(action)
        log_probs.append(lp)
        rewards.append(reward)
        conts.append(cont)
        prev_action, prev_reward = action, reward
        first = torch.zeros_like(first)
        prev_valid = torch.ones_like(prev_valid)
    return Imagined(
        LatentState(torch.stack([s.deter for s in states]), torch.stack([s.stoch for s in states])),
        torch.stack(actions),
        torch.stack(log_probs),
        torch.stack(rewards),
        torch.stack(conts),
    )


def trajectory_weights(conts: torch.Tensor, gamma: float) -> torch.Tensor:
    """Weight of imagined step k: the discounted probability of still being in the episode, (H, N)."""
    disc = gamma * conts
    ones = torch.ones_like(disc[:1])
    return torch.cumprod(torch.cat([ones, disc[:-1]]), 0).detach()


def actor_critic_update_terms(
    cfg: DreamerConfig, critic: Critic, slow_critic: Critic, traj: Imagined, normalizer: ReturnNormalizer,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Actor and critic losses on one imagined batch (normalizer updated with its returns)."""
    feat = traj.states.feat().detach()
    with torch.no_grad():
        values = critic.value(feat)
        returns = lambda_returns(traj.rewards, traj.conts, values, cfg.gamma, cfg.lam)
        slow = slow_critic.value(feat[:-1])
    weights = trajectory_weights(traj.conts, cfg.gamma)
    scale = normalizer.update(returns)
    a_loss, a_parts = actor_loss(traj.log_probs, traj.actions, returns, values[:-1], weights, scale, cfg.entropy)
    c_loss, c_parts = critic_loss(critic(feat[:-1]), returns, slow, weights, critic.bins, cfg.slow_critic_reg)
    parts = {**a_parts, **c_parts, "return_scale": scale, "imag_return": returns[0].mean().item(),
             "imag_reward": traj.rewards.mean().item()}
    return a_loss, c_loss, parts

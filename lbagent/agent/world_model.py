"""DreamerV3's world model over contract observations: encoder, RSSM, decoder, reward and continue heads.

Time conventions (time-major tensors, (T, B, ...)): row t of a replayed sequence holds the decision
``obs[t]`` (with ``first[t]`` when it opens an episode), the action ``action[t]`` taken there, and
the ``reward[t]`` / ``terminal[t]`` that followed it. The simulators reset in the same step, so the
terminal observation never exists; the reward and continue heads therefore read the *successor*
state: the deterministic state after ``action[t]`` with a latent drawn from its prior. Imagination
produces exactly such states, so the heads see the same distribution in training and in imagination.

Observation scaling: ``spaces.encode`` already applies symlog to every count, work and time feature
(the rest are in [0, 1]), so the encoder takes the contract vector as is. Applying symlog again would
compress twice; the decoder's squared error on the encoded vector *is* DreamerV3's symlog loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lbagent.agent.config import DreamerConfig
from lbagent.agent.nets import (
    MLP,
    LayerNormGRUCell,
    categorical_kl,
    make_bins,
    mode_onehot,
    sample_onehot,
    twohot_loss,
    twohot_mean,
    unimix_probs,
)


@dataclass
class LatentState:
    deter: torch.Tensor  # (..., deter)
    stoch: torch.Tensor  # (..., stoch, classes) one-hot (straight-through)

    def feat(self) -> torch.Tensor:
        return torch.cat([self.deter, self.stoch.flatten(-2)], -1)

    def detach(self) -> LatentState:
        return LatentState(self.deter.detach(), self.stoch.detach())

    def index(self, rows: torch.Tensor) -> LatentState:
        return LatentState(self.deter[rows], self.stoch[rows])


class RSSM(nn.Module):
    """Recurrent state-space model: h' = GRU(h, [z, a]); prior p(z|h); posterior q(z|h, embed)."""

    def __init__(self, cfg: DreamerConfig, embed_dim: int, n_actions: int):
        super().__init__()
        self.cfg = cfg
        self.n_actions = n_actions
        self.img_in = MLP(cfg.stoch_dim + n_actions, cfg.units, 1)
        self.gru = LayerNormGRUCell(cfg.units, cfg.deter)
        self.prior_net = MLP(cfg.deter, cfg.units, 1, out=cfg.stoch_dim)
        self.post_net = MLP(cfg.deter + embed_dim, cfg.units, 1, out=cfg.stoch_dim)

    def _latent(self, logits_flat: torch.Tensor) -> torch.Tensor:
        return logits_flat.reshape(*logits_flat.shape[:-1], self.cfg.stoch, self.cfg.classes)

    def successor(self, state: LatentState, action_onehot: torch.Tensor) -> torch.Tensor:
        """The deterministic state after taking an action in ``state``."""
        x = self.img_in(torch.cat([state.stoch.flatten(-2), action_onehot], -1))
        return self.gru(x, state.deter)

    def initial_deter(self, batch: int) -> torch.Tensor:
        """h at an episode's first decision: the successor of the all-zero state and no action."""
        zeros = LatentState(
            torch.zeros(1, self.cfg.deter),
            torch.zeros(1, self.cfg.stoch, self.cfg.classes),
        )
        return self.successor(zeros, torch.zeros(1, self.n_actions)).expand(batch, -1)

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        return self._latent(self.prior_net(deter))

    def post_logits(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        return self._latent(self.post_net(torch.cat([deter, embed], -1)))

    def draw(self, logits: torch.Tensor, sample: bool = True) -> torch.Tensor:
        probs = unimix_probs(logits, self.cfg.unimix)
        return sample_onehot(probs) if sample else mode_onehot(probs)

    def imagine_step(self, state: LatentState, action_onehot: torch.Tensor) -> LatentState:
        deter = self.successor(state, action_onehot)
        return LatentState(deter, self.draw(self.prior_logits(deter)))


@dataclass
class Observed:
    """What the world model infers from a replayed sequence (all (T, B, ...))."""

    post: LatentState
    post_logits: torch.Tensor
    prior_logits: torch.Tensor
    succ: LatentState
    """Successor states (deterministic part after action[t], latent from its prior): heads read these."""


class WorldModel(nn.Module):
    bins: torch.Tensor  # a buffer, which nn.Module's __getattr__ would type as Tensor | Module

    def __init__(self, cfg: DreamerConfig, obs_dim: int, n_actions: int):
        super().__init__()
        self.cfg = cfg
        self.n_actions = n_actions
        self.encoder = MLP(obs_dim, cfg.units, cfg.layers)
        self.rssm = RSSM(cfg, self.encoder.out_dim, n_actions)
        self.decoder = MLP(cfg.feat_dim, cfg.units, cfg.layers, out=obs_dim)
        self.reward_head = MLP(cfg.feat_dim, cfg.units, cfg.layers, out=cfg.bins, zero_out=True)
        self.cont_head = MLP(cfg.feat_dim, cfg.units, cfg.layers, out=1)
        self.register_buffer("bins", make_bins(cfg.bins, cfg.bin_range), persistent=False)

    def posterior_step(
        self, prev: LatentState, prev_action: torch.Tensor, first: torch.Tensor, obs: torch.Tensor,
        sample: bool = True,
    ) -> tuple[LatentState, torch.Tensor, torch.Tensor]:
        """One real decision: the prior from the previous state and action (or the initial state on
        rows where ``first``), then the posterior given the observation. Returns (state, post, prior logits)."""
        deter = torch.where(
            first.unsqueeze(-1), self.rssm.initial_deter(obs.shape[0]), self.rssm.successor(prev, prev_action)
        )
        return self._posterior(deter, self.encoder(obs), sample)

    def _posterior(self, deter: torch.Tensor, embed: torch.Tensor, sample: bool):
        post_logits = self.rssm.post_logits(deter, embed)
        state = LatentState(deter, self.rssm.draw(post_logits, sample))
        return state, post_logits, self.rssm.prior_logits(deter)

    def observe(self, obs: torch.Tensor, action: torch.Tensor, first: torch.Tensor) -> Observed:
        """Filter a (T, B) sequence. The sequence starts from the initial state (its first row is
        treated as an episode start for the model; the actor's memory is handled separately)."""
        T, B = obs.shape[:2]
        embed = self.encoder(obs)
        act = F.one_hot(action, self.n_actions).float()
        init = self.rssm.initial_deter(B)
        posts, post_logits, prior_logits, succs = [], [], [], []
        succ = init
        for t in range(T):
            deter = init if t == 0 else torch.where(first[t].unsqueeze(-1), init, succ)
            state, pl, ql = self._posterior(deter, embed[t], True)
            succ = self.rssm.successor(state, act[t])
            posts.append(state)
            post_logits.append(pl)
            prior_logits.append(ql)
            succs.append(succ)
        post = LatentState(torch.stack([s.deter for s in posts]), torch.stack([s.stoch for s in posts]))
        succ_deter = torch.stack(succs)
        succ_state = LatentState(succ_deter, self.rssm.draw(self.rssm.prior_logits(succ_deter)))
        return Observed(post, torch.stack(post_logits), torch.stack(prior_logits), succ_state)

    def reward(self, state: LatentState) -> torch.Tensor:
        return twohot_mean(self.reward_head(state.feat()), self.bins)

    def cont(self, state: LatentState) -> torch.Tensor:
        return torch.sigmoid(self.cont_head(state.feat()).squeeze(-1))


# ------------------------------------------------------------------------------------------------
# Losses as plain functions


def kl_losses(
    post_logits: torch.Tensor, prior_logits: torch.Tensor, cfg: DreamerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV3's KL balancing with free bits: (dynamics loss, representation loss), per element.

    The dynamics term trains the prior toward the (fixed) posterior; the representation term pulls
    the posterior toward the (fixed) prior. Each is clipped below at ``free_nats`` so that, once the
    KL is small, the gradient goes to prediction instead of collapsing the latent.
    """
    dyn = categorical_kl(post_logits.detach(), prior_logits, cfg.unimix)
    rep = categorical_kl(post_logits, prior_logits.detach(), cfg.unimix)
    return dyn.clamp_min(cfg.free_nats), rep.clamp_min(cfg.free_nats)


def world_model_loss(
    wm: WorldModel, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
    terminal: torch.Tensor, first: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float], Observed]:
    """The world model's total loss on a (T, B) batch, its parts for logging, and the inferred states."""
    cfg = wm.cfg
    out = wm.observe(obs, action, first)
    recon = wm.decoder(out.post.feat())
    recon_loss = (recon - obs).pow(2).sum(-1)
    succ_feat = out.succ.feat()
    reward_loss = twohot_loss(wm.reward_head(succ_feat), reward.float(), wm.bins)
    cont_loss = F.binary_cross_entropy_with_logits(
        wm.cont_head(succ_feat).squeeze(-1), 1.0 - terminal.float(), reduction="none"
    )
    dyn, rep = kl_losses(out.post_logits, out.prior_logits, cfg)
    total = (recon_loss + reward_loss + cont_loss + cfg.kl_dyn * dyn + cfg.kl_rep * rep).mean()
    parts = {
        "model_loss": total.item(),
        "recon_loss": recon_loss.mean().item(),
        "reward_loss": reward_loss.mean().item(),
        "cont_loss": cont_loss.mean().item(),
        "kl_dyn": dyn.mean().item(),
        "kl_rep": rep.mean().item(),
    }
    return total, parts, out


__all__ = ["LatentState", "RSSM", "WorldModel", "Observed", "kl_losses", "world_model_loss"]

"""DreamerV3 + RL²: the learner. One gradient update = world model on a replayed (T, B) batch, then
actor and critic in imagination from every replayed state, starting from the actor's real memory.

Acting (data collection, evaluation, deployment) runs the exported numpy actor
(:class:`lbagent.policy.numpy_actor.DreamerActor`) on :meth:`DreamerAgent.export_weights`, so the
policy that is trained on is the policy that ships.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from lbagent.agent.actor_critic import (
    ActorInput,
    Critic,
    ReturnNormalizer,
    RL2Actor,
    actor_critic_update_terms,
    imagine,
)
from lbagent.agent.config import DreamerConfig
from lbagent.agent.nets import LN_EPS
from lbagent.agent.teacher import bc_loss
from lbagent.agent.world_model import LatentState, WorldModel, world_model_loss
from lbagent.spaces import N_ACTIONS, OBS_DIM

EXPORTED_PREFIXES = ("wm.encoder.", "wm.rssm.img_in.", "wm.rssm.gru.", "wm.rssm.post_net.", "actor.")
"""The parameters the acting path needs (the decoder, heads, prior and critic stay behind)."""


class DreamerAgent(nn.Module):
    def __init__(self, cfg: DreamerConfig):
        super().__init__()
        self.cfg = cfg
        self.wm = WorldModel(cfg, OBS_DIM, N_ACTIONS)
        self.actor = RL2Actor(cfg, N_ACTIONS)
        self.critic = Critic(cfg)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.model_opt = torch.optim.Adam(self.wm.parameters(), lr=cfg.model_lr, eps=1e-8)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=1e-5)
        self.normalizer = ReturnNormalizer(cfg.return_norm_decay, cfg.return_norm_floor)

    def arch(self) -> dict:
        """Sizes the numpy actor needs to rebuild the acting path."""
        c = self.cfg
        return {"deter": c.deter, "stoch": c.stoch, "classes": c.classes, "actor_hidden": c.actor_hidden,
                "unimix": c.unimix, "ln_eps": LN_EPS, "units": c.units, "layers": c.layers}

    def export_weights(self) -> dict[str, np.ndarray]:
        return {
            k: v.detach().numpy().astype(np.float32, copy=True)
            for k, v in self.state_dict().items()
            if k.startswith(EXPORTED_PREFIXES)
        }

    def burn_in(self, feat: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The actor's memory before each replayed decision, recomputed with the current weights from
        the stored memory at the window's first step: (T, B, actor_hidden)."""
        hidden = batch["hidden"][0]
        out = []
        with torch.no_grad():
            for t in range(feat.shape[0]):
                if t > 0:
                    hidden = torch.where(batch["trial_first"][t].unsqueeze(-1), torch.zeros_like(hidden), hidden)
                out.append(hidden)
                hidden = self.actor.recur(feat[t], self._actor_input(batch, hidden, t))
        return torch.stack(out)

    @staticmethod
    def _actor_input(batch: dict[str, torch.Tensor], hidden: torch.Tensor, t: int | slice) -> ActorInput:
        return ActorInput(hidden, batch["prev_action"][t], batch["prev_reward"][t], batch["first"][t],
                          batch["prev_valid"][t])

    def update(self, batch: dict[str, torch.Tensor], bc_weight: float = 0.0) -> dict[str, float]:
        """One gradient step of world model, actor and critic; ``bc_weight`` scales the behaviour
        cloning toward the replayed teacher actions (:mod:`lbagent.agent.teacher`)."""
        cfg = self.cfg
        loss, metrics, out = world_model_loss(
            self.wm, batch["obs"], batch["action"], batch["reward"], batch["terminal"], batch["first"]
        )
        post = out.post.detach()
        hidden = self.burn_in(post.feat(), batch)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731 - (T, B, ...) -> (T*B, ...)
        start = LatentState(flat(post.deter), flat(post.stoch))
        inp = ActorInput(flat(hidden), flat(batch["prev_action"]), flat(batch["prev_reward"]),
                         flat(batch["first"]), flat(batch["prev_valid"]))
        mask = flat(batch["mask"])
        self.model_opt.zero_grad(set_to_none=True)
        self.actor_opt.zero_grad(set_to_none=True)
        if bc_weight > 0.0:
            # The actor at every replayed state (one step: cheap next to imagination). With
            # ``bc_into_model`` its gradient also reaches the posterior and encoder, so the latent
            # learns to carry what the teacher's decision depends on.
            feat = flat(out.post.feat()) if cfg.bc_into_model else start.feat()
            _, logits = self.actor.step(feat, inp)
            bc = bc_loss(self.actor.log_probs(logits, mask), flat(batch["teacher_action"]))
            loss = loss + bc_weight * bc
            metrics.update(bc_loss=bc.item(), bc_weight=bc_weight)
        loss.backward()
        metrics["model_grad_norm"] = nn.utils.clip_grad_norm_(self.wm.parameters(), cfg.model_grad_clip).item()
        self.model_opt.step()

        some = self._imagination_starts(mask.shape[0])
        traj = imagine(self.wm, self.actor, start.index(some), inp.index(some), mask[some], cfg.horizon)
        actor_loss, critic_loss, parts = actor_critic_update_terms(
            cfg, self.critic, self.slow_critic, traj, self.normalizer
        )
        actor_loss.backward()  # on top of the behaviour-cloning gradient already in the actor
        nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.ac_grad_clip)
        self.actor_opt.step()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.ac_grad_clip)
        self.critic_opt.step()
        with torch.no_grad():
            for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
                slow.lerp_(fast, cfg.slow_critic_fraction)
        metrics.update(parts)
        return metrics

    def _imagination_starts(self, n: int) -> torch.Tensor:
        """Which replayed states imagination starts from: all of them (the paper), or a random
        ``imag_starts`` of them, which cuts the dominant cost of an update on a CPU."""
        if self.cfg.imag_starts <= 0 or self.cfg.imag_starts >= n:
            return torch.arange(n)
        return torch.randperm(n)[: self.cfg.imag_starts]

    def training_state(self) -> dict:
        return {
            "modules": self.state_dict(),
            "model_opt": self.model_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "normalizer": self.normalizer.state_dict(),
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.model_opt.load_state_dict(state["model_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.normalizer.load_state_dict(state["normalizer"])

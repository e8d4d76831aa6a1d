"""Building blocks shared by the world model and the actor: MLPs, the layer-normed GRU, symlog,
two-hot regression and straight-through categoricals.

The numpy actor (:mod:`lbagent.policy.numpy_actor`) re-implements exactly the forward pass of
:class:`MLP` and :class:`LayerNormGRUCell`; any change here must be mirrored there (a test compares
them to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-3
"""LayerNorm epsilon, as DreamerV3 uses; the numpy actor reads the same constant from metadata."""


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


class MLP(nn.Module):
    """Linear -> LayerNorm -> SiLU blocks, then an optional linear output (DreamerV3's MLP)."""

    def __init__(self, inp: int, units: int, layers: int, out: int | None = None, zero_out: bool = False):
        super().__init__()
        blocks: list[nn.Module] = []
        size = inp
        for _ in range(layers):
            blocks += [nn.Linear(size, units, bias=False), nn.LayerNorm(units, eps=LN_EPS), nn.SiLU()]
            size = units
        self.hidden = nn.Sequential(*blocks)
        self.out = nn.Linear(size, out) if out is not None else None
        if self.out is not None and zero_out:
            # Reward and critic heads start at exactly zero prediction (DreamerV3): early returns are
            # not dominated by random initial outputs spread over symexp bins.
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.out_dim = out if out is not None else size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden(x)
        return self.out(x) if self.out is not None else x


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU: one linear over [x, h], LayerNorm, and an update gate biased toward keeping h
    (sigmoid(u - 1)), which makes long memories (the RL² trial context) easier to keep."""

    def __init__(self, inp: int, hidden: int):
        super().__init__()
        self.hidden_size = hidden
        self.linear = nn.Linear(inp + hidden, 3 * hidden, bias=False)
        self.norm = nn.LayerNorm(3 * hidden, eps=LN_EPS)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


# ------------------------------------------------------------------------------------------------
# Two-hot regression over symexp-spaced bins


def make_bins(count: int, limit: float) -> torch.Tensor:
    """Bin centres in symlog space: equally spaced there, so symexp-spaced in raw units."""
    return torch.linspace(-limit, limit, count)


def twohot(target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Encode symlog-space scalars as weights on their two neighbouring bins (sums to 1)."""
    target = target.clamp(bins[0], bins[-1])
    above = torch.bucketize(target, bins).clamp(1, len(bins) - 1)
    below = above - 1
    lo, hi = bins[below], bins[above]
    w_hi = ((target - lo) / (hi - lo)).clamp(0.0, 1.0)
    out = torch.zeros(*target.shape, len(bins), dtype=target.dtype)
    out.scatter_(-1, below.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, above.unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the predicted bin distribution against two-hot(symlog(target)); per element."""
    return -(twohot(symlog(target), bins) * F.log_softmax(logits, -1)).sum(-1)


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """The prediction in raw units: symexp of the expected bin (in symlog space)."""
    return symexp((F.softmax(logits, -1) * bins).sum(-1))


# ------------------------------------------------------------------------------------------------
# Categoricals with unimix and straight-through gradients


def unimix_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    probs = F.softmax(logits, -1)
    return (1.0 - unimix) * probs + unimix / logits.shape[-1]


def sample_onehot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One-hot sample with straight-through gradients (the sample's gradient is the probs')."""
    flat = probs.reshape(-1, probs.shape[-1])
    idx = torch.multinomial(flat.detach(), 1, generator=generator).squeeze(-1)
    onehot = F.one_hot(idx, probs.shape[-1]).to(probs.dtype).reshape(probs.shape)
    return onehot + probs - probs.detach()


def mode_onehot(probs: torch.Tensor) -> torch.Tensor:
    return F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """KL(p || q) of the unimixed categoricals, summed over the latent variables: (...,)."""
    p = unimix_probs(p_logits, unimix)
    q = unimix_probs(q_logits, unimix)
    return (p * (p.log() - q.log())).sum((-1, -2))


def masked_log_probs(logits: torch.Tensor, mask: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities of the actor: softmax over valid actions mixed with a uniform over valid
    actions; invalid actions get -inf so they are never sampled."""
    logits = logits.masked_fill(~mask, float("-inf"))
    probs = F.softmax(logits, -1)
    valid = mask.to(probs.dtype)
    probs = (1.0 - unimix) * probs + unimix * valid / valid.sum(-1, keepdim=True)
    return torch.where(mask, probs.clamp_min(1e-30).log(), torch.full_like(probs, float("-inf")))

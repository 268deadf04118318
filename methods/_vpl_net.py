"""VPL's networks (torch): pair encoder, attention set encoder, reward decoder.

Imported only inside ``VPL.fit`` (method modules must import without torch). The architecture is
that of WEIRDLabUW/vpl_llm ``hidden_context/vae_utils.py`` (``PairEncoder``, ``SequenceEncoder``,
``Decoder``), written anew. First layers that take a concatenation ``[a; b]`` are held as their two column
blocks: the same map and parameter count, and a row's projection is computed once however many
pairs or latents it meets. The D-wide products may run in bfloat16 (the official runs train
under bf16 autocast); everything after them stays in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.methods._incontext import block_linear, wide

SLOPE = 0.2  # LeakyReLU slope of the official MLPs


class PairEncoder(nn.Module):
    """MLP([x_chosen; x_rejected]) → latent width: Linear(2D,H) → LReLU → Linear(H,H) → LReLU → Linear(H,L).

    The first layer is held as its two column blocks (chosen, rejected): the same map and the
    same parameter count as ``Linear(2D, H)``.
    """

    def __init__(self, dim: int, hidden: int, latent: int, bf16: bool = False):
        super().__init__()
        self.bf16 = bf16
        self.fc1_chosen = block_linear(dim, hidden, 2 * dim, bias=True)
        self.fc1_rejected = block_linear(dim, hidden, 2 * dim, bias=False)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, latent)

    def forward(self, xc: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        h = wide(xc, self.fc1_chosen, self.bf16) + wide(xr, self.fc1_rejected, self.bf16)
        h = F.leaky_relu(h, SLOPE)
        h = F.leaky_relu(self.fc2(h), SLOPE)
        return self.fc3(h)


class SetEncoder(nn.Module):
    """Single-head self-attention over a user's context pairs, mean-pooled, then mean/log-var heads."""

    def __init__(self, latent: int):
        super().__init__()
        self.latent = latent
        self.w_q = nn.Linear(latent, latent)
        self.w_k = nn.Linear(latent, latent)
        self.w_v = nn.Linear(latent, latent)
        self.mean_layer = nn.Linear(latent, latent)
        self.log_var_layer = nn.Linear(latent, latent)

    def forward(self, e: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``e`` (B, C, L) pair embeddings, ``mask`` (B, C) True where a context pair exists.

        Every row must hold at least one pair (callers give empty contexts the prior instead).
        Padded positions neither serve as keys nor enter the mean pool, so a context of C pairs
        gives exactly what the official per-user loop gives for those C pairs.
        """
        q, k, v = self.w_q(e), self.w_k(e), self.w_v(e)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.latent)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # (B, C, L)
        m = mask.to(out.dtype)[..., None]
        pooled = (out * m).sum(1) / m.sum(1)
        mean = torch.clamp(self.mean_layer(pooled), -1.0, 1.0)
        log_var = torch.clamp(self.log_var_layer(pooled), -1.0, 1.0)
        return mean, log_var


class Decoder(nn.Module):
    """Reward MLP([x; z]): Linear(D+L,H) → LReLU → Linear(H,H) → LReLU → Linear(H,1).

    The first layer is held as its x block (no bias) and its z block (with the bias).
    """

    def __init__(self, dim: int, latent: int, hidden: int, bf16: bool = False):
        super().__init__()
        self.bf16 = bf16
        self.fc1_x = block_linear(dim, hidden, dim + latent, bias=False)
        self.fc1_z = block_linear(latent, hidden, dim + latent, bias=True)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def x_part(self, x: torch.Tensor) -> torch.Tensor:
        return wide(x, self.fc1_x, self.bf16)

    def z_part(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc1_z(z)

    def head(self, pre: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(pre, SLOPE)
        h = F.leaky_relu(self.fc2(h), SLOPE)
        return self.fc3(h)[..., 0]


class VPLNet(nn.Module):
    def __init__(self, dim: int, hidden: int, latent: int, bf16: bool = False):
        super().__init__()
        self.latent = latent
        self.pair_encoder = PairEncoder(dim, hidden, latent, bf16)
        self.set_encoder = SetEncoder(latent)
        self.decoder = Decoder(dim, latent, hidden, bf16)

    def posterior(self, xc, xr, slot, mask):
        """(mean, log_var) of q(z | context) for rows with ≥ 1 context pair.

        ``xc``/``xr`` (P, D) are the distinct context pairs; ``slot`` (B, C) indexes them (any value
        where ``mask`` is False).
        """
        e = self.pair_encoder(xc, xr)
        return self.set_encoder(e[slot], mask)

    def latent_code(self, mean: torch.Tensor) -> torch.Tensor:
        """Evaluation latent: the posterior mean projected onto the training sphere of radius √L."""
        return F.normalize(mean, p=2, dim=-1) * math.sqrt(self.latent)

    def sample(self, mean, log_var, generator) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + torch.exp(0.5 * log_var) * eps
        return F.normalize(z, p=2, dim=-1) * math.sqrt(self.latent)


def kl_to_prior(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^log_var) || N(0, I)) per row (summed over latent dimensions)."""
    return -0.5 * torch.sum(1.0 + log_var - mean.pow(2) - log_var.exp(), dim=-1)


def annealing(step: int, total: int, baseline: float) -> float:
    """The official cyclical cosine KL annealer: baseline → 1 over ``total`` steps, then restart."""
    s = step % total
    y = (math.cos(math.pi * (s / total - 1.0)) + 1.0) / 2.0
    return y * (1.0 - baseline) + baseline

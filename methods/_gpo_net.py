"""GPO's transformer neural process (torch), imported only inside ``GPO.fit``.

The architecture of jamqd/Group-Preference-Optimization ``models/tnp.py`` + ``models/gpo.py``,
written anew: an MLP embedder of [x, y] (targets [x, 0]), a stack of post-norm transformer
encoder layers (``nn.TransformerEncoderLayer`` parameters, ReLU, dropout 0) in which **every
position attends only to context positions**, and a head giving a mean and a log-std per point.

Because no position attends to a target, the context positions evolve independently of the
targets and each target independently of the others. The forward pass below exploits that: keys
and values come from the context positions only (no (N × N) mask, no per-target copy of the
context), and at scoring time a user's per-layer keys and values are computed once and reused for
all of its targets. This is the official computation, reorganised.

A row with no context position at all (a user with no support pair) gets a zero attention output
in every layer, so its targets are scored from their own features through the residual path: the
model's unconditional prediction, which training learns from users drawn with empty contexts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.methods._incontext import block_linear, wide


class GPONet(nn.Module):
    def __init__(
        self, dim_x: int, d_model: int, emb_depth: int, dim_feedforward: int, nhead: int, num_layers: int, bound_std: bool, bf16: bool = False
    ):
        super().__init__()
        self.dim_x = dim_x
        self.d_model = d_model
        self.nhead = nhead
        self.bound_std = bound_std
        self.bf16 = bf16
        # The embedder's first layer Linear(D + 1, d) on [x, y] (dim_y = 1), held as its x block
        # and its y block (which carries the bias): same map, same parameter count.
        self.emb_x = block_linear(dim_x, d_model, dim_x + 1, bias=False)
        self.emb_y = block_linear(1, d_model, dim_x + 1, bias=True)
        rest: list[nn.Module] = []
        for _ in range(emb_depth - 2):
            rest += [nn.ReLU(), nn.Linear(d_model, d_model)]
        rest += [nn.ReLU(), nn.Linear(d_model, d_model)]
        self.emb_rest = nn.Sequential(*rest)
        self.layers = nn.ModuleList(
            [nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True) for _ in range(num_layers)]
        )
        self.predictor = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(), nn.Linear(dim_feedforward, 2))

    # ---------------------------------------------------------------- embedding
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The x block of the embedder's first layer, once per distinct feature row."""
        return wide(x, self.emb_x, self.bf16)

    def embed(self, proj: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Finish the embedding of points whose x-projection is ``proj``; ``y`` None for targets (y = 0)."""
        h = proj + self.emb_y.bias
        if y is not None:
            h = h + y[..., None] * self.emb_y.weight[:, 0]
        return self.emb_rest(h)

    # ---------------------------------------------------------------- attention to the context
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.nhead, self.d_model // self.nhead).transpose(1, 2)

    def kv(self, layer: nn.TransformerEncoderLayer, hc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
        d = self.d_model
        k = F.linear(hc, w[d : 2 * d], b[d : 2 * d])
        v = F.linear(hc, w[2 * d :], b[2 * d :])
        return self._heads(k), self._heads(v)

    def block(self, layer, h, k, v, key_mask, has_ctx) -> torch.Tensor:
        """One encoder layer for positions ``h`` (B, N, d) attending to context keys/values.

        ``key_mask`` (B, Nc) is True for real context positions; ``has_ctx`` (B,) whether a row
        has any (rows without one get a zero attention output instead of a softmax over nothing).
        """
        w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
        d = self.d_model
        q = self._heads(F.linear(h, w[:d], b[:d]))
        safe = key_mask | ~has_ctx[:, None]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :])
        att = att.transpose(1, 2).reshape(h.shape)
        att = layer.self_attn.out_proj(att) * has_ctx[:, None, None].to(h.dtype)
        h = layer.norm1(h + att)
        return layer.norm2(h + layer.linear2(F.relu(layer.linear1(h))))

    def encode_context(self, hc, key_mask, has_ctx):
        """Run the context positions through all layers; returns per-layer (k, v)."""
        kvs = []
        for layer in self.layers:
            k, v = self.kv(layer, hc)
            kvs.append((k, v))
            hc = self.block(layer, hc, k, v, key_mask, has_ctx)
        return kvs

    def decode_targets(self, ht, kvs, key_mask, has_ctx) -> tuple[torch.Tensor, torch.Tensor]:
        for layer, (k, v) in zip(self.layers, kvs):
            ht = self.block(layer, ht, k, v, key_mask, has_ctx)
        return self.head(ht)

    def forward_train(self, hc, ht, key_mask, has_ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and target positions together (the official masked encoder), for training."""
        nc = hc.shape[1]
        h = torch.cat([hc, ht], dim=1)
        for layer in self.layers:
            k, v = self.kv(layer, h[:, :nc])
            h = self.block(layer, h, k, v, key_mask, has_ctx)
        return self.head(h[:, nc:])

    def head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.predictor(h)
        mean, raw = out[..., 0], out[..., 1]
        std = 0.05 + 0.95 * F.softplus(raw) if self.bound_std else torch.exp(raw)
        return mean, std

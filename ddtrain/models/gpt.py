"""A small decoder-only transformer in the GPT-2 layout (Radford et al. 2019).

Pre-LayerNorm blocks, learned positions over the data's context length, and an LM head that
shares the token embedding's weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddtrain.config import ConfigError, check_positives
from ddtrain.data.spec import DataSpec
from ddtrain.registry import ModelEntry


@dataclass(frozen=True)
class GPTConfig:
    name: str = "gpt"
    layers: int = 4
    heads: int = 4
    dim: int = 128
    dropout: float = 0.0


def validate(m: GPTConfig) -> None:
    check_positives("model", m, "layers", "heads", "dim")
    if m.dim % m.heads:
        raise ConfigError(f"model.dim={m.dim} must be divisible by model.heads={m.heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")


def _dropout(p: float) -> nn.Module:
    # Identity when p == 0, so a run without dropout draws no random numbers in forward.
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = _dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        # [B, T, 3C] -> three [B, heads, T, C/heads]
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), _dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, spec: DataSpec) -> None:
        super().__init__()
        self.context = spec.seq_len
        self.tok = nn.Embedding(spec.vocab_size, cfg.dim)
        self.pos = nn.Embedding(spec.seq_len, cfg.dim)
        self.drop = _dropout(cfg.dropout)
        self.blocks = nn.Sequential(*(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers)))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, spec.vocab_size, bias=False)
        self.apply(self._init)
        # Weight tying (Press & Wolf 2017, as GPT-2): one matrix embeds tokens and scores them.
        self.head.weight = self.tok.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        # GPT-2's initialisation: N(0, 0.02) weights, zero biases; LayerNorm keeps ones/zeros.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.size(1)
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.context} (data.seq_len)")
        positions = torch.arange(t, device=x.device)
        h = self.drop(self.tok(x) + self.pos(positions))
        return self.head(self.ln_f(self.blocks(h)))

    def flops_per_sample(self) -> int:
        # Per token, forward, with d = dim, T = seq_len, V = vocab, L = layers:
        #   weights per layer: qkv 2*d*3d + proj 2*d*d + MLP 2*d*4d + 2*4d*d = 24*d^2
        #     (= 2 FLOPs per non-embedding weight, the "2N" of Kaplan et al. 2020);
        #   attention per layer: scores Q.K^T 2*T*d + weighted values A.V 2*T*d = 4*T*d,
        #     over the full T x T square: neither the math/flash kernels nor FlopCounterMode
        #     skip the masked half, and PaLM's 6N + 12*L*d*T per token (Chowdhery et al. 2022,
        #     appendix B) counts it the same way;
        #   tied LM head: 2*d*V (real work even though its weight is the embedding).
        # Training = 3x forward (input and weight gradients everywhere: the first matmul's input
        # derives from the embedding, which needs a gradient), times T tokens per sample.
        # Not counted: embedding lookups and their scatter-add gradients, LayerNorm, GELU,
        # softmax and the 1/sqrt(d_head) scale, biases, residual adds, dropout.
        d, t = self.tok.embedding_dim, self.context
        layers = len(self.blocks)
        per_token = layers * (24 * d * d + 4 * t * d) + 2 * d * self.tok.num_embeddings
        return 3 * t * per_token


ENTRY = ModelEntry(name="gpt", schema=GPTConfig, input_kind="tokens", build=GPT, validate=validate)

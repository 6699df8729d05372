"""
mla_moe.py - a DeepSeek-V2/V3-style GPT: Multi-head Latent Attention with a compressed KV
cache, DeepSeekMoE feed-forward layers, optional multi-token prediction, in one file.

Multi-head Latent Attention (MLA; DeepSeek-V2, arXiv 2405.04434, §2.1) projects each token
to one small latent c_KV (kv_lora_rank values) from which every head's keys and values are
up-projected, plus one RoPE key shared by all heads (decoupled RoPE, qk_rope_head_dim
values). Training expands keys and values per head and runs ordinary attention. Generation
caches only [c_KV; k_R] per token and attends in the "absorbed" form: the key up-projection
is folded into the query and the value up-projection applied after attention, so the cache
never grows with the number of heads (`python mla_moe.py` prints the bytes against MHA/GQA).

The feed-forward layers are DeepSeekMoE (arXiv 2401.06066: shared experts plus fine-grained
routed experts) with DeepSeek-V3's choices (arXiv 2412.19437): sigmoid gates normalized over
the chosen experts, auxiliary-loss-free balancing by a per-expert bias (V3 §2.1.2), a small
sequence-wise balance loss (V3 eqs. 17-20), route scaling, the first layer dense. Router
noise and a capacity factor are options. Multi-token prediction (V3 §2.2, depth 1: one extra
block predicting the token after next) is behind `mtp`; gradient checkpointing per block
behind `grad_checkpointing`. RMSNorm (arXiv 1910.07467), RoPE (RoFormer, arXiv 2104.09864)
and SwiGLU (arXiv 2002.05202) are copied from modern_gpt.py, the MoE layer from moe_gpt.py.

Not implemented, on purpose: one public "MoE with latent attention" project attends with a
handful of learned latent vectors that read the WHOLE sequence, after which every position
reads those latents. In a causal language model that leaks the future: position t receives
summaries of tokens t+1, t+2, ... through the latents, so training learns to copy the next
token and generation (which has no future) falls apart; a causal mask on the second step
cannot help, because every latent has already mixed all positions. MLA compresses per
token instead, so position t only ever sees latents of positions <= t.

Run it:
    python train.py --model_type mlamoe --tokenizer char    # nanoGPT's CPU Shakespeare recipe
    python mla_moe.py --ckpt out/ckpt.pt --prompt "ROMEO:"  # sample from a checkpoint
    python mla_moe.py                                       # KV-cache bytes per token, sizes, a sample

The file imports only torch, numpy, tiktoken and the standard library: copy it together
with data/gpt2.tiktoken into another project and it works.
"""
import argparse
import base64
import math
import os
from dataclasses import dataclass

import numpy as np
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

MODEL_TYPE = "mlamoe"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@dataclass
class MLAMoEConfig:
    block_size: int = 1024  # longest context
    vocab_size: int = 50257  # GPT-2 BPE
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # width of the residual stream
    # Multi-head Latent Attention (DeepSeek-V2 §2.1); V2's ratios: r = 4 d_h, dr = d_h / 2
    q_lora_rank: int = 0  # rank of the query latent c_Q; 0 = full-rank queries (as V2-Lite)
    kv_lora_rank: int = 256  # rank r of the key-value latent c_KV, the cached part
    qk_nope_head_dim: int = 64  # per-head query/key part without position (up-projected from c_KV)
    qk_rope_head_dim: int = 32  # decoupled RoPE part: per-head queries, one key shared by all heads
    v_head_dim: int = 64  # per-head value size
    rope_theta: float = 10000.0  # base of the rotary frequencies (RoFormer eq. 15)
    # feed-forward: the first dense layer(s) and DeepSeekMoE (V3-style) everywhere else
    ffn_hidden: int = 2048  # SwiGLU hidden size of the dense layers
    first_dense_layers: int = 1  # this many first blocks keep a dense SwiGLU (V3: 3 of 61)
    # training features
    mtp: bool = False  # multi-token prediction (V3 §2.2, depth 1): also predict the token after next
    mtp_weight: float = 0.3  # lambda of V3 eq. 25, the MTP loss's weight in the total
    grad_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    dropout: float = 0.0  # on embeddings, attention weights and residual branches


PRESETS = {
    "default": dict(),  # 12 layers of 768, V2's MLA ratios
    # nanoGPT's CPU Shakespeare recipe: 4 layers, 4 heads of 32, block 64; a latent of 48 + 16
    # RoPE values is a quarter of MHA's 2 x 128 per token
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, kv_lora_rank=48, qk_nope_head_dim=32,
                qk_rope_head_dim=16, v_head_dim=32, ffn_hidden=512),
}

# ----------------------------------------------------------------------------- building blocks

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * gain (Zhang & Sennrich 2019, arXiv 1910.07467, eq. 4):
    LayerNorm without the mean subtraction and the bias. Computed in float32."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer, arXiv 2104.09864, eqs. 13-15 and 34).

    Each pair of channels of a query or key at position p is rotated by the angle
    p * theta^(-2i/hd); a dot product of rotated q (at m) and k (at n) then depends on
    m - n only. The pairs are (i, i + hd/2), as in GPT-NeoX and Hugging Face's Llama: the
    paper's adjacent pairs (2i, 2i+1) up to a fixed reordering of the head's channels,
    which leaves q . k unchanged. cos and sin are tabled for positions 0 .. max_len - 1.
    """

    def __init__(self, head_dim, max_len, theta=10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings rotate pairs of channels: head size {head_dim} must be even")
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, start=0):
        """Rotate x (B, nh, T, hd) as the positions start .. start + T - 1."""
        T = x.size(2)
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]  # (T, hd/2)
        x1, x2 = x.float().chunk(2, dim=-1)  # the two halves of each pair, (B, nh, T, hd/2)
        rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return rotated.type_as(x)


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020, arXiv 2002.05202, eq. 6): down(silu(gate(x)) * up(x))."""

    def __init__(self, n_embd, hidden, dropout=0.0):
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=False)
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, n_embd, bias=False)
        self.down.residual_branch_end = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


class MoE(SwiGLU):
    """TEMP"""

    def __init__(self, config):
        super().__init__(config.n_embd, config.ffn_hidden, config.dropout)


# ----------------------------------------------------------------------------- Multi-head Latent Attention

class LatentKVCache:
    """What MLA keeps per token for one layer: the normalized latent c_KV and the shared RoPE key k_R.

    Preallocated as c_kv (B, max_len, kv_lora_rank) and k_rope (B, max_len, qk_rope_head_dim):
    kv_lora_rank + qk_rope_head_dim values per token, whatever the number of heads."""

    def __init__(self, batch_size, max_len, kv_lora_rank, rope_dim, device, dtype):
        self.c_kv = torch.zeros(batch_size, max_len, kv_lora_rank, device=device, dtype=dtype)
        self.k_rope = torch.zeros(batch_size, max_len, rope_dim, device=device, dtype=dtype)
        self.pos = 0

    def append(self, c_kv, k_rope):
        """Store c_kv (B, t, r) and k_rope (B, t, dr) after the cached positions; return all so far."""
        t = c_kv.size(1)
        self.c_kv[:, self.pos:self.pos + t] = c_kv
        self.k_rope[:, self.pos:self.pos + t] = k_rope
        self.pos += t
        return self.c_kv[:, :self.pos], self.k_rope[:, :self.pos]


def causal_attention(q, k, v, dropout_p, scale):
    """softmax(q k^T * scale) v where query i sees keys up to its own position.

    q is (B, nh, t, d) for the last t positions; k (B, nh, S, d), v (B, nh, S, dv) hold all S positions."""
    t, S = q.size(2), k.size(2)
    if t == S:  # no cache, or the prompt's first pass: the plain causal mask
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    if t == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    # t new tokens after S - t cached ones: query i sees keys 0 .. S - t + i
    mask = torch.ones(t, S, dtype=torch.bool, device=q.device).tril(diagonal=S - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2 (arXiv 2405.04434) §2.1: keys and values come from one small latent per token.

    Equation numbers are the paper's. h is the block input (B, T, C); nh heads; dn, dr, dv are
    qk_nope_head_dim, qk_rope_head_dim and v_head_dim; r is kv_lora_rank.
        c_KV = W^DKV h                 (9)   the latent, (B, T, r), RMSNorm'ed (as DeepSeek's code)
        k_C  = W^UK c_KV               (10)  per-head keys without position, (B, T, nh, dn)
        v_C  = W^UV c_KV               (11)  per-head values, (B, T, nh, dv)
        c_Q  = W^DQ h                  (12)  optional query latent (q_lora_rank > 0), RMSNorm'ed
        q_C  = W^UQ c_Q                (13)  (c_Q is h itself when q_lora_rank = 0)
        q_R  = RoPE(W^QR c_Q)          (14)  per-head RoPE queries, (B, T, nh, dr)
        k_R  = RoPE(W^KR h)            (15)  ONE RoPE key shared by all heads, (B, T, dr)
        q = [q_C; q_R], k = [k_C; k_R] (16, 17)
        o  = softmax(q k^T / sqrt(dn + dr)) v_C   (18)
        u  = W^O [o_1; ...; o_nh]      (19)
    RoPE is kept apart from k_C because a rotation between W^UK and the query would depend
    on the position, and W^UK could no longer be folded into the query (the absorbed form)."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.n_head, self.nope_dim, self.rope_dim, self.v_dim = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.scale = 1.0 / math.sqrt(c.qk_nope_head_dim + c.qk_rope_head_dim)  # the full query-key head size
        q_in = c.q_lora_rank or c.n_embd
        if c.q_lora_rank:
            self.q_down = nn.Linear(c.n_embd, c.q_lora_rank, bias=False)  # W^DQ
            self.q_norm = RMSNorm(c.q_lora_rank, c.norm_eps)
        self.q_up = nn.Linear(q_in, c.n_head * c.qk_nope_head_dim, bias=False)  # W^UQ
        self.q_rope = nn.Linear(q_in, c.n_head * c.qk_rope_head_dim, bias=False)  # W^QR
        self.kv_down = nn.Linear(c.n_embd, c.kv_lora_rank, bias=False)  # W^DKV
        self.kv_norm = RMSNorm(c.kv_lora_rank, c.norm_eps)
        self.k_up = nn.Linear(c.kv_lora_rank, c.n_head * c.qk_nope_head_dim, bias=False)  # W^UK
        self.v_up = nn.Linear(c.kv_lora_rank, c.n_head * c.v_head_dim, bias=False)  # W^UV
        self.k_rope = nn.Linear(c.n_embd, c.qk_rope_head_dim, bias=False)  # W^KR
        self.c_proj = nn.Linear(c.n_head * c.v_head_dim, c.n_embd, bias=False)  # W^O
        self.c_proj.residual_branch_end = True
        self.rotary = RotaryEmbedding(c.qk_rope_head_dim, c.block_size, c.rope_theta)
        self.dropout = c.dropout
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        nh = self.n_head
        start = cache.pos if cache is not None else 0
        c_q = self.q_norm(self.q_down(x)) if hasattr(self, "q_down") else x  # (12)
        q_nope = self.q_up(c_q).view(B, T, nh, self.nope_dim).transpose(1, 2)  # (13): (B, nh, T, dn)
        q_rope = self.q_rope(c_q).view(B, T, nh, self.rope_dim).transpose(1, 2)
        q_rope = self.rotary(q_rope, start)  # (14)
        c_kv = self.kv_norm(self.kv_down(x))  # (9): (B, T, r)
        k_rope = self.rotary(self.k_rope(x).unsqueeze(1), start).squeeze(1)  # (15): (B, T, dr)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = self.expanded_attention(q_nope, q_rope, c_kv, k_rope, dropout)
        else:
            c_kv, k_rope = cache.append(c_kv, k_rope)  # (B, cached + T, r), (B, cached + T, dr)
            y = self.absorbed_attention(q_nope, q_rope, c_kv, k_rope, dropout)
        y = y.transpose(1, 2).reshape(B, T, nh * self.v_dim)  # heads side by side: (B, T, nh * dv)
        return self.resid_dropout(self.c_proj(y))  # (19)

    def expanded_attention(self, q_nope, q_rope, c_kv, k_rope, dropout):
        """Training: up-project the latent to per-head keys and values, then ordinary attention."""
        B, S, _ = c_kv.shape
        nh = self.n_head
        k_nope = self.k_up(c_kv).view(B, S, nh, self.nope_dim).transpose(1, 2)  # (10): (B, nh, S, dn)
        v = self.v_up(c_kv).view(B, S, nh, self.v_dim).transpose(1, 2)  # (11): (B, nh, S, dv)
        k_rope = k_rope.unsqueeze(1).expand(B, nh, S, self.rope_dim)  # the shared k_R, seen by every head
        q = torch.cat([q_nope, q_rope], dim=-1)  # (16): (B, nh, T, dn + dr)
        k = torch.cat([k_nope, k_rope], dim=-1)  # (17)
        return causal_attention(q, k, v, dropout, self.scale)  # (18): (B, nh, T, dv)

    def absorbed_attention(self, q_nope, q_rope, c_kv, k_rope, dropout):
        """Generation: attend against the cached latent itself, never expanding it per head.

        q_C^T k_C = q_C^T W^UK c_KV = (W^UK^T q_C)^T c_KV, so W^UK is folded into the query;
        sum_s p_s W^UV c_KV,s = W^UV (sum_s p_s c_KV,s), so W^UV is applied after attention.
        Every head then attends to the same keys [c_KV; k_R] and values c_KV: multi-query
        attention in the latent space, at r + dr values of cache per token."""
        B, S, r = c_kv.shape
        nh = self.n_head
        w_uk = self.k_up.weight.view(nh, self.nope_dim, r)  # (nh, dn, r)
        w_uv = self.v_up.weight.view(nh, self.v_dim, r)  # (nh, dv, r)
        q_latent = q_nope @ w_uk  # (B, nh, T, dn) @ (nh, dn, r) -> (B, nh, T, r)
        q = torch.cat([q_latent, q_rope], dim=-1)  # (B, nh, T, r + dr)
        k = torch.cat([c_kv, k_rope], dim=-1).unsqueeze(1).expand(B, nh, S, r + self.rope_dim)
        v = c_kv.unsqueeze(1).expand(B, nh, S, r)
        o_latent = causal_attention(q, k, v, dropout, self.scale)  # (B, nh, T, r)
        return o_latent @ w_uv.transpose(1, 2)  # (B, nh, T, r) @ (nh, r, dv) -> (B, nh, T, dv)


# ----------------------------------------------------------------------------- the model

class Block(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(x)), the feed-forward an MoE or a dense SwiGLU."""

    def __init__(self, config, use_moe):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = MultiHeadLatentAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MoE(config) if use_moe else SwiGLU(config.n_embd, config.ffn_hidden, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm_1(x), cache)
        x = x + self.mlp(self.norm_2(x))
        return x


class MultiTokenPrediction(nn.Module):
    """DeepSeek-V3 §2.2 at depth 1: from the main model's last hidden state h_i and the embedding
    of token i+1, predict token i+2 with one more block; embedding and output head are shared.
        h'_i = M [RMSNorm(h_i); RMSNorm(Emb(t_i+1))]    (V3 eq. 21)
        h_i  = TRM(h'_i), P_i+2 = OutHead(h_i)         (eqs. 22, 23)"""

    def __init__(self, config):
        super().__init__()
        self.hidden_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.embed_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.proj = nn.Linear(2 * config.n_embd, config.n_embd, bias=False)  # M
        self.block = Block(config, use_moe=False)  # dense: MoE statistics stay the main model's
        self.norm = RMSNorm(config.n_embd, config.norm_eps)

    def forward(self, h, next_embedding):
        """h (B, T, C) hidden states at positions i; next_embedding (B, T, C) embeddings of tokens i+1."""
        x = self.proj(torch.cat([self.hidden_norm(h), self.embed_norm(next_embedding)], dim=-1))
        return self.norm(self.block(x))


class MLAMoE(nn.Module):
    """Token embedding, n_layer blocks (MLA + dense/MoE feed-forward), final RMSNorm, LM head."""

    def __init__(self, config):
        super().__init__()
        if config.first_dense_layers > config.n_layer:
            raise ValueError(f"first_dense_layers {config.first_dense_layers} exceeds n_layer {config.n_layer}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, use_moe=i >= config.first_dense_layers) for i in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.mtp = MultiTokenPrediction(config) if config.mtp else None
        self.last_mtp_loss = None
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2's init: N(0, 0.02), the Linear ending each residual branch scaled by 1/sqrt(2 * n_layer)
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_branch_end", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and with targets (B, T) the loss:
        cross-entropy (positions marked -100 ignored) + the MoE balance terms (+ the weighted
        MTP loss when config.mtp). With `cache` (new_cache()) idx continues the cached positions."""
        B, T = idx.shape
        start = cache[0].pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.drop(self.wte(idx))  # (B, T, C); positions enter through RoPE
        for i, block in enumerate(self.h):
            if self.config.grad_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, use_reentrant=False)  # keep x only; recompute the block in backward
            else:
                x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            if self.mtp is not None and T > 1:
                self.last_mtp_loss = self.multi_token_loss(x, targets)
                loss = loss + self.config.mtp_weight * self.last_mtp_loss  # V3 eq. 25
        return logits, loss

    def multi_token_loss(self, h, targets):
        """V3 eq. 24: cross-entropy of the MTP prediction of token i+2 from h_i and token i+1 (= targets[i])."""
        next_tokens = targets[:, :-1]
        after_next = targets[:, 1:].masked_fill(next_tokens == -100, -100)  # no input token, no target
        x = self.mtp(h[:, :-1], self.wte(next_tokens.clamp(min=0)))  # (B, T - 1, C)
        logits = self.lm_head(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), after_next.flatten(), ignore_index=-100)

    def moe_stats(self):
        stats = {}
        if self.last_mtp_loss is not None:
            stats["mtp_loss"] = self.last_mtp_loss.item()
        return stats

    def new_cache(self, batch_size):
        """An empty latent cache (one LatentKVCache per layer) as long as the context."""
        c = self.config
        w = self.wte.weight
        return [LatentKVCache(batch_size, c.block_size, c.kv_lora_rank, c.qk_rope_head_dim, w.device, w.dtype)
                for _ in range(c.n_layer)]
    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
        """Append max_new_tokens tokens to idx (B, T). temperature 0 is greedy decoding.

        With the cache each new token costs one position's worth of compute; once the
        context is full the window slides and the cache is rebuilt from the last
        block_size - 1 tokens, exactly what the cache-less path computes.
        """
        block_size = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(idx[:, -block_size:])
            elif cache is None or cache[0].pos == block_size:
                cache = self.new_cache(idx.size(0))
                window = block_size - 1 if idx.size(1) >= block_size else block_size
                logits, _ = self(idx[:, -window:], cache=cache)
            else:
                logits, _ = self(idx[:, -1:], cache=cache)
            next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p)
            idx = torch.cat((idx, next_token), dim=1)
        return idx

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on matrices and embeddings only (not on biases and norm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")  # fused AdamW kernels exist for these devices
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def param_counts(self):
        """Total parameters, and those active per token: routed experts count top_k of n_routed."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "active": total}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), PaLM (arXiv 2204.02311) appendix B:
        6N for the weight matmuls (N active, without the embedding lookup) plus, per attention
        layer, 6 * seq_len * n_head * (qk head size + v head size) for scores and weighted values."""
        c = self.config
        n_matmul = self.param_counts()["active"] - self.wte.weight.numel()
        n_attention = c.n_layer + (1 if c.mtp else 0)
        head_sizes = c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim
        return 6 * n_matmul + 6 * n_attention * seq_len * c.n_head * head_sizes


Config, Model = MLAMoEConfig, MLAMoE  # the names train.py looks for in every model file


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick one token per row of logits (B, V): greedy at temperature 0, else sample after
    keeping the top_k most likely tokens and/or the smallest set whose probability >= top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of better tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


# ----------------------------------------------------------------------------- tokenizers and data

def gpt2_encoding(path=os.path.join(DATA_DIR, "gpt2.tiktoken")):
    """GPT-2's BPE as a tiktoken Encoding, built from the ranks file with no network access.
    Each line of gpt2.tiktoken is `base64(token bytes) rank`; <|endoftext|> (50256) is added."""
    if not os.path.exists(path):
        return tiktoken.get_encoding("gpt2")  # downloads the ranks once, then caches them
    with open(path, "rb") as f:
        ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


class Tokenizer:
    """GPT-2 BPE (kind "gpt2") or characters (kind "char", vocabulary = `chars`, in id order).

    `state()` is what a checkpoint stores to rebuild the same tokenizer: Tokenizer(**state)."""

    def __init__(self, kind="gpt2", chars=None):
        self.kind = kind
        if kind == "gpt2":
            self.bpe = gpt2_encoding()
            self.vocab_size = self.bpe.n_vocab
        elif kind == "char":
            if not chars:
                raise ValueError("a char tokenizer needs its vocabulary (the characters of the corpus)")
            self.chars = chars
            self.char_to_id = {ch: i for i, ch in enumerate(chars)}
            self.vocab_size = len(chars)
        else:
            raise ValueError(f"unknown tokenizer {kind!r}: use gpt2 or char")

    def encode(self, text):
        if self.kind == "gpt2":
            return self.bpe.encode_ordinary(text)
        unknown = set(text) - self.char_to_id.keys()
        if unknown:
            raise ValueError(f"characters {''.join(sorted(unknown))!r} are not in this char vocabulary")
        return [self.char_to_id[ch] for ch in text]

    def decode(self, ids):
        if self.kind == "gpt2":
            return self.bpe.decode(list(ids))
        return "".join(self.chars[i] for i in ids)

    def state(self):
        return {"kind": "gpt2"} if self.kind == "gpt2" else {"kind": "char", "chars": self.chars}


def load_dataset(path, tokenizer_kind="gpt2", chars=None, cache_dir=None):
    """Token ids for training and validation, and the tokenizer.

    `path` is a text file (split 90/10 into train/val; GPT-2 BPE ids are cached as
    uint16 next to it, or in cache_dir if that folder is read-only) or a folder with nanoGPT-style train.bin and val.bin
    (uint16 GPT-2 token ids, used as they are). A char vocabulary is the sorted set of
    the corpus's characters unless `chars` (e.g. from a checkpoint) is given.
    Returns (train_ids, val_ids, tokenizer), the ids as 1-D numpy arrays."""
    if os.path.isdir(path):
        bins = [os.path.join(path, name) for name in ("train.bin", "val.bin")]
        missing = [b for b in bins if not os.path.exists(b)]
        if missing:
            raise FileNotFoundError(f"{missing[0]} not found: a data folder needs train.bin and val.bin")
        if tokenizer_kind != "gpt2":
            raise ValueError(f"{path} holds GPT-2 token ids (train.bin/val.bin): use --tokenizer gpt2")
        train, val = (np.memmap(b, dtype=np.uint16, mode="r") for b in bins)
        return train, val, Tokenizer("gpt2")
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} not found: pass --data with a text file or a train.bin/val.bin folder")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if tokenizer_kind == "char":  # encoding characters is a table lookup: no cache needed
        tokenizer = Tokenizer("char", chars or "".join(sorted(set(text))))
        ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    else:
        tokenizer = Tokenizer(tokenizer_kind)
        ids = cached_bpe_ids(path, text, tokenizer, cache_dir)
    n_train = int(0.9 * len(ids))
    return ids[:n_train], ids[n_train:], tokenizer


def cached_bpe_ids(path, text, tokenizer, fallback_dir=None):
    """GPT-2 token ids of `text` (read from `path`), kept as uint16 in `<path>.gpt2.bin` next to
    the text, or in fallback_dir where that folder is read-only, so a corpus is tokenized once.
    A cache counts while it is newer than the text."""
    name = os.path.basename(path) + ".gpt2.bin"
    caches = [os.path.join(os.path.dirname(os.path.abspath(path)), name)]
    if fallback_dir:
        caches.append(os.path.join(fallback_dir, name))
    for cache in caches:
        if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(path):
            return np.fromfile(cache, dtype=np.uint16)
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)  # GPT-2's 50,257 ids fit in 16 bits
    for cache in caches:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            ids.tofile(cache + ".tmp")
            os.replace(cache + ".tmp", cache)  # atomic: a reader never sees half a file
            break
        except OSError:
            continue  # read-only: try the next folder (or tokenize again next time)
    return ids


def get_batch(data, batch_size, block_size, generator, device="cpu"):
    """batch_size random windows of block_size + 1 tokens: inputs x and next-token targets y, (B, T)."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
    windows = data[starts[:, None] + np.arange(block_size + 1)]  # (B, T + 1), one fancy-index read
    windows = torch.from_numpy(windows.astype(np.int64))
    x, y = windows[:, :-1], windows[:, 1:]
    if device.startswith("cuda"):  # page-locked memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- checkpoints and demo

def cache_size_table(config):
    """KV-cache bytes per token per layer for MLA and for MHA / GQA / MQA of the same width
    (n_head heads of n_embd / n_head, keys and values both cached), as a printable table."""
    head_dim = config.n_embd // config.n_head
    rows = [("MHA", 2 * config.n_head * head_dim)]
    if config.n_head % 4 == 0 and config.n_head > 4:
        rows.append((f"GQA, {config.n_head // 4} KV heads", 2 * (config.n_head // 4) * head_dim))
    rows.append(("MQA, 1 KV head", 2 * head_dim))
    rows.append((f"MLA, r {config.kv_lora_rank} + dr {config.qk_rope_head_dim}",
                 config.kv_lora_rank + config.qk_rope_head_dim))
    lines = [f"KV cache per token per layer, {config.n_layer} layers x {config.n_head} heads x {config.n_embd} wide:",
             f"{'attention':<22}{'values':>8}{'bf16 bytes':>12}{'fp32 bytes':>12}{'/ MHA':>8}"]
    for name, values in rows:
        lines.append(f"{name:<22}{values:>8}{2 * values:>12}{4 * values:>12}{values / rows[0][1]:>8.3f}")
    return "\n".join(lines)

def load_checkpoint(path, device="cpu"):
    """The model (eval mode) and tokenizer stored by train.py at `path`; only tensors and
    plain Python values are read (torch.load(weights_only=True)), nothing is unpickled."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with python train.py --model_type {MODEL_TYPE}")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path} holds a {ckpt.get('model_type')!r} model, not {MODEL_TYPE!r}: use that model's file")
    model = MLAMoE(MLAMoEConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), Tokenizer(**ckpt["tokenizer"])


def main():
    parser = argparse.ArgumentParser(description="KV-cache sizes, then a sample from a checkpoint or from random weights.")
    parser.add_argument("--ckpt", help="checkpoint written by train.py (default: random init of --preset)")
    parser.add_argument("--preset", default="cpu", choices=PRESETS)
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=200)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    print(cache_size_table(MLAMoEConfig()))
    try:
        if args.ckpt:
            model, tokenizer = load_checkpoint(args.ckpt, args.device)
        else:
            tokenizer = Tokenizer("gpt2")
            model = MLAMoE(MLAMoEConfig(**PRESETS[args.preset])).to(args.device).eval()
        prompt = tokenizer.encode(args.prompt)
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}")
    if model.config != MLAMoEConfig():
        print(cache_size_table(model.config))
    counts = model.param_counts()
    print(f"{MODEL_TYPE}: {counts['total'] / 1e6:.2f}M parameters, {model.config}")
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
    out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    for row in out.tolist():
        print(tokenizer.decode(row))
        print("-" * 40)


if __name__ == "__main__":
    main()

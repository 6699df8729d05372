"""
fgram_moe.py - char-level RoPE + MoE with causal F-gram (n-gram) embeddings: NanoMoE's idea, working. moe_gpt.py's
attention with NanoMoE's MoE (4 experts, 2 per token, Switch loss, arXiv 2101.03961); each character's embedding
is merged, through learned gates, with vectors of the frequent n-grams that END at it, each a Transformer block
over its characters (fastText, arXiv 1607.04606; N-Grammer, 2207.06366). docs/fgram_moe.md: what NanoMoE missed.

    python train.py --model_type fgram                          # char-level Tiny Shakespeare, CPU recipe
    python train.py --model_type fgram --fgram_max_n 0          # the same model without F-grams
    python fgram_moe.py --ckpt out/ckpt.pt --prompt "ROMEO:"    # sample from a checkpoint
"""
import argparse
import base64
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import tiktoken
import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "fgram"


@dataclass
class FgramMoEConfig:
    block_size: int = 64  # longest context; length of the rotary tables and the KV cache
    vocab_size: int = 65  # the characters of Tiny Shakespeare (train.py sets it from the corpus)
    n_layer: int = 4  # number of Transformer blocks
    n_head: int = 4  # query heads
    n_kv_head: int = 4  # key/value heads, shared by n_head / n_kv_head query heads each (1 = multi-query)
    n_embd: int = 128  # width of the residual stream
    head_dim: int = 0  # size of each head; 0 = n_embd / n_head
    mlp_hidden: int = 0  # SwiGLU hidden size before rounding; 0 = 8/3 n_embd (the 4C GELU MLP's parameters)
    multiple_of: int = 64  # the SwiGLU hidden size is rounded up to a multiple of this (fast matmuls)
    rope_theta: float = 10000.0  # base of the rotary frequencies (RoFormer eq. 15)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before the rotation
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    dropout: float = 0.1  # probability, on embeddings, attention weights and residual branches
    n_experts: int = 4  # SwiGLU experts in each MoE layer (NanoMoE's)
    top_k: int = 2  # experts per token, their router weights renormalised to sum 1
    moe_hidden: int = 0  # each expert's hidden size; 0 = the dense SwiGLU's / top_k (as many active units)
    aux_loss_weight: float = 0.01  # Switch load-balancing loss E * sum_i f_i P_i, summed over layers
    # F-grams
    fgram_max_n: int = 3  # longest n-gram (n = 2..fgram_max_n); 0 turns F-grams off
    fgram_vocab_size: int = 1024  # n-grams mined from the training split, all lengths together
    fgram_hidden: int = 128  # SwiGLU hidden size of the n-gram encoder block (0 = mlp_hidden's)


PRESETS = {"cpu": {"n_layer": 4, "n_head": 4, "n_kv_head": 4, "n_embd": 128, "block_size": 64}}  # 2 of 4 experts of 192


# ----------------------------------------------------------------------------- model

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * gain, in float32 (arXiv 1910.07467 eq. 4): LayerNorm without mean and bias."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


def rope_frequencies(config, head_dim):
    """The rotation speed of each channel pair, theta^(-2i/hd) (RoFormer eq. 15), (hd/2,)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings rotate pairs of channels: head size {head_dim} must be even")
    return config.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


class RotaryEmbedding(nn.Module):
    """RoPE (arXiv 2104.09864): pair (i, i + hd/2) at position p turns by p * inv_freq[i]."""

    def __init__(self, inv_freq, max_len):
        super().__init__()
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, start=0):
        """Rotate x (B, nh, T, hd) as the positions start .. start + T - 1 (start: an int or a 0-d tensor)."""
        at = start + torch.arange(x.size(2), device=x.device)  # (T,)
        cos, sin = self.cos[at], self.sin[at]  # (T, hd/2)
        x1, x2 = x.float().chunk(2, dim=-1)  # the two halves of each pair, (B, nh, T, hd/2)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class KVCache:
    """One layer's keys and values (B, n_head, max_len, hd) up to pos; static (pos 0-d): append returns them all."""

    def __init__(self, batch_size, n_head, max_len, head_dim, device, dtype, static=False):
        self.k = torch.zeros(batch_size, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.tensor(0, device=device) if static else 0

    def append(self, k, v):
        """Store k, v (B, nh, t, hd) after the cached positions; return all keys and values so far (static: all)."""
        at = self.pos + torch.arange(k.size(2), device=k.device)  # the new positions, (t,)
        self.k[:, :, at], self.v[:, :, at] = k.type_as(self.k), v.type_as(self.v)  # (autocast: k may be bf16)
        self.pos = self.pos + k.size(2)
        return (self.k, self.v) if torch.is_tensor(self.pos) else (self.k[:, :, :self.pos], self.v[:, :, :self.pos])


def causal_attention(q, k, v, dropout, scale=None, start=None):
    """softmax(q k^T * scale) v, query i seeing keys up to its position (scale: 1/sqrt(hd) by default); q (B, nh, t,
    hd) at start .. start + t - 1 (default S - t; 0-d: a static cache); k, v (B, n_kv, S, hd), each for nh / n_kv."""
    t, S = q.size(2), k.size(2)
    g = q.size(1) // k.size(1)  # the query heads that share one key head
    if t == S and not torch.is_tensor(start):  # no cache, or the prompt's first pass: the plain causal mask
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=g > 1)
    start = S - t if start is None else start  # query i sees keys 0 .. start + i
    mask = torch.arange(S, device=q.device) <= torch.arange(t, device=q.device)[:, None] + start  # (t, S)
    # after a cache, written out (inductor fuses it; the CPU's SDPA is slow for few queries), g heads' rows stacked
    att = q.reshape(q.size(0), k.size(1), g * t, -1) @ k.transpose(-2, -1) * (scale or q.size(-1) ** -0.5)
    y = att.masked_fill(~mask.repeat(g, 1), float("-inf")).softmax(dim=-1) @ v  # (B, n_kv, g * t, hd_v)
    return y.view(q.size(0), q.size(1), t, -1)


class CausalSelfAttention(nn.Module):
    """Grouped-query self-attention with rotary positions; one fused Linear for q, k and v."""

    def __init__(self, config):
        super().__init__()
        if config.n_head % config.n_kv_head or (not config.head_dim and config.n_embd % config.n_head):
            raise ValueError("n_head must be a multiple of n_kv_head, and n_embd of n_head unless head_dim is given")
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.head_dim or config.n_embd // config.n_head
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, q_size + 2 * kv_size, bias=False)
        self.c_proj = nn.Linear(q_size, config.n_embd, bias=False)
        self.c_proj.residual_branch_end = True  # see _init_weights
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()
        self.rotary = RotaryEmbedding(rope_frequencies(config, self.head_dim), config.block_size)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        # split into heads and move heads next to batch: q (B, nh, T, hd), k and v (B, n_kv, T, hd)
        q, k, v = (part.view(B, T, -1, hd).transpose(1, 2) for part in (q, k, v))
        start = cache.pos if cache is not None else 0  # the new tokens' positions start after the cached ones
        q = self.rotary(self.q_norm(q), start)
        k = self.rotary(self.k_norm(k), start)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, n_kv, cached + T, hd), keys stored rotated; static: all positions
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0, start=start)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hd)  # heads side by side again
        return self.resid_drop(self.c_proj(y))


def swiglu_hidden(n_embd, mlp_hidden, multiple_of):
    """mlp_hidden, or 8/3 n_embd (3 C x 8C/3 matrices = the GELU MLP's 2 C x 4C), rounded up to multiple_of."""
    hidden = mlp_hidden or int(8 * n_embd / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020, arXiv 2002.05202, eq. 6): down(silu(gate(x)) * up(x))."""

    def __init__(self, n_embd, hidden, dropout=0.0):
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=False)
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, n_embd, bias=False)
        self.down.residual_branch_end = True
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.down(F.silu(self.gate(x)) * self.up(x)))


# ----------------------------------------------------------------------------- mixture of experts

class MoE(nn.Module):
    """NanoMoE's plain MoE (docs/fgram_moe.md): softmax router, top_k of n_experts, Switch loss."""

    def __init__(self, config):
        super().__init__()
        dense_hidden = swiglu_hidden(config.n_embd, config.mlp_hidden, config.multiple_of)
        hidden = config.moe_hidden or dense_hidden // config.top_k
        if not 1 <= config.top_k <= config.n_experts:
            raise ValueError(f"top_k {config.top_k} must be between 1 and n_experts {config.n_experts}")
        self.config, self.n_experts, self.top_k = config, config.n_experts, config.top_k
        self.router = nn.Linear(config.n_embd, config.n_experts, bias=False)
        self.experts = nn.ModuleList([SwiGLU(config.n_embd, hidden) for _ in range(config.n_experts)])
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)  # (N, C): N tokens, each routed on its own
        N, k, E = B * T, self.top_k, self.n_experts
        with torch.autocast(x.device.type, enabled=False):  # choices flip on rounding errors in bf16
            probs = F.linear(x.float(), self.router.weight.float()).softmax(dim=-1)  # (N, E)
        weights, experts = probs.topk(k, dim=-1)  # (N, k) each
        weights = weights / weights.sum(dim=-1, keepdim=True)
        # assignment a is token a // k's choice a % k; a stable sort by expert lines up each expert's rows
        expert_of = experts.flatten()  # (N*k,)
        order = torch.argsort(expert_of, stable=True)
        counts = torch.bincount(expert_of, minlength=E)  # (E,)
        token = order // k  # (N*k,) the token of each sorted assignment
        rows = x.index_select(0, token).split(counts.tolist())  # each expert's rows, one contiguous block per expert
        y = torch.cat([expert(r) for expert, r in zip(self.experts, rows)]) * weights.view(-1, 1).index_select(0, order)
        out = torch.zeros(N, C, dtype=y.dtype, device=x.device).index_add_(0, token, y)
        load = counts.float() / counts.sum()  # f_i, the share of assignments to expert i
        self.aux_loss = E * (load * probs.mean(dim=0)).sum()  # Switch's E sum_i f_i P_i: 1 when uniform
        self.weighted_loss = self.config.aux_loss_weight * self.aux_loss
        self.stats = {"load": load, "aux_loss": self.aux_loss.detach()}
        return self.drop(out).view(B, T, C).type_as(x)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(x)); mlp a MoE layer, or a SwiGLU (moe=False)."""

    def __init__(self, config, moe=True):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        hidden = swiglu_hidden(config.n_embd, config.mlp_hidden, config.multiple_of)
        self.mlp = MoE(config) if moe else SwiGLU(config.n_embd, hidden, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm_1(x), cache)
        return x + self.mlp(self.norm_2(x))


# ----------------------------------------------------------------------------- F-gram embeddings (docs/fgram_moe.md)

def fgram_keys(tokens, vocab_size):
    """One int64 key per n-gram, tokens (..., n) oldest first: sum_j (token_j + 1) * (vocab_size + 1)^j. No token
    (-1) is the digit 0: n-grams of different lengths never share a key, an unused row (all -1) has key 0."""
    powers = (vocab_size + 1) ** torch.arange(tokens.size(-1), device=tokens.device)
    return ((tokens + 1) * powers).sum(-1)


def mine_fgrams(ids, vocab_size, max_n, table_size):
    """The table_size most frequent n-grams of `ids`, n = 2..max_n: (table_size, max_n), -1 padded."""
    ids = np.asarray(ids, dtype=np.int64)
    powers = (vocab_size + 1) ** np.arange(max_n, dtype=np.int64)  # fgram_keys's keys, in numpy
    windows = [np.lib.stride_tricks.sliding_window_view(ids, n) for n in range(2, max_n + 1)]  # (L - n + 1, n) views
    found = [np.unique((w + 1) @ powers[:w.shape[1]], return_counts=True) for w in windows]  # each n's keys, counts
    keys, counts = (np.concatenate(parts) for parts in zip(*found))
    best = keys[np.lexsort((keys, -counts))[:table_size]]  # by count, high to low, then by key
    table = np.full((table_size, max_n), -1, dtype=np.int64)
    table[:len(best)] = best[:, None] // powers % (vocab_size + 1) - 1  # the key's digits, back to ids
    return table


def lookup_fgrams(idx, table, vocab_size):
    """idx (B, T) -> (B, T, max_n - 1): the table row of the n-gram ending at t, per n; -1 if none."""
    sorted_keys, order = fgram_keys(table, vocab_size).sort()  # (F,)
    rows = []
    for n in range(2, table.size(1) + 1):  # a loop over the lengths only, never over batch or time
        windows = F.pad(idx, (n - 1, 0), value=-1).unfold(1, n, 1)  # (B, T, n): tokens t-n+1..t
        keys = fgram_keys(windows, vocab_size).masked_fill((windows < 0).any(-1), -1)  # no key is -1
        slot = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)
        rows.append(torch.where(sorted_keys[slot] == keys, order[slot], -1))
    return torch.stack(rows, dim=-1)


class FgramGate(nn.Module):
    """e_t = x_t + sum_n sigmoid(W_n [x_t; f_{t,n}]) * f_{t,n}: one C x 2C gate per length n, per channel."""

    def __init__(self, config):
        super().__init__()
        n_embd = config.n_embd
        self.gates = nn.ModuleList([nn.Linear(2 * n_embd, n_embd, bias=False) for _ in range(config.fgram_max_n - 1)])

    def forward(self, x, vectors, rows):
        """x (B, T, C) token embeddings, vectors (F, C), rows (B, T, max_n - 1) -> (B, T, C)."""
        merged = x
        for n, gate in enumerate(self.gates):
            f = vectors[rows[..., n].clamp(min=0)] * (rows[..., n:n + 1] >= 0)  # (B, T, C), 0 if not found
            merged = merged + torch.sigmoid(gate(torch.cat([x, f], dim=-1))) * f
        return merged


class FgramMoECache(list):
    """One KVCache per layer, plus what the F-grams keep between forward passes."""
    recent_tokens = None  # (B, <= fgram_max_n - 1): the n-grams ending at the next positions begin here
    fgram_vectors = None  # (F, C), computed once: the weights do not change while generating


class FgramMoE(nn.Module):
    """Token embedding + gated F-gram embeddings, n_layer blocks, final RMSNorm, tied LM head."""

    def __init__(self, config):
        super().__init__()
        n = config.fgram_max_n
        if n == 1 or n < 0 or n > config.block_size or (n and config.fgram_vocab_size < 1):
            raise ValueError(f"fgram_max_n {n}: use 0 (off) or 2 to block_size, with fgram_vocab_size >= 1")
        if n and (config.vocab_size + 1) ** n >= 2 ** 63:
            raise ValueError(f"{n}-grams of {config.vocab_size} tokens overflow the int64 keys: lower --fgram_max_n")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings; no position table
        if n:
            self.register_buffer("fgram_table", torch.full((config.fgram_vocab_size, n), -1))  # in the checkpoint
            # a dense block without dropout: self.drop drops its vectors
            encoder = replace(config, mlp_hidden=config.fgram_hidden or config.mlp_hidden, dropout=0.0)
            self.fgram_encoder = Block(encoder, moe=False)
            self.fgram_gate = FgramGate(config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2's normal(0, 0.02); 0.02 / sqrt(2 n_layer) at a residual branch's end: flat variance
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_branch_end", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)

    @torch.no_grad()
    def prepare_data(self, train_ids):
        """Mine the n-gram table from the training ids (train.py calls this once on a new model)."""
        config = self.config
        if not config.fgram_max_n:
            return
        if len(train_ids) and int(train_ids.max()) >= config.vocab_size:
            raise ValueError(f"token id {int(train_ids.max())} is outside the vocabulary of {config.vocab_size}")
        table = mine_fgrams(train_ids, config.vocab_size, config.fgram_max_n, config.fgram_vocab_size)
        self.fgram_table.copy_(torch.from_numpy(table))

    def fgram_vectors(self):
        """(F, C): fgram_encoder on each n-gram's characters, read at its last (causal: the padding is unseen)."""
        table, block = self.fgram_table, self.fgram_encoder
        x = self.wte(table.clamp(min=0))  # (F, max_n, C)
        x = x + block.attn(block.norm_1(x))
        last = ((table >= 0).sum(dim=1) - 1).clamp(min=0)  # (F,); unused rows: a vector nobody looks up
        x = x[torch.arange(len(table), device=x.device), last]  # (F, C)
        return x + block.mlp(block.norm_2(x))

    def embed(self, idx, cache=None):
        """Token embeddings (B, T, C) with the F-gram vectors merged in."""
        x, config = self.wte(idx), self.config
        if not config.fgram_max_n:
            return x
        if cache is None:
            return self.fgram_gate(x, self.fgram_vectors(), lookup_fgrams(idx, self.fgram_table, config.vocab_size))
        # the n-grams at the first new positions begin among the previous tokens
        context = idx if cache.recent_tokens is None else torch.cat([cache.recent_tokens, idx], dim=1)
        rows = lookup_fgrams(context, self.fgram_table, config.vocab_size)[:, -idx.size(1):]
        n = config.fgram_max_n - 1  # -1 before the first token: so a static cache's shapes never change
        cache.recent_tokens = F.pad(context, (n, 0), value=-1)[:, -n:]
        if cache.fgram_vectors is None:
            cache.fgram_vectors = self.fgram_vectors()
        return self.fgram_gate(x, cache.fgram_vectors, rows)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) -> logits (B, T, V), loss on targets (-100 ignored; + MoE terms in training)."""
        end = (cache[0].pos if cache is not None else 0) + idx.size(1)  # positions after this pass
        if not torch.is_tensor(end) and end > self.config.block_size:  # static: generate sized it
            raise ValueError(f"sequence of {end} tokens is longer than block_size {self.config.block_size}")
        x = self.drop(self.embed(idx, cache))  # (B, T, C); positions are rotated into q and k in each layer
        for i, block in enumerate(self.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            if self.training:
                loss = loss + sum(moe.weighted_loss for moe in self.moe_layers())
        return logits, loss

    def moe_layers(self):
        """The MoE layers, whose stats train.py logs."""
        return [block.mlp for block in self.h if isinstance(block.mlp, MoE)]

    def new_cache(self, batch_size, max_len=None, static=False):
        """An empty cache as long as the context: one KVCache of n_kv_head heads per layer, and F-gram state."""
        config, w, head_dim = self.config, self.wte.weight, self.h[0].attn.head_dim
        max_len = max_len or config.block_size
        return FgramMoECache([KVCache(batch_size, config.n_kv_head, max_len, head_dim, w.device, w.dtype, static)
                              for _ in range(config.n_layer)])

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, compile=False):
        """Append max_new_tokens tokens to idx (B, T); temperature 0: greedy. Past block_size the window slides: each
        step runs the last block_size tokens afresh, as without a cache. compile: one graph for every one-token step."""
        block_size, step = self.config.block_size, self
        cache = None
        if compile:  # batch 1's matmuls are memory-bound: on the CPU inductor may write them as sum(x * W), any size
            from torch._inductor.fx_passes import decompose_mem_bound_mm
            decompose_mem_bound_mm.cpu_max_other_dimension_decomposition = 2**31
            step = torch.compile(self, dynamic=False, options={"post_grad_fusion_options": {"decompose_mm_pass": {}}})
        for _ in range(max_new_tokens):
            if cache is None or cache[0].pos == block_size:  # the first step, or a step past the full context
                cache = self.new_cache(idx.size(0), min(block_size, idx.size(1) + max_new_tokens), static=compile)
                logits, _ = self(idx[:, -block_size:], cache=cache)
            else:
                logits, _ = step(idx[:, -1:].clone(memory_format=torch.contiguous_format), cache=cache)  # same strides
            next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p)
            idx = torch.cat((idx, next_token), dim=1)
        return idx

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on matrices and embeddings only (not on norm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def param_counts(self):
        """Total parameters (a tied head counted once), and active ones: all but the experts a token skips."""
        total = sum(p.numel() for p in self.parameters())
        idle = sum(sum(p.numel() for p in moe.experts.parameters()) * (1 - moe.top_k / moe.n_experts)
                   for moe in self.moe_layers())
        return {"total": total, "active": total - round(idle)}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 x active weights + attention (PaLM; docs/fgram_moe.md)."""
        attention = 12 * self.config.n_layer * self.config.n_head * self.h[0].attn.head_dim * seq_len
        return 6 * self.param_counts()["active"] + attention


Config, Model = FgramMoEConfig, FgramMoE  # the names train.py looks for in every model file


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None):
    """One token per row of logits (B, V): greedy at temperature 0, else drawn from the top_k / top_p best."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs, order = F.softmax(logits, dim=-1).sort(dim=-1, descending=True)
        beyond = probs.cumsum(dim=-1) - probs >= top_p  # the likelier tokens already hold top_p, sorted order
        logits = logits.masked_fill(torch.empty_like(beyond).scatter(-1, order, beyond), float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


# ----------------------------------------------------------------------------- tokenizers and data

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_RANKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "gpt2.tiktoken")


class Tokenizer:
    """Text <-> ids (docs/gpt.md): "char", an id per character of `chars`; "gpt2", GPT-2's BPE from
    data/gpt2.tiktoken; "bpe", bpe.py's, whose merge i joins tokens merges[i] into token 256 + i."""

    def __init__(self, kind="gpt2", chars="", merges=()):
        self.kind, self.chars, self.merges = kind, chars, [tuple(pair) for pair in merges]
        self.char_to_id = {ch: i for i, ch in enumerate(chars)}
        if kind == "gpt2" and not os.path.exists(GPT2_RANKS):
            raise FileNotFoundError(f"{GPT2_RANKS} not found: GPT-2's BPE needs data/gpt2.tiktoken beside this file")
        if kind == "gpt2":
            with open(GPT2_RANKS, "rb") as f:  # lines of base64(token bytes) and rank
                ranks = {base64.b64decode(token): int(rank) for token, rank in map(bytes.split, f)}
        elif kind == "bpe":
            tokens = [bytes([b]) for b in range(256)]
            for a, b in self.merges:
                tokens.append(tokens[a] + tokens[b])
            ranks = {token: rank for rank, token in enumerate(tokens)}
        elif kind != "char":
            raise ValueError(f"unknown tokenizer {kind!r}: use char, gpt2 or bpe")
        if kind != "char":
            self.bpe = tiktoken.Encoding(kind, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                         special_tokens={"<|endoftext|>": len(ranks)})
        self.vocab_size = len(chars) if kind == "char" else self.bpe.n_vocab
        if not 1 <= self.vocab_size <= 65536:  # token files and caches hold uint16 ids
            raise ValueError(f"a {kind} tokenizer of {self.vocab_size} tokens: 1 to 65,536 are possible")

    def encode(self, text):
        if self.kind != "char":
            return self.bpe.encode_ordinary(text)
        unknown = set(text) - self.char_to_id.keys()
        if unknown:
            raise ValueError(f"characters {''.join(sorted(unknown))!r} are not in this char vocabulary")
        return [self.char_to_id[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids) if self.kind == "char" else self.bpe.decode(list(ids))

    def state(self):
        return {"kind": self.kind, "chars": self.chars, "merges": self.merges}


def load_dataset(path, tokenizer=None):
    """(train_ids, val_ids, tokenizer) from a folder with nanoGPT's train.bin and val.bin (uint16 GPT-2 ids), or
    from a UTF-8 text, 90% of its characters for training, by `tokenizer` (default: its characters)."""
    if os.path.isdir(path):
        train, val = (np.memmap(os.path.join(path, f"{split}.bin"), np.uint16, "r") for split in ("train", "val"))
        return train, val, Tokenizer("gpt2")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    tokenizer = tokenizer or Tokenizer("char", "".join(sorted(set(text))))
    cut = int(0.9 * len(text))
    train, val = (np.array(tokenizer.encode(part), dtype=np.uint16) for part in (text[:cut], text[cut:]))
    return train, val, tokenizer


def get_batch(data, batch_size, block_size, generator, device="cpu"):
    """batch_size random windows of block_size + 1 tokens: inputs x and next-token targets y, (B, T)."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
    windows = data[starts[:, None] + np.arange(block_size + 1)]  # (B, T + 1), one fancy-index read
    windows = torch.from_numpy(windows.astype(np.int64))
    if device.startswith("cuda"):  # page-locked memory lets the copy overlap with compute
        windows = windows.pin_memory().to(device, non_blocking=True)
    return windows[:, :-1].to(device), windows[:, 1:].to(device)  # x and y


# ----------------------------------------------------------------------------- checkpoints and demo

def load_checkpoint(path, device="cpu"):
    """(model in eval mode, tokenizer or None, checkpoint dict) from train.py's file, read with weights_only=True."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with python train.py --model_type {MODEL_TYPE}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated, empty or not a checkpoint: torch.load has many ways to say so
        raise ValueError(f"{path} is no readable checkpoint ({type(err).__name__}): truncated, or other data") from err
    model_type = ckpt.get("model_type") if isinstance(ckpt, dict) else None
    if model_type != MODEL_TYPE:
        raise ValueError(f"{path} holds a {model_type!r} model, not {MODEL_TYPE!r}: use its file or --model_type")
    model = Model(Config(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    state = ckpt["tokenizer"]  # a released model's tokenizer.json needs the tokenizers library: load_hf.py reads it
    return model.to(device).eval(), None if state["kind"] == "tokenizer.json" else Tokenizer(**state), ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=f"Sample from a {MODEL_TYPE} checkpoint, or from random weights.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")  # one line, without the usage block
    parser.add_argument("--ckpt", help="a checkpoint written by train.py; none: random weights of the cpu preset")
    parser.add_argument("--prompt", default="\n", help="the text to continue (default: %(default)r)")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="how many tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="divides the logits; 0: greedy")
    parser.add_argument("--top_k", type=int, default=200, help="draw among the k likeliest tokens; 0: all")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus: the likeliest tokens holding top_p; 1: all")
    parser.add_argument("--seed", type=int, default=1337, help="fixes the draws, random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, mps, ...")
    parser.add_argument("--compile", action="store_true", help="torch.compile decoding: dense 2-3x, after 20-60 s")
    args = parser.parse_args(argv)
    for name, allowed, ok in (("max_new_tokens", "an integer >= 0", args.max_new_tokens >= 0),
                              ("temperature", "a finite number >= 0", 0 <= args.temperature < math.inf),
                              ("top_k", "an integer >= 0", args.top_k >= 0),
                              ("top_p", "a finite number in (0, 1]", 0 < args.top_p <= 1),
                              ("seed", "an integer in [0, 2**64)", 0 <= args.seed < 2**64)):
        if not ok:  # nan fails every comparison
            parser.error(f"argument --{name}: {getattr(args, name)} is not {allowed}")
    torch.manual_seed(args.seed)
    try:
        if args.ckpt:
            model, tokenizer, _ = load_checkpoint(args.ckpt, args.device)
            if tokenizer is None:
                raise ValueError(f"{args.ckpt} reads a tokenizer.json: python load_hf.py --ckpt samples it")
        else:
            corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), "input.txt")  # its chars, n-grams
            train_ids, _, tokenizer = load_dataset(corpus)
            model = Model(Config(**PRESETS["cpu"], vocab_size=tokenizer.vocab_size))
            model.prepare_data(train_ids)
            model = model.to(args.device).eval()
        prompt = tokenizer.encode(args.prompt)
        if not prompt:
            raise ValueError("--prompt is empty: give the text to continue, e.g. --prompt 'ROMEO:'")
    except (OSError, ValueError) as err:
        parser.error(str(err))  # one line and exit code 2, as for a bad option
    print(f"{MODEL_TYPE}: {model.param_counts()['total'] / 1e6:.2f}M parameters")
    idx = torch.tensor([prompt], dtype=torch.long, device=args.device)
    out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, compile=args.compile)
    print(tokenizer.decode(out[0].tolist()))


if __name__ == "__main__":
    main()

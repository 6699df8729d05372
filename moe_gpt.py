"""
moe_gpt.py - modern_gpt.py with DeepSeekMoE (arXiv 2401.06066) feed-forward layers and the MoE toolkit of
docs/moe_gpt.md: DeepSeek-V3's gates, bias balancing, sequence loss, route scaling (2412.19437), Switch's loss
(2101.03961), ST-MoE's z-loss (2202.08906), GShard capacity (2006.16668), router noise. Qwen3-MoE loads (load_hf.py).

    python train.py --model_type moegpt --max_steps 1000         # nanoGPT's char-level CPU recipe, shorter
    python moe_gpt.py --ckpt out/ckpt.pt --prompt "ROMEO:"       # sample from a checkpoint
    python moe_gpt.py                                            # sizes + a sample from random weights
"""
import argparse
import base64
import math
import os
from dataclasses import dataclass

import numpy as np
import tiktoken
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "moegpt"


@dataclass
class MoEGPTConfig:
    block_size: int = 1024  # longest context; length of the rotary tables and the KV cache
    vocab_size: int = 50257  # GPT-2 BPE: 256 bytes + 50,000 merges + <|endoftext|>
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # query heads
    n_kv_head: int = 12  # key/value heads, shared by n_head / n_kv_head query heads each (1 = multi-query)
    n_embd: int = 768  # width of the residual stream
    head_dim: int = 0  # size of each head; 0 = n_embd / n_head (Qwen3 sets it apart)
    mlp_hidden: int = 0  # SwiGLU hidden size before rounding; 0 = 8/3 n_embd (the 4C GELU MLP's parameters)
    multiple_of: int = 64  # the SwiGLU hidden size is rounded up to a multiple of this (fast matmuls)
    rope_theta: float = 10000.0  # base of the rotary frequencies (RoFormer eq. 15)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before the rotation (Qwen3)
    tie_embeddings: bool = True  # the output head shares its weight with the token embedding
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    dropout: float = 0.0  # probability, on embeddings, attention weights and residual branches
    # mixture of experts; expert counts before fine-grained segmentation
    n_routed_experts: int = 8  # experts the router chooses from
    top_k: int = 1  # routed experts per token
    n_shared_experts: int = 1  # experts every token goes through, with weight 1 (0 = none)
    granularity: int = 2  # m: each expert split into m of hidden / m, m times as many routed, chosen, shared
    moe_hidden: int = 0  # one expert's hidden size before splitting; 0 = dense SwiGLU's / (top_k + shared)
    first_dense_layers: int = 0  # leading blocks that keep the dense SwiGLU
    gate: str = "softmax"  # "softmax" (DeepSeekMoE, Qwen3-MoE) or "sigmoid" (DeepSeek-V3) expert scores
    renormalize: bool = True  # divide the chosen experts' scores by their sum (with top-1: every weight 1)
    router_noise: float = 0.0  # training only: router input times U(1 - eps, 1 + eps) (Switch's jitter)
    aux_loss_weight: float = 0.01  # Switch load-balancing loss E * sum_i f_i P_i, summed over layers
    z_loss_weight: float = 0.001  # ST-MoE router z-loss mean(logsumexp(logits)^2), summed over layers
    seq_aux_loss_weight: float = 0.0  # DeepSeek-V3 sequence-wise balancing loss (eq. 17), summed over layers
    routed_scaling_factor: float = 1.0  # DeepSeek-V3: the chosen routed experts' weights are multiplied by this
    bias_update_rate: float = 0.0  # DeepSeek-V3 auxiliary-loss-free balancing: bias step per optimizer step
    capacity_factor: float = 0.0  # 0 = dropless; else capacity = ceil(factor * tokens * k / experts)


PRESETS = {  # each at its modern_gpt namesake's active size: shared + chosen experts = its SwiGLU
    "gpt2": {"n_layer": 12, "n_head": 12, "n_kv_head": 12, "n_embd": 768, "first_dense_layers": 1},  # 124M active
    "cpu": {"n_layer": 4, "n_head": 4, "n_kv_head": 2, "n_embd": 128, "block_size": 64},
}


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

class Router(nn.Module):
    """Scores s per token and routed expert, in float32: softmax (DeepSeekMoE eq. 5) or sigmoid (V3 eq. 15).
    Chooses top_k by s + bias (V3 eq. 16), weighs them by s, renormalised or not (eq. 13), times the scaling."""

    def __init__(self, config, n_experts, top_k):
        super().__init__()
        if config.gate not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown gate {config.gate!r}: use softmax or sigmoid")
        self.config, self.top_k, self.gate = config, top_k, config.gate
        self.weight = nn.Parameter(torch.randn(n_experts, config.n_embd) * 0.02)
        self.register_buffer("bias", torch.zeros(n_experts))  # in the state_dict: a resumed run keeps it

    def forward(self, x):
        """x (N, C) -> chosen experts (N, k), their weights (N, k), logits and scores (N, E)."""
        with torch.autocast(x.device.type, enabled=False):  # choices flip on rounding errors in bf16
            x = x.float()
            if self.training and self.config.router_noise > 0:  # Switch's jitter: x * U(1 - eps, 1 + eps)
                x = x * torch.empty_like(x).uniform_(1.0 - self.config.router_noise, 1.0 + self.config.router_noise)
            logits = F.linear(x, self.weight.float())
        scores = logits.softmax(dim=-1) if self.gate == "softmax" else logits.sigmoid()
        experts = torch.topk(scores.detach() + self.bias, self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.config.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return experts, self.config.routed_scaling_factor * weights, logits, scores


def grouped_mm_dtype(x, *weights):
    """F.grouped_mm's dtype for the experts, or None to loop: x's on CPU, bf16 on CUDA 8.0+ under bf16 autocast."""
    bf16_gpu = x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
    dtype = x.dtype if x.device.type == "cpu" else torch.bfloat16 if bf16_gpu else None
    if not hasattr(F, "grouped_mm") or dtype is None:
        return None
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 0):
        return None
    return dtype if all(n * dtype.itemsize % 16 == 0 for w in weights for n in w.shape[1:]) else None


class Experts(nn.Module):
    """n_experts stacked SwiGLU experts: gate, up (E, hidden, C), down (E, C, hidden; init: a residual branch end)."""

    def __init__(self, n_experts, n_embd, hidden, n_layer):
        super().__init__()
        self.gate = nn.Parameter(torch.randn(n_experts, hidden, n_embd) * 0.02)
        self.up = nn.Parameter(torch.randn(n_experts, hidden, n_embd) * 0.02)
        self.down = nn.Parameter(torch.randn(n_experts, n_embd, hidden) * 0.02 / math.sqrt(2 * n_layer))

    @torch.compiler.disable  # eager under torch.compile: it traces F.grouped_mm in bf16 only, the loop not at all
    def forward(self, x, counts):
        """x (A, C): token copies sorted by expert, counts[e] rows for expert e -> (A, C)."""
        dtype = grouped_mm_dtype(x, self.gate, self.down)
        if dtype is not None:  # one kernel for all experts; offs marks where each expert's rows end
            ends = counts.cumsum(0).to(torch.int32)
            gate, up, down = (w.to(dtype).transpose(1, 2) for w in (self.gate, self.up, self.down))
            x = x.to(dtype)
            hidden = F.silu(F.grouped_mm(x, gate, offs=ends)) * F.grouped_mm(x, up, offs=ends)
            return F.grouped_mm(hidden, down, offs=ends)
        weights = zip(self.gate.unbind(0), self.up.unbind(0), self.down.unbind(0))  # unbind: one gradient stack
        return torch.cat([F.linear(F.silu(F.linear(rows, gate)) * F.linear(rows, up), down)
                          for rows, (gate, up, down) in zip(x.split(counts.tolist()), weights)])


class MoE(nn.Module):
    """DeepSeekMoE (eqs. 9-11): shared experts plus the top-k routed ones. Granularity m (§3.1): m*E routed
    experts of hidden/m, m*k chosen. The shared experts (weight 1) run as one SwiGLU of shared * hidden units."""

    def __init__(self, config):
        super().__init__()
        m, n_embd = config.granularity, config.n_embd
        dense_hidden = swiglu_hidden(n_embd, config.mlp_hidden, config.multiple_of)
        hidden = config.moe_hidden or dense_hidden // (config.top_k + config.n_shared_experts)
        if m < 1 or hidden % m or not 1 <= config.top_k <= config.n_routed_experts:
            raise ValueError(f"granularity {m} must divide the expert size {hidden}, top_k be 1 to n_routed_experts")
        self.config, self.n_experts, self.top_k = config, m * config.n_routed_experts, m * config.top_k
        self.router = Router(config, self.n_experts, self.top_k)
        self.experts = Experts(self.n_experts, n_embd, hidden // m, config.n_layer)
        self.shared = SwiGLU(n_embd, config.n_shared_experts * hidden) if config.n_shared_experts else None
        self.drop = nn.Dropout(config.dropout)
        self.stats, self.counts = {}, None  # counts: assignments per expert since the last update_bias

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)  # (N, C): N tokens, each routed on its own
        N, k, E = B * T, self.top_k, self.n_experts
        experts, weights, logits, scores = self.router(x)  # (N, k), (N, k), (N, E), (N, E)
        # assignment a is token a // k's choice a % k; a stable sort by expert lines up each expert's rows
        expert_of = experts.flatten()  # (N*k,)
        order = torch.argsort(expert_of, stable=True)
        counts = kept = expert_of.new_zeros(E).index_add_(0, expert_of, torch.ones_like(expert_of))  # (E,) static
        if self.config.capacity_factor > 0 and self.training:  # each expert keeps its first `capacity` tokens
            capacity = math.ceil(self.config.capacity_factor * N * k / E)
            first_row = counts.cumsum(0) - counts  # where each expert's rows begin in `order`
            order = order[torch.arange(N * k, device=x.device) - first_row[expert_of[order]] < capacity]
            kept = counts.clamp(max=capacity)
        token = order // k  # (A,) the token of each kept assignment
        y = self.experts(x.index_select(0, token), kept) * weights.view(-1, 1).index_select(0, order)
        # the routed outputs (in float32, as the weights) are added into the shared ones in place; dropped: 0
        out = self.shared(x).float() if self.shared is not None else torch.zeros(N, C, device=x.device)
        out.index_add_(0, token, y)
        self.record(experts.view(B, T * k), counts, order.numel(), logits, scores)
        return self.drop(out).view(B, T, C).type_as(x)

    def record(self, experts, counts, n_kept, logits, scores):
        """This batch's balancing losses (with gradients) and stats; experts is (B, T*k). Switch's loss (eq. 4;
        top-k: DeepSeekMoE eq. 12), V3's per sequence (eqs. 17-20), ST-MoE's z-loss (eq. 5): docs/moe_gpt.md."""
        E, config = self.n_experts, self.config
        load = counts / counts.sum()  # (E,) float
        probs = scores if self.router.gate == "softmax" else scores / scores.sum(dim=-1, keepdim=True)
        self.aux_loss = E * (probs.mean(dim=0) @ load)
        self.z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        self.weighted_loss = config.aux_loss_weight * self.aux_loss + config.z_loss_weight * self.z_loss
        self.stats = {"load": load, "dropped": 1.0 - n_kept / experts.numel(),
                      "aux_loss": self.aux_loss.detach(), "z_loss": self.z_loss.detach()}
        if config.seq_aux_loss_weight > 0:  # off by default: not even computed
            seq_load = F.one_hot(experts, E).float().mean(dim=1)  # (B, E): each sequence's share of choices
            seq_probs = probs.view(experts.size(0), -1, E).mean(dim=1)  # (B, E): P_i of eqs. 19-20
            self.seq_aux_loss = E * (seq_load * seq_probs).sum(dim=-1).mean()  # eq. 17, f_i of eq. 18
            self.weighted_loss = self.weighted_loss + config.seq_aux_loss_weight * self.seq_aux_loss
            self.stats["seq_aux_loss"] = self.seq_aux_loss.detach()
        if self.training and config.bias_update_rate > 0:
            self.counts = counts.float() if self.counts is None else self.counts + counts

    @torch.no_grad()
    def update_bias(self):
        """V3's auxiliary-loss-free balancing (§2.1.2), after each step: bias_i += rate * sign(mean load - load_i)."""
        if self.counts is None:
            return
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)
        self.router.bias += self.config.bias_update_rate * torch.sign(self.counts.mean() - self.counts)
        self.counts = None


class Block(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(x)), mlp a MoE from block first_dense_layers on."""

    def __init__(self, config, layer):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        hidden = swiglu_hidden(config.n_embd, config.mlp_hidden, config.multiple_of)
        self.mlp = MoE(config) if layer >= config.first_dense_layers else SwiGLU(config.n_embd, hidden, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm_1(x), cache)
        return x + self.mlp(self.norm_2(x))


class MoEGPT(nn.Module):
    """Token embedding, n_layer blocks, final RMSNorm, LM head (tied to the embedding or not)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings; no position table
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2's normal(0, 0.02), 0.02/sqrt(2 n_layer) at residual branch ends (Router, Experts: own)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_branch_end", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) -> logits (B, T, V), loss on targets (-100 ignored; + MoE terms in training)."""
        end = (cache[0].pos if cache is not None else 0) + idx.size(1)  # positions after this pass
        if not torch.is_tensor(end) and end > self.config.block_size:  # static: generate sized it
            raise ValueError(f"sequence of {end} tokens is longer than block_size {self.config.block_size}")
        x = self.drop(self.wte(idx))  # (B, T, C); positions are rotated into q and k in each layer
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
        """The MoE layers, whose stats train.py logs and whose update_bias it calls after each step."""
        return [block.mlp for block in self.h if isinstance(block.mlp, MoE)]

    def new_cache(self, batch_size, max_len=None, static=False):
        """An empty KV cache as long as the context: one KVCache of n_kv_head heads per layer."""
        config, w, head_dim = self.config, self.wte.weight, self.h[0].attn.head_dim
        return [KVCache(batch_size, config.n_kv_head, max_len or config.block_size, head_dim, w.device, w.dtype, static)
                for _ in range(config.n_layer)]

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
        """Total parameters (a tied head counted once), and active ones: all but the routed experts a token skips."""
        total = sum(p.numel() for p in self.parameters())
        idle = sum(sum(p.numel() for p in moe.experts.parameters()) * (1 - moe.top_k / moe.n_experts)
                   for moe in self.moe_layers())
        return {"total": total, "active": total - round(idle)}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 x active weights + attention (PaLM; docs/modern_gpt.md)."""
        config = self.config
        n_matmul = self.param_counts()["active"] - (0 if config.tie_embeddings else self.wte.weight.numel())
        return 6 * n_matmul + 12 * config.n_layer * config.n_head * self.h[0].attn.head_dim * seq_len


Config, Model = MoEGPTConfig, MoEGPT  # the names train.py looks for in every model file


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
            model, tokenizer = Model(Config(**PRESETS["cpu"])).to(args.device).eval(), Tokenizer("gpt2")
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

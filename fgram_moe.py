"""
fgram_moe.py - a character-level RoPE + mixture-of-experts model with causal F-gram
(n-gram) contextual embeddings, in one file: the model, KV-cache generation, tokenizers, data.

The idea of the public project NanoMoE, done so that it works. The blocks are moe_gpt.py's: RMSNorm,
rotary self-attention (RoFormer, arXiv 2104.09864) and a DeepSeekMoE feed-forward (arXiv 2401.06066)
with Switch's balancing loss (arXiv 2101.03961) and the router z-loss (ST-MoE, arXiv 2202.08906), set
up as NanoMoE: 4 experts, 2 per token, none shared. What this file adds is the first block's input:
each character's embedding plus, through a learned gate, the vectors of the n-grams (n = 2..fgram_max_n)
that END at that character:

    e_t = wte[x_t] + sum_n g_{t,n} * f_{t,n},    g_{t,n} = sigmoid(W_n [wte[x_t]; f_{t,n}])

The n-grams are the fgram_vocab_size most frequent in the training split, mined once and kept in the
checkpoint; every position is looked up at once (no loop over batch or time) and reads only tokens
t-n+1..t. f_{t,n} is a small Transformer block run over the n-gram's own characters, as fastText builds
word vectors from character n-grams (arXiv 1607.04606; N-Grammer, arXiv 2207.06366, is in the same
spirit). fgram_max_n 0 turns F-grams off and leaves exactly moe_gpt.py's model. docs/fgram_moe.md
explains each part and what NanoMoE's own code got wrong.

Run it:
    python train.py --model_type fgram                          # char-level Tiny Shakespeare, CPU recipe
    python train.py --model_type fgram --fgram_max_n 0          # the same model without F-grams
    python fgram_moe.py                                         # sizes + a sample from random weights
    python fgram_moe.py --ckpt out/ckpt.pt --prompt "ROMEO:"    # sample from a checkpoint

The file imports only torch, numpy, tiktoken and the standard library: copy it
together with data/gpt2.tiktoken into another project and it works.
"""
import argparse
import base64
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import tiktoken
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

MODEL_TYPE = "fgram"
DEFAULT_TOKENIZER = "char"  # NanoMoE's model is character-level; --tokenizer gpt2 works too
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@dataclass
class FgramMoEConfig:
    block_size: int = 64  # longest context; length of the rotary tables and the KV cache
    vocab_size: int = 65  # the characters of Tiny Shakespeare (train.py sets it from the corpus)
    n_layer: int = 4  # number of Transformer blocks
    n_head: int = 4  # query heads; n_embd must be a multiple of it
    n_kv_head: int = 4  # key/value heads, shared by n_head / n_kv_head query heads each (1 = multi-query)
    n_embd: int = 128  # width of the residual stream
    mlp_hidden: int = 0  # SwiGLU hidden size before rounding; 0 = 8/3 n_embd (the 4C GELU MLP's parameters)
    multiple_of: int = 64  # the SwiGLU hidden size is rounded up to a multiple of this (fast matmuls)
    rope_theta: float = 10000.0  # base of the rotary frequencies (RoFormer eq. 15)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before the rotation
    tie_embeddings: bool = True  # the output head shares its weight with the token embedding
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    dropout: float = 0.1  # on embeddings, attention weights and residual branches
    # mixture of experts, as moe_gpt.py (see its config); NanoMoE's 4 experts, 2 per token, none shared
    n_routed_experts: int = 4  # experts the router chooses from
    top_k: int = 2  # routed experts per token
    n_shared_experts: int = 0  # experts every token goes through, with weight 1 (0 = none)
    granularity: int = 1  # m: each expert split into m of hidden/m; m*N routed, m*K chosen, m*K_s shared
    moe_hidden: int = 0  # one expert's hidden size before splitting; 0 = dense SwiGLU's // (K + K_s)
    first_dense_layers: int = 0  # leading blocks that keep the dense SwiGLU
    gate: str = "softmax"  # "softmax" (DeepSeekMoE) or "sigmoid" (DeepSeek-V3) expert scores
    renormalize: bool = True  # divide the chosen experts' scores by their sum (only when m*K > 1)
    router_noise: float = 0.0  # training only: router input times U(1 - eps, 1 + eps) (Switch jitter)
    aux_loss_weight: float = 0.01  # Switch load-balancing loss N * sum_i f_i P_i, summed over layers
    z_loss_weight: float = 0.001  # ST-MoE router z-loss mean(logsumexp(logits)^2), summed over layers
    seq_aux_loss_weight: float = 0.0  # DeepSeek-V3 sequence-wise balancing loss (eq. 17), summed over layers
    routed_scaling_factor: float = 1.0  # DeepSeek-V3: the chosen routed experts' weights are multiplied by this
    bias_update_rate: float = 0.0  # DeepSeek-V3 auxiliary-loss-free balancing: bias step per optimizer step
    capacity_factor: float = 0.0  # 0 = dropless; else capacity = ceil(factor * tokens * k / experts)
    # F-grams
    fgram_max_n: int = 3  # longest n-gram (n = 2..fgram_max_n); 0 turns F-grams off
    fgram_vocab_size: int = 1024  # n-grams mined from the training split, all lengths together
    fgram_hidden: int = 128  # SwiGLU hidden size of the n-gram encoder block (0 = mlp_hidden's)


PRESETS = {  # NanoMoE's defaults, nanoGPT's CPU recipe's shape; 2 of 4 experts of 192 = modern_gpt's SwiGLU 384
    "cpu": dict(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, block_size=64),
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


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer, arXiv 2104.09864, eqs. 13-15 and 34): channel pair i of a
    query or key at position p is rotated by p * theta^(-2i/hd), so q . k depends on the offset only.
    Pairs are (i, i + hd/2), as in GPT-NeoX and Llama: the paper's (2i, 2i+1) up to a reordering."""

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


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    Preallocated as (B, n_head, max_len, head_dim); `pos` counts the filled positions.
    """

    def __init__(self, batch_size, n_head, max_len, head_dim, device, dtype):
        self.k = torch.zeros(batch_size, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0

    def append(self, k, v):
        """Store k, v (B, nh, t, hd) after the cached positions; return all keys and values so far."""
        t = k.size(2)
        self.k[:, :, self.pos:self.pos + t] = k
        self.v[:, :, self.pos:self.pos + t] = v
        self.pos += t
        return self.k[:, :, :self.pos], self.v[:, :, :self.pos]


def causal_attention(q, k, v, dropout_p):
    """softmax(q k^T / sqrt(hd)) v, query i seeing keys up to its own position. q (B, nh, t, hd) holds
    the last t positions, k and v (B, n_kv, S, hd) all S; each nh / n_kv query heads share a k, v head."""
    t, S = q.size(2), k.size(2)
    grouped = k.size(1) != q.size(1)
    if t == S:  # no cache, or the prompt's first pass: the plain causal mask
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=grouped)
    if t == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, enable_gqa=grouped)
    # t new tokens after S - t cached ones: query i sees keys 0 .. S - t + i
    mask = torch.ones(t, S, dtype=torch.bool, device=q.device).tril(diagonal=S - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=grouped)


class CausalSelfAttention(nn.Module):
    """Grouped-query self-attention with rotary positions; one fused Linear for q, k and v."""

    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head or config.n_head % config.n_kv_head:
            raise ValueError(f"n_embd {config.n_embd} must be a multiple of n_head {config.n_head}, "
                             f"and n_head a multiple of n_kv_head {config.n_kv_head}")
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj.residual_branch_end = True  # see _init_weights
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()
        self.rotary = RotaryEmbedding(self.head_dim, config.block_size, config.rope_theta)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        # split into heads and move heads next to batch: q (B, nh, T, hd), k and v (B, n_kv, T, hd)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        start = cache.pos if cache is not None else 0  # the new tokens' positions start after the cached ones
        q = self.rotary(self.q_norm(q), start)
        k = self.rotary(self.k_norm(k), start)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, n_kv, cached + T, hd): keys are stored already rotated
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


def swiglu_hidden(n_embd, mlp_hidden, multiple_of):
    """SwiGLU hidden size: mlp_hidden, or 8/3 n_embd when 0 (three matrices of C x 8C/3 hold as many
    parameters as the GELU MLP's two of C x 4C, Shazeer 2020 §2), rounded up to multiple_of."""
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
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


# ----------------------------------------------------------------------------- mixture of experts
# Router, grouped_mm_dtype, Experts, MoE and Block are one block (using SwiGLU and swiglu_hidden
# above) that other model files copy whole. MoE keeps the batch's auxiliary losses and statistics
# on the layer, for the model to add and to log.

class Router(nn.Module):
    """Scores each token against every routed expert in float32 and chooses top_k of them.

    Scores s: softmax over all experts (DeepSeekMoE eq. 5), taken before choosing, so the router
    learns from the LM loss even with top-1; or sigmoid per expert (DeepSeek-V3 eq. 15). Experts
    are chosen by s + bias (V3 eq. 16: a balancing buffer, not trained) and weighted by s,
    renormalised to sum 1 when `renormalize` and top_k > 1 (for top-1 that weight would be a
    constant 1), times routed_scaling_factor (V3; 1 = off).
    """

    def __init__(self, config, n_experts, top_k):
        super().__init__()
        if config.gate not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown gate {config.gate!r}: use softmax or sigmoid")
        self.top_k, self.gate, self.renormalize = top_k, config.gate, config.renormalize
        self.noise, self.scaling = config.router_noise, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.randn(n_experts, config.n_embd) * 0.02)
        self.register_buffer("bias", torch.zeros(n_experts))  # in the state_dict: a resumed run keeps it

    def forward(self, x):
        """x (N, C) -> chosen experts (N, k), their weights (N, k), logits and scores (N, E)."""
        with torch.autocast(x.device.type, enabled=False):  # choices flip on rounding errors in bf16
            x = x.float()
            if self.training and self.noise > 0:  # Switch's jitter: x * U(1 - eps, 1 + eps)
                x = x * torch.empty_like(x).uniform_(1.0 - self.noise, 1.0 + self.noise)
            logits = F.linear(x, self.weight.float())
        scores = logits.softmax(dim=-1) if self.gate == "softmax" else logits.sigmoid()
        experts = torch.topk(scores.detach() + self.bias, self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.renormalize and self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return experts, self.scaling * weights, logits, scores


def grouped_mm_dtype(x, *weights):
    """The dtype in which F.grouped_mm (where this PyTorch has it) can run the experts on x, or None
    to loop over the experts: x's dtype on CPU; bfloat16 on CUDA GPUs of compute capability 8.0+,
    under bf16 autocast; bfloat16 only under torch.compile; rows of 16-byte multiples always."""
    if not hasattr(F, "grouped_mm"):
        return None
    if x.device.type == "cpu":
        dtype = x.dtype
    elif x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16 \
            and torch.cuda.get_device_capability(x.device) >= (8, 0):
        dtype = torch.bfloat16
    else:
        return None
    if torch.compiler.is_compiling() and dtype != torch.bfloat16:
        return None
    return dtype if all(n * dtype.itemsize % 16 == 0 for w in weights for n in w.shape[1:]) else None


class Experts(nn.Module):
    """n_experts SwiGLU experts, weights stacked as gate and up (E, hidden, C) and down (E, C, hidden)."""

    def __init__(self, n_experts, n_embd, hidden, n_layer):
        super().__init__()
        self.gate = nn.Parameter(torch.randn(n_experts, hidden, n_embd) * 0.02)
        self.up = nn.Parameter(torch.randn(n_experts, hidden, n_embd) * 0.02)
        # ends a residual branch: scaled by 1/sqrt(2 n_layer) like the model's other such Linears
        self.down = nn.Parameter(torch.randn(n_experts, n_embd, hidden) * 0.02 / math.sqrt(2 * n_layer))

    def forward(self, x, counts):
        """x (A, C): token copies sorted by expert, counts[e] rows for expert e -> (A, C)."""
        dtype = grouped_mm_dtype(x, self.gate, self.down)
        if dtype is not None:  # one kernel for all experts; offs marks where each expert's rows end
            ends = counts.cumsum(0).to(torch.int32)
            gate, up, down = (w.to(dtype).transpose(1, 2) for w in (self.gate, self.up, self.down))
            x = x.to(dtype)
            hidden = F.silu(F.grouped_mm(x, gate, offs=ends)) * F.grouped_mm(x, up, offs=ends)
            return F.grouped_mm(hidden, down, offs=ends)
        outputs = []  # unbind, not indexing, so the backward stacks E gradients once
        weights = zip(self.gate.unbind(0), self.up.unbind(0), self.down.unbind(0))
        for rows, (gate, up, down) in zip(x.split(counts.tolist()), weights):
            outputs.append(F.linear(F.silu(F.linear(rows, gate)) * F.linear(rows, up), down))
        return torch.cat(outputs)


class MoE(nn.Module):
    """DeepSeekMoE feed-forward (arXiv 2401.06066 eqs. 9-11): shared experts plus the top-k routed.

    Granularity m (§3.1): m*N routed experts of hidden/m, m*K chosen, m*K_s shared, so expert
    parameters, total and active, stay the same. The shared experts (weight 1) run as one SwiGLU
    of K_s * hidden units: the same sum in one matmul.
    """

    def __init__(self, config):
        super().__init__()
        m, c = config.granularity, config.n_embd
        dense_hidden = swiglu_hidden(c, config.mlp_hidden, config.multiple_of)
        hidden = config.moe_hidden or dense_hidden // (config.top_k + config.n_shared_experts)
        if m < 1 or hidden % m:
            raise ValueError(f"granularity {m} must be >= 1 and divide the expert hidden size {hidden}")
        if not 1 <= config.top_k <= config.n_routed_experts:
            raise ValueError(f"top_k {config.top_k} must be between 1 and n_routed_experts {config.n_routed_experts}")
        self.n_experts, self.top_k = m * config.n_routed_experts, m * config.top_k
        self.capacity_factor, self.bias_update_rate = config.capacity_factor, config.bias_update_rate
        self.seq_aux_loss_on = config.seq_aux_loss_weight > 0
        self.router = Router(config, self.n_experts, self.top_k)
        self.experts = Experts(self.n_experts, c, hidden // m, config.n_layer)
        self.shared = SwiGLU(c, config.n_shared_experts * hidden) if config.n_shared_experts else None
        self.dropout = nn.Dropout(config.dropout)
        self.stats, self.counts = {}, None  # counts: assignments per expert since the last update_bias

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)  # (N, C): each token is routed on its own
        N, k, E = B * T, self.top_k, self.n_experts
        experts, weights, logits, scores = self.router(x)  # (N, k), (N, k), (N, E), (N, E)
        # assignment a is token a // k's choice a % k; sorting them by expert (stably: token order
        # within an expert) lines up each expert's rows
        expert_of = experts.flatten()  # (N*k,)
        order = torch.argsort(expert_of, stable=True)
        counts = kept = torch.bincount(expert_of, minlength=E)  # (E,)
        if self.capacity_factor > 0 and self.training:  # each expert keeps its first `capacity` tokens
            capacity = math.ceil(self.capacity_factor * N * k / E)
            first_row = counts.cumsum(0) - counts  # where each expert's rows begin in `order`
            order = order[torch.arange(N * k, device=x.device) - first_row[expert_of[order]] < capacity]
            kept = counts.clamp(max=capacity)
        token = order // k  # (A,) the token of each kept assignment
        y = self.experts(x[token], kept) * weights.flatten()[order].unsqueeze(1)  # (A, C)
        out = torch.zeros(N, C, dtype=y.dtype, device=x.device).index_add_(0, token, y)  # dropped: 0
        if self.shared is not None:
            out = out + self.shared(x)
        self.record(experts.view(B, T * k), counts, order.numel(), logits, scores)
        return self.dropout(out).view(B, T, C).type_as(x)

    def record(self, experts, counts, n_kept, logits, scores):
        """The balancing losses (unweighted, with gradients) and stats of this batch, experts (B, T*k).
        Switch's loss (arXiv 2101.03961 eq. 4; top-k: DeepSeekMoE eq. 12) is E * sum_i f_i P_i, f_i the
        share of assignments to expert i and P_i its mean score (sigmoid scores normalised per token):
        1 for uniform routing. DeepSeek-V3's sequence-wise loss (eqs. 17-20) is the same within each
        sequence, averaged over sequences. ST-MoE's z-loss: arXiv 2202.08906 eq. 5."""
        E = self.n_experts
        load = counts.float() / counts.sum()
        probs = scores if self.router.gate == "softmax" else scores / scores.sum(dim=-1, keepdim=True)
        self.aux_loss = E * (load * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.stats = {"load": load, "dropped": 1.0 - n_kept / experts.numel(),
                      "aux_loss": self.aux_loss.detach(), "z_loss": self.z_loss.detach()}
        if self.seq_aux_loss_on:
            B, Tk = experts.shape
            ones = torch.ones_like(experts, dtype=torch.float)
            seq_load = torch.zeros(B, E, device=experts.device).scatter_add_(1, experts, ones) / Tk  # (B, E): eq. 18 / E
            seq_probs = probs.view(B, -1, E).mean(dim=1)  # (B, E): P_i, eqs. 19-20
            self.seq_aux_loss = E * (seq_load * seq_probs).sum(dim=-1).mean()
            self.stats["seq_aux_loss"] = self.seq_aux_loss.detach()
        if self.training and self.bias_update_rate > 0:
            self.counts = counts.float() if self.counts is None else self.counts + counts

    @torch.no_grad()
    def update_bias(self):
        """DeepSeek-V3's auxiliary-loss-free balancing (arXiv 2412.19437 §2.1.2), after an optimizer
        step: bias_i += rate * sign(mean load - load_i), the loads counted since the last update and
        summed over ranks first, so every rank takes the same step."""
        if self.counts is None:
            return
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)
        self.router.bias += self.bias_update_rate * torch.sign(self.counts.mean() - self.counts)
        self.counts = None


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm_1(x)), then + mlp(norm_2(x)); mlp is a MoE layer
    from block `first_dense_layers` on."""

    def __init__(self, config, layer):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        hidden = swiglu_hidden(config.n_embd, config.mlp_hidden, config.multiple_of)
        self.mlp = MoE(config) if layer >= config.first_dense_layers else SwiGLU(config.n_embd, hidden, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm_1(x), cache)
        x = x + self.mlp(self.norm_2(x))
        return x


# ----------------------------------------------------------------------------- F-gram embeddings
# Mining, lookup, encoder, gate and cache step by step, with the reasons: docs/fgram_moe.md.

def fgram_keys(tokens, vocab_size):
    """One int64 key per n-gram, tokens (..., n) oldest first: sum_j (token_j + 1) * (vocab_size + 1)^j.
    -1 (no token) is the digit 0 and real tokens are digits >= 1, so n-grams of different lengths never
    share a key, and an unused table row (all -1) has the key 0, which no n-gram has."""
    powers = (vocab_size + 1) ** torch.arange(tokens.size(-1), device=tokens.device)
    return ((tokens + 1) * powers).sum(-1)


def mine_fgrams(ids, vocab_size, max_n, table_size):
    """The table_size most frequent n-grams of `ids`, n = 2..max_n competing in one ranking, ties to the
    smaller key: (table_size, max_n) int64, one n-gram per row, oldest token first, then -1 padding."""
    ids = np.asarray(ids, dtype=np.int64)
    powers = (vocab_size + 1) ** np.arange(max_n, dtype=np.int64)  # fgram_keys's keys, in numpy
    keys, counts = [], []
    for n in range(2, max_n + 1):
        windows = np.lib.stride_tricks.sliding_window_view(ids, n)  # (L - n + 1, n), a view of ids
        unique, count = np.unique((windows + 1) @ powers[:n], return_counts=True)
        keys.append(unique)
        counts.append(count)
    keys, counts = np.concatenate(keys), np.concatenate(counts)
    best = keys[np.lexsort((keys, -counts))[:table_size]]  # by count, high to low, then by key
    table = np.full((table_size, max_n), -1, dtype=np.int64)
    table[:len(best)] = best[:, None] // powers % (vocab_size + 1) - 1  # the key's digits, back to ids
    return table


def lookup_fgrams(idx, table, vocab_size):
    """idx (B, T) -> (B, T, max_n - 1): the table row of the n-gram of tokens t-n+1..t for each n, -1 where
    it is not in the table or begins before idx. A binary search among the table's sorted keys."""
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
        c = config.n_embd
        self.gates = nn.ModuleList([nn.Linear(2 * c, c, bias=False) for _ in range(config.fgram_max_n - 1)])

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
    """Token embedding + gated F-gram embeddings, n_layer blocks, final RMSNorm, LM head."""

    def __init__(self, config):
        super().__init__()
        n = config.fgram_max_n
        if n == 1 or n < 0 or n > config.block_size:
            raise ValueError(f"fgram_max_n {n}: use 0 (no F-grams) or the longest n-gram, 2 to block_size")
        if n and (config.vocab_size + 1) ** n >= 2 ** 63:
            raise ValueError(f"{n}-grams of {config.vocab_size} tokens overflow the int64 keys: lower --fgram_max_n")
        if n and config.fgram_vocab_size < 1:
            raise ValueError("fgram_vocab_size must be >= 1 (or turn F-grams off with --fgram_max_n 0)")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings; no position table
        if n:
            self.register_buffer("fgram_table", torch.full((config.fgram_vocab_size, n), -1))  # in the checkpoint
            # a dense block (layer -1 < first_dense_layers) without dropout: self.drop drops its vectors
            encoder = replace(config, mlp_hidden=config.fgram_hidden or config.mlp_hidden, dropout=0.0)
            self.fgram_encoder = Block(encoder, layer=-1)
            self.fgram_gate = FgramGate(config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # N(0, 0.02) as GPT-2; the Linear that ends each residual branch is scaled by
        # 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
        # (Router and Experts initialise their own weights the same way.)
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_branch_end", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @torch.no_grad()
    def prepare_data(self, train_ids):
        """Mine the n-gram table from the training ids (train.py calls this once on a new model)."""
        c = self.config
        if not c.fgram_max_n:
            return
        if len(train_ids) and int(train_ids.max()) >= c.vocab_size:
            raise ValueError(f"token id {int(train_ids.max())} is outside the vocabulary of {c.vocab_size}")
        table = mine_fgrams(train_ids, c.vocab_size, c.fgram_max_n, c.fgram_vocab_size)
        self.fgram_table.copy_(torch.from_numpy(table))

    def fgram_vectors(self):
        """(F, C): fgram_encoder run on every n-gram of the table as a sequence of its characters, taken at
        its last one (causal: it sees the whole n-gram, not the padding); the feed-forward runs there only."""
        table, block = self.fgram_table, self.fgram_encoder
        x = self.wte(table.clamp(min=0))  # (F, max_n, C)
        x = x + block.attn(block.norm_1(x))
        last = ((table >= 0).sum(dim=1) - 1).clamp(min=0)  # (F,); unused rows: a vector nobody looks up
        x = x[torch.arange(len(table), device=x.device), last]  # (F, C)
        return x + block.mlp(block.norm_2(x))

    def embed(self, idx, cache=None):
        """Token embeddings (B, T, C) with the F-gram vectors merged in."""
        x, c = self.wte(idx), self.config
        if not c.fgram_max_n:
            return x
        if cache is None:
            return self.fgram_gate(x, self.fgram_vectors(), lookup_fgrams(idx, self.fgram_table, c.vocab_size))
        # the n-grams at the first new positions begin among the previous tokens
        context = idx if cache.recent_tokens is None else torch.cat([cache.recent_tokens, idx], dim=1)
        rows = lookup_fgrams(context, self.fgram_table, c.vocab_size)[:, -idx.size(1):]
        cache.recent_tokens = context[:, -(c.fgram_max_n - 1):]
        if cache.fgram_vectors is None:
            cache.fgram_vectors = self.fgram_vectors()
        return self.fgram_gate(x, cache.fgram_vectors, rows)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) -> logits (B, T, vocab_size), and with targets (B, T; -100 ignored) the mean
        cross-entropy, plus in training only the weighted MoE losses. With `cache` (new_cache())
        idx continues the cached positions."""
        B, T = idx.shape
        start = cache[0].pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.drop(self.embed(idx, cache))  # (B, T, C); positions are rotated into q and k in each layer
        for i, block in enumerate(self.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            if self.training:
                c = self.config
                for moe in self.moe_layers():
                    loss = loss + c.aux_loss_weight * moe.aux_loss + c.z_loss_weight * moe.z_loss
                    if c.seq_aux_loss_weight > 0:
                        loss = loss + c.seq_aux_loss_weight * moe.seq_aux_loss
        return logits, loss

    def moe_layers(self):
        return [block.mlp for block in self.h if isinstance(block.mlp, MoE)]

    def moe_stats(self):
        """The last batch's routing, for train.py's log: the balancing losses and dropped share (means
        over MoE layers), and expert_load, MoE layers x experts, share of assignments."""
        layers = [moe.stats for moe in self.moe_layers() if moe.stats]
        if not layers:
            return {}
        stats = {name: sum(float(s[name]) for s in layers) / len(layers) for name in layers[0] if name != "load"}
        return {**stats, "expert_load": [s["load"].tolist() for s in layers]}

    def update_balance_bias(self):
        """After each optimizer step: nudge every MoE router's bias toward uniform load."""
        for moe in self.moe_layers():
            moe.update_bias()

    def new_cache(self, batch_size):
        """An empty KV cache (one KVCache per layer, n_kv_head heads each) as long as the context."""
        c = self.config
        w = self.wte.weight
        return FgramMoECache([KVCache(batch_size, c.n_kv_head, c.block_size, c.n_embd // c.n_head, w.device, w.dtype)
                              for _ in range(c.n_layer)])

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
        """AdamW; weight decay on matrices and embeddings only (not on norm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")  # fused AdamW kernels exist for these devices
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def param_counts(self):
        """Total parameters (a tied head counted once) and those active per token: all but the
        routed experts a token does not use (it uses top_k of n_experts in each MoE layer)."""
        total = sum(p.numel() for p in self.parameters())
        idle = sum(sum(p.numel() for p in moe.experts.parameters()) * (1 - moe.top_k / moe.n_experts)
                   for moe in self.moe_layers())
        return {"total": total, "active": total - round(idle)}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token, PaLM (arXiv 2204.02311) app. B: 6N for the weight matmuls (N without
        an untied embedding table, a lookup) plus 12 * n_layer * n_embd * seq_len for attention."""
        c = self.config
        n_matmul = self.param_counts()["active"]  # the F-gram encoder as if per token: docs/fgram_moe.md
        if not c.tie_embeddings:
            n_matmul -= self.wte.weight.numel()
        return 6 * n_matmul + 12 * c.n_layer * c.n_embd * seq_len


Config, Model = FgramMoEConfig, FgramMoE  # the names train.py looks for in every model file


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


def load_dataset(path, tokenizer_kind="gpt2", chars=None):
    """(train_ids, val_ids, tokenizer) from a text file, split 90/10, or from a folder with
    nanoGPT-style train.bin and val.bin (uint16 GPT-2 ids, used as they are). A char vocabulary
    is the corpus's sorted character set unless `chars` (e.g. from a checkpoint) is given."""
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
        ids = cached_bpe_ids(path, text, tokenizer)
    n_train = int(0.9 * len(ids))
    return ids[:n_train], ids[n_train:], tokenizer


def cached_bpe_ids(path, text, tokenizer):
    """GPT-2 ids of `text`, kept as uint16 in `<path>.gpt2.bin` next to the text file (while newer
    than it) so a corpus is tokenized once; a read-only folder just means tokenizing every time."""
    cache = path + ".gpt2.bin"
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(path):
        return np.fromfile(cache, dtype=np.uint16)
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)  # GPT-2's 50,257 ids fit in 16 bits
    try:
        ids.tofile(cache + ".tmp")
        os.replace(cache + ".tmp", cache)  # atomic: a reader never sees half a file
    except OSError:
        pass
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

def load_checkpoint(path, device="cpu"):
    """The model (eval mode) and tokenizer stored by train.py at `path`; only tensors and
    plain Python values are read (torch.load(weights_only=True)), nothing is unpickled."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with python train.py --model_type {MODEL_TYPE}")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path} holds a {ckpt.get('model_type')!r} model, not {MODEL_TYPE!r}: use that model's file")
    model = Model(Config(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), Tokenizer(**ckpt["tokenizer"])


def main():
    parser = argparse.ArgumentParser(description="Sample from an F-gram MoE checkpoint, or from random weights.")
    parser.add_argument("--ckpt", help="checkpoint written by train.py (default: random init of --preset)")
    parser.add_argument("--preset", default="cpu", choices=PRESETS)
    parser.add_argument("--data", default=os.path.join(os.path.dirname(DATA_DIR), "input.txt"),
                        help="without --ckpt: the corpus that gives the characters and the n-grams")
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
    try:
        if args.ckpt:
            model, tokenizer = load_checkpoint(args.ckpt, args.device)
        else:
            train_ids, _, tokenizer = load_dataset(args.data, DEFAULT_TOKENIZER)
            model = Model(Config(**PRESETS[args.preset], vocab_size=tokenizer.vocab_size))
            model.prepare_data(train_ids)
            model = model.to(args.device).eval()
        prompt = tokenizer.encode(args.prompt)
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}")
    counts = model.param_counts()
    print(f"{MODEL_TYPE}: {counts['total'] / 1e6:.2f}M parameters ({counts['active'] / 1e6:.2f}M active),", model.config)
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
    out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    for row in out.tolist():
        print(tokenizer.decode(row))
        print("-" * 40)


if __name__ == "__main__":
    main()

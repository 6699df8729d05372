"""
mla_moe.py - DeepSeek-V2/V3 in one file: Multi-head Latent Attention (MLA, arXiv 2405.04434) and its compressed
KV cache, DeepSeek's MoE (arXiv 2401.06066) as V2 and V3 (arXiv 2412.19437) run it, YaRN (arXiv 2309.00071),
V3's multi-token prediction. DeepSeek-V2-Lite, Moonlight and V3 load into it (load_hf.py); docs/mla_moe.md.

    python train.py --model_type mlamoe                       # nanoGPT's char-level CPU recipe
    python mla_moe.py --ckpt out/ckpt.pt --prompt "ROMEO:"    # sample from a checkpoint
    python mla_moe.py                                         # sizes + a sample from random weights
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

MODEL_TYPE = "mlamoe"


@dataclass
class MLAMoEConfig:
    block_size: int = 1024  # longest context; length of the rotary tables and the latent cache
    vocab_size: int = 50257  # GPT-2 BPE: 256 bytes + 50,000 merges + <|endoftext|>
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # width of the residual stream
    # Multi-head Latent Attention (DeepSeek-V2 §2.1), by default at V2's ratios r = 4 d_h, dr = d_h / 2
    q_lora_rank: int = 0  # rank of the query latent c_Q; 0 = full-rank queries (as DeepSeek-V2-Lite)
    kv_lora_rank: int = 256  # rank r of the key-value latent c_KV: the cached part
    qk_nope_head_dim: int = 64  # per-head query/key part without position, up-projected from c_KV
    qk_rope_head_dim: int = 32  # decoupled RoPE part: per-head queries, one key shared by all heads
    v_head_dim: int = 64  # per-head value size
    latent_norm_eps: float = 1e-6  # the RMSNorms of c_Q and c_KV (as DeepSeek's code: 1e-6 whatever norm_eps)
    rope_theta: float = 10000.0  # base of the rotary frequencies (RoFormer eq. 15)
    rope_scaling_factor: float = 1.0  # YaRN: how many times longer than rope_original_len (1 = off)
    rope_original_len: int = 4096  # YaRN: the context the model was pretrained at
    rope_mscale: float = 0.0  # YaRN: softmax scale times (0.1 mscale ln(factor) + 1)^2 (0 = none)
    mlp_hidden: int = 2048  # hidden size of the dense blocks' SwiGLU (8/3 n_embd: GPT-2's MLP's parameters)
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    # DeepSeek's MoE (V3's defaults): shared experts plus top_k of n_routed_experts fine-grained ones
    n_routed_experts: int = 16  # experts the router chooses from
    top_k: int = 2  # routed experts per token
    n_shared_experts: int = 2  # experts every token goes through, with weight 1 (0 = none)
    moe_hidden: int = 512  # each expert's hidden size; shared + chosen experts = the dense SwiGLU's 2048
    first_dense_layers: int = 1  # leading blocks that keep the dense SwiGLU (V3: 3 of 61)
    gate: str = "sigmoid"  # "sigmoid" (DeepSeek-V3) or "softmax" (DeepSeek-V2) expert scores
    renormalize: bool = True  # divide the chosen experts' scores by their sum (V3; V2-Lite: no)
    routed_scaling_factor: float = 2.5  # the chosen routed experts' weights are multiplied by this (V3)
    n_group: int = 1  # group-limited routing: experts in n_group groups, tokens choose in topk_group of them
    topk_group: int = 1  # the groups a token may choose experts from (V3: 4 of 8)
    seq_aux_loss_weight: float = 1e-4  # alpha of V3 eq. 17, the sequence-wise balance loss (0 = off)
    bias_update_rate: float = 1e-3  # V3 auxiliary-loss-free balancing: bias step per optimizer step (gamma)
    mtp_weight: float = 0.0  # > 0: V3's multi-token prediction (§2.2, depth 1), its loss weighted by this (eq. 25)


PRESETS = {
    "gpt2": {},  # GPT-2 small's shape: MLA caches 288 values per token per layer, MHA 1536
    "cpu": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "kv_lora_rank": 48, "qk_nope_head_dim": 32,
                "qk_rope_head_dim": 16, "v_head_dim": 32, "mlp_hidden": 384, "moe_hidden": 96},
}


# ----------------------------------------------------------------------------- building blocks

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
    """theta^(-2i/hd) per channel pair (RoFormer eq. 15), YaRN's (§3.2, docs/mla_moe.md) if scaled."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings rotate pairs of channels: head size {head_dim} must be even")
    if config.rope_scaling_factor == 1.0:
        return config.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    # the (fractional) index of the pair that turns `times` times over the original context
    pair = [head_dim * math.log(config.rope_original_len / (times * 2 * math.pi)) / (2 * math.log(config.rope_theta))
            for times in (32, 1)]
    low, high = max(math.floor(pair[0]), 0), min(math.ceil(pair[1]), head_dim - 1)
    slowed = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / max(high - low, 0.001)).clamp(0, 1)
    return inv_freq / config.rope_scaling_factor * slowed + inv_freq * (1 - slowed)


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
# DeepSeek's MoE as V2 and V3 run it; moe_gpt.py holds the other options (docs/moe_gpt.md).

class Router(nn.Module):
    """Scores s per token and routed expert, in float32: softmax (V2) or sigmoid (V3 eq. 15). Picks top_k by s +
    bias (V3 eq. 16) within the topk_group best expert groups; weighs them by s, renormalised or not, scaled."""

    def __init__(self, config):
        super().__init__()
        if config.gate not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown gate {config.gate!r}: use softmax or sigmoid")
        self.config = config
        self.weight = nn.Parameter(torch.randn(config.n_routed_experts, config.n_embd) * 0.02)
        self.register_buffer("bias", torch.zeros(config.n_routed_experts))  # in the state_dict: resumed too

    def forward(self, x):
        """x (N, C) -> chosen experts (N, k), their weights (N, k) and scores (N, E)."""
        config = self.config
        with torch.autocast(x.device.type, enabled=False):  # choices flip on rounding errors in bf16
            logits = F.linear(x.float(), self.weight.float())
        scores = logits.softmax(dim=-1) if config.gate == "softmax" else logits.sigmoid()
        choice = scores.detach() + self.bias  # (N, E)
        if config.n_group > 1:  # mask all but the best groups, ranked by their best s (V2) or two best (V3)
            groups = choice.view(len(x), config.n_group, -1)  # (N, n_group, E / n_group)
            best = groups.max(-1).values if config.gate == "softmax" else groups.topk(2, dim=-1).values.sum(-1)
            others = torch.ones_like(best, dtype=torch.bool).scatter(1, best.topk(config.topk_group).indices, False)
            choice = groups.masked_fill(others.unsqueeze(-1), float("-inf")).view(len(x), -1)
        experts = torch.topk(choice, config.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if config.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return experts, config.routed_scaling_factor * weights, scores


class MoE(nn.Module):
    """DeepSeekMoE (eqs. 9-11), dropless: top_k of n_routed_experts, plus the shared experts (weight 1) run as
    one SwiGLU of n_shared * moe_hidden units."""

    def __init__(self, config):
        super().__init__()
        if not (1 <= config.top_k <= config.n_routed_experts and config.n_routed_experts % config.n_group == 0
                and 1 <= config.topk_group <= config.n_group):
            raise ValueError("top_k must be 1 to n_routed_experts, n_group divide them, topk_group be 1 to n_group")
        self.config, self.n_experts, self.top_k = config, config.n_routed_experts, config.top_k
        self.router = Router(config)
        self.experts = nn.ModuleList([SwiGLU(config.n_embd, config.moe_hidden) for _ in range(self.n_experts)])
        shared_hidden = config.n_shared_experts * config.moe_hidden
        self.shared = SwiGLU(config.n_embd, shared_hidden) if shared_hidden else None
        self.stats, self.counts = {}, None  # counts: assignments per expert since the last update_bias

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)  # (N, C): N tokens, each routed on its own
        N, k, E = B * T, self.top_k, self.n_experts
        experts, weights, scores = self.router(x)  # (N, k), (N, k), (N, E)
        # assignment a is token a // k's choice a % k; a stable sort by expert lines up each expert's rows
        expert_of = experts.flatten()  # (N*k,)
        order = torch.argsort(expert_of, stable=True)
        counts = expert_of.new_zeros(E).index_add_(0, expert_of, torch.ones_like(expert_of))  # (E,) static
        token = order // k  # (N*k,) the token of each sorted assignment
        y = self.run_experts(x.index_select(0, token), counts) * weights.view(-1, 1).index_select(0, order)
        # the routed outputs (in float32, as the weights) are added into the shared ones in place
        out = self.shared(x).float() if self.shared is not None else torch.zeros(N, C, device=x.device)
        out.index_add_(0, token, y)
        self.stats, self.weighted_loss = {"load": counts.float() / counts.sum()}, 0.0
        if self.config.seq_aux_loss_weight > 0:  # V3 eqs. 17-20: the balance within each sequence of T*k choices
            seq_load = F.one_hot(experts.view(B, T * k), E).float().mean(dim=1)  # (B, E): f_i / E of eq. 18
            seq_probs = (scores / scores.sum(dim=-1, keepdim=True)).view(B, T, E).mean(dim=1)  # (B, E): P_i
            self.seq_aux_loss = E * (seq_load * seq_probs).sum(dim=-1).mean()  # eq. 17
            self.weighted_loss = self.config.seq_aux_loss_weight * self.seq_aux_loss
            self.stats["seq_aux_loss"] = self.seq_aux_loss.detach()
        if self.training and self.config.bias_update_rate > 0:
            self.counts = counts.float() if self.counts is None else self.counts + counts
        return out.view(B, T, C).type_as(x)

    @torch.compiler.disable  # eager under torch.compile: it traces F.grouped_mm in bf16 only, the loop not at all
    def run_experts(self, rows, counts):
        """rows (N*k, C), counts[e] rows for expert e, in expert order -> each row through its expert (N*k, C)."""
        w = self.experts[0].gate.weight  # (moe_hidden, C): F.grouped_mm wants rows of 16-byte multiples
        if (rows.device.type == "cpu" and hasattr(F, "grouped_mm") and rows.dtype == w.dtype
                and all(n * w.element_size() % 16 == 0 for n in w.shape)):
            ends = counts.cumsum(0).to(torch.int32)  # one matmul for all experts, their weights stacked (E, in, out)
            gate, up, down = (torch.stack([getattr(e, n).weight for e in self.experts]).transpose(1, 2)
                              for n in ("gate", "up", "down"))
            hidden = F.silu(F.grouped_mm(rows, gate, offs=ends)) * F.grouped_mm(rows, up, offs=ends)
            return F.grouped_mm(hidden, down, offs=ends)
        # a loop over the experts: on GPUs (not measured here) and for odd sizes
        return torch.cat([expert(r) for expert, r in zip(self.experts, rows.split(counts.tolist()))])

    @torch.no_grad()
    def update_bias(self):
        """V3's auxiliary-loss-free balancing (§2.1.2), after each step: bias_i += rate * sign(mean load - load_i)."""
        if self.counts is None:
            return
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)
        self.router.bias += self.config.bias_update_rate * torch.sign(self.counts.mean() - self.counts)
        self.counts = None


# ----------------------------------------------------------------------------- Multi-head Latent Attention

class LatentKVCache:
    """One layer's cache: [c_KV; k_R] per token (k_R rotated) in `latent` (B, max_len, r + dr), for all heads."""

    def __init__(self, batch_size, max_len, width, device, dtype, static=False):
        self.latent = torch.zeros(batch_size, max_len, width, device=device, dtype=dtype)
        self.pos = torch.tensor(0, device=device) if static else 0  # static: as KVCache's in modern_gpt.py

    def append(self, latent):
        """Store latent (B, t, r + dr) after the cached positions; return all positions so far (static: all)."""
        self.latent[:, self.pos + torch.arange(latent.size(1), device=latent.device)] = latent.type_as(self.latent)
        self.pos = self.pos + latent.size(1)
        return self.latent if torch.is_tensor(self.pos) else self.latent[:, :self.pos]


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


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2 §2.1; (n) are its equation numbers. dn, dr, dv, r are qk_nope_head_dim, qk_rope_head_dim,
    v_head_dim, kv_lora_rank. RoPE has its own dr channels, one key for all heads (docs/mla_moe.md: why)."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.n_head, self.nope_dim, self.rope_dim = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim
        self.v_dim, self.kv_rank = c.v_head_dim, c.kv_lora_rank
        self.scale = 1.0 / math.sqrt(c.qk_nope_head_dim + c.qk_rope_head_dim)  # the full query-key head size
        if c.rope_scaling_factor > 1 and c.rope_mscale:  # YaRN's temperature, squared: on q and on k
            self.scale *= (0.1 * c.rope_mscale * math.log(c.rope_scaling_factor) + 1.0) ** 2
        q_in = c.q_lora_rank or c.n_embd
        self.q_down = nn.Linear(c.n_embd, c.q_lora_rank, bias=False) if c.q_lora_rank else None  # W^DQ
        self.q_norm = RMSNorm(c.q_lora_rank, c.latent_norm_eps) if c.q_lora_rank else None
        self.q_up = nn.Linear(q_in, c.n_head * c.qk_nope_head_dim, bias=False)  # W^UQ
        self.q_rope = nn.Linear(q_in, c.n_head * c.qk_rope_head_dim, bias=False)  # W^QR
        self.kv_down = nn.Linear(c.n_embd, c.kv_lora_rank, bias=False)  # W^DKV
        self.kv_norm = RMSNorm(c.kv_lora_rank, c.latent_norm_eps)  # as in DeepSeek's code
        self.k_up = nn.Linear(c.kv_lora_rank, c.n_head * c.qk_nope_head_dim, bias=False)  # W^UK
        self.v_up = nn.Linear(c.kv_lora_rank, c.n_head * c.v_head_dim, bias=False)  # W^UV
        self.k_rope = nn.Linear(c.n_embd, c.qk_rope_head_dim, bias=False)  # W^KR
        self.c_proj = nn.Linear(c.n_head * c.v_head_dim, c.n_embd, bias=False)  # W^O
        self.c_proj.residual_branch_end = True
        self.rotary = RotaryEmbedding(rope_frequencies(c, c.qk_rope_head_dim), c.block_size)

    def forward(self, x, cache=None):
        B, T, _ = x.shape
        nh, r = self.n_head, self.kv_rank
        start = cache.pos if cache is not None else 0
        c_q = self.q_norm(self.q_down(x)) if self.q_down is not None else x  # (12), or x without a q latent
        q_nope = self.q_up(c_q).view(B, T, nh, self.nope_dim).transpose(1, 2)  # (13): (B, nh, T, dn)
        q_rope = self.rotary(self.q_rope(c_q).view(B, T, nh, self.rope_dim).transpose(1, 2), start)  # (14)
        c_kv = self.kv_norm(self.kv_down(x))  # (9): (B, T, r)
        k_rope = self.rotary(self.k_rope(x).unsqueeze(1), start).squeeze(1)  # (15): (B, T, dr), one head
        if cache is None:  # training: up-project the latent to per-head keys and values, then attention
            k_nope = self.k_up(c_kv).view(B, T, nh, self.nope_dim).transpose(1, 2)  # (10): (B, nh, T, dn)
            v = self.v_up(c_kv).view(B, T, nh, self.v_dim).transpose(1, 2)  # (11): (B, nh, T, dv)
            q = torch.cat([q_nope, q_rope], dim=-1)  # (16): (B, nh, T, dn + dr)
            k = torch.cat([k_nope, k_rope.unsqueeze(1).expand(B, nh, T, self.rope_dim)], dim=-1)  # (17)
            y = causal_attention(q, k, v, 0.0, self.scale)  # (18): (B, nh, T, dv)
        else:  # generation, on the cached latent: q_C . (W^UK c_KV) = (W^UK^T q_C) . c_KV, and the average of
            # W^UV c_KV over positions is W^UV times the average of c_KV: every head reads one key and value
            latent = cache.append(torch.cat([c_kv, k_rope], dim=-1)).unsqueeze(1)  # (B, 1, cached + T, r + dr)
            q = torch.cat([q_nope @ self.k_up.weight.view(nh, self.nope_dim, r), q_rope], dim=-1)  # (B, nh, T, r + dr)
            o_latent = causal_attention(q, latent, latent[..., :r], 0.0, self.scale, start)  # (B, nh, T, r)
            y = o_latent @ self.v_up.weight.view(nh, self.v_dim, r).transpose(1, 2)  # (B, nh, T, dv)
        y = y.transpose(1, 2).reshape(B, T, nh * self.v_dim)  # heads side by side: (B, T, nh * dv)
        return self.c_proj(y)  # (19)


# ----------------------------------------------------------------------------- the model

class Block(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(x)); MLA, then MoE or (moe=False) SwiGLU."""

    def __init__(self, config, moe):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = MultiHeadLatentAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MoE(config) if moe else SwiGLU(config.n_embd, config.mlp_hidden)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm_1(x), cache)
        return x + self.mlp(self.norm_2(x))


class MultiTokenPrediction(nn.Module):
    """DeepSeek-V3 §2.2, depth 1: h'_i = M [RMSNorm(h_i); RMSNorm(Emb(t_i+1))], a block, the head: token i+2."""

    def __init__(self, config):
        super().__init__()
        self.hidden_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.embed_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.proj = nn.Linear(2 * config.n_embd, config.n_embd, bias=False)  # M
        self.block = Block(config, moe=False)  # dense: the routing statistics stay the main model's
        self.norm = RMSNorm(config.n_embd, config.norm_eps)

    def forward(self, h, targets, wte, lm_head):
        """Eq. 24: the cross-entropy of its guess of token i+2 from h_i (B, T, C) and token i+1 = targets[:, i];
        positions whose token i+1 or i+2 is -100 are ignored. wte and lm_head are the main model's."""
        next_tokens = targets[:, :-1]
        after_next = targets[:, 1:].masked_fill(next_tokens == -100, -100)
        embedded = self.embed_norm(wte(next_tokens.clamp(min=0)))  # (B, T - 1, C)
        x = self.proj(torch.cat([self.hidden_norm(h[:, :-1]), embedded], dim=-1))  # eq. 21
        logits = lm_head(self.norm(self.block(x)))  # eqs. 22-23: (B, T - 1, vocab_size)
        return F.cross_entropy(logits.flatten(0, 1).float(), after_next.flatten(), ignore_index=-100)


class MLAMoE(nn.Module):
    """Token embedding, n_layer MLA blocks (dense, then MoE), final RMSNorm, LM head, optional MTP module."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings; no position table
        self.h = nn.ModuleList([Block(config, moe=layer >= config.first_dense_layers)
                                for layer in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # not tied, as DeepSeek's
        self.mtp = MultiTokenPrediction(config) if config.mtp_weight > 0 else None
        self.mtp_loss = None  # the last training batch's MTP loss, for train.py's log
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2's normal(0, 0.02), 0.02 / sqrt(2 n_layer) at residual branch ends (Router: its own)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_branch_end", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) -> logits (B, T, V), loss on targets (-100 ignored; + MoE, MTP in training)."""
        end = (cache[0].pos if cache is not None else 0) + idx.size(1)  # positions after this pass
        if not torch.is_tensor(end) and end > self.config.block_size:  # static: generate sized it
            raise ValueError(f"sequence of {end} tokens is longer than block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C); positions are rotated into the RoPE parts in each layer
        for i, block in enumerate(self.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            if self.training:
                loss = loss + sum(moe.weighted_loss for moe in self.moe_layers())  # V3 eq. 17
                if self.mtp is not None and idx.size(1) > 1:
                    mtp_loss = self.mtp(x, targets, self.wte, self.lm_head)
                    self.mtp_loss = mtp_loss.detach()
                    loss = loss + self.config.mtp_weight * mtp_loss  # V3 eq. 25
        return logits, loss

    def moe_layers(self):
        """The MoE layers, whose stats train.py logs and whose update_bias it calls after each step."""
        return [block.mlp for block in self.h if isinstance(block.mlp, MoE)]

    def new_cache(self, batch_size, max_len=None, static=False):
        """One empty LatentKVCache per layer, as long as the context (or max_len), r + dr values per position."""
        config, w, width = self.config, self.wte.weight, self.config.kv_lora_rank + self.config.qk_rope_head_dim
        return [LatentKVCache(batch_size, max_len or config.block_size, width, w.device, w.dtype, static)
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
        """Total parameters, and active ones: all but the routed experts a token skips."""
        total = sum(p.numel() for p in self.parameters())
        idle = sum(sum(p.numel() for p in moe.experts.parameters()) * (1 - moe.top_k / moe.n_experts)
                   for moe in self.moe_layers())
        return {"total": total, "active": total - round(idle)}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 x active weights + attention, MTP's too (docs/mla_moe.md)."""
        config = self.config
        n_matmul = self.param_counts()["active"] - self.wte.weight.numel()
        n_attention = config.n_layer + (1 if self.mtp is not None else 0)
        head_sizes = config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim
        return 6 * n_matmul + 6 * n_attention * seq_len * config.n_head * head_sizes


Config, Model = MLAMoEConfig, MLAMoE  # the names train.py looks for in every model file


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

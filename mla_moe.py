"""
mla_moe.py - a DeepSeek-V2/V3-style GPT in one file: Multi-head Latent Attention (MLA) with a
compressed KV cache, DeepSeekMoE feed-forward layers, optional multi-token prediction (MTP).

MLA (DeepSeek-V2, arXiv 2405.04434, §2.1) up-projects every head's keys and values from one small
latent per token, plus one decoupled RoPE key shared by all heads; generation caches only those and
attends in the absorbed form. The MoE layer (DeepSeekMoE, arXiv 2401.06066) runs with DeepSeek-V3's
choices (arXiv 2412.19437): sigmoid gates, bias balancing, a small sequence-wise balance loss, route
scaling, the first layer dense. MTP (V3 §2.2, depth 1) and gradient checkpointing are config flags.
The MoE layer is copied from moe_gpt.py; RMSNorm, RoPE (arXiv 2104.09864) and SwiGLU (arXiv
2002.05202) from modern_gpt.py. docs/mla_moe.md walks through the equations.

Not implemented, on purpose: attention through a handful of learned latent vectors that read the
WHOLE sequence, which every position then reads (one public "MoE with latent attention" project).
In a causal LM that leaks the future: position t receives summaries of tokens t+1, t+2, ..., so
training learns to copy the next token and generation falls apart; a causal mask on the second
step cannot help, since every latent has already mixed all positions. MLA compresses each token on
its own, so position t only ever sees latents of positions <= t.

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
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

MODEL_TYPE = "mlamoe"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@dataclass
class MLAMoEConfig:
    block_size: int = 1024  # longest context; length of the rotary tables and the latent cache
    vocab_size: int = 50257  # GPT-2 BPE: 256 bytes + 50,000 merges + <|endoftext|>
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # width of the residual stream
    # Multi-head Latent Attention (DeepSeek-V2 §2.1), here at V2's ratios r = 4 d_h, dr = d_h / 2
    q_lora_rank: int = 0  # rank of the query latent c_Q; 0 = full-rank queries (as DeepSeek-V2-Lite)
    kv_lora_rank: int = 256  # rank r of the key-value latent c_KV: the cached part
    qk_nope_head_dim: int = 64  # per-head query/key part without position, up-projected from c_KV
    qk_rope_head_dim: int = 32  # decoupled RoPE part: per-head queries, one key shared by all heads
    v_head_dim: int = 64  # per-head value size
    rope_theta: float = 10000.0  # base of the rotary frequencies (RoFormer eq. 15)
    mlp_hidden: int = 0  # dense SwiGLU hidden size before rounding; 0 = 8/3 n_embd
    multiple_of: int = 64  # SwiGLU hidden sizes are rounded up to a multiple of this (fast matmuls)
    tie_embeddings: bool = True  # the output head shares its weight with the token embedding
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    # mixture of experts: moe_gpt.py's fields (counts before fine-grained segmentation), V3's defaults
    n_routed_experts: int = 8  # experts the router chooses from
    top_k: int = 1  # routed experts per token
    n_shared_experts: int = 1  # experts every token goes through, with weight 1 (0 = none)
    granularity: int = 2  # m: each expert split into m of hidden/m; m*N routed, m*K chosen, m*K_s shared
    moe_hidden: int = 0  # one expert's hidden size before splitting; 0 = dense SwiGLU's // (K + K_s)
    first_dense_layers: int = 1  # leading blocks that keep the dense SwiGLU (V3: 3 of 61)
    gate: str = "sigmoid"  # "sigmoid" (DeepSeek-V3) or "softmax" (DeepSeekMoE) expert scores
    renormalize: bool = True  # divide the chosen experts' scores by their sum (only when m*K > 1)
    router_noise: float = 0.0  # training only: router input times U(1 - eps, 1 + eps) (Switch jitter)
    aux_loss_weight: float = 0.0  # Switch's batch-wise balancing loss; off: V3 balances with the bias
    z_loss_weight: float = 0.0  # ST-MoE router z-loss mean(logsumexp(logits)^2)
    seq_aux_loss_weight: float = 1e-4  # alpha of V3 eq. 17, the sequence-wise balance loss (0 = off)
    routed_scaling_factor: float = 2.5  # the chosen routed experts' weights are multiplied by this (V3)
    bias_update_rate: float = 1e-3  # V3 auxiliary-loss-free balancing: bias step per optimizer step (gamma)
    capacity_factor: float = 0.0  # 0 = dropless; else capacity = ceil(factor * tokens * k / experts)
    # training features
    mtp: bool = False  # multi-token prediction (V3 §2.2, depth 1): also predict the token after next
    mtp_weight: float = 0.3  # lambda of V3 eq. 25, the MTP loss's weight in the training loss
    grad_checkpointing: bool = False  # recompute each block in backward instead of keeping its activations


PRESETS = {
    "gpt2": dict(),  # GPT-2 small's shape: MLA caches 288 values per token per layer, MHA 1536
    # nanoGPT's CPU Shakespeare recipe: 4 layers, 4 heads of 32, block 64; r 48 + dr 16 = MHA's 256 / 4
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, kv_lora_rank=48, qk_nope_head_dim=32,
                qk_rope_head_dim=16, v_head_dim=32),
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
# Router, grouped_mm_dtype, Experts and MoE: moe_gpt.py's block, copied whole (DeepSeek-V3's
# choices are this file's config defaults). MoE keeps the batch's auxiliary losses and statistics
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


# ----------------------------------------------------------------------------- Multi-head Latent Attention

class LatentKVCache:
    """One layer's cache: [c_KV; k_R] per token (k_R already rotated) in `latent` (B, max_len, r + dr),
    whatever the number of heads. It is also the key every head reads in the absorbed form."""

    def __init__(self, batch_size, max_len, width, device, dtype):
        self.latent = torch.zeros(batch_size, max_len, width, device=device, dtype=dtype)
        self.pos = 0

    def append(self, latent):
        """Store latent (B, t, r + dr) after the cached positions; return all positions so far."""
        t = latent.size(1)
        self.latent[:, self.pos:self.pos + t] = latent
        self.pos += t
        return self.latent[:, :self.pos]


def causal_attention(q, k, v, dropout_p, scale):
    """softmax(q k^T * scale) v where query i sees keys up to its own position; q (B, nh, t, d)
    holds the last t positions, k (B, nh, S, d) and v (B, nh, S, dv) all S of them."""
    t, S = q.size(2), k.size(2)
    if t == S:  # no cache, or the prompt's first pass: the plain causal mask
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    if t == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    # t new tokens after S - t cached ones: query i sees keys 0 .. S - t + i
    mask = torch.ones(t, S, dtype=torch.bool, device=q.device).tril(diagonal=S - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2 §2.1; (n) are its equation numbers. nh heads; dn, dr, dv, r are qk_nope_head_dim,
    qk_rope_head_dim, v_head_dim, kv_lora_rank. RoPE lives in its own dr channels (one key shared
    by all heads) because a position-dependent rotation between W^UK and the query would stop W^UK
    from being folded into the query, which is what the absorbed form does."""

    def __init__(self, config):
        super().__init__()
        c = config
        if min(c.n_head, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim) < 1 or c.q_lora_rank < 0:
            raise ValueError("n_head, kv_lora_rank and the head sizes must be positive, q_lora_rank >= 0 (0 = off)")
        self.n_head, self.nope_dim, self.rope_dim = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim
        self.v_dim, self.rank = c.v_head_dim, c.kv_lora_rank
        self.scale = 1.0 / math.sqrt(c.qk_nope_head_dim + c.qk_rope_head_dim)  # the full query-key head size
        q_in = c.q_lora_rank or c.n_embd
        if c.q_lora_rank:
            self.q_down = nn.Linear(c.n_embd, c.q_lora_rank, bias=False)  # W^DQ
            self.q_norm = RMSNorm(c.q_lora_rank, c.norm_eps)
        self.q_up = nn.Linear(q_in, c.n_head * c.qk_nope_head_dim, bias=False)  # W^UQ
        self.q_rope = nn.Linear(q_in, c.n_head * c.qk_rope_head_dim, bias=False)  # W^QR
        self.kv_down = nn.Linear(c.n_embd, c.kv_lora_rank, bias=False)  # W^DKV
        self.kv_norm = RMSNorm(c.kv_lora_rank, c.norm_eps)  # as in DeepSeek's code
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
        c_q = self.q_norm(self.q_down(x)) if hasattr(self, "q_down") else x  # (12); x itself without a q latent
        q_nope = self.q_up(c_q).view(B, T, nh, self.nope_dim).transpose(1, 2)  # (13): (B, nh, T, dn)
        q_rope = self.rotary(self.q_rope(c_q).view(B, T, nh, self.rope_dim).transpose(1, 2), start)  # (14)
        c_kv = self.kv_norm(self.kv_down(x))  # (9): (B, T, r)
        k_rope = self.rotary(self.k_rope(x).unsqueeze(1), start).squeeze(1)  # (15): (B, T, dr), one head
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = self.expanded_attention(q_nope, q_rope, c_kv, k_rope, dropout)
        else:
            latent = cache.append(torch.cat([c_kv, k_rope], dim=-1))  # (B, cached + T, r + dr)
            y = self.absorbed_attention(q_nope, q_rope, latent, dropout)
        y = y.transpose(1, 2).reshape(B, T, nh * self.v_dim)  # heads side by side: (B, T, nh * dv)
        return self.resid_dropout(self.c_proj(y))  # (19)

    def expanded_attention(self, q_nope, q_rope, c_kv, k_rope, dropout):
        """Training: up-project the latent to per-head keys and values, then ordinary attention."""
        B, S, _ = c_kv.shape
        nh = self.n_head
        k_nope = self.k_up(c_kv).view(B, S, nh, self.nope_dim).transpose(1, 2)  # (10): (B, nh, S, dn)
        v = self.v_up(c_kv).view(B, S, nh, self.v_dim).transpose(1, 2)  # (11): (B, nh, S, dv)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (16): (B, nh, T, dn + dr)
        k = torch.cat([k_nope, k_rope.unsqueeze(1).expand(B, nh, S, self.rope_dim)], dim=-1)  # (17)
        return causal_attention(q, k, v, dropout, self.scale)  # (18): (B, nh, T, dv)

    def absorbed_attention(self, q_nope, q_rope, latent, dropout):
        """Generation, on the cached latent itself: q_C^T (W^UK c_KV) = (W^UK^T q_C)^T c_KV and
        sum_s p_s W^UV c_KV,s = W^UV sum_s p_s c_KV,s, so W^UK goes into the query and W^UV after
        attention; every head reads the same keys [c_KV; k_R] and values c_KV (MQA in latent space)."""
        B, S, _ = latent.shape
        nh, r = self.n_head, self.rank
        w_uk = self.k_up.weight.view(nh, self.nope_dim, r)  # (nh, dn, r)
        w_uv = self.v_up.weight.view(nh, self.v_dim, r)  # (nh, dv, r)
        q = torch.cat([q_nope @ w_uk, q_rope], dim=-1)  # (B, nh, T, dn) @ (nh, dn, r) -> (B, nh, T, r + dr)
        k = latent.unsqueeze(1).expand(B, nh, S, r + self.rope_dim)  # one key for all heads, not copied
        v = latent[..., :r].unsqueeze(1).expand(B, nh, S, r)  # c_KV
        o_latent = causal_attention(q, k, v, dropout, self.scale)  # (B, nh, T, r)
        return o_latent @ w_uv.transpose(1, 2)  # (B, nh, T, r) @ (nh, r, dv) -> (B, nh, T, dv)


# ----------------------------------------------------------------------------- the model

class Block(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(x)); MLA, then MoE or (moe=False) SwiGLU."""

    def __init__(self, config, moe):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = MultiHeadLatentAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        hidden = swiglu_hidden(config.n_embd, config.mlp_hidden, config.multiple_of)
        self.mlp = MoE(config) if moe else SwiGLU(config.n_embd, hidden, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm_1(x), cache)
        x = x + self.mlp(self.norm_2(x))
        return x


class MultiTokenPrediction(nn.Module):
    """DeepSeek-V3 §2.2 at depth 1: h'_i = M [RMSNorm(h_i); RMSNorm(Emb(t_i+1))] (eq. 21), one more
    block (eq. 22), then the shared output head predicts token i+2 (eq. 23)."""

    def __init__(self, config):
        super().__init__()
        self.hidden_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.embed_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.proj = nn.Linear(2 * config.n_embd, config.n_embd, bias=False)  # M
        self.block = Block(config, moe=False)  # dense: the routing statistics stay the main model's
        self.norm = RMSNorm(config.n_embd, config.norm_eps)

    def forward(self, h, next_embedding):
        """h (B, T, C) hidden states at positions i; next_embedding (B, T, C) embeddings of tokens i+1."""
        x = self.proj(torch.cat([self.hidden_norm(h), self.embed_norm(next_embedding)], dim=-1))
        return self.norm(self.block(x))


class MLAMoE(nn.Module):
    """Token embedding, n_layer MLA blocks (dense, then MoE), final RMSNorm, LM head, optional MTP module."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings; no position table
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, moe=layer >= config.first_dense_layers)
                                for layer in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.mtp = MultiTokenPrediction(config) if config.mtp else None
        self.mtp_loss = None  # the last training batch's MTP loss, for moe_stats
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

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy against
        targets (B, T) when given (-100 is ignored), plus in training the weighted MoE and MTP losses.
        With `cache` (new_cache(): a LatentKVCache per layer) idx continues the cached positions."""
        B, T = idx.shape
        start = cache[0].pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.drop(self.wte(idx))  # (B, T, C); positions are rotated into the RoPE parts in each layer
        for i, block in enumerate(self.h):
            if self.config.grad_checkpointing and self.training and cache is None:
                # keep only the block's input and rerun it in backward (same RNG, so the same routing);
                # no early stop, so the rerun rewrites each MoE layer's stats whole
                with set_checkpoint_early_stop(False):
                    x = checkpoint(block, x, use_reentrant=False)
            else:
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
                        loss = loss + c.seq_aux_loss_weight * moe.seq_aux_loss  # V3 eq. 17
                if self.mtp is not None and T > 1:
                    mtp_loss = self.multi_token_loss(x, targets)
                    self.mtp_loss = mtp_loss.detach()
                    loss = loss + c.mtp_weight * mtp_loss  # V3 eq. 25
        return logits, loss

    def multi_token_loss(self, h, targets):
        """V3 eq. 24: cross-entropy of the MTP module's guess of token i+2 from h_i (B, T, C) and
        token i+1 = targets[:, i]; positions whose token i+1 or i+2 is -100 are ignored."""
        next_tokens = targets[:, :-1]
        after_next = targets[:, 1:].masked_fill(next_tokens == -100, -100)
        logits = self.lm_head(self.mtp(h[:, :-1], self.wte(next_tokens.clamp(min=0))))  # (B, T - 1, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), after_next.flatten(), ignore_index=-100)

    def moe_layers(self):
        return [block.mlp for block in self.h if isinstance(block.mlp, MoE)]

    def moe_stats(self):
        """The last batch's routing, for train.py's log: balancing losses and dropped share (means
        over MoE layers), expert_load (MoE layers x experts, share of assignments) and mtp_loss."""
        stats = {"mtp_loss": self.mtp_loss.item()} if self.mtp_loss is not None else {}
        layers = [moe.stats for moe in self.moe_layers() if moe.stats]
        if not layers:
            return stats
        means = {name: sum(float(s[name]) for s in layers) / len(layers) for name in layers[0] if name != "load"}
        return {**stats, **means, "expert_load": [s["load"].tolist() for s in layers]}

    def update_balance_bias(self):
        """After each optimizer step: nudge every MoE router's bias toward uniform load."""
        for moe in self.moe_layers():
            moe.update_bias()

    def new_cache(self, batch_size):
        """One empty LatentKVCache per layer, as long as the context."""
        c, w = self.config, self.wte.weight
        width = c.kv_lora_rank + c.qk_rope_head_dim
        return [LatentKVCache(batch_size, c.block_size, width, w.device, w.dtype) for _ in range(c.n_layer)]

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
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = device_type in ("cuda", "cpu")  # fused AdamW kernels exist for these devices
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def param_counts(self):
        """Total parameters (a tied head counted once; the MTP module included) and those active per
        token: all but the routed experts a token does not use (top_k of n_experts in each MoE layer)."""
        total = sum(p.numel() for p in self.parameters())
        idle = sum(sum(p.numel() for p in moe.experts.parameters()) * (1 - moe.top_k / moe.n_experts)
                   for moe in self.moe_layers())
        return {"total": total, "active": total - round(idle)}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (PaLM, arXiv 2204.02311, appendix B): 6N for the weight matmuls (an
        untied embedding table is a lookup, left out) plus 6 * seq_len * n_head * (dn + dr + dv) per
        attention layer, the MTP block's included (PaLM's 12 * n_embd * seq_len for other head sizes)."""
        c = self.config
        n_matmul = self.param_counts()["active"]
        if not c.tie_embeddings:
            n_matmul -= self.wte.weight.numel()
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

def cache_size_table(config):
    """KV-cache values and bytes per token per layer: MLA against MHA, GQA and MQA of the same width."""
    head_dim = config.n_embd // config.n_head
    n_kv_head = max(2, config.n_head // 4)  # e.g. 8 KV heads for 32 query heads, as Llama 3 8B
    r, dr = config.kv_lora_rank, config.qk_rope_head_dim
    rows = [("MHA", 2 * config.n_head * head_dim), (f"GQA, {n_kv_head} KV heads", 2 * n_kv_head * head_dim),
            ("MQA, 1 KV head", 2 * head_dim), (f"MLA, r {r} + dr {dr}", r + dr)]
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
    model = Model(Config(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), Tokenizer(**ckpt["tokenizer"])


def main():
    parser = argparse.ArgumentParser(description="KV-cache sizes, then a sample from a checkpoint or random weights.")
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
            model = Model(Config(**PRESETS[args.preset])).to(args.device).eval()
        prompt = tokenizer.encode(args.prompt)
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}")
    if model.config != MLAMoEConfig():
        print(cache_size_table(model.config))
    counts = model.param_counts()
    print(f"{MODEL_TYPE}: {counts['total'] / 1e6:.2f}M parameters ({counts['active'] / 1e6:.2f}M active),", model.config)
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
    out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    for row in out.tolist():
        print(tokenizer.decode(row))
        print("-" * 40)


if __name__ == "__main__":
    main()

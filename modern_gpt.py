"""
modern_gpt.py - a Llama-style GPT in one file: the model, KV-cache generation, tokenizers and data.

The decoder of gpt.py with the changes that most open models since Llama (Touvron et al.
2023, arXiv 2302.13971) share:

    x = x + attn(norm_1(x))   RMSNorm (2019, arXiv 1910.07467) instead of LayerNorm
    x = x + mlp(norm_2(x))    SwiGLU feed-forward (Shazeer 2020, arXiv 2002.05202)

- positions enter through rotary embeddings of queries and keys (RoFormer, arXiv 2104.09864),
  not a learned table, so attention depends on relative positions;
- grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245): n_head query heads share
  n_kv_head key/value heads (n_kv_head 1 is multi-query attention, arXiv 1911.02150), and
  the KV cache stores only those n_kv_head heads;
- no biases; optional QK-norm (RMSNorm of queries and keys per head, as OLMo 2 and Qwen3)
  that keeps attention logits bounded; tied or untied output head.

Run it:
    python train.py --model_type moderngpt --tokenizer char      # nanoGPT's CPU Shakespeare recipe
    python modern_gpt.py --ckpt out/ckpt.pt --prompt "ROMEO:"    # sample from a checkpoint
    python modern_gpt.py                                         # sizes + a sample from random weights

The file imports only torch, numpy, tiktoken and the standard library: copy it
together with data/gpt2.tiktoken into another project and it works.
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

MODEL_TYPE = "moderngpt"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@dataclass
class ModernGPTConfig:
    block_size: int = 1024  # longest context; length of the rotary tables and the KV cache
    vocab_size: int = 50257  # GPT-2 BPE: 256 bytes + 50,000 merges + <|endoftext|>
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # query heads; n_embd must be a multiple of it
    n_kv_head: int = 12  # key/value heads, shared by n_head / n_kv_head query heads each (1 = multi-query)
    n_embd: int = 768  # width of the residual stream
    mlp_hidden: int = 0  # SwiGLU hidden size before rounding; 0 = 8/3 n_embd (the 4C GELU MLP's parameters)
    multiple_of: int = 64  # the SwiGLU hidden size is rounded up to a multiple of this (fast matmuls)
    rope_theta: float = 10000.0  # base of the rotary frequencies (RoFormer eq. 15)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before the rotation
    tie_embeddings: bool = True  # the output head shares its weight with the token embedding
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    dropout: float = 0.0  # on embeddings, attention weights and residual branches


PRESETS = {
    # GPT-2 small's shape; SwiGLU 2048 = 8/3 * 768 matches its MLP, so 123.6M parameters (GPT-2: 124.4M)
    "gpt2": dict(n_layer=12, n_head=12, n_kv_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_kv_head=16, n_embd=1024),  # 355M
    "small-gqa": dict(n_layer=12, n_head=12, n_kv_head=4, n_embd=768),  # 114M, a KV cache 1/3 as large
    # nanoGPT's CPU Shakespeare recipe; 2 KV heads and SwiGLU 384: each block as large as gpt.py's "cpu" one
    "cpu": dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, block_size=64),
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


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm_1(x)), then + mlp(norm_2(x))."""

    def __init__(self, config):
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        hidden = swiglu_hidden(config.n_embd, config.mlp_hidden, config.multiple_of)
        self.mlp = SwiGLU(config.n_embd, hidden, config.dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm_1(x), cache)
        x = x + self.mlp(self.norm_2(x))
        return x


class ModernGPT(nn.Module):
    """Token embedding, n_layer blocks, final RMSNorm, LM head (tied to the embedding or not)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings; no position table
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # N(0, 0.02) as GPT-2; the Linear that ends each residual branch is scaled by
        # 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_branch_end", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) -> logits (B, T, vocab_size), and with targets (B, T; -100 ignored) the mean
        cross-entropy. With `cache` (new_cache()) idx continues the cached positions."""
        B, T = idx.shape
        start = cache[0].pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.drop(self.wte(idx))  # (B, T, C); positions are rotated into q and k in each layer
        for i, block in enumerate(self.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def new_cache(self, batch_size):
        """An empty KV cache (one KVCache per layer, n_kv_head heads each) as long as the context."""
        c = self.config
        w = self.wte.weight
        return [KVCache(batch_size, c.n_kv_head, c.block_size, c.n_embd // c.n_head, w.device, w.dtype)
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
        """AdamW; weight decay on matrices and embeddings only (not on norm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")  # fused AdamW kernels exist for these devices
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def param_counts(self):
        """Total parameters (a tied head counted once) and those active per token (all, here)."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "active": total}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token, PaLM (arXiv 2204.02311) app. B: 6N for the weight matmuls (N without
        an untied embedding table, a lookup) plus 12 * n_layer * n_embd * seq_len for attention."""
        c = self.config
        n_matmul = self.param_counts()["active"]
        if not c.tie_embeddings:
            n_matmul -= self.wte.weight.numel()
        return 6 * n_matmul + 12 * c.n_layer * c.n_embd * seq_len


Config, Model = ModernGPTConfig, ModernGPT  # the names train.py looks for in every model file


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
    parser = argparse.ArgumentParser(description="Sample from a modern GPT checkpoint, or from random weights.")
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
    try:
        if args.ckpt:
            model, tokenizer = load_checkpoint(args.ckpt, args.device)
        else:
            tokenizer = Tokenizer("gpt2")
            model = Model(Config(**PRESETS[args.preset])).to(args.device).eval()
        prompt = tokenizer.encode(args.prompt)
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}")
    counts = model.param_counts()
    print(f"{MODEL_TYPE}: {counts['total'] / 1e6:.2f}M parameters, {model.config}")
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
    out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    for row in out.tolist():
        print(tokenizer.decode(row))
        print("-" * 40)


if __name__ == "__main__":
    main()

"""
gpt.py - GPT-2 in one file: the model, KV-cache generation, tokenizers and data.

GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"): pre-LN blocks
x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), learned token and position embeddings, a final LayerNorm,
the head tied to the token embedding. OpenAI's names and shapes, so its weights load one-to-one
(load_hf.py). docs/gpt.md maps the paper onto this file.

    python train.py --model_type gpt                      # nanoGPT's char-level CPU Shakespeare recipe
    python gpt.py --ckpt out/ckpt.pt --prompt "ROMEO:"    # sample from a checkpoint
    python gpt.py                                         # sizes + a sample from random weights
"""
import argparse
import base64
import math
import os
from dataclasses import dataclass

import numpy as np
import tiktoken
import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "gpt"


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context; size of the learned position table
    vocab_size: int = 50257  # GPT-2 BPE: 256 bytes + 50,000 merges + <|endoftext|>
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads; n_embd must be a multiple of it
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # probability, on embeddings, attention weights and residual branches
    bias: bool = True  # GPT-2 has biases in every Linear and LayerNorm
    gelu_approximate: str = "tanh"  # GPT-2's tanh approximation of GELU; "none" = exact (erf) GELU


PRESETS = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # 124M parameters
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},  # 350M
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},  # 774M
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},  # 1558M
    # nanoGPT's CPU Shakespeare recipe, with its model's choices: no biases ("a bit better and
    # faster") and nn.GELU()'s exact GELU (PyTorch's CPU kernel for the tanh form is ~3x slower)
    "cpu": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "bias": False, "gelu_approximate": "none"},
}


# ----------------------------------------------------------------------------- model

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
    """Multi-head self-attention with one fused Linear for queries, keys and values."""

    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} must be a multiple of n_head {config.n_head}")
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_branch_end = True  # see GPT._init_weights
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        # split C into n_head heads of size hd and move heads next to batch: (B, nh, T, hd)
        q, k, v = (part.view(B, T, -1, C // self.n_head).transpose(1, 2) for part in (q, k, v))
        start = cache.pos if cache is not None else 0  # the new tokens' positions start after the cached ones
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, cached + T, hd); a static cache: all its positions
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0, start=start)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU (tanh approximation, as GPT-2) -> C."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_branch_end = True
        self.gelu_approximate = config.gelu_approximate
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu_approximate)))


class Block(nn.Module):
    """Pre-LN Transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: embeddings, n_layer blocks, final LayerNorm, tied LM head."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned positions
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2: normal(0, 0.02), zero biases; a Linear that ends a residual branch gets 0.02 / sqrt(2 n_layer),
        # so the residual stream's variance does not grow with depth
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_branch_end", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy against targets
        (B, T; -100 is ignored) when given. With `cache` (new_cache()) idx continues the cached positions."""
        T = idx.size(1)
        start = cache[0].pos if cache is not None else 0
        if not torch.is_tensor(start) and start + T > self.config.block_size:  # static: generate sized it
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        pos = start + torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def new_cache(self, batch_size, max_len=None, static=False):
        """An empty KV cache (one KVCache per layer) as long as the context, or max_len; static: see KVCache."""
        config, w = self.config, self.wte.weight
        head_dim = config.n_embd // config.n_head
        return [KVCache(batch_size, config.n_head, max_len or config.block_size, head_dim, w.device, w.dtype, static)
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
        """AdamW; weight decay on matrices and embeddings only (not on biases and norm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def param_counts(self):
        """Total parameters (the tied head counted once) and those active per token (all, here)."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "active": total}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token, PaLM (arXiv 2204.02311) app. B: 6 x parameters for the weight matmuls (without the
        position table, a lookup; the tied wte counts once, as the head) + 12 * n_layer * n_embd * seq_len."""
        n_matmul = self.param_counts()["active"] - self.wpe.weight.numel()
        return 6 * n_matmul + 12 * self.config.n_layer * self.config.n_embd * seq_len


Config, Model = GPTConfig, GPT  # the names train.py looks for in every model file


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

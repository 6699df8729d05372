"""
gpt.py - GPT-2 in one file: the model, KV-cache generation, tokenizers and data.

GPT-2 is a decoder-only Transformer (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners"; the block is GPT-1's, arXiv-less, with the
LayerNorm moved to the input of each sub-block). Each block is

    x = x + attn(ln_1(x))     causal multi-head self-attention
    x = x + mlp(ln_2(x))      Linear -> GELU (tanh approximation) -> Linear

with learned token (wte) and position (wpe) embeddings, a final LayerNorm, and
an output head that shares its weight with wte. Parameter names and shapes
follow OpenAI's release (wte, wpe, h.N.ln_1, attn.c_attn, ...), so the real
weights load one-to-one (see load_gpt2.py; OpenAI stores Linear weights as
Conv1D, transposed).

Run it:
    python train.py --model_type gpt --tokenizer char     # nanoGPT's CPU Shakespeare recipe
    python gpt.py --ckpt out/ckpt.pt --prompt "ROMEO:"    # sample from a checkpoint
    python gpt.py                                         # sizes + a sample from random weights

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

MODEL_TYPE = "gpt"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context; size of the learned position table
    vocab_size: int = 50257  # GPT-2 BPE: 256 bytes + 50,000 merges + <|endoftext|>
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads; n_embd must be a multiple of it
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # GPT-2 has biases in every Linear and LayerNorm
    gelu_approximate: str = "tanh"  # GPT-2's tanh approximation of GELU; "none" = exact (erf) GELU


PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # nanoGPT's CPU Shakespeare recipe, with its model's choices: no biases ("a bit better and
    # faster") and nn.GELU()'s exact GELU (PyTorch's CPU kernel for the tanh form is ~3x slower)
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, gelu_approximate="none"),
}


# ----------------------------------------------------------------------------- model

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
    """softmax(q k^T / sqrt(hd)) v where query i sees keys up to its own position.

    q is (B, nh, t, hd) for the last t positions; k, v (B, nh, S, hd) hold all S positions.
    """
    t, S = q.size(2), k.size(2)
    if t == S:  # no cache, or the prompt's first pass: the plain causal mask
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if t == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # t new tokens after S - t cached ones: query i sees keys 0 .. S - t + i
    mask = torch.ones(t, S, dtype=torch.bool, device=q.device).tril(diagonal=S - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with one fused Linear for queries, keys and values."""

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_branch_end = True  # see GPT._init_weights
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        # split C into n_head heads of size hd and move heads next to batch: (B, nh, T, hd)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, cached + T, hd)
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU (tanh approximation, as GPT-2) -> C."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_branch_end = True
        self.gelu_approximate = config.gelu_approximate
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu_approximate)))


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
        x = x + self.mlp(self.ln_2(x))
        return x


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
        # GPT-2: N(0, 0.02) everywhere; the Linear that ends each residual branch is scaled
        # by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_branch_end", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy
        against targets (B, T) when given (positions marked -100 are ignored).
        With `cache` (a list of KVCache, one per layer) idx continues the cached positions."""
        B, T = idx.shape
        start = cache[0].pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def new_cache(self, batch_size):
        """An empty KV cache (one KVCache per layer) as long as the context."""
        c = self.config
        w = self.wte.weight
        return [KVCache(batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, w.device, w.dtype)
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
        """Total parameters (the tied head counted once) and those active per token (all, here)."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "active": total}

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), PaLM (arXiv 2204.02311) appendix B:
        6N for the weight matmuls plus 12 * n_layer * n_embd * seq_len for attention.
        N leaves out the position table (a lookup); the tied wte counts once, as the head."""
        c = self.config
        n_matmul = self.param_counts()["active"] - self.wpe.weight.numel()
        return 6 * n_matmul + 12 * c.n_layer * c.n_embd * seq_len


Config, Model = GPTConfig, GPT  # the names train.py looks for in every model file


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
    parser = argparse.ArgumentParser(description="Sample from a GPT-2 checkpoint, or from random weights.")
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

"""
data.py - what train.py trains on: the corpus, read and checked, and the tokenizer that goes with it.

    --data input.txt        a UTF-8 text: 90% of its characters train, 10% validate; BPE ids cached beside it
    --data FOLDER           nanoGPT's train.bin and val.bin of uint16 GPT-2 ids
    --data SHARDS           llm.c-format shards, *_train_*.bin and *_val_*.bin (fineweb.py, llm.c, modded-nanogpt),
                            memory-mapped and read in order: each training token is seen once per epoch

The tokenizer follows the preset: characters for the cpu preset (nanoGPT's char-level recipe), GPT-2's BPE for
GPT-2-sized ones and for train.bin/val.bin folders; shards bring theirs (meta.json; none: GPT-2's, as llm.c's
shards hold); --tokenizer overrides (bpe: learned from the corpus by
bpe.py); a resumed run keeps its checkpoint's. The token ids themselves come from the model file's
load_dataset, so a model file copied alone reads the same data.
"""
import argparse
import glob
import hashlib
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch


class UsageError(Exception):
    """A mistake in the command line or the input: reported in one line, without a traceback."""


def bounded(convert, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: convert(text) (int or float), finite and within low..high (an open end excludes its
    bound). Its error names the allowed range; argparse puts the option's name in front of it. Every script's
    numeric options use it."""
    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {low}"
    else:
        allowed = f"{'<' if high_open else '<='} {high}"
    kind = "a finite number" if convert is float else "an integer"

    def parse(text):
        value = convert(text)  # a ValueError here is argparse's own "invalid int value: 'x'"
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if (isinstance(value, float) and not math.isfinite(value)) or below or above:  # ints: any size
            raise argparse.ArgumentTypeError(f"{text} is not {kind} {allowed}")
        return value

    parse.__name__ = convert.__name__
    return parse


@dataclass
class Corpus:
    train: np.ndarray  # token ids of the training split (a memmap for token files)
    val: np.ndarray  # token ids of the validation split
    tokenizer: object  # the model file's Tokenizer
    tokens_per_char: float  # of the validation text: bits per character = nats per token * this / ln 2
    why: str  # why this tokenizer, for the run's first line
    in_order: bool = False  # shards: batches read the stream in order, not at random windows


def check_text(path):
    """The corpus, read as UTF-8, or a one-line error naming the file."""
    if not os.path.isfile(path):
        raise UsageError(f"data file {path} not found: pass --data with a text file or a train.bin/val.bin folder")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}): "
                         "pass a text file or a train.bin/val.bin folder") from None
    if not text:
        raise UsageError(f"{path} is empty: pass a text file that holds the corpus")
    return text


def check_token_files(folder, gpt2):
    """train.bin and val.bin must hold uint16 ids of GPT-2's vocabulary; returns the characters of val.bin's
    text (for bits per character), estimated from its first million tokens."""
    for name in ("train.bin", "val.bin"):
        path = os.path.join(folder, name)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if not size or size % 2:
            found = "is missing" if size is None else f"has {size} bytes"
            raise UsageError(f"{path} {found}: a data folder needs train.bin and val.bin of uint16 token ids")
        ids = np.memmap(path, dtype=np.uint16, mode="r")
        if ids.max() >= gpt2.vocab_size:
            raise UsageError(f"{path} holds token id {ids.max()}, outside GPT-2's vocabulary of {gpt2.vocab_size}: "
                             "a data folder holds GPT-2 ids")
    head = ids[:1_000_000]
    return len(gpt2.decode(head.tolist())) * len(ids) / len(head)


def rebuild_tokenizer(module, state):
    """A checkpoint's tokenizer: the model file's (char, gpt2, bpe) or a released model's tokenizer.json."""
    if state["kind"] == "tokenizer.json":
        import load_hf  # the tokenizers library reads it; the model files only know tiktoken's BPEs
        return load_hf.HFTokenizer(**state)
    return module.Tokenizer(**state)


def same_tokenizer(made, tokenizer):
    """Whether shards made with meta.json's `made` tokenizer hold `tokenizer`'s ids."""
    if tokenizer.kind == "tokenizer.json":
        return made["kind"] == "hf" and made["sha256"] == hashlib.sha256(tokenizer.json.encode()).hexdigest()
    return (made["kind"], [list(m) for m in made.get("merges", ())]) == (tokenizer.kind, [list(m) for m in
                                                                                           tokenizer.merges])


def load_shards(path, module, tokenizer_kind, tokenizer_state):
    """The Corpus of a folder of llm.c-format shards, with the tokenizer its meta.json names (GPT-2's without);
    a resumed or --init run's tokenizer must be the one the shards were made with."""
    import shards  # the shard format's reader
    meta = shards.read_meta(path) or {"tokenizer": {"kind": "gpt2"}}
    made = meta["tokenizer"]
    why = "meta.json's" if "source" in meta else "shards without meta.json hold GPT-2 ids, as llm.c's"
    if tokenizer_kind not in (None, made["kind"]):
        raise UsageError(f"{path} holds {made['kind']} tokens ({why}): drop --tokenizer {tokenizer_kind}")
    if tokenizer_state:
        tokenizer = rebuild_tokenizer(module, tokenizer_state)
        if not same_tokenizer(made, tokenizer):
            raise UsageError(f"{path} holds ids of another tokenizer ({made['kind']}, {why}) than the model's "
                             f"({tokenizer.kind}): prepare the shards with its tokenizer (fineweb.py --tokenizer)")
    elif made["kind"] == "hf":
        import load_hf
        tokenizer = load_hf.HFTokenizer(made["path"])
        if not same_tokenizer(made, tokenizer):
            raise UsageError(f"{made['path']} changed since {path} was made from it: it holds other ids now")
    else:
        tokenizer = module.Tokenizer(made["kind"], merges=made.get("merges", ()))
    try:
        train, val = (shards.TokenStream(shards.shard_paths(path, split)) for split in ("train", "val"))
    except ValueError as err:  # a header that does not match the file
        raise UsageError(str(err)) from None
    if not len(val):
        raise UsageError(f"{path} has no *_val_*.bin shard: fineweb.py writes one first (--val_tokens)")
    head = val.window(0, min(len(val), 1_000_000))
    if head.max() >= tokenizer.vocab_size:
        raise UsageError(f"{path} holds token id {head.max()}, outside the {tokenizer.vocab_size:,}-token vocabulary "
                         f"of {tokenizer.kind} ({why})")
    tokens_per_char = len(head) / len(tokenizer.decode(head.tolist()))
    return Corpus(train, val, tokenizer, tokens_per_char, f"{made['kind']}: {why}", in_order=True)


def cached_ids(path, key, tokenize):
    """(train, val) ids of the text at path: tokenize()'s, cached beside the text as path.key.npz and read from there
    while newer than the text, so a large text is tokenized once for all its runs (characters need no cache)."""
    cache = f"{path}.{key}.npz"
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(path):
        with np.load(cache) as saved:
            return saved["train"], saved["val"]
    train, val = tokenize()
    try:
        np.savez(cache + ".tmp.npz", train=train, val=val)
        os.replace(cache + ".tmp.npz", cache)  # atomic: a reader never sees half a file
    except OSError:
        pass  # a read-only folder: tokenize every time
    return train, val


def hf_token_ids(path, text, tokenizer):
    """(train, val) ids of a text by a tokenizer.json, 90% of its characters for training, cached (keyed by the
    tokenizer's sha256) as uint16, or uint32 where the vocabulary passes 65,536 (Qwen3, Llama 3)."""
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    key = "tokenizer-" + hashlib.sha256(tokenizer.json.encode()).hexdigest()[:16]
    cut = int(0.9 * len(text))
    parts = text[:cut], text[cut:]
    return cached_ids(path, key, lambda: [np.array(tokenizer.encode(part), dtype=dtype) for part in parts])


def load_corpus(path, module, preset, tokenizer_kind, tokenizer_state, bpe_vocab_size, state_why="the resumed run's"):
    """The Corpus at `path` for a run of `preset`: tokenizer_kind is --tokenizer (None: the preset's),
    tokenizer_state the tokenizer of a resumed run or of --init's model (state_why says which), else None."""
    folder = os.path.isdir(path)
    if folder and glob.glob(os.path.join(glob.escape(path), "*_train_*.bin")):
        return load_shards(path, module, tokenizer_kind, tokenizer_state)
    if tokenizer_state and tokenizer_kind not in (None, tokenizer_state["kind"]):
        raise UsageError(f"--tokenizer {tokenizer_kind}: the model reads {tokenizer_state['kind']} ids "
                         f"({state_why}): drop --tokenizer")
    if tokenizer_state:
        kind, why = tokenizer_state["kind"], state_why
    elif folder:
        kind, why = "gpt2", "train.bin/val.bin hold GPT-2 ids"
        if tokenizer_kind not in (None, "gpt2"):
            raise UsageError(f"{path} holds GPT-2 ids (train.bin/val.bin): drop --tokenizer {tokenizer_kind}")
    elif tokenizer_kind:
        kind, why = tokenizer_kind, "--tokenizer"
    elif preset == "cpu":
        kind, why = "char", "the cpu preset's, nanoGPT's char-level recipe; --tokenizer gpt2 or bpe to change"
    else:
        kind, why = "gpt2", f"the {preset} preset's; --tokenizer char or bpe to change"
    if folder and kind != "gpt2":
        raise UsageError(f"{path} holds GPT-2 ids (train.bin/val.bin): the model reads {kind} ids ({why})")
    if folder:
        val_chars = check_token_files(path, module.Tokenizer("gpt2"))
    else:
        text = check_text(path)
        train_text, val_chars = text[:int(0.9 * len(text))], len(text) - int(0.9 * len(text))
    try:
        if kind == "tokenizer.json":
            tokenizer = rebuild_tokenizer(module, tokenizer_state)
            train, val = hf_token_ids(path, text, tokenizer)
            return Corpus(train, val, tokenizer, len(val) / val_chars, why)
        if tokenizer_state:
            tokenizer = module.Tokenizer(**tokenizer_state)
        elif kind == "bpe":
            import bpe  # learning the BPE lives in its own file; the model files only use it
            tokenizer = module.Tokenizer("bpe", merges=bpe.learned_merges(path, train_text, bpe_vocab_size))
        else:
            tokenizer = module.Tokenizer("gpt2") if kind == "gpt2" else None  # None: the text's characters
        if folder or tokenizer is None or tokenizer.kind == "char":  # memory-mapped, or a table lookup: no cache
            train, val, tokenizer = module.load_dataset(path, tokenizer)
        else:  # the BPE's name, size and merges name its cache
            key = f"{tokenizer.kind}-{tokenizer.vocab_size}-{zlib.crc32(repr(tokenizer.merges).encode()):08x}"
            train, val = cached_ids(path, key, lambda: module.load_dataset(path, tokenizer)[:2])
    except (OSError, ValueError) as err:  # a bad --bpe_vocab_size, characters outside a resumed vocabulary, ...
        raise UsageError(f"{path}: {err}") from None
    return Corpus(train, val, tokenizer, len(val) / val_chars, why)


def micro_batch(module, corpus, B, T, seed, step, block, blocks, device):
    """Micro-batch `block` of `step`'s global batch (blocks 0 .. blocks - 1 = accum * ranks - 1), and the seed of
    its dropout masks (and router noise). Both come from (seed, step, block) alone, whatever rank draws them, so a
    run resumed at any step on any number of ranks sees the same batches. A text or train.bin: B random windows.
    Shards: the stream in order, micro-batch n = step * blocks + block reading the B*T + 1 tokens at n * B*T
    (modulo the stream's length: the next epoch starts over), so each token is trained on once per epoch."""
    torch.manual_seed(seed + 1000 * step + 1_000_003 * block)
    if corpus.in_order:
        return stream_batch(corpus.train, (step * blocks + block) % ((len(corpus.train) - 1) // (B * T)), B, T,
                            device)
    generator = torch.Generator().manual_seed(seed + 7919 * (step + 1) + 1_000_003 * block)
    return module.get_batch(corpus.train, B, T, generator, device)


def stream_batch(stream, n, B, T, device):
    """Inputs and next-token targets (B, T) from the n-th run of B*T + 1 tokens of a TokenStream."""
    tokens = torch.from_numpy(stream.window(n * B * T, B * T + 1))
    x, y = tokens[:-1].view(B, T), tokens[1:].view(B, T)
    if device.startswith("cuda"):  # page-locked memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def eval_batches(module, corpus, split, B, T, iters, seed, device):
    """The `iters` batches of an evaluation of `split` ("train" or "val"), drawn by every rank: the same ones every
    time (random windows of a fixed seed; of shards, the first `iters` runs of B*T + 1 tokens of the stream)."""
    generator = torch.Generator().manual_seed(seed + 1)
    ids = corpus.train if split == "train" else corpus.val
    for i in range(iters):
        if corpus.in_order:
            yield stream_batch(ids, i % ((len(ids) - 1) // (B * T)), B, T, device)
        else:
            yield module.get_batch(ids, B, T, generator, device)

"""
data.py - what train.py trains on: the corpus, read and checked, and the tokenizer that goes with it.

    --data input.txt        a UTF-8 text: 90% of its characters train, 10% validate; BPE ids cached beside it
    --data FOLDER           nanoGPT's train.bin and val.bin of uint16 GPT-2 ids

The tokenizer follows the preset: characters for the cpu preset (nanoGPT's char-level recipe), GPT-2's BPE for
GPT-2-sized ones and for train.bin/val.bin folders; --tokenizer overrides (bpe: learned from the corpus by
bpe.py); a resumed run keeps its checkpoint's. The token ids themselves come from the model file's
load_dataset, so a model file copied alone reads the same data.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch


class UsageError(Exception):
    """A mistake in the command line or the input: reported in one line, without a traceback."""


@dataclass
class Corpus:
    train: np.ndarray  # token ids of the training split (a memmap for token files)
    val: np.ndarray  # token ids of the validation split
    tokenizer: object  # the model file's Tokenizer
    tokens_per_char: float  # of the validation text: bits per character = nats per token * this / ln 2
    why: str  # why this tokenizer, for the run's first line


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


def load_corpus(path, module, preset, tokenizer_kind, tokenizer_state, bpe_vocab_size):
    """The Corpus at `path` for a run of `preset`: tokenizer_kind is --tokenizer (None: the preset's),
    tokenizer_state a resumed checkpoint's tokenizer (None for a new run)."""
    folder = os.path.isdir(path)
    if tokenizer_state:
        kind, why = tokenizer_state["kind"], "the resumed run's"
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
    if folder:
        val_chars = check_token_files(path, module.Tokenizer("gpt2"))
    else:
        text = check_text(path)
        train_text, val_chars = text[:int(0.9 * len(text))], len(text) - int(0.9 * len(text))
    try:
        if tokenizer_state:
            tokenizer = module.Tokenizer(**tokenizer_state)
        elif kind == "bpe":
            import bpe  # learning the BPE lives in its own file; the model files only use it
            tokenizer = module.Tokenizer("bpe", merges=bpe.learned_merges(path, train_text, bpe_vocab_size))
        else:
            tokenizer = module.Tokenizer("gpt2") if kind == "gpt2" else None  # None: the text's characters
        train, val, tokenizer = module.load_dataset(path, tokenizer)
    except (OSError, ValueError) as err:  # a bad --bpe_vocab_size, characters outside a resumed vocabulary, ...
        raise UsageError(f"{path}: {err}") from None
    return Corpus(train, val, tokenizer, len(val) / val_chars, why)


def micro_batch(module, corpus, B, T, seed, step, block, device):
    """The B windows of micro-batch `block` of `step`'s global batch (blocks 0 .. accum * ranks - 1), and the
    seed of its dropout masks (and router noise). Both come from (seed, step, block) alone, whatever rank draws
    them, so a run resumed at any step on any number of ranks sees the same batches."""
    generator = torch.Generator().manual_seed(seed + 7919 * (step + 1) + 1_000_003 * block)
    torch.manual_seed(seed + 1000 * step + 1_000_003 * block)
    return module.get_batch(corpus.train, B, T, generator, device)


def eval_batches(module, corpus, split, B, T, iters, seed, device):
    """The `iters` batches of an evaluation of `split` ("train" or "val"): the same ones every time, drawn by
    every rank."""
    generator = torch.Generator().manual_seed(seed + 1)
    ids = corpus.train if split == "train" else corpus.val
    for _ in range(iters):
        yield module.get_batch(ids, B, T, generator, device)

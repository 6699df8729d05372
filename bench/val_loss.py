"""
bench/val_loss.py - the loss of a train.py checkpoint on the WHOLE validation split.

    python bench/val_loss.py out/ckpt.pt [more checkpoints ...]

train.py's evaluation averages eval_iters random batches (nanoGPT's recipe: 20 batches of 12 x 64
characters), an estimate about +-0.016 nats from the whole-split loss (README, twenty seeds). This
script cuts the validation split (the last 10% of the corpus the checkpoint was trained on, --data)
into consecutive windows of the model's block_size and averages the next-token loss over all of them,
so two models can be compared on exactly the same text; bits per character compare models whose tokenizers
differ (characters, a learned BPE, GPT-2's).

A checkpoint written by nanoGPT's train.py (char-level Tiny Shakespeare, out-shakespeare-char/ckpt.pt)
is scored too: gpt.py computes the same function (bench/nanogpt_equivalence.py), so its weights are
loaded into gpt.py under their GPT-2 names and the characters of --data are its vocabulary, as in
nanoGPT's data/shakespeare_char/prepare.py.
"""

import argparse
import importlib
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt
from train import HERE, MODEL_FILES


@torch.no_grad()
def whole_split_loss(model, ids, block_size, batch_size=64):
    n_windows = (len(ids) - 1) // block_size
    starts = np.arange(n_windows) * block_size
    total, count = 0.0, 0
    for i in range(0, n_windows, batch_size):
        windows = ids[starts[i : i + batch_size, None] + np.arange(block_size + 1)]
        windows = torch.from_numpy(windows.astype(np.int64))
        _, loss = model(windows[:, :-1], windows[:, 1:])
        total += loss.item() * windows[:, 1:].numel()
        count += windows[:, 1:].numel()
    return total / count, count


def load_nanogpt_checkpoint(ckpt, data):
    """gpt.py's model and char tokenizer for a nanoGPT checkpoint (its "model_args" and "model")."""
    _, _, tokenizer = gpt.load_dataset(data)  # its characters, as nanoGPT's prepare.py
    args = {k: v for k, v in ckpt["model_args"].items() if k in ("n_layer", "n_head", "n_embd", "block_size", "bias")}
    model = gpt.GPT(gpt.GPTConfig(**args, vocab_size=ckpt["model_args"]["vocab_size"], gelu_approximate="none"))
    prefixes = ("_orig_mod.", "transformer.")  # torch.compile's wrapper, nanoGPT's module dict
    state = {}
    for name, tensor in ckpt["model"].items():
        for prefix in prefixes:
            name = name.removeprefix(prefix)
        state[name] = tensor
    model.load_state_dict(state)
    return model.eval(), tokenizer


def score(path, data):
    """(model type, whole-split loss in nats per token, tokens scored, bits per character) of a checkpoint on the
    validation split of the text `data`."""
    if not os.path.exists(path):
        raise SystemExit(f"error: no checkpoint at {path}: train one with python train.py")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "model_args" in ckpt:
        model_type = "nanoGPT"
        model, tokenizer = load_nanogpt_checkpoint(ckpt, data)
        module = gpt
    else:
        model_type = ckpt["model_type"]
        module = importlib.import_module(MODEL_FILES[model_type])
        model, tokenizer, _ = module.load_checkpoint(path)
    _, val_ids, _ = module.load_dataset(data, tokenizer)
    loss, tokens = whole_split_loss(model, val_ids, model.config.block_size)
    # bits per character: nats per token * tokens per character / ln 2, comparable across tokenizers
    bpc = loss * len(val_ids) / len(tokenizer.decode(val_ids.tolist())) / math.log(2)
    return model_type, loss, tokens, bpc


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--data", default=os.path.join(HERE, "input.txt"))
    args = p.parse_args()
    for path in args.ckpts:
        model_type, loss, tokens, bpc = score(path, args.data)
        print(f"{path}: {model_type}, whole validation split ({tokens:,} tokens): loss {loss:.4f}, {bpc:.4f} bits/char")


if __name__ == "__main__":
    main()

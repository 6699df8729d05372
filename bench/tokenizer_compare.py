"""
bench/tokenizer_compare.py - one model trained at the same wall-time budget with each tokenizer: characters,
BPEs learned from the corpus (bpe.py) of 512, 2,048 and 8,192 tokens, and GPT-2's 50,257-token BPE.

    OMP_NUM_THREADS=1 python bench/tokenizer_compare.py                       # moegpt, the char recipe's time
    OMP_NUM_THREADS=1 python bench/tokenizer_compare.py --model_type moderngpt --budget 120

A token holds more text with a bigger vocabulary, but the output head (n_embd x vocab) costs more per token and
each token is seen less often. Each run is `python train.py --model_type M --tokenizer K` with the recipe's
batch (12 x 64 tokens) and schedule; its max_steps is the budget divided by the step time measured in a short
timing run of the same command first, so every tokenizer gets about the same wall time. Validation losses are
compared in bits per character of the validation text (train.py's val_bpc), the scale on which characters,
BPE-N and GPT-2 tokens compare. Prints a table and each run's last sample.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZERS = {
    "char": ["--tokenizer", "char"],
    "bpe-512": ["--tokenizer", "bpe", "--bpe_vocab_size", "512"],
    "bpe-2048": ["--tokenizer", "bpe", "--bpe_vocab_size", "2048"],
    "bpe-8192": ["--tokenizer", "bpe", "--bpe_vocab_size", "8192"],
    "gpt2": ["--tokenizer", "gpt2"],
}


def train(model_type, tokenizer_args, steps, out_dir, extra=()):
    """Runs train.py; returns (wall seconds, stdout, log records)."""
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--model_type",
            model_type,
            *tokenizer_args,
            "--max_steps",
            str(steps),
            "--out_dir",
            out_dir,
            "--log_interval",
            "100",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return time.perf_counter() - start, result.stdout, [json.loads(line) for line in f]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_type", default="moegpt")
    p.add_argument("--budget", type=float, default=0, help="seconds per run (default: the char recipe's 2000 steps)")
    p.add_argument("--timing_steps", type=int, default=40)
    p.add_argument("--tokenizers", nargs="*", default=list(TOKENIZERS), choices=list(TOKENIZERS))
    args = p.parse_args()
    rows, samples = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        ms = {}
        for name in args.tokenizers:  # step time of each, measured after the tokenizer is learned and cached
            _, _, records = train(
                args.model_type,
                TOKENIZERS[name],
                args.timing_steps,
                os.path.join(tmp, name),
                ["--eval_interval", "100000", "--sample_tokens", "0", "--eval_iters", "1"],
            )
            ms[name] = statistics.median(r["ms"] for r in records if "ms" in r and r["step"] > 5)
        budget = args.budget or ms.get("char", min(ms.values())) * 2000 / 1000
        for name in args.tokenizers:
            steps = max(1, round(budget * 1000 / ms[name]))
            wall, stdout, records = train(
                args.model_type,
                TOKENIZERS[name],
                steps,
                os.path.join(tmp, name + "-run"),
                ["--eval_interval", str(steps)],
            )
            final = [r for r in records if "val_loss" in r][-1]
            tok_s = statistics.median(r["tok_per_s"] for r in records if "tok_per_s" in r and r["step"] > 5)
            vocab = stdout.splitlines()[0].split(", ")[1]
            rows.append((name, vocab, steps, wall, tok_s, final["val_loss"], final["val_bpc"]))
            samples[name] = stdout.split("--- sample ---\n")[-1].split("\n--------------")[0]
    print(f"{args.model_type}, budget {budget:.0f} s per run (B 12 x T 64, the recipe's schedule over max_steps)")
    print(
        f"{'tokenizer':<10}{'vocab':>16}{'steps':>7}{'wall s':>8}{'tok/s':>9}{'val nats/tok':>14}{'val bits/char':>15}"
    )
    for name, vocab, steps, wall, tok_s, loss, bpc in rows:
        print(f"{name:<10}{vocab:>16}{steps:>7}{wall:>8.0f}{tok_s:>9,.0f}{loss:>14.4f}{bpc:>15.3f}")
    for name, sample in samples.items():
        print(f"\n--- {name} ---\n{sample}")


if __name__ == "__main__":
    main()

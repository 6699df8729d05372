"""
bench/fineweb_train_speed.py - training tokens/s with batches read in order from fineweb.py's shards (TokenStream)
against random windows of a nanoGPT train.bin (gpt.get_batch), the same model and the same tokens otherwise.

    flock /tmp/nanodecoder-bench.lock python bench/fineweb_train_speed.py                     # 2 rounds, 30 steps
    flock /tmp/nanodecoder-bench.lock python bench/fineweb_train_speed.py --n_embd 256 --steps 50

Both sources hold the GPT-2 tokens of input.txt (the shards in pieces of --shard_size tokens, so batches cross
shard boundaries). A step is one forward, backward and AdamW update of gpt.py at the given size on a batch of
B x T tokens; the in-order batch of step s is the B*T + 1 tokens at s * B * T of the training stream (wrapping
round), read by train.py's own data.stream_batch. Runs alternate; the table gives each source's median tokens/s.
The data costs microseconds against a step's milliseconds, so the two should agree within noise.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data
import gpt
import shards


def train(next_batch, args):
    """tokens/s of args.steps training steps after 3 warm-up steps, batches from next_batch(step)"""
    torch.manual_seed(0)
    config = gpt.GPTConfig(block_size=args.T, vocab_size=50304, n_layer=args.n_layer, n_head=args.n_head,
                           n_embd=args.n_embd)
    model = gpt.GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(args.steps + 3):
        if step == 3:
            start = time.perf_counter()
        x, y = next_batch(step)
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return args.steps * args.B * args.T / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=data.bounded(int, 1), default=8)
    parser.add_argument("--T", type=data.bounded(int, 1), default=128)
    parser.add_argument("--n_layer", type=data.bounded(int, 1), default=2)
    parser.add_argument("--n_head", type=data.bounded(int, 1), default=4)
    parser.add_argument("--n_embd", type=data.bounded(int, 1), default=128)
    parser.add_argument("--steps", type=data.bounded(int, 1), default=30)
    parser.add_argument("--rounds", type=data.bounded(int, 1), default=2)
    parser.add_argument("--shard_size", type=data.bounded(int, 1), default=50_000)
    args = parser.parse_args()
    with open(os.path.join(ROOT, "input.txt"), encoding="utf-8") as f:
        tokens = np.array(gpt.Tokenizer("gpt2").encode(f.read()), dtype=np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        tokens.tofile(os.path.join(folder, "train.bin"))
        tokens[:1000].tofile(os.path.join(folder, "val.bin"))
        paths = []
        for i, start in enumerate(range(0, len(tokens), args.shard_size)):
            paths.append(os.path.join(folder, f"bench_train_{i + 1:06d}.bin"))
            shards.write_shard(paths[-1], tokens[start:start + args.shard_size])
        stream = shards.TokenStream(shards.shard_paths(folder, "train"))
        train_bin, _, _ = gpt.load_dataset(folder)
        generator = torch.Generator().manual_seed(0)
        span = args.B * args.T
        sources = {"train.bin, random windows (gpt.get_batch)":
                   lambda step: gpt.get_batch(train_bin, args.B, args.T, generator),
                   f"{len(paths)} shards in order (shards.TokenStream)":
                   lambda step: data.stream_batch(stream, step % ((len(stream) - 1) // span), args.B, args.T, "cpu")}
        rates = {name: [] for name in sources}
        for _ in range(args.rounds):
            for name, next_batch in sources.items():
                rates[name].append(train(next_batch, args))
        fetch = {}
        for name, next_batch in sources.items():  # the data alone: one batch, in microseconds
            start = time.perf_counter()
            for step in range(1000):
                next_batch(step)
            fetch[name] = (time.perf_counter() - start) * 1e3
    print(f"{len(tokens):,} tokens; gpt.py {args.n_layer} layers x {args.n_embd}, B {args.B} x T {args.T}, "
          f"{args.steps} steps per run, {args.rounds} rounds (interleaved)\n")
    print("| batches from | training tokens/s, median (each round) | one batch alone |\n| --- | --- | --- |")
    for name, runs in rates.items():
        print(f"| {name} | {statistics.median(runs):,.0f} ({', '.join(f'{r:,.0f}' for r in runs)}) | "
              f"{fetch[name]:.0f} µs |")


if __name__ == "__main__":
    main()

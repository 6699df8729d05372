"""
bench/generate_speed.py - tokens per second of a model file's generate(), with and without the KV cache.

    python bench/generate_speed.py                          # GPT-2 124M (random weights), 8-token prompt, 200 new
    python bench/generate_speed.py --model_type moderngpt --preset gpt2-124m --no_compare

Greedy decoding from random weights (speed does not depend on what the weights learned), batch 1.
With the cache each new token runs one position through the model; without it every step runs the
whole context again (what nanoGPT's generate does). The two run alternately, --reps times each, and
the medians are printed; the two outputs are checked to be the same tokens.
"""

import argparse
import importlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train import MODEL_FILES


def tokens_per_second(model, prompt, new_tokens, use_cache):
    t0 = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    return new_tokens / (time.perf_counter() - t0), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_type", default="gpt", choices=MODEL_FILES)
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--prompt_len", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no_compare", action="store_true", help="time the cached path only")
    args = p.parse_args()
    module = importlib.import_module(MODEL_FILES[args.model_type])
    torch.manual_seed(0)
    model = module.Model(module.Config(**module.PRESETS[args.preset])).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len))
    print(
        f"{args.model_type} {args.preset}: {model.param_counts()['total'] / 1e6:.1f}M parameters, "
        f"{torch.get_num_threads()} threads, prompt {args.prompt_len}, {args.new_tokens} new tokens"
    )
    cached, recomputed = [], []
    for _ in range(args.reps):
        speed, out_cached = tokens_per_second(model, prompt, args.new_tokens, use_cache=True)
        cached.append(speed)
        if not args.no_compare:
            speed, out_recomputed = tokens_per_second(model, prompt, args.new_tokens, use_cache=False)
            recomputed.append(speed)
            assert torch.equal(out_cached, out_recomputed), "cached and recomputed outputs differ"
    print(f"with KV cache:    {statistics.median(cached):7.1f} tok/s (median of {args.reps})")
    if recomputed:
        print(f"without a cache:  {statistics.median(recomputed):7.1f} tok/s (median of {args.reps})")
        print(f"speed-up:         {statistics.median(cached) / statistics.median(recomputed):7.2f}x")


if __name__ == "__main__":
    main()

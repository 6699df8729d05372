"""
bench/mla_decode.py - decode speed of mla_moe.py with the latent KV cache against recomputing
the whole context for every new token (no cache), on the same model and prompt.

    python bench/mla_decode.py                       # cpu preset, context 256, 200 new tokens
    python bench/mla_decode.py --preset gpt2 --device cuda

Greedy decoding of --new_tokens tokens after a --prompt_len-token prompt, from random weights
(speed does not depend on what the weights learned). The two ways run alternately (A, B, A, B,
...) so that a machine shared with other work slows both alike; the medians are reported, and
the two outputs are checked to be the same tokens.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from generate_speed import recompute

import mla_moe


def timed_generate(model, prompt, new_tokens, use_cache, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0) if use_cache else recompute(model, prompt, new_tokens)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main():
    parser = argparse.ArgumentParser(description="Decode tokens/s of mla_moe.py with and without the latent cache.")
    parser.add_argument("--preset", default="cpu", choices=mla_moe.PRESETS)
    parser.add_argument("--block_size", type=int, default=256, help="context; >= prompt + new tokens avoids sliding")
    parser.add_argument("--vocab_size", type=int, default=65, help="65 = Tiny Shakespeare's characters")
    parser.add_argument("--prompt_len", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = mla_moe.MLAMoEConfig(
        **{**mla_moe.PRESETS[args.preset], "block_size": args.block_size, "vocab_size": args.vocab_size}
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = mla_moe.MLAMoE(config).to(args.device, dtype).eval()
    prompt = torch.randint(0, args.vocab_size, (args.batch_size, args.prompt_len), device=args.device)
    timed_generate(model, prompt, 10, True, args.device)  # warm-up: allocator, kernels
    timed_generate(model, prompt, 10, False, args.device)
    seconds = {"latent cache": [], "no cache": []}
    outputs = {}
    for _ in range(args.reps):
        for name, use_cache in (("latent cache", True), ("no cache", False)):
            dt, outputs[name] = timed_generate(model, prompt, args.new_tokens, use_cache, args.device)
            seconds[name].append(dt)
    tokens = args.new_tokens * args.batch_size
    print(
        f"mla_moe {args.preset} preset, block_size {args.block_size}, {model.param_counts()['total'] / 1e6:.2f}M "
        f"parameters, {args.device} {args.dtype}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, median of {args.reps} interleaved runs"
    )
    for name, times in seconds.items():
        median = statistics.median(times)
        runs = ", ".join(f"{t:.3f}" for t in times)
        print(f"{name:>13}: {tokens / median:8.1f} tokens/s (median {median:.3f} s; runs {runs})")
    ratio = statistics.median(seconds["no cache"]) / statistics.median(seconds["latent cache"])
    same = torch.equal(outputs["latent cache"], outputs["no cache"])
    print(f"speed-up of the latent cache: {ratio:.2f}x; greedy outputs identical: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

"""
bench/file_ab.py - two versions of one model file, side by side in one process: a training step of each (forward,
backward; no optimizer) from the same initial weights on the same batch, interleaved, timed in thread CPU time (so
other processes on the machine count less), and whether their losses are the same.

    git show REV:moe_gpt.py > /tmp/moe_gpt_old.py
    OMP_NUM_THREADS=1 python bench/file_ab.py /tmp/moe_gpt_old.py moe_gpt.py         # the cpu preset, B 12 x T 64
    OMP_NUM_THREADS=1 python bench/file_ab.py /tmp/mla_moe_old.py mla_moe.py --reps 21

Prints each file's median step time, the median of the per-repetition ratios new / old with their range, and the
two losses of one more step (equal to the last bit where the change leaves the computation as it was).
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(path, name):
    """The model file at path as a module called name (two versions of one file can then live side by side)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the model file before the change (e.g. from git show REV:FILE > old.py)")
    parser.add_argument("new", help="the model file after it")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--vocab_size", type=int, default=512, help="the speedrun's learned BPE")
    parser.add_argument("--B", type=int, default=12)
    parser.add_argument("--T", type=int, default=64)
    parser.add_argument("--reps", type=int, default=21, help="interleaved repetitions (median)")
    parser.add_argument("--steps", type=int, default=10, help="steps timed together in one repetition")
    args = parser.parse_args()
    models = {}
    for name in ("old", "new"):
        module = load(getattr(args, name), f"file_ab_{name}")
        torch.manual_seed(0)
        models[name] = module.Model(module.Config(**module.PRESETS[args.preset], vocab_size=args.vocab_size)).train()
    generator = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, args.vocab_size, (args.B, args.T), generator=generator) for _ in range(2))

    def step(model):
        _, loss = model(idx, targets)
        loss.backward()
        return loss.item()

    times = {name: [] for name in models}
    for _ in range(args.reps):
        for name, model in models.items():
            step(model)  # warm-up
            start = time.thread_time()
            for _ in range(args.steps):
                step(model)
            times[name].append((time.thread_time() - start) / args.steps * 1e3)
    ratios = [new / old for old, new in zip(times["old"], times["new"])]
    print(f"{torch.get_num_threads()} thread(s), preset {args.preset}, B {args.B} x T {args.T}, {args.reps} reps")
    print(f"old {statistics.median(times['old']):.2f} ms, new {statistics.median(times['new']):.2f} ms a step: "
          f"new / old {statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f})")
    old_loss, new_loss = step(models["old"]), step(models["new"])
    print(f"losses {old_loss!r} and {new_loss!r}: {'the same' if old_loss == new_loss else 'DIFFERENT'}")


if __name__ == "__main__":
    main()

"""
bench/speedrun.py - the best recipe we know for Tiny Shakespeare in a wall-time budget, scored in bits per character
on the whole validation split (modded-nanogpt's speedrun, at the size of nanoGPT's CPU recipe).

    flock /tmp/nanodecoder-bench.lock env OMP_NUM_THREADS=1 python bench/speedrun.py            # nanoGPT's time
    ... python bench/speedrun.py --budget 60                                # a shorter budget, for exploring
    ... python bench/speedrun.py --budget 60 --n_layer 6 --muon_lr 0.03     # the record with a change
    ... python bench/speedrun.py --no_recipe --model_type moderngpt         # from train.py's defaults instead

The run is `python train.py RECIPE [your options]` (your options win). Its --max_steps is set by the budget: a
short timing run of the same command first measures the step time (median of its steps after the fifth) and what
the run costs besides its steps (start-up, the final evaluation, checkpoint, sample and plot), and the run gets
(budget - that) / step time steps, so that its wall time, train.py's process from start to exit, is about the
budget. The lr schedule follows the step count (train.py's cosine ends at --max_steps). The timing run and the
scoring afterwards are not counted, as modded-nanogpt's timer counts neither its warm-up nor its validation.

The score is bench/val_loss.py's: the checkpoint's loss on every window of the validation split (the last 10% of
--data), in bits per character (nats per token x tokens per character of the validation text / ln 2), so
character and BPE runs compare. The last line is the score and the run's wall time. The default budget is
nanoGPT's char-level recipe (4 x 128, T 64, B 12, 2000 steps) as it ran here: 172.1 s, the mean wall time of its
twenty runs in the README's seeds table (its model.py + train.py, one thread each, evaluations, sampling and
checkpoints included), where it reaches 2.739 bits/char on the whole split (seed 1337).
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
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

NANOGPT_WALL = 172.1  # s: nanoGPT's recipe, mean of the README's twenty seeds (nanoGPT wall column)
# the record: each option is a row of the README's speedrun table
RECIPE = [
    "--model_type", "moderngpt",  # RoPE, RMSNorm, SwiGLU, GQA: the cpu preset, 4 x 128, T 64, B 12
    "--tokenizer", "bpe", "--bpe_vocab_size", "512",  # 1.88 characters a token
    "--max_lr", "3e-3", "--min_lr", "3e-5",  # AdamW, cosine from 3x the recipe's peak to 1/100 of it
    "--qk_norm", "true",  # Qwen3's RMSNorm on each head's queries and keys
    "--compile",  # torch.compile (inductor's C++ kernels): ~0.8x the step time, ~5 s of compiling
]
SET_HERE = ("--max_steps", "--out_dir", "--eval_interval", "--log_interval", "--resume")


def positive_float(value):
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a finite number > 0")
    return number


def positive_int(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not an integer >= 1")
    return number


def train(options, steps, out_dir, echo=False):
    """Runs train.py with `options` for `steps` steps into out_dir; returns (wall seconds, log records). A failing
    run (train.py's one-line error for bad options) ends the script with its message."""
    command = [sys.executable, "train.py", *options, "--max_steps", str(steps), "--out_dir", out_dir,
               "--eval_interval", str(steps), "--log_interval", str(max(1, steps // 10))]
    start = time.perf_counter()
    result = subprocess.run(command, check=False, cwd=ROOT, text=True, stdout=None if echo else subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if result.returncode:
        lines = result.stderr.strip().splitlines() or [f"train.py exited with {result.returncode}"]
        print(result.stderr if result.returncode != 2 else lines[-1], file=sys.stderr)
        sys.exit(2 if result.returncode == 2 else 1)
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return wall, [json.loads(line) for line in f]


def plan(budget, wall, records):
    """(steps, ms per step, seconds besides the steps) from a timing run of `wall` seconds and its log records: the
    median step after the fifth, and the run's wall time less that many steps at the median (start-up, evaluation,
    checkpoint, sample, plot, and the first steps' warm-up, --compile's compilation included)."""
    steps_ms = [r["ms"] for r in records if "ms" in r]
    ms = statistics.median(steps_ms[5:] or steps_ms)
    besides = max(0.0, wall - len(steps_ms) * ms / 1000)
    return max(1, int((budget - besides) * 1000 / ms)), ms, besides


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False,
                                epilog="Any other option goes to train.py after the recipe's (python train.py "
                                "--model_type moderngpt --help lists them).")
    p.error = lambda message: p.exit(2, f"error: {message}\n")
    p.add_argument("--budget", type=positive_float, default=NANOGPT_WALL,
                   help=f"seconds for the training run (default: {NANOGPT_WALL}, nanoGPT's recipe as it ran here)")
    p.add_argument("--timing_steps", type=positive_int, default=50, help="steps of the timing run (default: 50)")
    p.add_argument("--data", default=os.path.join(ROOT, "input.txt"), help="the text (default: input.txt)")
    p.add_argument("--out_dir", help="keep the run here (default: a temporary folder)")
    p.add_argument("--no_recipe", action="store_true", help="start from train.py's defaults, not the record's")
    p.add_argument("--plan", action="store_true", help="only the timing run: the step time and the steps it buys")
    args, rest = p.parse_known_args(argv)
    for option in rest:
        if option.split("=")[0] in SET_HERE:
            p.error(f"{option.split('=')[0]} is set by the speedrun (the budget sets the steps)")
    options = [*([] if args.no_recipe else RECIPE), *rest, "--data", args.data, "--eval_iters", "1"]
    print("recipe: python train.py " + " ".join(options[:-4]))

    import val_loss  # after the options: --help needs no torch

    with tempfile.TemporaryDirectory() as tmp:
        wall, records = train(options, args.timing_steps, os.path.join(tmp, "timing"))
        steps, ms, besides = plan(args.budget, wall, records)
        print(f"timing: {ms:.1f} ms/step, {besides:.1f} s besides the steps => {steps} steps for a "
              f"{args.budget:.1f} s budget")
        if args.plan:
            return
        out_dir = args.out_dir or os.path.join(tmp, "run")
        wall, records = train(options, steps, out_dir, echo=True)
        model_type, loss, tokens, bpc = val_loss.score(os.path.join(out_dir, "ckpt.pt"), args.data)
    print(f"{model_type}, whole validation split ({tokens:,} tokens): loss {loss:.4f} nats/token")
    print(f"whole-split val: {bpc:.4f} bits/char in {wall:.1f} s (budget {args.budget:.1f} s, {steps} steps)")


if __name__ == "__main__":
    main()

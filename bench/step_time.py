"""
bench/step_time.py - training step time of every model under train.py at the nanoGPT CPU recipe's size.

    python bench/step_time.py                          # all models, 3 interleaved rounds of 150 steps
    python bench/step_time.py gpt moderngpt --rounds 5
    python bench/step_time.py moderngpt moegpt --compile  # torch.compile'd steps (compiling is in the warm-up)

Each round runs `python train.py --model_type M --tokenizer char --dropout 0 --max_steps S` for every
model in turn (so a machine whose speed drifts slows all alike), reads the per-step times from the
run's log.jsonl (the first 10 steps are warm-up and left out) and prints, per model, the median step
time over all rounds, tokens per second, and the ratio to the first model. "fgram-off" is fgram with
--fgram_max_n 0.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["gpt", "moderngpt", "moegpt", "mlamoe", "fgram", "fgram-off"]


def step_times(model, steps, out_dir, compile=False):
    args = ["--model_type", "fgram", "--fgram_max_n", "0"] if model == "fgram-off" else ["--model_type", model]
    args += ["--compile"] if compile else []
    if model.startswith("fgram"):
        args += ["--dropout", "0"]  # its preset's 0.1; the other models train without dropout already
    subprocess.run(
        [
            sys.executable,
            "train.py",
            *args,
            "--tokenizer",
            "char",
            "--max_steps",
            str(steps),
            "--eval_interval",
            str(steps),
            "--eval_iters",
            "1",
            "--sample_tokens",
            "0",
            "--log_interval",
            str(steps),
            "--out_dir",
            out_dir,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r["ms"] for r in map(json.loads, f) if "ms" in r][10:]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=MODELS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--compile", action="store_true", help="train with --compile (its compilation falls in the warm-up)")
    args = p.parse_args()
    times = {m: [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for m in args.models:
                times[m] += step_times(m, args.steps, os.path.join(tmp, f"{m}-{r}"), args.compile)
    first = statistics.median(times[args.models[0]])
    header = f"{'model':<12}{'ms/step':>10}{'tok/s':>10}{'ratio':>8}"
    print(f"{header}   (B 12 x T 64, median of {args.rounds} x {args.steps - 10} steps)")
    for m in args.models:
        ms = statistics.median(times[m])
        print(f"{m:<12}{ms:>10.1f}{12 * 64 / ms * 1000:>10,.0f}{ms / first:>8.2f}")


if __name__ == "__main__":
    main()

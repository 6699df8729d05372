"""
bench/muon_ns_time.py - what Muon's Newton-Schulz iterations cost a step, whatever the batch: muon.py's own call
(torch.optim.Muon's function, five iterations in bf16) on each hidden matrix of the speedrun's model, timed alone.

    OMP_NUM_THREADS=1 python bench/muon_ns_time.py                   # moderngpt's cpu preset (the speedrun's)
    OMP_NUM_THREADS=1 python bench/muon_ns_time.py --model_type moegpt --reps 10

The matrices are those muon.split_parameters gives Muon (an expert stack counts as its E matrices), with random
gradients of their shapes: the iterations' cost depends on the shapes only, not on the values or the batch.
"""

import argparse
import importlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import muon

FILES = {"gpt": "gpt", "moderngpt": "modern_gpt", "moegpt": "moe_gpt", "mlamoe": "mla_moe", "fgram": "fgram_moe"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_type", choices=FILES, default="moderngpt")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--reps", type=int, default=20, help="timed passes over all the matrices (median)")
    args = parser.parse_args()
    module = importlib.import_module(FILES[args.model_type])
    model = module.Model(module.Config(**module.PRESETS[args.preset]))
    matrices, _ = muon.split_parameters(model)
    grads = [m for p in matrices for m in torch.randn(p.shape).reshape(-1, *p.shape[-2:])]  # (out, in) each
    coefficients = (muon.DEFAULT_A, muon.DEFAULT_B, muon.DEFAULT_C)

    def one_pass():
        start = time.perf_counter()
        for grad in grads:
            muon._zeropower_via_newtonschulz(grad, coefficients, 5, muon.EPS)
        return time.perf_counter() - start

    for _ in range(3):  # warm-up
        one_pass()
    seconds = statistics.median(one_pass() for _ in range(args.reps))
    shapes = sorted({tuple(g.shape) for g in grads})
    print(f"{args.model_type} {args.preset}: {len(grads)} matrices {shapes}, {torch.get_num_threads()} thread(s)")
    print(f"Newton-Schulz (5 iterations, bf16): {seconds * 1e3:.1f} ms a step, {seconds / len(grads) * 1e3:.2f} ms "
          f"a matrix (median of {args.reps})")


if __name__ == "__main__":
    main()

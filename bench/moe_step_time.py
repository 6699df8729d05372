"""
bench/moe_step_time.py - step time of moe_gpt over modern_gpt at equal active parameters.

Times, on this machine's CPU (or --device), with A/B runs interleaved so that a load from other
processes hits both sides alike, and prints the median of the per-repetition ratios:

  (a) a full training step (forward, backward, AdamW) of moe_gpt against modern_gpt, both with
      the same depth, width, heads and the same active parameters: modern_gpt's SwiGLU of H hidden
      units against a shared expert plus chosen routed experts whose hidden sizes sum to H
      (moe_hidden 0 does that), every block a MoE block (first_dense_layers 0);
  (b) the MoE layer alone against the dense SwiGLU (forward + backward on B*T tokens);
  (c) mla_moe.py's MoE layer (nn.Linear experts, their weights stacked each step for F.grouped_mm) against
      moe_gpt.py's (experts stored stacked, F.grouped_mm), with the same weights, so the same routing and
      outputs (no auxiliary losses in mla_moe's).

    python bench/moe_step_time.py                      # the nanoGPT CPU recipe's size and a bigger one
    python bench/moe_step_time.py --dispatch loop      # force the loop over experts (no grouped matmul)
    python bench/moe_step_time.py --threads 1 --reps 9 --calls 3   # the figures in the README
    python bench/moe_step_time.py --granularity 4      # 4 of 32 routed experts instead of 2 of 16
    python bench/moe_step_time.py --threads 1 --clock cpu   # thread CPU time: steadier when others share the CPU
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mla_moe
import modern_gpt
import moe_gpt

SETTINGS = {  # name: (model shape, batch B, sequence T)
    "cpu recipe (4 x 128, B 12, T 64)": ({"n_layer": 4, "n_head": 4, "n_kv_head": 2, "n_embd": 128}, 12, 64),
    "bigger (4 x 256, B 8, T 256)": ({"n_layer": 4, "n_head": 8, "n_kv_head": 4, "n_embd": 256}, 8, 256),
}
MOE = {"n_routed_experts": 8, "top_k": 1, "n_shared_experts": 1, "first_dense_layers": 0}  # moe_gpt's "cpu" preset


def interleaved_ratio(run_a, run_b, reps, calls, clock=time.perf_counter):
    """Median ms per call of a and b, and the median of the per-repetition ratios a / b."""
    run_a(), run_b()  # warm-up: allocator, kernels, lazy initialisation
    times_a, times_b = [], []
    for _ in range(reps):
        for run, times in ((run_a, times_a), (run_b, times_b)):
            t0 = clock()
            for _ in range(calls):
                run()
            times.append(1000 * (clock() - t0) / calls)
    ratios = [a / b for a, b in zip(times_a, times_b)]
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios), min(ratios), max(ratios)


def report(label, names, result, reps):
    a, b, ratio, lo, hi = result
    return (
        f"  {label}: {names[0]} {a:.2f} ms, {names[1]} {b:.2f} ms, ratio {ratio:.3f}x "
        f"(range {lo:.2f}-{hi:.2f} over {reps} interleaved reps)"
    )


def train_step_fn(model, x, y):
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), x.device.type)

    def step():
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for moe in model.moe_layers() if hasattr(model, "moe_layers") else []:
            moe.update_bias()

    return step


def mla_twin(layer, n_embd):
    """mla_moe.py's MoE with moe_gpt MoE `layer`'s router, experts and shared expert (softmax, no bias updates)."""
    E, k, hidden = layer.n_experts, layer.top_k, layer.experts.gate.size(1)
    config = mla_moe.MLAMoEConfig(
        n_embd=n_embd,
        n_routed_experts=E,
        top_k=k,
        moe_hidden=hidden,
        gate="softmax",
        n_shared_experts=layer.shared.gate.out_features // hidden if layer.shared else 0,
        routed_scaling_factor=1.0,
        seq_aux_loss_weight=0.0,
        bias_update_rate=0.0,
    )
    twin = mla_moe.MoE(config)
    with torch.no_grad():
        twin.router.weight.copy_(layer.router.weight)
        for e, expert in enumerate(twin.experts):
            for name in ("gate", "up", "down"):
                getattr(expert, name).weight.copy_(getattr(layer.experts, name)[e])
        for name in ("gate", "up", "down") if layer.shared else ():
            getattr(twin.shared, name).weight.copy_(getattr(layer.shared, name).weight)
    return twin


def layer_fn(layer, x):
    def step():
        layer(x).square().mean().backward()

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7, help="interleaved A/B repetitions")
    p.add_argument("--calls", type=int, default=5, help="calls timed together in one repetition")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--dispatch",
        choices=["auto", "loop"],
        default="auto",
        help="auto: F.grouped_mm where this PyTorch has it; loop: one matmul per expert",
    )
    p.add_argument("--granularity", type=int, default=2, help="DeepSeekMoE's m (moe_gpt's default: 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter; cpu: this thread's CPU time (steadier on a shared CPU, 1 thread only)",
    )
    args = p.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dispatch == "loop" and hasattr(torch.nn.functional, "grouped_mm"):  # both files loop without it
        del torch.nn.functional.grouped_mm
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"dispatch {args.dispatch}, grouped_mm available: {hasattr(torch.nn.functional, 'grouped_mm')}"
    )
    for name, (shape, B, T) in SETTINGS.items():
        torch.manual_seed(0)
        dense = modern_gpt.ModernGPT(modern_gpt.ModernGPTConfig(**shape, block_size=T, vocab_size=65)).to(args.device)
        config = moe_gpt.MoEGPTConfig(**shape, **MOE, granularity=args.granularity, block_size=T, vocab_size=65)
        moe = moe_gpt.MoEGPT(config).to(args.device)
        d, m = dense.param_counts(), moe.param_counts()
        layer = moe.h[0].mlp
        print(
            f"\n{name}: dense SwiGLU {dense.h[0].mlp.gate.out_features} hidden | MoE: shared "
            f"{layer.shared.gate.out_features if layer.shared else 0} + {layer.top_k} of {layer.n_experts} "
            f"routed x {layer.experts.gate.size(1)} hidden"
        )
        print(
            f"  parameters: modern_gpt {d['total'] / 1e6:.3f}M | moe_gpt {m['total'] / 1e6:.3f}M total, "
            f"{m['active'] / 1e6:.3f}M active (+{m['active'] - d['active']:,} router weights)"
        )
        x = torch.randint(0, 65, (B, T), device=args.device)
        y = torch.randint(0, 65, (B, T), device=args.device)
        result = interleaved_ratio(train_step_fn(moe, x, y), train_step_fn(dense, x, y), args.reps, args.calls, clock)
        print(report("(a) train step", ("moe_gpt", "modern_gpt"), result, args.reps))
        h = torch.randn(B * T, shape["n_embd"], device=args.device).view(B, T, -1)
        result = interleaved_ratio(layer_fn(layer, h), layer_fn(dense.h[0].mlp, h), args.reps, args.calls, clock)
        print(report("(b) layer fwd+bwd", ("MoE", "dense SwiGLU"), result, args.reps))
        twin = mla_twin(layer, shape["n_embd"]).to(args.device)
        assert torch.allclose(twin(h), layer(h), atol=1e-5), "mla_moe's MoE computes another function"
        result = interleaved_ratio(layer_fn(twin, h), layer_fn(layer, h), args.reps, args.calls, clock)
        print(report("(c) MoE layer fwd+bwd", ("mla_moe", "moe_gpt"), result, args.reps))


if __name__ == "__main__":
    main()

"""Which released models fine-tune on one 80 GB GPU with DDP, and which need FSDP2 on 8: parallel.memory_estimate,
the formula train.py prints at start-up, applied to each model's published size.

    python bench/memory_plan.py                     # B 1 x T 2048 per GPU, bf16 autocast, gradient checkpointing
    python bench/memory_plan.py --T 4096 --no_checkpointing

Parameters are the published counts (the model cards), width and depth their config.json's; fp32 master weights
as train.py keeps them. Not counted: the CUDA context and allocator slack (a few GB), and under FSDP the one block
whose weights are gathered at a time (its bf16 copy), which the 'FSDP on 8' column adds. Not counted either: the
logits of the head in fp32 (B T V 4 bytes and as much for their gradient: 2.5 GB for Qwen3's 151,936 tokens at
B 1, T 2048).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import parallel

# name: (parameters, hidden size, layers), as published
MODELS = {
    "GPT-2 124M": (124e6, 768, 12), "GPT-2 1.5B (xl)": (1558e6, 1600, 48),
    "SmolLM2-135M": (135e6, 576, 30), "SmolLM2-360M": (362e6, 960, 32), "SmolLM2-1.7B": (1711e6, 2048, 24),
    "Qwen3-0.6B": (0.6e9, 1024, 28), "Qwen3-1.7B": (1.7e9, 2048, 28), "Qwen3-4B": (4.0e9, 2560, 36),
    "Qwen3-8B": (8.2e9, 4096, 36), "Llama-3.2-1B": (1.24e9, 2048, 16), "Llama-3.2-3B": (3.21e9, 3072, 28),
    "Llama-3.1-8B": (8.03e9, 4096, 32), "DeepSeek-V2-Lite (16B, 2.4B active)": (15.7e9, 2048, 27),
    "Moonlight-16B-A3B": (16.0e9, 2048, 27), "Qwen3-30B-A3B": (30.5e9, 2048, 48),
}
GIB = 2**30


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--B", type=int, default=1, help="sequences per GPU")
    p.add_argument("--T", type=int, default=2048, help="sequence length")
    p.add_argument("--gpu_gib", type=float, default=80.0, help="memory of one GPU")
    p.add_argument("--ranks", type=int, default=8, help="GPUs FSDP shards over")
    p.add_argument("--no_checkpointing", action="store_true", help="keep every block's activations")
    args = p.parse_args()
    print(f"B {args.B} x T {args.T} per GPU, bf16 autocast, fp32 weights and AdamW state, gradient checkpointing "
          f"{'off' if args.no_checkpointing else 'on'}; a GPU of {args.gpu_gib:g} GiB\n")
    print(f"| model | parameters | DDP: GiB per GPU | fits one GPU | FSDP on {args.ranks}: GiB per GPU | fits |")
    print("| --- | ---: | ---: | --- | ---: | --- |")
    def per_gpu(params, width, layers, shards):
        parts = parallel.memory_estimate(4 * params / shards, width, layers, args.B, args.T, True,
                                         not args.no_checkpointing)
        gathered = 2 * params / layers if shards > 1 else 0  # one block's bf16 weights, gathered
        return (sum(parts.values()) + gathered) / GIB

    for name, (params, width, layers) in MODELS.items():
        ddp, fsdp = per_gpu(params, width, layers, 1), per_gpu(params, width, layers, args.ranks)
        print(f"| {name} | {params / 1e9:.2f}B | {ddp:,.1f} | {'yes' if ddp < args.gpu_gib else 'no'} | "
              f"{fsdp:,.1f} | {'yes' if fsdp < args.gpu_gib else 'no'} |")


if __name__ == "__main__":
    main()

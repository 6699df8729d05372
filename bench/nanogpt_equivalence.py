"""
bench/nanogpt_equivalence.py - gpt.py and train.py's optimizer against nanoGPT's own model.py.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python bench/nanogpt_equivalence.py --nanogpt /tmp/nanoGPT

Builds nanoGPT's recipe model (4 layers, 4 heads, 128 dims, context 64, no biases, the 65 characters
of Tiny Shakespeare) in both files, copies gpt.py's initial weights into nanoGPT's, then trains both
with their own configure_optimizers (AdamW, betas 0.9/0.99, weight decay 0.1), nanoGPT's learning-rate
schedule and clipping, on the same batches. The two loss curves agree to float rounding: any difference
between a gpt.py run and a nanoGPT run of the recipe comes from the random draws (initial weights,
batch positions, evaluation batches), not from the model or the optimizer. nanoGPT is read from your
checkout, not copied into this project.
"""

import argparse
import importlib.util
import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gpt


def nanogpt_lr(step, max_lr=1e-3, min_lr=1e-4, warmup=100, decay_steps=2000):
    """nanoGPT's get_lr for the recipe."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    ratio = (step - warmup) / (decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", required=True, help="a checkout of github.com/karpathy/nanoGPT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data", default=os.path.join(ROOT, "input.txt"))
    args = parser.parse_args()
    model_py = os.path.join(args.nanogpt, "model.py")
    if not os.path.exists(model_py):
        raise SystemExit(f"error: {model_py} not found: pass --nanogpt with a nanoGPT checkout")
    spec = importlib.util.spec_from_file_location("nanogpt_model", model_py)
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)

    train_ids, _, tokenizer = gpt.load_dataset(args.data)  # characters
    torch.manual_seed(0)
    ours = gpt.GPT(gpt.GPTConfig(**gpt.PRESETS["cpu"], vocab_size=tokenizer.vocab_size))
    theirs = nanogpt.GPT(
        nanogpt.GPTConfig(
            n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, vocab_size=tokenizer.vocab_size, dropout=0.0
        )
    )
    # nanoGPT keeps the same names under a "transformer." prefix; its head is tied as ours
    theirs.load_state_dict(
        {(k if k.startswith("lm_head") else "transformer." + k): v for k, v in ours.state_dict().items()}
    )
    optimizers = [
        ours.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu"),
        theirs.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu"),
    ]
    generator = torch.Generator().manual_seed(1337)
    largest = 0.0
    for step in range(args.steps):
        x, y = gpt.get_batch(train_ids, 12, 64, generator)
        x, y = x.contiguous(), y.contiguous()  # nanoGPT's loss views the targets
        losses = []
        for model, optimizer in zip((ours, theirs), optimizers):
            for group in optimizer.param_groups:
                group["lr"] = nanogpt_lr(step)
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        largest = max(largest, abs(losses[0] - losses[1]))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}: gpt.py {losses[0]:.6f}  nanoGPT {losses[1]:.6f}")
    print(f"largest loss difference over {args.steps} steps: {largest:.2e}")


if __name__ == "__main__":
    main()

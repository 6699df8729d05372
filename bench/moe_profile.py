"""
bench/moe_profile.py - where a training step of moe_gpt (and of modern_gpt) spends its CPU time.

Runs torch.profiler (CPU, record_shapes off) over --steps training steps (forward, backward, AdamW,
update_bias) at the nanoGPT CPU recipe's size, as bench/moe_step_time.py builds the two models, and prints:

  1. the top ops by self CPU time (torch's key_averages table, trimmed);
  2. the step split into groups: each module's forward ops fall in its group (attention, norms, router,
     experts, shared expert, ...), ops of MoE.forward itself are split by name into dispatch (sort, bincount,
     index ops) and combine (index_add, weights), and each backward op goes to the group of the forward op
     that made its autograd node (linked by the profiler's sequence numbers).

    OMP_NUM_THREADS=1 python bench/moe_profile.py                  # both models, 5 steps each
    OMP_NUM_THREADS=1 python bench/moe_profile.py --model moe --top 20
"""

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from moe_step_time import MOE, SETTINGS, train_step_fn

import modern_gpt
import moe_gpt

SCOPE = "grp::"
DISPATCH_OPS = (
    "sort",
    "argsort",
    "bincount",
    "index_select",
    "floor_divide",
    "div",
    "cumsum",
    "flatten",
    "view",
    "reshape",
    "split",
    "arange",
    "sub",
    "lt",
    "clamp",
    "index",
    "to",
    "_to_copy",
    "unsqueeze",
    "cat",
)
COMBINE_OPS = ("index_add", "index_add_", "zeros", "zero_", "mul", "add", "type_as")


def scoped(module, name):
    """Wrap module's forward in a record_function range called grp::name."""
    forward = module.forward

    def wrapped(*args, **kwargs):
        with record_function(SCOPE + name):
            return forward(*args, **kwargs)

    module.forward = wrapped


def add_scopes(model):
    scoped(model.wte, "embedding")
    scoped(model.lm_head, "head")
    scoped(model.norm_f, "norms")
    for block in model.h:
        scoped(block.attn, "attention")
        scoped(block.norm_1, "norms")
        scoped(block.norm_2, "norms")
        mlp = block.mlp
        if isinstance(mlp, moe_gpt.MoE):
            scoped(mlp, "moe")
            scoped(mlp.router, "router")
            scoped(mlp.experts, "experts")
            if mlp.shared is not None:
                scoped(mlp.shared, "shared expert")
            record, update_bias = mlp.record, mlp.update_bias
            mlp.record = lambda *a, f=record: scope_call("record", f, *a)
            mlp.update_bias = lambda f=update_bias: scope_call("record", f)
        else:
            scoped(mlp, "swiglu")


def scope_call(name, f, *args):
    with record_function(SCOPE + name):
        return f(*args)


def group_of_forward(event):
    """The innermost grp:: range above a forward op; ops of MoE.forward itself split by name."""
    parent = event
    while parent is not None and not parent.name.startswith(SCOPE):
        parent = parent.cpu_parent
    if parent is None:
        return "loss and other"
    group = parent.name[len(SCOPE) :]
    if group == "moe":
        op = event.name.split("::")[-1]
        return "moe combine (index_add, weights)" if op in COMBINE_OPS else "moe dispatch (sort, index)"
    return group


def groups(prof):
    """Self CPU ms per group, each op once (an op's self time excludes its children)."""
    events = prof.events()
    by_seq = {}
    for e in events:  # the outermost forward op of each autograd sequence number names its group
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::") and "Backward" not in e.name:
            by_seq.setdefault(e.sequence_nr, group_of_forward(e))
    totals = collections.Counter()
    for e in events:
        parent, group = e, None
        while parent is not None:
            if parent.name.startswith("autograd::engine::evaluate_function"):
                if "AccumulateGrad" in parent.name:
                    group = "backward: grad accumulation"
                else:
                    group = by_seq.get(parent.sequence_nr, "loss and other")
                break
            if parent.name.startswith("grp::optimizer"):
                group = "optimizer"
                break
            parent = parent.cpu_parent
        if group is None:
            group = group_of_forward(e)
        totals[group] += e.self_cpu_time_total / 1000
    return totals


def profile_model(model, x, y, steps):
    add_scopes(model)
    step = train_step_fn(model, x, y)
    for _ in range(3):  # warm-up
        step()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), x.device.type)

    def one_step():
        _, loss = model(x, y)
        loss.backward()
        with record_function(SCOPE + "optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for moe in model.moe_layers() if hasattr(model, "moe_layers") else []:
            moe.update_bias()

    one_step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(steps):
            one_step()
    return prof


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="profiled training steps")
    p.add_argument("--top", type=int, default=12, help="rows of the top-ops table")
    p.add_argument("--model", choices=["both", "moe", "dense"], default="both")
    p.add_argument("--setting", type=int, default=0, help="index into moe_step_time's SETTINGS (0: cpu recipe)")
    args = p.parse_args()
    name, (shape, B, T) = list(SETTINGS.items())[args.setting]
    torch.manual_seed(0)
    x, y = torch.randint(0, 65, (B, T)), torch.randint(0, 65, (B, T))
    models = {
        "moe": lambda: moe_gpt.MoEGPT(moe_gpt.MoEGPTConfig(**shape, **MOE, block_size=T, vocab_size=65)),
        "dense": lambda: modern_gpt.ModernGPT(modern_gpt.ModernGPTConfig(**shape, block_size=T, vocab_size=65)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {name}; {args.steps} profiled steps")
    for kind, build in models.items():
        if args.model not in ("both", kind):
            continue
        prof = profile_model(build(), x, y, args.steps)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40)
        lines = table.splitlines()
        keep = [i for i, line in enumerate(lines) if "grp::" not in line]
        print(f"\n== {'moe_gpt' if kind == 'moe' else 'modern_gpt'}: top ops by self CPU time ==")
        print("\n".join(lines[i] for i in keep))
        totals = groups(prof)
        whole = sum(totals.values())
        print(
            f"== {'moe_gpt' if kind == 'moe' else 'modern_gpt'}: by group, ms per step (self CPU, "
            f"forward + its backward) =="
        )
        for group, ms in totals.most_common():
            print(f"  {group:<36} {ms / args.steps:7.2f} ms  {100 * ms / whole:5.1f}%")
        print(f"  {'total':<36} {whole / args.steps:7.2f} ms")


if __name__ == "__main__":
    main()

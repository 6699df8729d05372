"""
muon.py - Muon for the hidden matrices, AdamW for the rest: train.py's --optimizer muon.

    python train.py --optimizer muon --muon_lr 0.02             # the recipe with Muon

Muon (Jordan et al. 2024, kellerjordan.github.io/posts/muon; Liu et al. 2025, arXiv 2502.16982) keeps SGD's
Nesterov momentum for a weight matrix and replaces the update with its nearest semi-orthogonal matrix, found by
five Newton-Schulz iterations in bf16: every direction of the update moves by about the same amount. It is
meant for the matrices inside the blocks; the embeddings, the head, norms, biases, routers (whose rows are
scores, not a linear map of the residual stream) and F-gram tables stay with AdamW, as in modded-nanogpt and
nanochat.

torch.optim.Muon takes 2-D parameters only. A stacked expert tensor (E, out, in) is E matrices, so this file's
Muon is torch.optim.Muon's step (the same momentum, the same Newton-Schulz function, the same learning-rate
adjustment) applied to each matrix of a stack (tests/test_muon.py holds it equal to torch.optim.Muon on
matrices). Under FSDP2 a gradient is a shard of rows: every rank gathers the whole matrix, orthogonalises it and
keeps its own rows of the result.
"""
import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _adjust_lr, _zeropower_via_newtonschulz


def split_parameters(model):
    """(hidden matrices for Muon, the rest for AdamW): a parameter of 2 or more dimensions is a hidden matrix
    unless it is an embedding table, the output head or a router."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    if getattr(model, "lm_head", None) is not None:
        tables.add(id(model.lm_head.weight))
    matrices, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            hidden = p.dim() >= 2 and id(p) not in tables and "router" not in name
            (matrices if hidden else rest).append(p)
    return matrices, rest


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update, also for stacks of matrices (..., out, in): each matrix orthogonalised alone."""

    def __init__(self, params, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "nesterov": nesterov, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                sharded = hasattr(update, "full_tensor")  # an FSDP2 DTensor: this rank's rows
                full = update.full_tensor() if sharded else update
                matrices = full.reshape(-1, *full.shape[-2:])  # (matrices, out, in)
                ortho = torch.stack([_zeropower_via_newtonschulz(m, (DEFAULT_A, DEFAULT_B, DEFAULT_C),
                                                                 group["ns_steps"], EPS) for m in matrices])
                ortho = ortho.view(full.shape).to(p.dtype)
                if sharded:
                    from torch.distributed.tensor import distribute_tensor
                    ortho = distribute_tensor(ortho, update.device_mesh, update.placements)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(ortho, alpha=-_adjust_lr(lr, None, full.shape[-2:]))


def optimizers(model, args, device_type):
    """The optimizers --optimizer asks for: [the model file's AdamW], or [AdamW, Muon] for muon: AdamW (weight decay
    on its matrices, not on its vectors) at --max_lr, Muon at --muon_lr; train.py's schedule scales each group's
    lr by its lr_scale."""
    if args.optimizer != "muon":
        return [model.configure_optimizers(args.weight_decay, args.max_lr, (args.beta1, args.beta2), device_type)]
    matrices, rest = split_parameters(model)
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": args.weight_decay},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=args.max_lr, betas=(args.beta1, args.beta2), fused=device_type in ("cuda", "cpu"))
    matrix_optimizer = Muon(matrices, lr=args.muon_lr, weight_decay=args.weight_decay)
    for group in matrix_optimizer.param_groups:
        group["lr_scale"] = args.muon_lr / args.max_lr  # Muon follows the schedule at its own scale
    return [adamw, matrix_optimizer]

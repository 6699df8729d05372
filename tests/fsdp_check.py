"""Run under torchrun (2 CPU ranks, gloo) by tests/test_train.py: every model file trained a few steps with DDP and
then with FSDP2 through parallel.py, as train.py's loop does (AdamW; gpt and moegpt also Muon). Prints one JSON
line per run on rank 0: the losses of both modes, the largest difference of their final weights and each mode's
optimizer bytes on rank 0; first, Muon on a sharded weight against Muon on the whole one."""

import gc
import importlib
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data
import muon
import parallel

FILES = {"gpt": "gpt", "moderngpt": "modern_gpt", "moegpt": "moe_gpt", "mlamoe": "mla_moe", "fgram": "fgram_moe"}
B, T, ACCUM, STEPS = 2, 16, 2, 3


def train(module, ids, mode, rank, world, optimizer_kind):
    config = {**module.PRESETS["cpu"], "block_size": T, "vocab_size": 65, "n_layer": 2}
    torch.manual_seed(0)
    model = module.Model(module.Config(**config))
    if hasattr(model, "prepare_data"):
        model.prepare_data(ids)
    trained = parallel.wrap(model, mode, "cpu", bf16=False, compile_model=False)
    args = SimpleNamespace(weight_decay=0.1, max_lr=3e-3, beta1=0.9, beta2=0.99, muon_lr=0.02,
                           optimizer=optimizer_kind)
    optimizers = muon.optimizers(model, args, "cpu")
    corpus = data.Corpus(ids, ids, None, 1.0, "")
    losses = []
    for step in range(STEPS):
        total = torch.zeros(())
        for micro in range(ACCUM):
            x, y = data.micro_batch(module, corpus, B, T, 1337, step, micro * world + rank, ACCUM * world, "cpu")
            with parallel.sync_gradients(trained, mode, micro == ACCUM - 1):
                loss = trained(x, y)[1] / ACCUM
            loss.backward()
            total += loss.detach()
        parallel.clip_grad_norm(model, 1.0)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for moe in model.moe_layers() if hasattr(model, "moe_layers") else []:
            if hasattr(moe, "update_bias"):
                moe.update_bias()
        dist.all_reduce(total)
        losses.append(total.item() / world)
    states = [state for optimizer in optimizers for state in optimizer.state.values()]
    state_bytes = parallel.local_bytes(t for state in states for t in state.values() if t.dim() > 0)
    return losses, parallel.full_state(model, optimizers)[0], state_bytes


def muon_on_shards(rank):
    """Muon on an FSDP2-sharded weight with a given gradient, against Muon on the whole weight: the largest gap."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor
    torch.manual_seed(0)
    whole, sharded = torch.nn.Linear(16, 24, bias=False), torch.nn.Linear(16, 24, bias=False)
    sharded.load_state_dict(whole.state_dict())
    fully_shard(sharded)
    optimizers = muon.Muon([whole.weight]), muon.Muon([sharded.weight])
    for _ in range(3):
        grad = torch.randn(24, 16)  # the same on every rank (same seed)
        whole.weight.grad = grad.clone()
        sharded.weight.grad = distribute_tensor(grad, sharded.weight.device_mesh, sharded.weight.placements)
        for optimizer in optimizers:
            optimizer.step()
    return (sharded.weight.full_tensor() - whole.weight).abs().max().item()


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gap = muon_on_shards(rank)
    if rank == 0:
        print(json.dumps({"muon_on_shards": gap}), flush=True)
    ids = np.random.default_rng(0).integers(0, 65, 5000).astype(np.uint16)
    runs = [(name, "adamw") for name in FILES] + [("gpt", "muon"), ("moegpt", "muon")]
    for name, optimizer_kind in runs:
        module = importlib.import_module(FILES[name])
        ddp_losses, ddp_state, ddp_bytes = train(module, ids, "ddp", rank, world, optimizer_kind)
        fsdp_losses, fsdp_state, fsdp_bytes = train(module, ids, "fsdp", rank, world, optimizer_kind)
        if rank == 0:
            weights = max((ddp_state[k] - fsdp_state[k]).abs().max().item() for k in ddp_state)
            print(json.dumps({"model": name, "optimizer": optimizer_kind, "ddp": ddp_losses, "fsdp": fsdp_losses,
                              "weights": weights, "keys_equal": sorted(ddp_state) == sorted(fsdp_state),
                              "ddp_optimizer_bytes": ddp_bytes, "fsdp_optimizer_bytes": fsdp_bytes}), flush=True)
    gc.collect()  # FSDP2 modules sit in reference cycles: free them while the group lives (at exit: SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

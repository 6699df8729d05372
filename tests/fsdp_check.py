"""Run under torchrun (2 CPU ranks, gloo) by tests/test_train.py: every model file trained a few steps with DDP and
then with FSDP2 through parallel.py, as train.py's loop does; prints one JSON line per model on rank 0 with the
losses of both modes, the largest difference of their final weights and each mode's optimizer bytes on rank 0."""

import importlib
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data
import parallel

FILES = {"gpt": "gpt", "moderngpt": "modern_gpt", "moegpt": "moe_gpt", "mlamoe": "mla_moe", "fgram": "fgram_moe"}
B, T, ACCUM, STEPS = 2, 16, 2, 3


def train(module, ids, mode, rank, world):
    config = {**module.PRESETS["cpu"], "block_size": T, "vocab_size": 65, "n_layer": 2}
    torch.manual_seed(0)
    model = module.Model(module.Config(**config))
    if hasattr(model, "prepare_data"):
        model.prepare_data(ids)
    trained = parallel.wrap(model, mode, "cpu", bf16=False, compile_model=False)
    optimizer = model.configure_optimizers(0.1, 3e-3, (0.9, 0.99), "cpu")
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
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for moe in model.moe_layers() if hasattr(model, "moe_layers") else []:
            if hasattr(moe, "update_bias"):
                moe.update_bias()
        dist.all_reduce(total)
        losses.append(total.item() / world)
    state_bytes = parallel.local_bytes(t for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    return losses, parallel.full_state(model, optimizer)[0], state_bytes


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = np.random.default_rng(0).integers(0, 65, 5000).astype(np.uint16)
    for name in sys.argv[1:] or FILES:
        module = importlib.import_module(FILES[name])
        ddp_losses, ddp_state, ddp_bytes = train(module, ids, "ddp", rank, world)
        fsdp_losses, fsdp_state, fsdp_bytes = train(module, ids, "fsdp", rank, world)
        if rank == 0:
            weights = max((ddp_state[k] - fsdp_state[k]).abs().max().item() for k in ddp_state)
            print(json.dumps({"model": name, "ddp": ddp_losses, "fsdp": fsdp_losses, "weights": weights,
                              "keys_equal": sorted(ddp_state) == sorted(fsdp_state),
                              "ddp_optimizer_bytes": ddp_bytes, "fsdp_optimizer_bytes": fsdp_bytes}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

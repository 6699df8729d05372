"""
parallel.py - how train.py spreads a model over its processes, and what that costs in memory.

    torchrun --nproc_per_node=8 train.py ...            # DDP: every rank holds the whole model, its gradients and
                                                        # AdamW's two moments, and averages gradients
    torchrun --nproc_per_node=8 train.py ... --fsdp     # FSDP2: each rank holds 1/ranks of them, and gathers one
                                                        # block's weights at a time to compute it

FSDP2 is PyTorch's `fully_shard` (torch.distributed.fsdp), applied to each block of model.h, then to the whole
model, as torchtitan does; on a GPU in bf16 its MixedPrecisionPolicy computes in bf16 and reduces gradients in
fp32. Checkpoints are one full state dict either way (torch.distributed.checkpoint.state_dict gathers it, rank 0
writes it), so a run saved in one mode resumes in the other, on any number of ranks, or in one process.
Gradient checkpointing recomputes each block in backward instead of keeping its activations.
"""
import contextlib
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from data import UsageError

# Dense bf16 peak FLOP/s by GPU name, for MFU (the vendors' datasheets, without sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors on the CPU, on rank 0


def start(device, dtype, fsdp):
    """(mode, rank, world, device, device_type, dtype). Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE set) one
    process per device, in a process group (nccl on GPUs, gloo on CPUs); mode is "ddp", "fsdp" or None (one
    process). device auto: cuda > mps > cpu; dtype auto: bf16 autocast where the GPU has it, fp16 with a
    GradScaler on older CUDA GPUs, else fp32. TF32 matmuls are on."""
    distributed, local_rank = "RANK" in os.environ, int(os.environ.get("LOCAL_RANK", "0"))
    if fsdp and not distributed:
        raise UsageError("--fsdp shards the model over torchrun's ranks: run under torchrun --nproc_per_node N")
    asked = device
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else (
            "mps" if torch.backends.mps.is_available() else "cpu")
    device_type = device.split(":")[0]
    if device_type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {asked}: use auto, cpu, cuda, cuda:N or mps")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps asked for, but PyTorch sees no Apple GPU: use --device cpu")
    if dtype == "auto":  # bf16 where the hardware has it; fp16 (with a GradScaler) on older GPUs
        dtype = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device_type == "cuda" else "fp32"
    if dtype == "fp16" and device_type != "cuda":
        raise UsageError("--dtype fp16 needs a CUDA GPU (it trains with a GradScaler): use bf16 or fp32")
    if distributed:
        if device_type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls
    torch.backends.cudnn.allow_tf32 = True
    mode = ("fsdp" if fsdp else "ddp") if distributed else None
    return mode, int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), device, device_type, dtype


def rank0_first(distributed, work):
    """work() on rank 0 first (it may download, or write a cache), then on the other ranks (they read it)."""
    if distributed and dist.get_rank() != 0:
        dist.barrier()
    try:
        return work()
    finally:
        if distributed and dist.get_rank() == 0:
            dist.barrier()


def peak_flops(device, dtype):
    """The GPU's dense 16-bit peak FLOP/s, for MFU; None on CPUs, in fp32 and for GPUs not in the table."""
    if not device.startswith("cuda") or dtype not in ("bf16", "fp16"):
        return None
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in torch.cuda.get_device_name(device)), None)


def wrap(model, mode, device, bf16, compile_model):
    """The model as the training step calls it. mode: None (one process), "ddp" or "fsdp"; the weights stay
    `model`'s own (with FSDP, `model` itself becomes the sharded module)."""
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
            MixedPrecisionPolicy()
        for block in model.h:  # one all-gather per block: only one block's full weights live at a time
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)  # the rest: embeddings, final norm, head
    trained = torch.compile(model) if compile_model else model
    if mode == "ddp":
        trained = torch.nn.parallel.DistributedDataParallel(trained, device_ids=[device] if device.startswith(
            "cuda") else None)
    return trained


def sync_gradients(trained, mode, last):
    """A context for one micro-batch's backward: gradients are averaged across ranks only on the last one."""
    if mode == "ddp" and not last:
        return trained.no_sync()
    if mode == "fsdp":
        trained.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def clip_grad_norm(model, max_norm):
    """The gradient norm over all parameters before clipping (a plain tensor also when FSDP shards them)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state(model, optimizers):
    """(model state dict, optimizer state dict) as whole tensors keyed by parameter name, whatever the mode: a
    collective under FSDP (every rank calls it); rank 0's copy is the one to write."""
    return get_model_state_dict(model, options=FULL), get_optimizer_state_dict(model, optimizers, options=FULL)


def load_optimizer_state(model, optimizers, state):
    """The optimizers' state of a checkpoint (full_state's form) into this rank's optimizers, sharded as they are."""
    set_optimizer_state_dict(model, optimizers, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def local_bytes(tensors):
    """Bytes this rank holds of `tensors` (only its shard of an FSDP DTensor)."""
    return sum((t.to_local() if hasattr(t, "to_local") else t).nbytes for t in tensors)


def memory_estimate(param_bytes, n_embd, n_layer, B, T, bf16, checkpointing):
    """Bytes per rank for one rank's `param_bytes` of fp32 parameters: the parameters, their gradients, AdamW's two
    moments (2 x the parameters), and an estimate of the activations kept for backward: 34 B T C bytes per block
    in 16 bits (Korthikanti et al. 2022, arXiv 2205.05198, eq. 2, without the attention scores, which
    scaled_dot_product_attention does not keep), twice that in fp32; with gradient checkpointing 2 B T C bytes per
    block (its input) plus one block's recomputation."""
    per_block = 34 * B * T * n_embd * (1 if bf16 else 2)
    activations = per_block + 2 * B * T * n_embd * n_layer * (1 if bf16 else 2) if checkpointing else \
        per_block * n_layer
    return {"parameters": param_bytes, "gradients": param_bytes, "AdamW state": 2 * param_bytes,
            "activations (estimate)": activations}


def memory_line(model, mode, world, B, T, bf16, checkpointing):
    """memory_estimate's line for the model as this rank holds it (an FSDP rank: its shards)."""
    parts = memory_estimate(local_bytes(model.parameters()), model.config.n_embd, len(model.h), B, T, bf16,
                            checkpointing)
    shards = {"ddp": "a whole copy on each rank", "fsdp": f"1/{world} of each on each rank"}.get(mode, "one process")
    listed = ", ".join(f"{name} {size / 2**20:,.1f} MiB" for name, size in parts.items())
    return f"memory per rank ({shards}): {listed} = ~{sum(parts.values()) / 2**30:,.2f} GiB"


def checkpoint_blocks(model):
    """Gradient checkpointing: each block of model.h keeps only its input and is run again in backward.
    Generation (a KV cache) and evaluation (no gradients) run the blocks as they are."""
    for block in model.h:
        def checkpointed(x, cache=None, forward=block.forward):
            if cache is not None or not torch.is_grad_enabled():
                return forward(x, cache)
            # the rerun uses the same RNG state (same dropout, same routing) and runs to the end (no early
            # stop), so an MoE layer's statistics are rewritten whole
            with set_checkpoint_early_stop(False):
                return checkpoint(forward, x, use_reentrant=False)
        block.forward = checkpointed


def ranks_hold_same_weights(model, device):
    """Compare every parameter with rank 0's copy (DDP); True when all ranks match exactly."""
    mismatches = torch.zeros((), device=device)
    for p in model.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        mismatches += float(not torch.equal(reference, p.detach()))
    dist.all_reduce(mismatches)
    return mismatches.item() == 0

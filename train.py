"""
train.py - one training loop for every nanodecoder model, on a CPU, a GPU or a torchrun cluster.

    python train.py --model_type moegpt --max_steps 1000        # char-level Tiny Shakespeare, ~2 min on a CPU
    python train.py --model_type gpt --help                     # every option, and gpt.py's config fields
    torchrun --nproc_per_node=4 train.py --model_type gpt --preset gpt2 --B 16 --T 1024 \\
        --total_batch_size 524288 --max_lr 6e-4 --min_lr 6e-5 --beta2 0.95 --compile --data DATA_DIR

The defaults are nanoGPT's CPU Shakespeare recipe: the model file's "cpu" preset on characters, B 12, T 64,
2000 steps, AdamW (betas 0.9/0.99, weight decay 0.1), lr 1e-3 with 100 warmup steps and cosine decay to 1e-4,
clipping at 1.0. GPT-2-sized presets default to GPT-2's BPE, and --tokenizer bpe learns one from the corpus
(bpe.py). Any field of the model's config is an option too (--n_layer 4 --dropout 0.1 ...).

A model file is usable here when it offers MODEL_TYPE, Config (a dataclass of int, float, bool and str fields,
with vocab_size and block_size), PRESETS (with "cpu"), Model (forward(idx, targets) -> (logits, loss), generate,
configure_optimizers, param_counts, flops_per_token, its blocks in model.h), Tokenizer, load_dataset, get_batch
and load_checkpoint. Optional hooks: model.prepare_data(train_ids), called once on a new model; model.moe_layers(),
whose layers' `stats` are logged every step and whose update_bias() is called after every optimizer step;
model.mtp_loss, logged when set.
"""
import argparse
import dataclasses
import importlib
import inspect
import json
import math
import os
import re
import signal
import sys
import time
import traceback
from contextlib import nullcontext


def stop_during_start_up(signum, frame):
    print("interrupted while starting: nothing was written", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":  # Ctrl-C while importing torch or reading the data stops at once, quietly
    signal.signal(signal.SIGINT, stop_during_start_up)

import numpy as np  # after the handler above: importing torch takes seconds
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_FILES = {"gpt": "gpt", "moderngpt": "modern_gpt", "moegpt": "moe_gpt", "mlamoe": "mla_moe", "fgram": "fgram_moe"}
# Dense bf16 peak FLOP/s by GPU name, for MFU (the vendors' datasheets, without sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}


class UsageError(Exception):
    """A mistake in the command line or the input: reported in one line, without a traceback."""


# ----------------------------------------------------------------------------- command line

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default; options whose default depends on the run say so in their help instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's own complaints (an unknown option, a value of the wrong type) as one-line usage errors."""

    def error(self, message):
        raise UsageError(f"{message} (python train.py --model_type X --help lists X's options)")


def bool_arg(value):
    if value.lower() not in ("1", "0", "true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")
    return value.lower() in ("1", "true")


def config_field_help(config_class):
    """Each config field's meaning: the comment after it in the model file's Config dataclass."""
    source = inspect.getsource(config_class)
    return dict(re.findall(r"^\s+(\w+): \w+ = [^#\n]+#\s*(.+)$", source, flags=re.MULTILINE))


def parse_args(argv):
    """train.py's options, plus every field of the chosen model's config (given ones override the preset)."""
    p = ArgumentParser(description=__doc__.split("\n\n")[0].strip(), formatter_class=HelpFormatter,
                                allow_abbrev=False, add_help=False)  # --help comes once the model's fields are in
    p.add_argument("--model_type", default="gpt", help="one of " + ", ".join(MODEL_FILES))
    p.add_argument("--preset", help="a named size from the model file's PRESETS (default: cpu; resumed: its own)")
    p.add_argument("--data", default=os.path.join(HERE, "input.txt"), help="a text file, or a train.bin/val.bin folder")
    p.add_argument("--tokenizer", choices=["char", "gpt2", "bpe"],
                   help="default: char for the cpu preset, gpt2 for the others and for train.bin/val.bin folders")
    p.add_argument("--bpe_vocab_size", type=int, default=2048, help="--tokenizer bpe: tokens to learn, bytes included")
    p.add_argument("--out_dir", default="out", help="where ckpt.pt, log.jsonl and the plots go")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its ckpt.pt")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an out_dir that holds another one")
    p.add_argument("--B", type=int, help="sequences per micro-batch per rank (default: 12; resumed: its own)")
    p.add_argument("--T", type=int, help="sequence length, also the new model's block_size (default: 64)")
    p.add_argument("--total_batch_size", type=int,
                   help="tokens per optimizer step, reached by gradient accumulation (default: B*T*ranks; "
                        "a resumed run keeps its own)")
    p.add_argument("--max_steps", type=int, default=2000, help="optimizer steps; the cosine schedule ends there")
    p.add_argument("--warmup_steps", type=int, default=100, help="steps of linear warmup to max_lr")
    p.add_argument("--max_lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min_lr", type=float, default=1e-4, help="learning rate at max_steps")
    p.add_argument("--weight_decay", type=float, default=0.1, help="AdamW's, on matrices and embeddings only")
    p.add_argument("--beta1", type=float, default=0.9, help="AdamW's beta1")
    p.add_argument("--beta2", type=float, default=0.99, help="AdamW's beta2")
    p.add_argument("--grad_clip", type=float, default=1.0, help="0 turns clipping off")
    p.add_argument("--grad_checkpointing", type=bool_arg, nargs="?", const=True, default=False,
                   help="recompute each block in backward instead of keeping its activations (less memory)")
    p.add_argument("--eval_interval", type=int, default=250, help="steps between evaluations and checkpoints")
    p.add_argument("--eval_iters", type=int, default=20, help="batches per evaluation")
    p.add_argument("--sample_tokens", type=int, default=100, help="tokens sampled at each evaluation (0: none)")
    p.add_argument("--sample_prompt", default="\n", help="the text samples continue")
    p.add_argument("--log_interval", type=int, default=1, help="print every n steps (all are logged)")
    p.add_argument("--stop_step", type=int, help="save and stop after this step, as Ctrl-C would")
    p.add_argument("--seed", type=int, default=1337, help="fixes the initial weights, every batch and dropout mask")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 autocast on GPUs that have it, fp16 + GradScaler on older CUDA GPUs, else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (pip install wandb)")
    p.add_argument("--wandb_project", default="nanodecoder", help="the Weights & Biases project")
    p.add_argument("--wandb_run_name", help="the Weights & Biases run name (default: wandb's)")
    known, _ = p.parse_known_args(argv)  # which model file's config to add (--help included)
    if known.model_type not in MODEL_FILES:
        raise UsageError(f"unknown --model_type {known.model_type!r}: choose one of {', '.join(MODEL_FILES)}")
    module = importlib.import_module(MODEL_FILES[known.model_type])
    group = p.add_argument_group(f"{module.Config.__name__} fields (override the preset; defaults from the dataclass)")
    meaning = config_field_help(module.Config)
    for field in dataclasses.fields(module.Config):
        kind = bool_arg if field.type in (bool, "bool") else {"int": int, "float": float, "str": str}.get(
            field.type, field.type)
        group.add_argument(f"--{field.name}", type=kind, default=argparse.SUPPRESS, metavar=field.name.upper(),
                           help=f"{meaning.get(field.name, '')} (default: {field.default!r})")
    p.add_argument("-h", "--help", action="help", help="show this help, with --model_type's config fields, and exit")
    args = p.parse_args(argv)
    for name in ("max_steps", "eval_interval", "eval_iters", "log_interval", "B", "T"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(module.Config) if hasattr(args, f.name)}
    return args, module, overrides


def lr_at(step, args):
    """Linear warmup to max_lr, then cosine decay to min_lr at max_steps (as nanoGPT)."""
    if step < args.warmup_steps:
        return args.max_lr * (step + 1) / (args.warmup_steps + 1)
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.max_lr - args.min_lr)


def pick_device_and_dtype(args, local_rank):
    device = args.device
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else (
            "mps" if torch.backends.mps.is_available() else "cpu")
    device_type = device.split(":")[0]
    if device_type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {args.device}: use auto, cpu, cuda, cuda:N or mps")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps asked for, but PyTorch sees no Apple GPU: use --device cpu")
    dtype = args.dtype
    if dtype == "auto":  # bf16 where the hardware has it; fp16 (with a GradScaler) on older GPUs
        dtype = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device_type == "cuda" else "fp32"
    if dtype == "fp16" and device_type != "cuda":
        raise UsageError("--dtype fp16 needs a CUDA GPU (it trains with a GradScaler): use bf16 or fp32")
    return device, device_type, dtype


# ----------------------------------------------------------------------------- the run

class Run:
    """One training run, built step by step: distributed set-up, the out_dir, the batch arithmetic, data,
    model, optimizer and logging. Everything that could fail later is checked here, before step 1."""

    def __init__(self, args, module, overrides):
        self.args, self.module, self.overrides = args, module, overrides
        self.setup_distributed()
        self.check_out_dir()
        ckpt = self.read_checkpoint() if args.resume else None
        self.setup_batch(ckpt)
        self.setup_data(ckpt)
        self.setup_model(ckpt)
        self.setup_optimizer(ckpt)
        self.setup_logging(ckpt)

    def setup_distributed(self):
        """Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE set) one process per device, gradients averaged by DDP."""
        self.ddp = "RANK" in os.environ
        self.rank, self.world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.master = self.rank == 0  # rank 0 alone prints, logs and writes
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device, self.device_type, self.dtype = pick_device_and_dtype(self.args, local_rank)
        if self.ddp:
            if self.device_type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device_type == "cuda" else "gloo")
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True

    def check_out_dir(self):
        """out_dir must be a writable folder, and not hold another run unless --resume or --overwrite says so."""
        args = self.args
        self.ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
        self.log_path = os.path.join(args.out_dir, "log.jsonl")
        if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
            raise UsageError(f"--out_dir {args.out_dir} is a file: give a folder for the checkpoint and logs")
        if args.resume and args.overwrite:
            raise UsageError("--resume continues the run in out_dir, --overwrite replaces it: give one of them")
        held = [path for path in (self.ckpt_path, self.log_path) if os.path.exists(path)]
        if held and not (args.resume or args.overwrite):
            raise UsageError(f"{args.out_dir} holds another run ({os.path.basename(held[0])}): --resume to continue "
                             "it, --overwrite to replace it, or another --out_dir")
        try:
            os.makedirs(args.out_dir, exist_ok=True)
            probe = os.path.join(args.out_dir, f".write-test-{self.rank}")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as err:
            raise UsageError(f"--out_dir {args.out_dir} is not writable ({err.strerror}): choose another folder")
        if self.master and os.path.exists(self.ckpt_path + ".tmp"):
            os.remove(self.ckpt_path + ".tmp")  # half a checkpoint from a write that was killed

    def read_checkpoint(self):
        """The run to resume: its checkpoint, with the model rebuilt from it (ckpt["model"]); what the command
        line says must agree with it."""
        args = self.args
        if not os.path.exists(self.ckpt_path):
            raise UsageError(f"no checkpoint to resume at {self.ckpt_path}: drop --resume to start a new run")
        try:
            model, tokenizer, ckpt = self.module.load_checkpoint(self.ckpt_path)
        except ValueError as err:  # unreadable (cut short, empty, not a checkpoint) or another model type
            raise UsageError(f"--resume: {err}")
        ckpt["model"] = model
        self.preset = ckpt["args"].get("preset") or "cpu"
        kept = {"preset": self.preset, "tokenizer": tokenizer.kind}
        for name, value in kept.items():
            if getattr(args, name) not in (None, value):
                raise UsageError(f"{self.ckpt_path} was trained with --{name} {value}: drop --{name} "
                                 f"{getattr(args, name)} to resume it, or start a new run in another --out_dir")
        clashes = [k for k, v in self.overrides.items() if ckpt["config"].get(k) != v]
        if clashes:
            raise UsageError(f"{self.ckpt_path} was trained with {clashes[0]}={ckpt['config'].get(clashes[0])}: "
                             f"drop --{clashes[0]} to resume it, or start a new run in another --out_dir")
        return ckpt

    def setup_batch(self, ckpt):
        """Tokens per optimizer step = B * T * ranks * accumulation steps. A resumed run keeps its global batch
        (its B and T too unless given): gradient accumulation adapts to the number of ranks."""
        args, saved = self.args, ckpt["args"] if ckpt else {}
        self.B, self.T = args.B or saved.get("B") or 12, args.T or saved.get("T") or 64
        total = args.total_batch_size or (ckpt and ckpt.get("tokens_per_step")) or self.B * self.T * self.world
        if ckpt and total != ckpt.get("tokens_per_step", total):
            raise UsageError(f"{self.ckpt_path} trains with {ckpt['tokens_per_step']:,} tokens per step: drop "
                             "--total_batch_size to resume it with the same global batch")
        micro = self.B * self.T * self.world
        if total % micro:
            raise UsageError(f"{total:,} tokens per step are not a multiple of B*T*ranks = {self.B}*{self.T}*"
                             f"{self.world} = {micro:,}: change --B, --T, --total_batch_size or the number of ranks")
        self.tokens_per_step, self.accum_steps = total, total // micro

    def setup_data(self, ckpt):
        """The tokenizer follows the preset: characters for the cpu preset (nanoGPT's char-level recipe), GPT-2's
        BPE for GPT-2-sized ones; --tokenizer overrides; train.bin/val.bin folders hold GPT-2 ids."""
        args, module = self.args, self.module
        folder = os.path.isdir(args.data)
        if ckpt:
            kind, why = ckpt["tokenizer"]["kind"], f"the resumed run's, from {self.ckpt_path}"
        elif folder:
            kind, why = "gpt2", "train.bin/val.bin hold GPT-2 ids"
            if args.tokenizer not in (None, "gpt2"):
                raise UsageError(f"{args.data} holds GPT-2 ids (train.bin/val.bin): drop --tokenizer {args.tokenizer}")
        elif args.tokenizer:
            kind, why = args.tokenizer, "--tokenizer"
        elif (args.preset or "cpu") == "cpu":
            kind, why = "char", "the cpu preset's, nanoGPT's char-level recipe; --tokenizer gpt2 or bpe to change"
        else:
            kind, why = "gpt2", f"the {args.preset} preset's; --tokenizer char or bpe to change"
        if folder:
            val_chars = check_token_files(args.data, module.Tokenizer("gpt2"))
        else:
            text = check_text(args.data)
            train_text, val_chars = text[:int(0.9 * len(text))], len(text) - int(0.9 * len(text))
        if not self.master and self.ddp:
            dist.barrier()  # rank 0 learns and caches the tokenizer and the token ids first; the others read them
        try:
            if ckpt:
                tokenizer = module.Tokenizer(**ckpt["tokenizer"])
            elif kind == "bpe":
                import bpe  # learning the BPE lives in its own file; the model files only use it
                merges = bpe.learned_merges(args.data, train_text, args.bpe_vocab_size)
                tokenizer = module.Tokenizer("bpe", merges=merges)
            else:
                tokenizer = module.Tokenizer("gpt2") if kind == "gpt2" else None  # None: the text's characters
            self.train_ids, self.val_ids, self.tokenizer = module.load_dataset(args.data, tokenizer)
        except (OSError, ValueError) as err:  # a bad --bpe_vocab_size, characters outside a resumed vocabulary, ...
            raise UsageError(f"{args.data}: {err}")
        finally:
            if self.master and self.ddp:
                dist.barrier()
        for split, ids in (("training", self.train_ids), ("validation", self.val_ids)):
            if len(ids) < self.T + 1:
                raise UsageError(f"{args.data}: the {split} split has {len(ids)} tokens, fewer than T+1 = "
                                 f"{self.T + 1}: use a longer corpus or a smaller --T")
        # bits per character of the validation text = nats per token * tokens per character / ln 2
        self.tokens_per_char = len(self.val_ids) / val_chars
        self.tokenizer_line = f"tokenizer: {self.tokenizer.kind}, {self.tokenizer.vocab_size:,} tokens ({why})"
        if args.sample_tokens:
            try:
                self.sample_prompt = self.tokenizer.encode(args.sample_prompt)
            except ValueError as err:
                raise UsageError(f"--sample_prompt {args.sample_prompt!r}: {err}")
            if not self.sample_prompt:
                raise UsageError("--sample_prompt is empty: give the text samples continue, or --sample_tokens 0")

    def setup_model(self, ckpt):
        args, module = self.args, self.module
        if ckpt:
            self.model = ckpt["model"].train()
        else:
            self.preset = args.preset or "cpu"
            if self.preset not in module.PRESETS:
                raise UsageError(f"unknown preset {self.preset!r} for {args.model_type}: choose one of "
                                 f"{', '.join(module.PRESETS)}")
            config = {**module.PRESETS[self.preset], "block_size": self.T, "vocab_size": self.tokenizer.vocab_size,
                      **self.overrides}
            torch.manual_seed(args.seed)  # the same initial weights on every rank
            try:  # a config the model cannot build (head sizes that do not divide, ...) is a usage error
                self.model = module.Model(module.Config(**config))
            except ValueError as err:
                raise UsageError(f"{args.model_type} config: {err}")
            if hasattr(self.model, "prepare_data"):
                self.model.prepare_data(self.train_ids)
        config = self.model.config
        if config.block_size < self.T:
            raise UsageError(f"--T {self.T} is longer than the model's block_size {config.block_size}")
        if config.vocab_size < self.tokenizer.vocab_size:
            raise UsageError(f"vocab_size {config.vocab_size} is below the tokenizer's {self.tokenizer.vocab_size}")
        if args.grad_checkpointing:
            checkpoint_blocks(self.model)
        self.model.to(self.device)
        # the model as the training step calls it: compiled and/or DDP-wrapped, the same weights as self.model
        self.wrapped_model = torch.compile(self.model) if args.compile else self.model
        if self.ddp:
            device_ids = [self.device] if self.device_type == "cuda" else None
            self.wrapped_model = torch.nn.parallel.DistributedDataParallel(self.wrapped_model, device_ids=device_ids)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)
        self.autocast = torch.autocast(self.device_type, dtype=amp_dtype) if amp_dtype else nullcontext()

    def setup_optimizer(self, ckpt):
        args = self.args
        self.optimizer = self.model.configure_optimizers(
            args.weight_decay, args.max_lr, (args.beta1, args.beta2), self.device_type)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == "fp16")
        self.start_step, self.best_val, self.elapsed_before = 0, float("inf"), 0.0
        if ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.start_step, self.best_val = ckpt["step"], ckpt["best_val_loss"]
            self.elapsed_before = ckpt.get("elapsed", 0.0)

    def setup_logging(self, ckpt):
        """A new run starts a new log.jsonl; a resumed one keeps the records up to its checkpoint's step."""
        self.peak_flops = None
        if self.device_type == "cuda" and self.dtype in ("bf16", "fp16"):  # MFU needs the GPU's peak
            name = torch.cuda.get_device_name(self.device)
            self.peak_flops = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
        self.wandb = None
        if self.args.wandb and self.master:
            try:
                import wandb
            except ImportError:
                raise UsageError("--wandb needs the wandb package: pip install wandb (or drop --wandb)")
            self.wandb = wandb.init(project=self.args.wandb_project, name=self.args.wandb_run_name,
                                    config={**vars(self.args), "model": dataclasses.asdict(self.model.config)},
                                    resume="allow")
        if self.master:
            if self.args.overwrite:  # asked for: the other run's checkpoint and plots go now, its log just below
                for name in ("ckpt.pt", "loss.png", "expert_load.png"):
                    if os.path.exists(os.path.join(self.args.out_dir, name)):
                        os.remove(os.path.join(self.args.out_dir, name))
            kept = [r for r in read_log(self.log_path) if r["step"] <= self.start_step] if ckpt else []
            write_atomically(self.log_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    # ------------------------------------------------------------------------- one step

    def micro_batch(self, step, block):
        """The B windows of micro-batch `block` of `step`'s global batch (blocks 0 .. accum * ranks - 1), and
        the seed of its dropout masks (and router noise). Both come from (seed, step, block) alone, whatever
        rank draws them, so a run resumed at any step on any number of ranks sees the same batches."""
        generator = torch.Generator().manual_seed(self.args.seed + 7919 * (step + 1) + 1_000_003 * block)
        torch.manual_seed(self.args.seed + 1000 * step + 1_000_003 * block)
        return self.module.get_batch(self.train_ids, self.B, self.T, generator, self.device)

    def train_step(self, step):
        """Gradients of one optimizer step: this rank's blocks of the global batch (rank r takes blocks r,
        r + ranks, ...). Returns this rank's mean loss and the gradient norm before clipping."""
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum_steps):
            x, y = self.micro_batch(step, micro * self.world + self.rank)
            last = micro == self.accum_steps - 1
            # DDP averages gradients across ranks only on the last micro-batch
            no_sync = self.wrapped_model.no_sync() if self.ddp and not last else nullcontext()
            with no_sync, self.autocast:
                _, loss = self.wrapped_model(x, y)
                loss = loss / self.accum_steps
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.args.grad_clip if self.args.grad_clip > 0 else float("inf")  # inf: measure, do not clip
        return loss_sum, torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

    @torch.no_grad()
    def evaluate(self):
        """Mean loss over eval_iters batches of each split: the same batches at every evaluation and for any
        number of ranks (every rank draws them all, rank r evaluates batches r, r + ranks, ...)."""
        self.model.eval()
        losses = {}
        for split, ids in (("train", self.train_ids), ("val", self.val_ids)):
            generator = torch.Generator().manual_seed(self.args.seed + 1)
            total = torch.zeros((), device=self.device)
            for i in range(self.args.eval_iters):
                x, y = self.module.get_batch(ids, self.B, self.T, generator, self.device)
                if i % self.world == self.rank:
                    with self.autocast:
                        total += self.model(x, y)[1].float()
            if self.ddp:
                dist.all_reduce(total)
            losses[split] = total.item() / self.args.eval_iters
        self.model.train()
        return losses

    @torch.no_grad()
    def sample(self):
        prompt = torch.tensor([self.sample_prompt], device=self.device)
        self.model.eval()
        with self.autocast:
            out = self.model.generate(prompt, self.args.sample_tokens, temperature=0.8, top_k=200)
        self.model.train()
        return self.tokenizer.decode(out[0].tolist())

    def save_checkpoint(self, step, elapsed):
        """Everything a resume needs, written to a temporary file and renamed over ckpt.pt: a crash mid-write
        leaves the previous checkpoint whole."""
        if self.master:
            args = {**vars(self.args), "preset": self.preset, "B": self.B, "T": self.T}
            torch.save({"model_type": self.args.model_type, "config": dataclasses.asdict(self.model.config),
                        "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(), "step": step, "best_val_loss": self.best_val,
                        "tokens_per_step": self.tokens_per_step, "elapsed": elapsed,
                        "tokenizer": self.tokenizer.state(), "args": args},
                       self.ckpt_path + ".tmp")
            os.replace(self.ckpt_path + ".tmp", self.ckpt_path)

    def log(self, record):
        if self.master:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.wandb:
                scalars = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
                self.wandb.log(scalars, step=record["step"])

    def say(self, text):
        if self.master:
            print(text, flush=True)

    def stop_if_not_finite(self, what, value, step):
        """A diverged run stops before it can overwrite the last good checkpoint."""
        if not math.isfinite(value):
            kept = f"the last good checkpoint is {self.ckpt_path}" if os.path.exists(self.ckpt_path) else \
                "no checkpoint was written"
            raise UsageError(f"{what} is {value} at step {step}: stopped; {kept}. Try a lower --max_lr or --dtype fp32")

    # ------------------------------------------------------------------------- the loop

    def train(self):
        args = self.args
        counts = self.model.param_counts()
        flops_per_step = self.model.flops_per_token(self.T) * self.tokens_per_step
        self.say(self.tokenizer_line)
        self.say(f"{args.model_type}: {counts['total'] / 1e6:.2f}M parameters ({counts['active'] / 1e6:.2f}M active)"
                 f" | {self.B} x {self.T} tokens x {self.accum_steps} accum x {self.world} ranks = "
                 f"{self.tokens_per_step:,} tokens/step | {self.device} {self.dtype} | "
                 f"{len(self.train_ids):,} train tokens")
        if self.start_step:
            self.say(f"resuming from step {self.start_step} of {self.ckpt_path}")
        stop, t_start = StopSignal(), time.perf_counter()
        moe_layers = self.model.moe_layers() if hasattr(self.model, "moe_layers") else []
        loads = []  # each step's expert load since the last evaluation, for the idle-expert report
        for step in range(self.start_step, args.max_steps):
            t0 = time.perf_counter()
            lr = lr_at(step, args)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum, norm = self.train_step(step)
            flags = torch.stack([loss_sum, torch.tensor(float(stop.requested), device=self.device)])
            if self.ddp:  # mean loss over ranks, and whether any rank was asked to stop
                dist.all_reduce(flags)
            loss, stop_votes = flags[0].item() / self.world, flags[1].item()
            self.stop_if_not_finite("loss", loss, step + 1)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            for moe in moe_layers:
                if hasattr(moe, "update_bias"):  # DeepSeek-V3's balancing bias, where the MoE has one
                    moe.update_bias()
            done, dt = step + 1, time.perf_counter() - t0
            elapsed = self.elapsed_before + time.perf_counter() - t_start
            record = {"step": done, "loss": loss, "lr": lr, "grad_norm": norm.item(), "ms": 1000 * dt,
                      "tok_per_s": self.tokens_per_step / dt, "elapsed": elapsed}
            if self.peak_flops:
                record["mfu"] = flops_per_step / dt / (self.peak_flops * self.world)
            record.update(moe_stats(self.model, moe_layers))
            if "expert_load" in record:
                loads.append(record["expert_load"])
            self.log(record)
            eta = (args.max_steps - done) * (time.perf_counter() - t_start) / (done - self.start_step)
            if done % args.log_interval == 0 or done == args.max_steps:
                self.say(step_line(record, args.max_steps, eta))
                if moe_layers and (done // args.log_interval) % 10 == 0:
                    self.say(moe_line(record))
            if done % args.eval_interval == 0 or done == args.max_steps:
                self.evaluate_and_save(done, elapsed, loads)
                loads = []
            if stop_votes or done == args.stop_step:
                if done % args.eval_interval and done != args.max_steps:
                    self.save_checkpoint(done, elapsed)
                self.say(f"stopped after step {done}: checkpoint in {self.ckpt_path}; continue with --resume")
                return ("interrupted" if stop_votes else "stopped"), elapsed
        return "finished", self.elapsed_before + time.perf_counter() - t_start

    def evaluate_and_save(self, step, elapsed, loads):
        """Evaluate, checkpoint, then (never able to cost the checkpoint) sample and report idle experts."""
        losses = self.evaluate()
        self.stop_if_not_finite("val loss", losses["val"], step)
        self.best_val = min(self.best_val, losses["val"])
        bpc = losses["val"] * self.tokens_per_char / math.log(2)
        self.log({"step": step, "train_loss": losses["train"], "val_loss": losses["val"], "val_bpc": bpc})
        self.say(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({bpc:.3f} bits/char)")
        self.save_checkpoint(step, elapsed)
        if self.args.sample_tokens and self.master:
            try:
                self.say(f"--- sample ---\n{self.sample()}\n--------------")
            except Exception:  # noqa: BLE001 (any failure: a sample never ends the run; the checkpoint is saved)
                self.say(f"sampling failed (training goes on):\n{traceback.format_exc()}")
        if loads:
            load = np.mean(loads, axis=0)  # (MoE layers, experts): share of the tokens since the last evaluation
            idle = {layer: np.flatnonzero(row < 1 / (10 * len(row))).tolist() for layer, row in enumerate(load)}
            idle = {layer: experts for layer, experts in idle.items() if experts}
            if idle:
                self.log({"step": step, "idle_experts": idle})
                self.say(f"idle experts (< 1/(10 E) of the tokens since the last evaluation), by MoE layer: {idle}")

    def finish(self, outcome, elapsed):
        if self.ddp and outcome == "finished":
            same = ranks_hold_same_weights(self.model, self.device)
            self.say(f"weights identical on all {self.world} ranks: {'yes' if same else 'NO'}")
        if self.master:
            plots = plot_run(self.args.out_dir, self.run_title())
            records = read_log(self.log_path)
            evals = [r for r in records if "val_loss" in r]
            steps = max([r["step"] for r in records if "loss" in r], default=0)
            final = f"final val {evals[-1]['val_loss']:.4f} ({evals[-1]['val_bpc']:.3f} bits/char) | " if evals else ""
            best = f"{self.best_val:.4f}" if math.isfinite(self.best_val) else "none yet"
            self.say(f"{outcome} after {steps} steps in {format_time(elapsed)} | best val {best} | "
                     f"{final}{steps * self.tokens_per_step:,} tokens seen")
            self.say(f"checkpoint {self.ckpt_path} | log {self.log_path} | plots {', '.join(plots) or 'none'}")
        if self.wandb:
            self.wandb.finish()
        if self.ddp:
            dist.barrier()  # rank 0 may still be plotting: tear the group down together
            dist.destroy_process_group()

    def run_title(self):
        counts = self.model.param_counts()
        size = f"{counts['total'] / 1e6:.2f}M" + (f" ({counts['active'] / 1e6:.2f}M active)"
                                                  if counts["active"] != counts["total"] else "")
        return f"{self.args.model_type}, {size} params, {self.tokenizer.kind} tokenizer, {self.args.max_steps} steps"


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


class StopSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step and save;
    a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


# ----------------------------------------------------------------------------- data checks, logs and plots

def check_text(path):
    """The corpus, read as UTF-8, or a one-line error naming the file."""
    if not os.path.isfile(path):
        raise UsageError(f"data file {path} not found: pass --data with a text file or a train.bin/val.bin folder")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}): "
                         "pass a text file or a train.bin/val.bin folder")
    if not text:
        raise UsageError(f"{path} is empty: pass a text file that holds the corpus")
    return text


def check_token_files(folder, gpt2):
    """train.bin and val.bin must hold uint16 ids of GPT-2's vocabulary; returns the characters of val.bin's
    text (for bits per character), estimated from its first million tokens."""
    for name in ("train.bin", "val.bin"):
        path = os.path.join(folder, name)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if not size or size % 2:
            found = "is missing" if size is None else f"has {size} bytes"
            raise UsageError(f"{path} {found}: a data folder needs train.bin and val.bin of uint16 token ids")
        ids = np.memmap(path, dtype=np.uint16, mode="r")
        if ids.max() >= gpt2.vocab_size:
            raise UsageError(f"{path} holds token id {ids.max()}, outside GPT-2's vocabulary of {gpt2.vocab_size}: "
                             "a data folder holds GPT-2 ids")
    head = ids[:1_000_000]
    return len(gpt2.decode(head.tolist())) * len(ids) / len(head)


def moe_stats(model, moe_layers):
    """The last batch's routing: each balancing loss and the dropped share, averaged over MoE layers, the
    expert load (MoE layers x experts, share of assignments), and the MTP loss where there is one."""
    stats = {}
    if getattr(model, "mtp_loss", None) is not None:
        stats["mtp_loss"] = model.mtp_loss.item()
    layers = [moe.stats for moe in moe_layers if moe.stats]
    if layers:
        for name in (name for name in layers[0] if name != "load"):
            stats[name] = sum(float(s[name]) for s in layers) / len(layers)
        stats["expert_load"] = [s["load"].tolist() for s in layers]
    return stats


def format_time(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def step_line(record, max_steps, eta):
    line = (f"step {record['step']:5d}/{max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"norm {record['grad_norm']:.3f} | {record['ms']:.1f} ms | {record['tok_per_s']:,.0f} tok/s")
    if "mfu" in record:
        line += f" | MFU {100 * record['mfu']:.1f}%"
    return line + f" | {format_time(record['elapsed'])} | ETA {format_time(eta)}"


def moe_line(record):
    """The MoE terms, on a line of their own: balancing losses, dropped share, worst layer's max/mean load."""
    names = [name for name in record if name.endswith("_loss")] + (["dropped"] if "dropped" in record else [])
    terms = [f"{name} {record[name]:.4g}" for name in names]
    if "expert_load" in record:
        imbalance = max(max(layer) * len(layer) for layer in record["expert_load"])  # max / mean load
        terms.append(f"max/mean expert load {imbalance:.2f}")
    return "      moe: " + " | ".join(terms)


def ranks_hold_same_weights(model, device):
    """Compare every parameter with rank 0's copy; True when all ranks match exactly."""
    mismatches = torch.zeros((), device=device)
    for p in model.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        mismatches += float(not torch.equal(reference, p.detach()))
    dist.all_reduce(mismatches)
    return mismatches.item() == 0


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_atomically(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def plot_run(out_dir, title):
    """loss.png and, for MoE models, expert_load.png; a failure here is reported, never fatal."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        records = read_log(os.path.join(out_dir, "log.jsonl"))
        written = [plot_loss(plt, records, title, os.path.join(out_dir, "loss.png"))]
        loads = [r["expert_load"] for r in records if "expert_load" in r]
        if loads:
            written.append(plot_expert_load(plt, np.array(loads), os.path.join(out_dir, "expert_load.png")))
        return written
    except Exception:  # noqa: BLE001 (any failure: plots never end the run)
        print(f"plotting failed (the run and its checkpoint are fine):\n{traceback.format_exc()}", flush=True)
        return []


def plot_loss(plt, records, title, path):
    """Train loss per step (raw and smoothed) and val loss at each evaluation, the y-range on the part of the
    curve after the first steps' plunge; bits per character of the val text on the right axis."""
    steps = np.array([r["step"] for r in records if "loss" in r])
    loss = np.array([r["loss"] for r in records if "loss" in r])
    evals = [r for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.plot(steps, loss, lw=0.6, alpha=0.35, color="tab:blue", label="train (per step)")
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    smooth_label = f"train (mean of {window} steps)" if window > 1 else None
    ax.plot(steps[window - 1:], smooth, lw=1.6, color="tab:blue", label=smooth_label)
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val")
        nats_to_bits = evals[-1]["val_bpc"] / evals[-1]["val_loss"]
        right = ax.secondary_yaxis("right", functions=(lambda x: x * nats_to_bits, lambda x: x / nats_to_bits))
        right.set_ylabel("val bits per character")
    later = smooth[len(smooth) // 20:] if len(smooth) > 20 else smooth
    values = np.concatenate([later, [r["val_loss"] for r in evals]])
    low, high = values.min(), np.percentile(later, 99) if len(later) else values.max()
    high = max(high, max((r["val_loss"] for r in evals), default=high))
    ax.set_ylim(low - 0.05 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    ax.set(title=title, xlabel="step", ylabel="cross-entropy loss (nats per token)")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_expert_load(plt, load, path):
    """load (steps, layers, experts): one heatmap per MoE layer on one colour scale centred on the uniform
    share 1/E (white: uniform, red: over-, blue: under-loaded), and each layer's max/mean load over the run."""
    from matplotlib.colors import TwoSlopeNorm
    n_steps, n_layers, n_experts = load.shape
    uniform = 1 / n_experts
    norm = TwoSlopeNorm(vcenter=uniform, vmin=0, vmax=max(load.max(), 2 * uniform))
    fig, axes = plt.subplots(n_layers + 1, 1, figsize=(9, 2 + 1.4 * (n_layers + 1)), squeeze=False)
    for layer in range(n_layers):
        image = axes[layer, 0].imshow(load[:, layer].T, aspect="auto", cmap="RdBu_r", norm=norm,
                                      interpolation="nearest", extent=(0.5, n_steps + 0.5, n_experts - 0.5, -0.5))
        axes[layer, 0].set_ylabel(f"MoE layer {layer}\nexpert")
    bar = fig.colorbar(image, ax=axes[:n_layers, 0].tolist(), label="share of tokens")
    bar.set_ticks(sorted({0, uniform, norm.vmax}))
    bar.set_ticklabels(["0", f"uniform 1/{n_experts}", f"{norm.vmax:.2f}"])
    imbalance = load.max(axis=2) * n_experts  # (steps, layers): max / mean load
    for layer in range(n_layers):
        axes[-1, 0].plot(np.arange(1, n_steps + 1), imbalance[:, layer], lw=0.8, label=f"layer {layer}")
    axes[-1, 0].axhline(1.0, color="gray", lw=0.8, ls="--")
    axes[-1, 0].set(xlabel="step", ylabel="max / mean load", xlim=(0.5, n_steps + 0.5))
    axes[-1, 0].legend(fontsize=7, ncol=min(n_layers, 6))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None):
    args, module, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    run = Run(args, module, overrides)
    outcome, elapsed = run.train()
    run.finish(outcome, elapsed)
    sys.exit(130 if outcome == "interrupted" else 0)


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, quietly
        if os.environ.get("RANK", "0") == "0":
            print("interrupted: stopped at once (the last checkpoint, if any, is whole)", file=sys.stderr)
        sys.exit(130)

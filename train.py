"""
train.py - one training loop for every nanodecoder model, on a CPU, a GPU or a torchrun cluster.

    python train.py --model_type gpt --tokenizer char            # nanoGPT's CPU Shakespeare recipe
    python train.py --model_type moegpt --max_steps 1000 --n_layer 6
    torchrun --nproc_per_node=4 train.py --model_type gpt --preset gpt2 --B 16 --T 1024 \
        --total_batch_size 524288 --max_lr 6e-4 --min_lr 6e-5 --beta2 0.95 --compile

The defaults are nanoGPT's CPU recipe (B 12, T 64, lr 1e-3 cosine to 1e-4 after 100 warmup
steps, 2000 steps, AdamW betas 0.9/0.99, weight decay 0.1, clip 1.0) on the "cpu" preset.
Any field of the model's config dataclass is an option too (--n_layer 4 --dropout 0.1 ...).

A model file is usable here when it offers: MODEL_TYPE, Config (a dataclass of int, float,
bool and str fields, with vocab_size and block_size), PRESETS (with a "cpu" entry), Model
with forward(idx, targets) -> (logits, loss), generate(...), configure_optimizers(...),
param_counts() and flops_per_token(T), plus load_dataset and get_batch. Optional hooks:
DEFAULT_TOKENIZER; model.prepare_data(train_ids), called once on a new model before training
(whatever it learns must live in the state_dict); model.update_balance_bias(), called after
every optimizer step; model.moe_stats(), a dict of floats and an "expert_load" matrix
(MoE layers x experts, fraction of routed tokens) logged every step.

Every step's randomness (batch positions, dropout) comes from seeds derived from
(--seed, step, rank), so the checkpoint's step fixes the data and RNG state and a resumed
run repeats the uninterrupted one exactly, whatever the number of ranks.
"""
import argparse
import dataclasses
import importlib
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_FILES = {"gpt": "gpt", "moderngpt": "modern_gpt", "moegpt": "moe_gpt", "mlamoe": "mla_moe", "fgram": "fgram_moe"}
# Dense bf16 peak FLOP/s by GPU name, for MFU (the vendors' datasheets, without sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}


class UsageError(Exception):
    """A mistake in the command line or the input: reported in one line, without a traceback."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                epilog="Fields of the model's config are options too, e.g. --n_layer 4.")
    p.add_argument("--model_type", default="gpt", help="one of " + ", ".join(MODEL_FILES))
    p.add_argument("--preset", default="cpu", help="a named size from the model file's PRESETS")
    p.add_argument("--data", default=os.path.join(HERE, "input.txt"), help="text file, or a folder with train.bin/val.bin")
    p.add_argument("--tokenizer", choices=["gpt2", "char"], help="default: the model file's (gpt2 for most)")
    p.add_argument("--out_dir", default="out")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/ckpt.pt")
    p.add_argument("--B", type=int, default=12, help="sequences per micro-batch per rank")
    p.add_argument("--T", type=int, default=64, help="sequence length (sets block_size unless given)")
    p.add_argument("--total_batch_size", type=int, help="tokens per optimizer step (default B*T*ranks)")
    p.add_argument("--max_steps", type=int, default=2000)
    p.add_argument("--warmup_steps", type=int, default=100)
    p.add_argument("--max_lr", type=float, default=1e-3)
    p.add_argument("--min_lr", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--grad_clip", type=float, default=1.0, help="0 turns clipping off")
    p.add_argument("--eval_interval", type=int, default=250)
    p.add_argument("--eval_iters", type=int, default=20)
    p.add_argument("--sample_tokens", type=int, default=100, help="sample printed at each eval (0: none)")
    p.add_argument("--sample_prompt", default="\n")
    p.add_argument("--log_interval", type=int, default=1, help="print every n steps (all are logged)")
    p.add_argument("--stop_step", type=int, help="save and stop after this step, as Ctrl-C would")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--wandb", action="store_true")
    p.add_argument("--wandb_project", default="nanodecoder")
    p.add_argument("--wandb_run_name")
    args, rest = p.parse_known_args(argv)
    for name in ("B", "T", "max_steps", "eval_interval", "eval_iters", "log_interval"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.model_type not in MODEL_FILES:
        raise UsageError(f"unknown model type {args.model_type!r}: choose one of {', '.join(MODEL_FILES)}")
    module = importlib.import_module(MODEL_FILES[args.model_type])
    return args, module, config_overrides(rest, module.Config)


def config_overrides(rest, config_class):
    """`--name value` pairs for fields of the model's config, converted to the field's type."""
    fields = {f.name: f.type for f in dataclasses.fields(config_class)}
    overrides = {}
    while rest:
        arg = rest.pop(0)
        name, _, value = arg[2:].partition("=")
        if not arg.startswith("--") or name not in fields:
            raise UsageError(f"unknown option {arg}: not a train.py option nor a field of {config_class.__name__}")
        if not value:
            if not rest:
                raise UsageError(f"{arg} needs a value")
            value = rest.pop(0)
        kind = fields[name]
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false"):
                    raise ValueError(value)
                overrides[name] = value.lower() in ("1", "true")
            else:
                overrides[name] = kind(value)
        except ValueError:
            raise UsageError(f"--{name} must be {kind.__name__}, not {value!r}")
    return overrides


def lr_at(step, args):
    """Linear warmup to max_lr, then cosine decay to min_lr at max_steps (as nanoGPT)."""
    if step < args.warmup_steps:
        return args.max_lr * (step + 1) / (args.warmup_steps + 1)
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.max_lr - args.min_lr)


def pick_device_and_dtype(args, local_rank):
    if args.device == "auto":
        if torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    else:
        device = args.device
    device_type = device.split(":")[0]
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu")
    dtype = args.dtype
    if dtype == "auto":  # bf16 where the hardware has it; fp16 (with a GradScaler) on older GPUs
        if device_type == "cuda":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            dtype = "fp32"
    if dtype == "fp16" and device_type != "cuda":
        raise UsageError("--dtype fp16 needs a CUDA GPU (it trains with a GradScaler): use bf16 or fp32")
    return device, device_type, dtype


class Run:
    """The state of one training run: model, optimizer, data, and where it logs and saves."""

    def __init__(self, args, module, overrides):
        self.args, self.module = args, module
        self.ddp = "RANK" in os.environ  # started by torchrun
        if self.ddp:
            self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ["LOCAL_RANK"])
        else:
            self.rank, self.world, local_rank = 0, 1, 0
        self.master = self.rank == 0
        self.device, self.device_type, self.dtype = pick_device_and_dtype(args, local_rank)
        if self.ddp:
            if self.device_type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device_type == "cuda" else "gloo")
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True

        micro_tokens = args.B * args.T * self.world
        total = args.total_batch_size or micro_tokens
        if total % micro_tokens:
            raise UsageError(f"--total_batch_size {total} is not a multiple of B*T*ranks = "
                             f"{args.B}*{args.T}*{self.world} = {micro_tokens}: change one of them")
        self.accum_steps = total // micro_tokens
        self.tokens_per_step = total

        self.ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
        ckpt = self.load_checkpoint() if args.resume else None
        tokenizer_state = ckpt["tokenizer"] if ckpt else {"kind": args.tokenizer or getattr(module, "DEFAULT_TOKENIZER", "gpt2")}
        self.train_ids, self.val_ids, self.tokenizer = module.load_dataset(
            args.data, tokenizer_state["kind"], tokenizer_state.get("chars"))
        for split, ids in (("training", self.train_ids), ("validation", self.val_ids)):
            if len(ids) < args.T + 1:
                raise UsageError(f"{args.data}: the {split} split has {len(ids)} tokens, fewer than T+1 = "
                                 f"{args.T + 1}: use a longer corpus or a smaller --T")

        if args.preset not in module.PRESETS:
            raise UsageError(f"unknown preset {args.preset!r} for {args.model_type}: choose one of {', '.join(module.PRESETS)}")
        config = {**module.PRESETS[args.preset], "block_size": args.T, "vocab_size": self.tokenizer.vocab_size, **overrides}
        if ckpt:
            clashes = [k for k, v in overrides.items() if ckpt["config"].get(k) != v]
            if clashes:
                raise UsageError(f"{self.ckpt_path} was trained with {clashes[0]}={ckpt['config'].get(clashes[0])}: "
                                 f"drop --{clashes[0]} to resume it, or use a new --out_dir")
            config = ckpt["config"]
        if config["block_size"] < args.T:
            raise UsageError(f"--T {args.T} is longer than the model's block_size {config['block_size']}")
        if config["vocab_size"] < self.tokenizer.vocab_size:
            raise UsageError(f"vocab_size {config['vocab_size']} is smaller than the tokenizer's {self.tokenizer.vocab_size}")
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        self.model = module.Model(module.Config(**config))
        if ckpt:
            try:
                self.model.load_state_dict(ckpt["model"])
            except RuntimeError as err:
                raise UsageError(f"{self.ckpt_path} does not fit this model: {str(err).splitlines()[1].strip()}")
        elif hasattr(self.model, "prepare_data"):
            self.model.prepare_data(self.train_ids)
        self.model.to(self.device)
        self.optimizer = self.model.configure_optimizers(
            args.weight_decay, args.max_lr, (args.beta1, args.beta2), self.device_type)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == "fp16")
        self.start_step, self.best_val = 0, float("inf")
        if ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.start_step, self.best_val = ckpt["step"], ckpt["best_val_loss"]

        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)
        self.autocast = torch.autocast(self.device_type, dtype=amp_dtype) if amp_dtype else nullcontext()
        self.trained = torch.compile(self.model) if args.compile else self.model
        if self.ddp:
            device_ids = [self.device] if self.device_type == "cuda" else None
            self.trained = torch.nn.parallel.DistributedDataParallel(self.trained, device_ids=device_ids)
        self.peak_flops = self.find_peak_flops()
        self.wandb = self.start_wandb(config) if args.wandb and self.master else None
        if self.master:
            os.makedirs(args.out_dir, exist_ok=True)
            self.log_path = os.path.join(args.out_dir, "log.jsonl")
            self.start_log()

    def load_checkpoint(self):
        if not os.path.exists(self.ckpt_path):
            raise UsageError(f"no checkpoint to resume at {self.ckpt_path}: drop --resume to start a new run")
        ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("model_type") != self.args.model_type:
            raise UsageError(f"{self.ckpt_path} holds a {ckpt.get('model_type')!r} model, not {self.args.model_type!r}: "
                             f"pass --model_type {ckpt.get('model_type')} or use another --out_dir")
        return ckpt

    def find_peak_flops(self):
        if self.device_type != "cuda" or self.dtype not in ("bf16", "fp16"):
            return None  # unknown for CPUs, Apple GPUs and fp32
        name = torch.cuda.get_device_name(self.device)
        return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)

    def start_wandb(self, config):
        try:
            import wandb
        except ImportError:
            raise UsageError("--wandb needs the wandb package: pip install wandb (or drop --wandb)")
        return wandb.init(project=self.args.wandb_project, name=self.args.wandb_run_name,
                          config={**vars(self.args), "model": config}, resume="allow")

    def start_log(self):
        """A new run starts a new log; a resumed one keeps the records up to its checkpoint."""
        records = read_log(self.log_path) if self.args.resume else []
        with open(self.log_path, "w") as f:
            for record in records:
                if record["step"] <= self.start_step:
                    f.write(json.dumps(record) + "\n")

    def log(self, record):
        if self.master:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.wandb:
                self.wandb.log({k: v for k, v in record.items() if k != "expert_load"}, step=record["step"])

    def say(self, text):
        if self.master:
            print(text, flush=True)

    def batch(self, ids, generator):
        return self.module.get_batch(ids, self.args.B, self.args.T, generator, self.device)

    @torch.no_grad()
    def evaluate(self):
        """Mean loss over eval_iters batches of each split; the same batches at every evaluation."""
        self.model.eval()
        losses = {}
        for split, ids in (("train", self.train_ids), ("val", self.val_ids)):
            generator = torch.Generator().manual_seed(self.args.seed + 1 + self.rank)
            total = torch.zeros((), device=self.device)
            for _ in range(self.args.eval_iters):
                x, y = self.batch(ids, generator)
                with self.autocast:
                    _, loss = self.model(x, y)
                total += loss.float()
            if self.ddp:
                dist.all_reduce(total)
            losses[split] = total.item() / (self.args.eval_iters * self.world)
        self.model.train()
        return losses

    @torch.no_grad()
    def sample(self):
        prompt = torch.tensor([self.tokenizer.encode(self.args.sample_prompt)], device=self.device)
        self.model.eval()
        with self.autocast:
            out = self.model.generate(prompt, self.args.sample_tokens, temperature=0.8, top_k=200)
        self.model.train()
        return self.tokenizer.decode(out[0].tolist())

    def save_checkpoint(self, step):
        """Write everything a resume needs to a temporary file, then rename it over ckpt.pt:
        a crash mid-write leaves the previous checkpoint whole."""
        if not self.master:
            return
        ckpt = {
            "model_type": self.args.model_type,
            "config": dataclasses.asdict(self.model.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": step,
            "best_val_loss": self.best_val,
            "tokenizer": self.tokenizer.state(),
            "args": vars(self.args),
        }
        torch.save(ckpt, self.ckpt_path + ".tmp")
        os.replace(self.ckpt_path + ".tmp", self.ckpt_path)

    def stop_if_not_finite(self, what, value, step):
        """A diverged run stops before it can overwrite the last good checkpoint."""
        if not math.isfinite(value):
            kept = f"the last good checkpoint is {self.ckpt_path}" if os.path.exists(self.ckpt_path) else "no checkpoint was written"
            raise UsageError(f"{what} is {value} at step {step}: stopped; {kept}. Try a lower --max_lr or --dtype fp32")

    def train_step(self, batch_generator):
        """Gradients of one optimizer step over accum_steps micro-batches; returns (loss, grad norm)."""
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum_steps):
            x, y = self.batch(self.train_ids, batch_generator)
            last = micro == self.accum_steps - 1
            # DDP averages gradients across ranks only on the last micro-batch
            no_sync = self.trained.no_sync() if self.ddp and not last else nullcontext()
            with no_sync, self.autocast:
                _, loss = self.trained(x, y)
                loss = loss / self.accum_steps
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        if self.args.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None]))
        return loss_sum, norm

    def train(self):
        args = self.args
        counts = self.model.param_counts()
        flops_per_step = self.model.flops_per_token(args.T) * self.tokens_per_step
        self.say(f"{args.model_type}: {counts['total'] / 1e6:.2f}M parameters ({counts['active'] / 1e6:.2f}M active) | "
                 f"{args.B} x {args.T} tokens x {self.accum_steps} accum x {self.world} ranks = {self.tokens_per_step:,} "
                 f"tokens/step | {self.device} {self.dtype} | {len(self.train_ids):,} train tokens ({self.tokenizer.kind})")
        if self.start_step:
            self.say(f"resuming from step {self.start_step} of {self.ckpt_path}")
        stop = StopSignal()
        batch_generator = torch.Generator()
        has_stats = hasattr(self.model, "moe_stats")
        for step in range(self.start_step, args.max_steps):
            t0 = time.perf_counter()
            lr = lr_at(step, args)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            # this step's batches and dropout masks depend only on (seed, step, rank)
            torch.manual_seed(args.seed + 1000 * step + self.rank)
            batch_generator.manual_seed(args.seed + 7919 * (step + 1) + self.rank)
            loss_sum, norm = self.train_step(batch_generator)
            flags = torch.stack([loss_sum, torch.tensor(float(stop.requested), device=self.device)])
            if self.ddp:  # mean loss over ranks, and whether any rank was asked to stop
                dist.all_reduce(flags)
            loss, stop_votes = flags[0].item() / self.world, flags[1].item()
            self.stop_if_not_finite("loss", loss, step + 1)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if hasattr(self.model, "update_balance_bias"):
                self.model.update_balance_bias()
            dt = time.perf_counter() - t0
            done = step + 1
            record = {"step": done, "loss": loss, "lr": lr, "grad_norm": norm.item(), "ms": 1000 * dt,
                      "tok_per_s": self.tokens_per_step / dt}
            if self.peak_flops:
                record["mfu"] = flops_per_step / dt / (self.peak_flops * self.world)
            if has_stats:
                record.update(self.model.moe_stats())
            self.log(record)
            if done % args.log_interval == 0 or done == args.max_steps:
                self.say(step_line(record, args.max_steps))
            if done % args.eval_interval == 0 or done == args.max_steps:
                losses = self.evaluate()
                self.stop_if_not_finite("val loss", losses["val"], done)
                self.best_val = min(self.best_val, losses["val"])
                self.log({"step": done, "train_loss": losses["train"], "val_loss": losses["val"]})
                self.say(f"step {done}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if args.sample_tokens and self.master:
                    self.say(f"--- sample ---\n{self.sample()}\n--------------")
                self.save_checkpoint(done)
            if stop_votes or done == args.stop_step:
                if done % args.eval_interval and done != args.max_steps:
                    self.save_checkpoint(done)
                self.say(f"stopped after step {done}: checkpoint in {self.ckpt_path}; continue with --resume")
                return "interrupted" if stop_votes else "stopped"
        return "finished"

    def finish(self, outcome):
        if self.ddp and outcome == "finished":
            same = ranks_hold_same_weights(self.model, self.device)
            self.say(f"weights identical on all {self.world} ranks: {'yes' if same else 'NO'}")
        if self.master and outcome == "finished":
            plot_run(self.args.out_dir)
            self.say(f"log: {self.log_path}, plots: {self.args.out_dir}/loss.png")
        if self.wandb:
            self.wandb.finish()
        if self.ddp:
            dist.barrier()  # rank 0 may still be plotting: tear the group down together
            dist.destroy_process_group()


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


def step_line(record, max_steps):
    line = (f"step {record['step']:5d}/{max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"norm {record['grad_norm']:.3f} | {record['ms']:.1f} ms | {record['tok_per_s']:,.0f} tok/s")
    if "mfu" in record:
        line += f" | MFU {100 * record['mfu']:.1f}%"
    for name, value in record.items():
        if name.endswith("_loss") or name == "dropped":
            line += f" | {name} {value:.4g}"
    return line


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


def plot_run(out_dir):
    """loss.png (train loss per step, val loss at each eval) and, for MoE models,
    expert_load.png (one heatmap per MoE layer: experts x steps, share of routed tokens)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(os.path.join(out_dir, "log.jsonl"))
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="train (per step)")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)

    loads = [r["expert_load"] for r in steps if "expert_load" in r]
    if not loads:
        return
    load = torch.tensor(loads)  # (steps, layers, experts)
    n_layers = load.size(1)
    fig, axes = plt.subplots(n_layers, 1, figsize=(9, 1.6 + 1.4 * n_layers), squeeze=False)
    for layer in range(n_layers):
        image = axes[layer, 0].imshow(load[:, layer].T, aspect="auto", cmap="viridis", interpolation="nearest")
        axes[layer, 0].set_ylabel(f"MoE layer {layer}\nexpert")
        fig.colorbar(image, ax=axes[layer, 0], label="share of tokens")
    axes[-1, 0].set_xlabel("step")
    fig.savefig(os.path.join(out_dir, "expert_load.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    args, module, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run = Run(args, module, overrides)
    except (OSError, ValueError, AssertionError) as err:
        raise UsageError(str(err) or type(err).__name__)
    outcome = run.train()
    run.finish(outcome)
    sys.exit(130 if outcome == "interrupted" else 0)


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

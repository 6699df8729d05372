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

main() reads top to bottom; beside it data.py reads the corpus, parallel.py spreads the model over devices,
muon.py is the Muon optimizer, plot.py writes and draws log.jsonl.

A model file is usable here when it offers MODEL_TYPE, Config (a dataclass of int, float, bool and str fields,
with vocab_size and block_size), PRESETS (with "cpu"), Model (forward(idx, targets) -> (logits, loss), generate,
configure_optimizers, param_counts, flops_per_token, its blocks in model.h), Tokenizer, load_dataset, get_batch
and load_checkpoint. Optional hooks: model.prepare_data(train_ids), called once on a new model; model.moe_layers(),
whose layers' `stats` are logged every step and whose update_bias() is called after every optimizer step;
model.mtp_loss, logged when set.
"""
import argparse
import dataclasses
import functools
import importlib
import inspect
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

import torch  # after the handler above: importing torch takes seconds
import torch.distributed as dist

import data
import muon
import parallel
import plot
from data import UsageError, bounded

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_FILES = {"gpt": "gpt", "moderngpt": "modern_gpt", "moegpt": "moe_gpt", "mlamoe": "mla_moe", "fgram": "fgram_moe"}


# ----------------------------------------------------------------------------- command line

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default; options whose default depends on the run say so in their help instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's own complaints (an unknown option, a value of the wrong type or range) as one-line errors."""

    def error(self, message):
        raise UsageError(f"{message} (python train.py --model_type X --help lists X's options)")


def bool_arg(value):
    if value.lower() not in ("1", "0", "true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")
    return value.lower() in ("1", "true")


def config_field_type(field, meaning):
    """A config field's argparse type, its range read from its definition: a float is finite and >= 0, a
    probability in [0, 1); an int is >= 1, or >= 0 where 0 means something (the default, or "0 =" in the
    field's comment)."""
    if field.type in (bool, "bool"):
        return bool_arg
    if field.type in (float, "float"):
        return bounded(float, 0, 1, high_open=True) if "probability" in meaning else bounded(float, 0)
    if field.type in (int, "int"):
        return bounded(int, 0 if field.default == 0 or "0 =" in meaning else 1)
    return str


def parse_args(argv):
    """train.py's options, plus every field of the chosen model's config (given ones override the preset)."""
    p = ArgumentParser(description=__doc__.split("\n\n")[0].strip(), formatter_class=HelpFormatter,
                       allow_abbrev=False, add_help=False)  # --help comes once the model's fields are in
    count, positive = bounded(int, 0), bounded(int, 1)
    rate = bounded(float, 0, low_open=True)
    p.add_argument("--model_type", help=f"one of {', '.join(MODEL_FILES)} (default: gpt; --init, --resume: theirs)")
    p.add_argument("--init", help="start a new run from the weights, config and tokenizer of a train.py checkpoint, "
                   "a Hugging Face folder or a hub name (load_hf.py); the optimizer starts fresh")
    p.add_argument("--preset", help="a named size from the model file's PRESETS (default: cpu; resumed: its own)")
    p.add_argument("--data", help="a text file, a train.bin/val.bin folder or a folder of shards (default: input.txt;"
                   " resumed: its own)")
    p.add_argument("--tokenizer", choices=["char", "gpt2", "bpe"],
                   help="default: char for the cpu preset, gpt2 for the others and for train.bin/val.bin folders")
    p.add_argument("--bpe_vocab_size", type=bounded(int, 257), default=2048,
                   help="--tokenizer bpe: tokens to learn, the 256 bytes and <|endoftext|> included")
    p.add_argument("--out_dir", default="out", help="where ckpt.pt, log.jsonl and the plots go")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its ckpt.pt")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an out_dir that holds another one")
    p.add_argument("--B", type=positive, help="sequences per micro-batch per rank (default: 12; resumed: its own)")
    p.add_argument("--T", type=positive, help="sequence length, also the new model's block_size (default: 64)")
    p.add_argument("--total_batch_size", type=positive,
                   help="tokens per optimizer step, reached by gradient accumulation (default: B*T*ranks; "
                        "a resumed run keeps its own)")
    p.add_argument("--max_steps", type=positive, default=2000, help="optimizer steps; the cosine schedule ends there")
    p.add_argument("--warmup_steps", type=count, default=100, help="steps of linear warmup to max_lr")
    p.add_argument("--max_lr", type=rate, default=1e-3, help="peak learning rate")
    p.add_argument("--min_lr", type=rate, default=1e-4, help="learning rate at max_steps (at most max_lr)")
    p.add_argument("--optimizer", choices=["adamw", "muon"],
                   help="muon: Muon for hidden matrices, AdamW for the rest (muon.py) (default: adamw; resumed: own)")
    p.add_argument("--muon_lr", type=rate, default=0.02, help="--optimizer muon: Muon's peak learning rate")
    p.add_argument("--weight_decay", type=bounded(float, 0), default=0.1, help="on matrices and embeddings")
    p.add_argument("--beta1", type=bounded(float, 0, 1, high_open=True), default=0.9, help="AdamW's beta1")
    p.add_argument("--beta2", type=bounded(float, 0, 1, high_open=True), default=0.99, help="AdamW's beta2")
    p.add_argument("--grad_clip", type=bounded(float, 0), default=1.0, help="largest gradient norm; 0: no clipping")
    p.add_argument("--grad_checkpointing", type=bool_arg, nargs="?", const=True, default=False,
                   help="recompute each block in backward instead of keeping its activations (less memory)")
    p.add_argument("--eval_interval", type=positive, default=250, help="steps between evaluations and checkpoints")
    p.add_argument("--eval_iters", type=positive, default=20, help="batches per evaluation")
    p.add_argument("--sample_tokens", type=count, default=100, help="tokens sampled at each evaluation (0: none)")
    p.add_argument("--sample_prompt", default="\n", help="the text samples continue")
    p.add_argument("--hellaswag_interval", type=count, default=0,
                   help="score HellaSwag every n steps and at the end (hellaswag.py; all ranks share it); 0: never")
    p.add_argument("--hellaswag_limit", type=positive, help="its first n examples (default: all 10,042)")
    p.add_argument("--hellaswag_data", help="a local JSON-lines file of HellaSwag's fields (default: the "
                   "validation split, downloaded once)")
    p.add_argument("--log_interval", type=positive, default=1, help="print every n steps (all are logged)")
    p.add_argument("--stop_step", type=positive, help="save and stop after this step, as Ctrl-C would")
    p.add_argument("--seed", type=int, default=1337, help="fixes the initial weights, every batch and dropout mask")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 autocast on GPUs that have it, fp16 + GradScaler on older CUDA GPUs, else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 shards parameters, gradients and "
                   "optimizer state over the ranks instead of DDP's whole copy on each (parallel.py)")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (pip install wandb)")
    p.add_argument("--wandb_project", default="nanodecoder", help="the Weights & Biases project")
    p.add_argument("--wandb_run_name", help="the Weights & Biases run name (default: wandb's)")
    known, _ = p.parse_known_args(argv)  # which model file's config to add (--help included)
    resumed = os.path.join(known.out_dir, "ckpt.pt")
    source = known.init or (resumed if known.resume and not known.model_type and os.path.isfile(resumed) else None)
    if source:  # --init's or --resume's model file is the one its checkpoint or config.json names
        import load_hf
        try:
            source, source_type = load_hf.training_source(source)  # a hub name is fetched into a local folder
        except (OSError, ValueError) as err:  # no such file, a hub that cannot be reached, another architecture
            raise UsageError(f"--init {known.init}: {err}" if known.init else f"--resume: {err}") from None
        if known.model_type not in (None, source_type):
            raise UsageError(f"{source} holds a {source_type!r} model, not {known.model_type!r}: drop --model_type")
        known.model_type = source_type
    known.model_type = known.model_type or "gpt"
    if known.model_type not in MODEL_FILES:
        raise UsageError(f"unknown --model_type {known.model_type!r}: choose one of {', '.join(MODEL_FILES)}")
    module = importlib.import_module(MODEL_FILES[known.model_type])
    group = p.add_argument_group(f"{module.Config.__name__} fields (override the preset; defaults from the dataclass)")
    definition = inspect.getsource(module.Config)  # each field's meaning: the comment after it in the dataclass
    meanings = dict(re.findall(r"^\s+(\w+): \w+ = [^#\n]+#\s*(.+)$", definition, flags=re.MULTILINE))
    fields = dataclasses.fields(module.Config)
    for field in fields:
        meaning = meanings.get(field.name, "")
        group.add_argument(f"--{field.name}", type=config_field_type(field, meaning), default=argparse.SUPPRESS,
                           metavar=field.name.upper(), help=f"{meaning} (default: {field.default!r})")
    p.add_argument("-h", "--help", action="help", help="show this help, with --model_type's config fields, and exit")
    args = p.parse_args(argv)
    args.model_type = known.model_type
    args.init = source if args.init else None  # a hub name's local folder
    if args.min_lr > args.max_lr:
        raise UsageError(f"--min_lr {args.min_lr:g} is above --max_lr {args.max_lr:g}: the schedule decays to min_lr")
    overrides = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
    return args, module, overrides


# ----------------------------------------------------------------------------- the pieces main() calls

def check_out_dir(args, rank):
    """out_dir must be a writable folder, and not hold another run unless --resume or --overwrite says so."""
    ckpt_path, log_path = os.path.join(args.out_dir, "ckpt.pt"), os.path.join(args.out_dir, "log.jsonl")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UsageError(f"--out_dir {args.out_dir} is a file: give a folder for the checkpoint and logs")
    if args.resume and (args.overwrite or args.init):
        other = "--init starts a new one" if args.init else "--overwrite replaces it"
        raise UsageError(f"--resume continues the run in out_dir, {other}: give one of them")
    held = [path for path in (ckpt_path, log_path) if os.path.exists(path)]
    if held and not (args.resume or args.overwrite):
        raise UsageError(f"{args.out_dir} holds another run ({os.path.basename(held[0])}): --resume to continue "
                         "it, --overwrite to replace it, or another --out_dir")
    if args.resume and not os.path.exists(ckpt_path):
        raise UsageError(f"no checkpoint to resume at {ckpt_path}: drop --resume to start a new run")
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        probe = os.path.join(args.out_dir, f".write-test-{rank}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"--out_dir {args.out_dir} is not writable ({err.strerror}): choose another folder")
    return ckpt_path, log_path


def read_checkpoint(module, ckpt_path, args, overrides):
    """The run to resume: (model, checkpoint dict). What the command line says must agree with it."""
    try:
        model, _, ckpt = module.load_checkpoint(ckpt_path)
    except ValueError as err:  # unreadable (cut short, empty, not a checkpoint) or another model type
        raise UsageError(f"--resume: {err}")
    saved = ckpt["args"]
    for name, value in (("preset", saved.get("preset") or "cpu"), ("tokenizer", ckpt["tokenizer"]["kind"]),
                        ("optimizer", saved.get("optimizer") or "adamw")):
        if getattr(args, name) not in (None, value):
            raise UsageError(f"{ckpt_path} was trained with --{name} {value}: drop --{name} {getattr(args, name)} "
                             "to resume it, or start a new run in another --out_dir")
    clashes = [k for k, v in overrides.items() if ckpt["config"].get(k) != v]
    if clashes:
        raise UsageError(f"{ckpt_path} was trained with {clashes[0]}={ckpt['config'].get(clashes[0])}: "
                         f"drop --{clashes[0]} to resume it, or start a new run in another --out_dir")
    return model, ckpt


def init_model(module, source, overrides):
    """--init: (model, tokenizer state) of a train.py checkpoint or a Hugging Face folder. Options that keep every
    weight's name and shape apply (dropout, balancing weights, ...); the others would change the architecture."""
    import load_hf
    try:
        if os.path.isfile(source):  # a train.py checkpoint: its tokenizer too
            model, _, ckpt = module.load_checkpoint(source)
            state = ckpt["tokenizer"]
        else:
            model, tokenizer, _ = load_hf.load(source)
            state = tokenizer.state() if tokenizer else None
    except (OSError, ValueError) as err:  # weights that do not fit config.json, a setting the model file lacks, ...
        raise UsageError(f"--init {source}: {err}") from None
    if state is None:
        raise UsageError(f"--init {source}: no tokenizer.json beside the weights: train.py trains with the model's")
    if overrides:
        options = ", ".join(f"--{name}" for name in overrides)
        try:  # the same weights in a model of the new config: built on the meta device first, to check for free
            config = dataclasses.replace(model.config, **overrides)
            with torch.device("meta"):
                module.Model(config).load_state_dict(model.state_dict(), assign=True)  # shapes checked, no copy
        except (RuntimeError, ValueError) as err:  # a missing or extra weight, another shape
            why = str(err).strip().splitlines()[0][:120]
            raise UsageError(f"{options} would change the architecture of {source} ({why}): drop it; --init keeps "
                             "the model's") from None
        fresh = module.Model(config)
        fresh.load_state_dict(model.state_dict())
        model = fresh
    return model, state


def lr_at(step, args):
    """Linear warmup to max_lr, then cosine decay to min_lr at max_steps (as nanoGPT)."""
    if step < args.warmup_steps:
        return args.max_lr * (step + 1) / (args.warmup_steps + 1)
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.max_lr - args.min_lr)


@torch.no_grad()
def evaluate(model, module, corpus, B, T, iters, seed, autocast, device, rank, world):
    """Mean loss over `iters` batches of each split, the same batches at every evaluation and for any number
    of ranks (data.eval_batches); rank r evaluates batches r, r + ranks, ... Every rank runs as many forwards
    (FSDP gathers each block's weights with all ranks): a rank past the last batch repeats one, not counted."""
    model.eval()
    losses = {}
    for split in ("train", "val"):
        total = torch.zeros((), device=device)
        batches = list(data.eval_batches(module, corpus, split, B, T, iters, seed, device))
        for i in range(rank, -(-iters // world) * world, world):
            x, y = batches[min(i, iters - 1)]
            with autocast:
                total += model(x, y)[1].float() * (i < iters)
        if world > 1:
            dist.all_reduce(total)
        losses[split] = total.item() / iters
    model.train()
    return losses


@torch.no_grad()
def sample(model, tokenizer, prompt, tokens, seed, autocast, device):
    """A sample from the prompt, the same on every rank (under FSDP every rank must run the forwards)."""
    torch.manual_seed(seed)  # each micro-batch reseeds the RNG: this changes no batch or dropout mask
    model.eval()
    with autocast:
        out = model.generate(torch.tensor([prompt], device=device), tokens, temperature=0.8, top_k=200)
    model.train()
    return tokenizer.decode(out[0].tolist())


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


# ----------------------------------------------------------------------------- the run, top to bottom

def main(argv=None):
    args, module, overrides = parse_args(sys.argv[1:] if argv is None else argv)

    # device and dtype, and one process per device under torchrun: DDP or FSDP2 (parallel.py)
    mode, rank, world, device, device_type, dtype = parallel.start(args.device, args.dtype, args.fsdp)
    distributed, master = mode is not None, rank == 0  # rank 0 alone prints, logs and writes
    say = functools.partial(print, flush=True) if master else (lambda *a, **k: None)

    ckpt_path, log_path = check_out_dir(args, rank)

    # the run to resume (everything its checkpoint holds), or a new one
    if args.resume:
        model, ckpt = read_checkpoint(module, ckpt_path, args, overrides)
        saved = ckpt["args"]
        preset, tokenizer_state = saved.get("preset") or "cpu", ckpt["tokenizer"]
        B, T = args.B or saved["B"], args.T or saved["T"]
        tokens_per_step = args.total_batch_size or ckpt["tokens_per_step"]
        if tokens_per_step != ckpt["tokens_per_step"]:
            raise UsageError(f"{ckpt_path} trains with {ckpt['tokens_per_step']:,} tokens per step: drop "
                             "--total_batch_size to resume it with the same global batch")
        start_step, best_val, elapsed_before = ckpt["step"], ckpt["best_val_loss"], ckpt["elapsed"]
        args.optimizer, args.data = saved.get("optimizer") or "adamw", args.data or saved["data"]
    else:
        model, ckpt, tokenizer_state = None, None, None
        if args.init:  # a new run from another run's weights or a released model's (the optimizer starts fresh)
            if args.preset:
                raise UsageError(f"--preset {args.preset}: the model comes from --init {args.init}; drop --preset")
            model, tokenizer_state = init_model(module, args.init, overrides)
        preset, B, T = args.preset or (None if args.init else "cpu"), args.B or 12, args.T or 64
        if preset not in (None, *module.PRESETS):
            raise UsageError(f"unknown preset {preset!r} for {args.model_type}: choose one of "
                             f"{', '.join(module.PRESETS)}")
        tokens_per_step = args.total_batch_size or B * T * world
        args.optimizer, args.data = args.optimizer or "adamw", args.data or os.path.join(HERE, "input.txt")
        start_step, best_val, elapsed_before = 0, float("inf"), 0.0

    # tokens per optimizer step = B * T * ranks * accumulation steps: accumulation adapts to the number of ranks
    if tokens_per_step % (B * T * world):
        raise UsageError(f"{tokens_per_step:,} tokens per step are not a multiple of B*T*ranks = {B}*{T}*{world} = "
                         f"{B * T * world:,}: change --B, --T, --total_batch_size or the number of ranks")
    accum_steps = tokens_per_step // (B * T * world)

    # data: the corpus and its tokenizer (data.py); rank 0 learns and caches a BPE and the token ids first
    corpus = parallel.rank0_first(distributed, lambda: data.load_corpus(
        args.data, module, preset, args.tokenizer, tokenizer_state, args.bpe_vocab_size,
        "the resumed run's" if ckpt else f"--init {args.init}'s"))
    train_ids, val_ids, tokenizer = corpus.train, corpus.val, corpus.tokenizer
    need = B * T + 1 if corpus.in_order else T + 1  # shards are read B*T + 1 tokens at a time
    for split, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < need:
            raise UsageError(f"{args.data}: the {split} split has {len(ids)} tokens, fewer than "
                             f"{'B*T+1' if corpus.in_order else 'T+1'} = {need}: use more data or a smaller --T")
    prompt = []
    if args.sample_tokens:
        try:
            prompt = tokenizer.encode(args.sample_prompt)
        except ValueError as err:
            raise UsageError(f"--sample_prompt {args.sample_prompt!r}: {err}")
        if not prompt:
            raise UsageError("--sample_prompt is empty: give the text samples continue, or --sample_tokens 0")

    examples = []  # HellaSwag's (hellaswag.py), fetched by rank 0 first when no file is given
    if args.hellaswag_interval:
        import hellaswag
        try:
            examples = parallel.rank0_first(distributed, lambda: hellaswag.read_examples(
                args.hellaswag_data or hellaswag.fetch_data(), args.hellaswag_limit))
        except (OSError, ValueError) as err:  # a file that is not HellaSwag's, a hub that cannot be reached
            raise UsageError(f"--hellaswag_data: {err}" if args.hellaswag_data else f"HellaSwag: {err}") from None

    # the model: the resumed one, or a new one from the preset, the tokenizer and the command line
    if model is None:
        config = {**module.PRESETS[preset], "block_size": T, "vocab_size": tokenizer.vocab_size, **overrides}
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        try:  # a config the model cannot build (head sizes that do not divide, ...) is a usage error
            model = module.Model(module.Config(**config))
        except ValueError as err:
            raise UsageError(f"{args.model_type} config: {err}")
        if hasattr(model, "prepare_data"):
            model.prepare_data(train_ids)
    if model.config.block_size < T:
        raise UsageError(f"--T {T} is longer than the model's block_size {model.config.block_size}")
    if model.config.vocab_size < tokenizer.vocab_size:
        raise UsageError(f"vocab_size {model.config.vocab_size} is below the tokenizer's {tokenizer.vocab_size}")
    if args.grad_checkpointing:
        parallel.checkpoint_blocks(model)
    model.train().to(device)
    # the model as the training step calls it: compiled, and DDP-wrapped or FSDP-sharded (parallel.py)
    trained = parallel.wrap(model, mode, device, dtype == "bf16", args.compile)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    autocast = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else nullcontext()

    # the optimizers (AdamW, or AdamW and Muon), and their state when resuming
    optimizers = muon.optimizers(model, args, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "fp16")
    if ckpt:
        parallel.load_optimizer_state(model, optimizers, ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])

    # logging: a new run starts a new log.jsonl, a resumed one keeps the records up to its checkpoint's step
    peak_flops = parallel.peak_flops(device, dtype)  # for MFU; None where the GPU's peak is not known
    wandb_run = None
    if args.wandb and master:
        try:
            import wandb
        except ImportError:
            raise UsageError("--wandb needs the wandb package: pip install wandb (or drop --wandb)")
        wandb_run = wandb.init(project=args.wandb_project, name=args.wandb_run_name, resume="allow",
                               config={**vars(args), "model": dataclasses.asdict(model.config)})
    counts = model.param_counts()
    size = f"{counts['total'] / 1e6:.2f}M" + (f" ({counts['active'] / 1e6:.2f}M active)"
                                              if counts["active"] != counts["total"] else "")
    title = f"{args.model_type}, {size} params, {tokenizer.kind} tokenizer, {args.max_steps} steps"
    if master:
        if os.path.exists(ckpt_path + ".tmp"):
            os.remove(ckpt_path + ".tmp")  # half a checkpoint from a write that was killed
        if args.overwrite:  # asked for: the other run's checkpoint and plots go now, its log just below
            for name in ("ckpt.pt", "loss.png", "expert_load.png"):
                if os.path.exists(os.path.join(args.out_dir, name)):
                    os.remove(os.path.join(args.out_dir, name))
        try:  # a resumed run keeps its records up to the checkpoint's step; a new run starts a new log
            cut = plot.start_log(log_path, start_step if ckpt else None, {"run": title, "tokens_per_step":
                                 tokens_per_step, "tokens_per_char": corpus.tokens_per_char})
        except ValueError as err:
            raise UsageError(f"{err}: move it away to resume without the log")
        if cut:
            say(f"{log_path}: its last line was cut (a crash while writing it): dropped; the records before it stay")

    # the loop
    say(f"tokenizer: {tokenizer.kind}, {tokenizer.vocab_size:,} tokens ({corpus.why})")
    say(f"{args.model_type}: {counts['total'] / 1e6:.2f}M parameters ({counts['active'] / 1e6:.2f}M active) | "
        f"{B} x {T} tokens x {accum_steps} accum x {world} ranks = {tokens_per_step:,} tokens/step | {device} "
        f"{dtype} | {len(train_ids):,} train tokens")
    say(parallel.memory_line(model, mode, world, B, T, dtype in ("bf16", "fp16"), args.grad_checkpointing))
    if start_step:
        say(f"resuming from step {start_step} of {ckpt_path}")
    flops_per_step = model.flops_per_token(T) * tokens_per_step
    moe_layers = model.moe_layers() if hasattr(model, "moe_layers") else []
    loads = []  # each step's expert load since the last evaluation, for the idle-expert report

    def stop_if_not_finite(what, value, step):
        """A diverged run stops before it can overwrite the last good checkpoint."""
        if not math.isfinite(value):
            kept = f"the last good checkpoint is {ckpt_path}" if os.path.exists(ckpt_path) else "nothing was saved"
            raise UsageError(f"{what} is {value} at step {step}: stopped; {kept}. Try a lower --max_lr or --dtype fp32")

    def save(step, elapsed):
        weights, optimizer_state = parallel.full_state(model, optimizers)  # every rank: FSDP gathers the shards
        if master:  # written to a temporary file and renamed: a crash mid-write leaves the last checkpoint whole
            torch.save({
                "model_type": args.model_type, "config": dataclasses.asdict(model.config), "model": weights,
                "optimizer": optimizer_state, "scaler": scaler.state_dict(), "step": step,
                "best_val_loss": best_val, "tokens_per_step": tokens_per_step, "elapsed": elapsed,
                "tokenizer": tokenizer.state(), "args": {**vars(args), "preset": preset, "B": B, "T": T}},
                ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)

    stop, t_start, outcome = StopSignal(), time.perf_counter(), "finished"
    for step in range(start_step, args.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, args)
        for group in (group for optimizer in optimizers for group in optimizer.param_groups):
            group["lr"] = lr * group.get("lr_scale", 1.0)
        # this rank's micro-batches of the global batch: rank r takes blocks r, r + ranks, ...
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum_steps):
            x, y = data.micro_batch(module, corpus, B, T, args.seed, step, micro * world + rank, accum_steps * world,
                                    device)
            with parallel.sync_gradients(trained, mode, micro == accum_steps - 1), autocast:
                loss = trained(x, y)[1] / accum_steps
            scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        norm = parallel.clip_grad_norm(model, args.grad_clip or float("inf"))  # inf: measure, do not clip
        flags = torch.stack([loss_sum, torch.tensor(float(stop.requested), device=device)])
        if distributed:  # mean loss over ranks, and whether any rank was asked to stop
            dist.all_reduce(flags)
        loss, stop_votes = flags[0].item() / world, flags[1].item()
        stop_if_not_finite("loss", loss, step + 1)
        for optimizer in optimizers:
            scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        scaler.update()
        for moe in moe_layers:
            if hasattr(moe, "update_bias"):  # DeepSeek-V3's balancing bias, where the MoE has one
                moe.update_bias()

        done, dt = step + 1, time.perf_counter() - t0
        elapsed = elapsed_before + time.perf_counter() - t_start
        record = {"step": done, "loss": loss, "lr": lr, "grad_norm": norm.item(), "ms": 1000 * dt,
                  "tok_per_s": tokens_per_step / dt, "elapsed": elapsed}
        if peak_flops:
            record["mfu"] = flops_per_step / dt / (peak_flops * world)
        record.update(plot.moe_stats(model, moe_layers))
        if "expert_load" in record:
            loads.append(record["expert_load"])
        if master:
            plot.append_log(log_path, record, wandb_run)
        if done % args.log_interval == 0 or done == args.max_steps:
            say(plot.step_line(record, args.max_steps, (args.max_steps - done) * (elapsed - elapsed_before) /
                          (done - start_step)))
            if moe_layers and (done // args.log_interval) % 10 == 0:
                say(plot.moe_line(record))

        if done % args.eval_interval == 0 or done == args.max_steps:  # evaluate, save, then sample and plot
            losses = evaluate(model, module, corpus, B, T, args.eval_iters, args.seed, autocast, device, rank, world)
            stop_if_not_finite("val loss", losses["val"], done)
            best_val = min(best_val, losses["val"])
            bpc = losses["val"] * corpus.tokens_per_char / math.log(2)
            say(f"step {done}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({bpc:.3f} bits/char)")
            save(done, elapsed)
            idle, loads = plot.idle_experts(loads), []
            if master:
                plot.append_log(log_path, {"step": done, "train_loss": losses["train"], "val_loss": losses["val"],
                                      "val_bpc": bpc, **({"idle_experts": idle} if idle else {})}, wandb_run)
                if idle:
                    say(f"idle experts (< 1/(10 E) of the tokens since the last evaluation), by MoE layer: {idle}")
            if args.sample_tokens and (master or mode == "fsdp"):  # FSDP: every rank runs the sample's forwards
                try:  # the checkpoint is saved: a failing sample never costs it, nor ends the run
                    text = sample(model, tokenizer, prompt, args.sample_tokens, args.seed, autocast, device)
                    say(f"--- sample ---\n{text}\n--------------")
                except Exception:  # noqa: BLE001 (any failure)
                    say(f"sampling failed (training goes on):\n{traceback.format_exc()}")
            if master:
                plot.plot_run(args.out_dir, title)
        if examples and (done % args.hellaswag_interval == 0 or done == args.max_steps):
            scores = hellaswag.evaluate(model, tokenizer, examples, device, autocast, rank, world)
            hs = {f"hellaswag_{k}": scores[k] for k in ("acc", "acc_norm", "acc_norm_harness", "scored", "skipped")}
            say(f"step {done}: HellaSwag acc_norm {scores['acc_norm'] or 0:.4f}, acc_norm_harness "
                f"{scores['acc_norm_harness'] or 0:.4f} ({scores['scored']:,} of {len(examples):,} scored)")
            if master:
                plot.append_log(log_path, {"step": done, **hs}, wandb_run)
        if stop_votes or done == args.stop_step:
            if done % args.eval_interval and done != args.max_steps:
                save(done, elapsed)
            say(f"stopped after step {done}: checkpoint in {ckpt_path}; continue with --resume")
            outcome = "interrupted" if stop_votes else "stopped"
            break

    # the summary
    if mode == "ddp" and outcome == "finished":
        same = parallel.ranks_hold_same_weights(model, device)
        say(f"weights identical on all {world} ranks: {'yes' if same else 'NO'}")
    if master:
        plots = plot.plot_run(args.out_dir, title)
        records = plot.read_log(log_path)[0]
        evals = [r for r in records if "val_loss" in r]
        steps = max([r["step"] for r in records if "loss" in r], default=0)
        final = f"final val {evals[-1]['val_loss']:.4f} ({evals[-1]['val_bpc']:.3f} bits/char) | " if evals else ""
        scored = [r for r in records if "hellaswag_acc_norm" in r]
        final += f"HellaSwag acc_norm {scored[-1]['hellaswag_acc_norm'] or 0:.4f} | " if scored else ""
        best = f"{best_val:.4f}" if math.isfinite(best_val) else "none yet"
        wall = plot.format_time(elapsed_before + time.perf_counter() - t_start)
        say(f"{outcome} after {steps} steps in {wall} | best val {best} | {final}{steps * tokens_per_step:,} "
            "tokens seen")
        say(f"checkpoint {ckpt_path} | log {log_path} | plots {', '.join(plots) or 'none'}")
    if wandb_run:
        wandb_run.finish()
    if distributed:
        dist.barrier()  # rank 0 may still be plotting: tear the group down together
        del trained  # DDP's reducer holds the group: freed at exit instead, gloo's threads could wait for the GIL
        dist.destroy_process_group()
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

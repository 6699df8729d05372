"""
finetune_instruct.py - a GPT fine-tuned to follow instructions, its answers written out and scored.

The recipe of LLMs-from-scratch chapter 7 (Raschka 2024): 1,100 instruction/response pairs
in the Alpaca format (Taori et al. 2023, after Self-Instruct, Wang et al., arXiv 2212.10560)
are put in Alpaca's prompt template and trained with the ordinary next-token loss. Each
training row is prompt + response + <|endoftext|>; rows are padded with <|endoftext|> (50256)
and the targets of the padding are -100 (ignored by the loss), except the first one, which
teaches the model to stop. --mask_prompt also ignores the targets inside the prompt, so only
the response is learned.

Full fine-tuning by default; --lora_rank r trains low-rank adapters instead (LoRA, Hu et al.,
arXiv 2106.09685): each Linear W of the blocks gets W x + (alpha / r) B A x with A (r, in) and
B (out, r), B starting at zero, and only A and B train. They are merged into W before saving.

After training, the model answers the test split (greedy decoding up to <|endoftext|>); the
answers are written to a JSON file and scored against the references with ROUGE-L F1 (Lin
2004: longest common subsequence of words), computed here with no network and no library.

    python finetune_instruct.py --init scratch
    python finetune_instruct.py --init gpt2 --weights path/to/gpt2-medium --lora_rank 16
    python finetune_instruct.py --init out/shakespeare-gpt2/ckpt.pt --mask_prompt
    python gpt.py --ckpt out/instruct/ckpt.pt --prompt "..."    # the saved model is a train.py checkpoint
"""
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict

import torch
from torch import nn
from torch.utils.data import DataLoader

import gpt
import load_gpt2
from data import bounded

HERE = os.path.dirname(os.path.abspath(__file__))
PAD_ID = 50256  # <|endoftext|>: ends every response and pads the rows
IGNORE_INDEX = -100  # targets the loss skips (gpt.GPT's cross-entropy ignores -100)
# --init scratch: gpt.py's "cpu" preset with a context of 128 tokens; the longest entry
# of instruction-data.json is 91 tokens with the template
SCRATCH_CONFIG = dict(gpt.PRESETS["cpu"], block_size=128, vocab_size=50257)
FIELDS = ("instruction", "input", "output")
MIN_ENTRIES = 10  # the fewest whose 85/10/5 split leaves an entry in each part (8/1/1)


# ----------------------------------------------------------------------------- data

def format_prompt(entry):
    """Alpaca's template up to the response: the preamble, the instruction, the optional input."""
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately "
              f"completes the request.\n\n### Instruction:\n{entry['instruction']}")
    if entry["input"]:
        prompt += f"\n\n### Input:\n{entry['input']}"
    return prompt + "\n\n### Response:\n"


def json_kind(value):
    """What JSON calls the type of a parsed value, for error messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_entries(path):
    """The list of {"instruction", "input", "output"} entries of an Alpaca-format JSON file.
    Anything else (not JSON, not a list of objects whose three fields are strings, fewer than
    MIN_ENTRIES entries) is a ValueError naming the file. "input" may be empty."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass --data with an Alpaca-format JSON file")
    with open(path, encoding="utf-8") as f:
        try:
            entries = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not UTF-8 JSON ({err}): pass --data with an Alpaca-format JSON file") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path} holds {json_kind(entries)}: expected a list of entries, "  # noqa: TRY004 (bad data)
                         f'[{{"instruction": ..., "input": ..., "output": ...}}, ...]')
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {number} is {json_kind(entry)}, "  # noqa: TRY004 (bad data)
                             f"not an object with instruction, input, output")
        missing = [field for field in FIELDS if field not in entry]
        if missing:
            raise ValueError(f"{path}: entry {number} has no {missing[0]!r}: each needs instruction, input, output")
        not_text = [field for field in FIELDS if not isinstance(entry[field], str)]
        if not_text:
            raise ValueError(f"{path}: entry {number} has {json_kind(entry[not_text[0]])} as {not_text[0]!r}: "
                             f'instruction, input and output must be strings (input may be "")')
    if len(entries) < MIN_ENTRIES:
        raise ValueError(f"{path} holds {len(entries)} entries: the 85/10/5 split needs at least {MIN_ENTRIES} "
                         f"to leave one in each of train, validation and test")
    return entries


def split(entries):
    """Train (the first 85%), validation (the last 5%) and test (the 10% between them):
    chapter 7's proportions and file order. Each is non-empty from MIN_ENTRIES entries on."""
    train_end = int(len(entries) * 0.85)
    test_end = train_end + int(len(entries) * 0.1)
    return entries[:train_end], entries[test_end:], entries[train_end:test_end]


def encode(entries, tokenizer):
    """(token ids of prompt + response, number of prompt tokens) for each entry."""
    rows = []
    for entry in entries:
        prompt = tokenizer.encode(format_prompt(entry))
        rows.append((prompt + tokenizer.encode(entry["output"]), len(prompt)))
    return rows


def collate(batch, max_length, mask_prompt=False):
    """Rows of (ids, prompt length) -> inputs and targets (B, T), T <= max_length.

    Each row gets one <|endoftext|> and is padded with more to the longest row + 1; the inputs
    drop the last token and the targets (the inputs shifted by one) the first. Target padding becomes
    IGNORE_INDEX except the first <|endoftext|>, which the model must learn to predict to stop; with
    mask_prompt the targets that are prompt tokens are ignored too (position i predicts token i + 1)."""
    longest = max(len(ids) for ids, _ in batch)
    inputs, targets = [], []
    for ids, prompt_length in batch:
        padded = ids + [PAD_ID] * (longest + 1 - len(ids))  # at least one <|endoftext|>
        x, y = torch.tensor(padded[:-1]), torch.tensor(padded[1:])  # (longest,) each
        y[len(ids):] = IGNORE_INDEX  # y[len(ids) - 1], the first <|endoftext|>, stays
        if mask_prompt:
            y[:prompt_length - 1] = IGNORE_INDEX
        inputs.append(x[:max_length])
        targets.append(y[:max_length])
    return torch.stack(inputs), torch.stack(targets)


# ----------------------------------------------------------------------------- LoRA

class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: W x + b + (alpha / rank) B A x."""

    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear = linear
        self.A = nn.Parameter(torch.empty(rank, linear.in_features))
        self.B = nn.Parameter(torch.zeros(linear.out_features, rank))  # zero: training starts at W
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's own initialization
        self.scale = alpha / rank

    def forward(self, x):
        return self.linear(x) + self.scale * (x @ self.A.T @ self.B.T)

    def merged(self):
        """The nn.Linear with W + (alpha / rank) B A: the same outputs, no adapter."""
        with torch.no_grad():
            self.linear.weight += self.scale * self.B @ self.A
        return self.linear


def add_lora(model, rank, alpha):
    """Freeze the model and wrap every Linear of its blocks (c_attn, c_proj, c_fc) with LoRA."""
    model.requires_grad_(False)
    for block in model.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, LoRALinear(child, rank, alpha))
    return model


def merge_lora(model):
    """Replace each LoRALinear by its merged nn.Linear, giving back a plain gpt.GPT."""
    for block in model.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, LoRALinear):
                    setattr(parent, name, child.merged())
    return model.requires_grad_(True)


# ----------------------------------------------------------------------------- training and scoring

@torch.no_grad()
def mean_loss(model, loader, device):
    """Mean next-token loss per batch over `loader`."""
    model.eval()
    losses = [model(x.to(device), y.to(device))[1].item() for x, y in loader]
    model.train()
    return sum(losses) / len(losses)


def train(model, loaders, epochs, lr, weight_decay, device):
    """AdamW on the trainable weights; train and validation loss printed after each epoch."""
    optimizer = model.configure_optimizers(weight_decay, lr, (0.9, 0.999), device.split(":")[0])
    model.train()
    for epoch in range(1, epochs + 1):
        t0, loss_sum, batches = time.perf_counter(), 0.0, 0
        for x, y in loaders["train"]:
            _, loss = model(x.to(device), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, batches = loss_sum + loss.item(), batches + 1
        val_loss = mean_loss(model, loaders["val"], device)
        print(f"epoch {epoch}/{epochs} | train loss {loss_sum / batches:.4f} (running mean) | "
              f"val loss {val_loss:.4f} | {time.perf_counter() - t0:.0f} s", flush=True)
    return val_loss


@torch.no_grad()
def respond(model, tokenizer, entry, max_new_tokens, device, chunk=16):
    """The model's greedy answer to one entry, up to its first <|endoftext|>. Tokens come
    `chunk` at a time, so generation stops soon after the model ends its answer."""
    prompt = tokenizer.encode(format_prompt(entry))
    ids = torch.tensor([prompt], device=device)
    answer = []
    while len(answer) < max_new_tokens and PAD_ID not in answer:
        ids = model.generate(ids, min(chunk, max_new_tokens - len(answer)), temperature=0)
        answer = ids[0, len(prompt):].tolist()
    if PAD_ID in answer:
        answer = answer[:answer.index(PAD_ID)]
    return tokenizer.decode(answer).strip()


def words(text):
    """Lowercase alphanumeric words (the tokenization of the rouge-score package)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l_f1(candidate, reference):
    """ROUGE-L F1 (Lin 2004): with L the longest common subsequence of the two word lists,
    precision L / len(candidate), recall L / len(reference), and their harmonic mean."""
    a, b = words(candidate), words(reference)
    if not a or not b:
        return 0.0
    # lcs[i][j]: longest common subsequence of a[:i] and b[:j]
    lcs = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                lcs[i][j] = lcs[i - 1][j - 1] + 1
            else:
                lcs[i][j] = max(lcs[i - 1][j], lcs[i][j - 1])
    common = lcs[-1][-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def save_checkpoint(model, tokenizer, path):
    """The fine-tuned model in train.py's checkpoint format, so gpt.load_checkpoint reads it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model_type": gpt.MODEL_TYPE, "config": asdict(model.config), "model": model.state_dict(),
                "tokenizer": tokenizer.state()}, path)


# ----------------------------------------------------------------------------- main

def initial_model(args):
    """The GPT to fine-tune and its (GPT-2 BPE) tokenizer, from --init."""
    if args.init == "scratch":
        torch.manual_seed(args.seed)
        return gpt.GPT(gpt.GPTConfig(**SCRATCH_CONFIG, dropout=args.dropout)), gpt.Tokenizer("gpt2")
    return load_gpt2.load_pretrained(args.init, args.weights, args.cache_dir)


def main(argv=None):
    parser = load_gpt2.fine_tune_parser("Instruction fine-tuning of a GPT on Alpaca-format data.")
    parser.add_argument("--data", default=os.path.join(HERE, "data", "instruction-data.json"))
    parser.add_argument("--mask_prompt", action="store_true", help="learn the responses only")
    parser.add_argument("--lora_rank", type=bounded(int, 0), default=0,
                        help="train LoRA adapters of this rank (0: full fine-tuning)")
    parser.add_argument("--lora_alpha", type=bounded(float, 0, low_open=True), default=16.0)
    parser.add_argument("--epochs", type=bounded(int, 1), default=2)
    parser.add_argument("--batch_size", type=bounded(int, 1), default=8)
    parser.add_argument("--lr", type=bounded(float, 0, low_open=True),
                        help="default 5e-5 (chapter 6/7's), 5e-4 for --init scratch")
    parser.add_argument("--weight_decay", type=bounded(float, 0), default=0.1)
    parser.add_argument("--dropout", type=bounded(float, 0, 1, high_open=True), default=0.0, help="for --init scratch")
    parser.add_argument("--max_new_tokens", type=bounded(int, 0), default=256, help="longest generated response")
    parser.add_argument("--seed", type=bounded(int, 0, 2**64 - 1), default=123)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out_dir", default=os.path.join("out", "instruct"))
    args = parser.parse_args(argv)
    try:
        entries = read_entries(args.data)
        model, tokenizer = initial_model(args)
    except (OSError, ValueError) as err:  # bad input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)

    train_entries, val_entries, test_entries = split(entries)
    print(f"{len(entries):,} entries -> train {len(train_entries)}, val {len(val_entries)}, test {len(test_entries)}")
    max_length = model.config.block_size  # longer rows are cut to the context
    generator = torch.Generator().manual_seed(args.seed)
    loaders = {name: DataLoader(encode(part, tokenizer), args.batch_size, shuffle=name == "train", generator=generator,
                                collate_fn=lambda batch: collate(batch, max_length, args.mask_prompt))
               for name, part in (("train", train_entries), ("val", val_entries))}

    torch.manual_seed(args.seed)
    model.to(args.device)
    if args.lora_rank:
        add_lora(model, args.lora_rank, args.lora_alpha)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = args.lr or (5e-4 if args.init == "scratch" else 5e-5)  # a random model needs larger steps
    print(f"init {args.init}: {model.config}; training {trainable:,} weights "
          f"({f'LoRA rank {args.lora_rank}' if args.lora_rank else 'full fine-tuning'}), lr {lr:g}")
    val_loss = train(model, loaders, args.epochs, lr, args.weight_decay, args.device)
    if args.lora_rank:
        merge_lora(model)
    save_checkpoint(model, tokenizer, os.path.join(args.out_dir, "ckpt.pt"))

    model.eval()
    scores = []
    for entry in test_entries:
        entry["model_response"] = respond(model, tokenizer, entry, args.max_new_tokens, args.device)
        scores.append(rouge_l_f1(entry["model_response"], entry["output"]))
    responses_path = os.path.join(args.out_dir, "test_responses.json")
    with open(responses_path, "w", encoding="utf-8") as f:
        json.dump(test_entries, f, indent=2, ensure_ascii=False)
    print(f"val loss {val_loss:.4f} | ROUGE-L F1 {100 * sum(scores) / len(scores):.2f} on {len(scores)} test "
          f"entries | responses in {responses_path}, model in {os.path.join(args.out_dir, 'ckpt.pt')}")


if __name__ == "__main__":
    main()

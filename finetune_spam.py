"""
finetune_spam.py - a GPT fine-tuned as a spam classifier on the SMS Spam Collection.

The recipe of LLMs-from-scratch chapter 6 (Raschka 2024): keep the GPT, replace its output
head (vocab_size logits) with a new Linear to 2 classes, and train the classifier on the
hidden state of a message's last token, the only position that has seen the whole message
through causal attention. The data (Almeida, Gomez Hidalgo & Yamakami 2011) has 4,827 ham
and 747 spam messages; ham is undersampled to 747 so the classes balance, and the 1,494
messages are split 70/10/20 into train/validation/test with a seed.

Padding: batches are padded on the right with <|endoftext|> (50256) to their longest
message, and the class is read at each message's last real token, not at the last column
of the padded batch as chapter 6 does: causal attention keeps the pad tokens after it from
changing that hidden state, so a message gets the same label however it is batched.

By default only the last Transformer block, the final LayerNorm and the new head train
(--trainable_blocks n: the last n blocks; all: every weight, the default for --init scratch).

    python finetune_spam.py --init scratch                         # a small GPT trained from zero
    python finetune_spam.py --init out/shakespeare-gpt2/ckpt.pt    # a gpt checkpoint from train.py
    python finetune_spam.py --init gpt2 --weights path/to/gpt2     # OpenAI's GPT-2 (see load_gpt2.py)
    python finetune_spam.py --classify "You won a prize! Call now"  # label a message
"""
import os
import random
import sys
import time
import zipfile
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import gpt
import load_gpt2
from data import bounded

HERE = os.path.dirname(os.path.abspath(__file__))
UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
LABELS = ("ham", "spam")  # class ids 0 and 1
PAD_ID = 50256  # <|endoftext|>
# --init scratch: gpt.py's "cpu" preset (the size of the Shakespeare checkpoint) with a
# context of 128 tokens, which holds all but 12 of the 5,574 messages
SCRATCH_CONFIG = dict(gpt.PRESETS["cpu"], block_size=128, vocab_size=50257)
# ham and spam are balanced to 2 x the rarer class; 10 messages are the fewest whose 70/10/20
# split leaves every part non-empty (7/1/2), so a file needs at least 5 messages of each class
MIN_PER_CLASS = 5


# ----------------------------------------------------------------------------- data

def read_sms_spam(path):
    """(label id, text) for every line `label<TAB>text` of the SMS Spam Collection.

    The lines are split by hand: a csv reader with default quoting joins messages that
    contain quote characters and returns 5,572 of the 5,574. A file the fine-tune cannot use
    (a malformed line, or fewer than MIN_PER_CLASS messages of a class) is a ValueError."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass --data, or --download to fetch it from UCI")
    with open(path, encoding="utf-8") as f:
        try:
            lines = f.read().split("\n")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err}): pass --data with the SMS Spam Collection") from err
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        label, tab, text = line.rstrip("\r").partition("\t")
        if not tab or label not in LABELS:
            raise ValueError(f"{path} line {number}: expected 'ham' or 'spam', a tab, then the message; "
                             f"found {line[:40]!r}")
        examples.append((LABELS.index(label), text))
    if not examples:
        raise ValueError(f"{path} holds no messages: each line is 'ham' or 'spam', a tab, then the message")
    spam = sum(label for label, _ in examples)
    ham = len(examples) - spam
    if not ham or not spam:
        raise ValueError(f"{path} holds only {'spam' if spam else 'ham'} messages: a classifier needs both "
                         f"ham and spam, at least {MIN_PER_CLASS} of each")
    if min(ham, spam) < MIN_PER_CLASS:
        raise ValueError(f"{path} holds {ham} ham and {spam} spam messages: too few for non-empty train, "
                         f"validation and test sets (70/10/20); it needs at least {MIN_PER_CLASS} of each")
    return examples


def download_sms_spam(path):
    """Fetch the UCI zip next to `path` and extract its SMSSpamCollection file as `path`."""
    zip_path = load_gpt2.download(UCI_URL, path + ".zip")
    with zipfile.ZipFile(zip_path) as archive, open(path, "wb") as f:
        f.write(archive.read("SMSSpamCollection"))


def balance(examples, seed):
    """Undersample ham to as many messages as there are spam, then shuffle (with `seed`)."""
    rng = random.Random(seed)
    spam = [e for e in examples if e[0] == 1]
    ham = [e for e in examples if e[0] == 0]
    balanced = rng.sample(ham, min(len(ham), len(spam))) + spam
    rng.shuffle(balanced)
    return balanced


def split(examples, train_fraction=0.7, val_fraction=0.1):
    """Train, validation and test lists, in order; the test split takes the rest (20%).
    Each is non-empty from 10 examples on (see MIN_PER_CLASS)."""
    train_end = int(len(examples) * train_fraction)
    val_end = train_end + int(len(examples) * val_fraction)
    return examples[:train_end], examples[train_end:val_end], examples[val_end:]


def collate(batch):
    """A list of (token ids, label) -> x (B, T) padded on the right with PAD_ID to the
    longest message, lengths (B,) of the real tokens, labels (B,)."""
    longest = max(len(ids) for ids, _ in batch)
    x = torch.tensor([ids + [PAD_ID] * (longest - len(ids)) for ids, _ in batch])
    lengths = torch.tensor([len(ids) for ids, _ in batch])
    labels = torch.tensor([label for _, label in batch])
    return x, lengths, labels


def encode(examples, tokenizer, max_length):
    """(token ids, label) pairs, each message cut to its first max_length tokens
    (an empty message keeps one <|endoftext|> so it has a last token)."""
    return [(tokenizer.encode(text)[:max_length] or [PAD_ID], label) for label, text in examples]


# ----------------------------------------------------------------------------- model

def add_classification_head(model, num_classes=2):
    """Replace the LM head (C -> vocab_size, tied to wte) with a new Linear C -> num_classes."""
    model.lm_head = nn.Linear(model.config.n_embd, num_classes)
    return model


def set_trainable(model, trainable_blocks):
    """Train every weight ("all"), or freeze all but the last `trainable_blocks` Transformer
    blocks, the final LayerNorm and the head."""
    if trainable_blocks == "all":
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    n_layer = len(model.h)
    for module in [*model.h[n_layer - trainable_blocks:], model.ln_f, model.lm_head]:
        module.requires_grad_(True)


def last_token_logits(model, x, lengths):
    """Class logits (B, num_classes) at each row's last real token."""
    logits, _ = model(x)  # (B, T, num_classes)
    return logits[torch.arange(x.size(0), device=x.device), lengths - 1]


@torch.no_grad()
def accuracy(model, loader, device="cpu"):
    """Share of the messages in `loader` whose predicted class equals their label."""
    model.eval()
    correct = total = 0
    for batch in loader:
        x, lengths, labels = (t.to(device) for t in batch)
        predictions = last_token_logits(model, x, lengths).argmax(dim=-1)
        correct += (predictions == labels).sum().item()
        total += len(labels)
    model.train()
    return correct / total


def train(model, loaders, epochs, lr, weight_decay, device="cpu"):
    """AdamW on the trainable weights; train/val/test accuracy printed after each epoch.
    The model keeps the weights of the epoch with the best validation accuracy (the first
    of a tie), whose accuracies are returned."""
    optimizer = model.configure_optimizers(weight_decay, lr, (0.9, 0.999), device.split(":")[0])
    best_scores, best_weights = None, None
    model.train()
    for epoch in range(1, epochs + 1):
        t0, loss_sum, batches = time.perf_counter(), 0.0, 0
        for batch in loaders["train"]:
            x, lengths, labels = (t.to(device) for t in batch)
            loss = F.cross_entropy(last_token_logits(model, x, lengths), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, batches = loss_sum + loss.item(), batches + 1
        scores = {name: accuracy(model, loader, device) for name, loader in loaders.items()}
        print(f"epoch {epoch}/{epochs} | loss {loss_sum / batches:.4f} | "
              + " | ".join(f"{name} acc {100 * acc:.2f}%" for name, acc in scores.items())
              + f" | {time.perf_counter() - t0:.0f} s", flush=True)
        if best_scores is None or scores["val"] > best_scores["val"]:
            best_scores = {**scores, "epoch": epoch}
            best_weights = {name: w.detach().clone() for name, w in model.state_dict().items()}
    model.load_state_dict(best_weights)
    return best_scores


def save_classifier(model, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"config": asdict(model.config), "model": model.state_dict(), "labels": list(LABELS)}, path)


def load_classifier(path):
    """A classifier saved by this script (tensors and plain values only: weights_only=True)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no classifier at {path}: train one first (python finetune_spam.py --init scratch)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = add_classification_head(gpt.GPT(gpt.GPTConfig(**saved["config"])), len(saved["labels"]))
    model.load_state_dict(saved["model"])
    return model.eval()


def classify(model, tokenizer, text):
    """"ham" or "spam" for one message."""
    (ids, _), = encode([(0, text)], tokenizer, model.config.block_size)
    x, lengths, _ = collate([(ids, 0)])
    with torch.no_grad():
        return LABELS[last_token_logits(model.eval(), x, lengths).argmax().item()]


# ----------------------------------------------------------------------------- main

def initial_model(args):
    """The GPT to fine-tune and its (GPT-2 BPE) tokenizer, from --init."""
    if args.init == "scratch":
        torch.manual_seed(args.seed)
        return gpt.GPT(gpt.GPTConfig(**SCRATCH_CONFIG, dropout=args.dropout)), gpt.Tokenizer("gpt2")
    return load_gpt2.load_pretrained(args.init, args.weights, args.cache_dir)


def parse_trainable(value, init, n_layer):
    """--trainable_blocks: "all" or a number of last blocks; by default 1, or all from scratch."""
    if value is None:
        return "all" if init == "scratch" else 1
    if value == "all":
        return value
    if not value.isdigit() or int(value) > n_layer:
        raise ValueError(f"--trainable_blocks {value}: use all or a number from 0 to {n_layer}")
    return int(value)


def main(argv=None):
    parser = load_gpt2.fine_tune_parser("Fine-tune a GPT to classify SMS messages as ham or spam.")
    parser.add_argument("--data", default=os.path.join(HERE, "data", "sms_spam.tsv"))
    parser.add_argument("--download", action="store_true", help="fetch the collection from UCI into --data first")
    parser.add_argument("--trainable_blocks", help="last n blocks to train (+ final norm + head), or all")
    parser.add_argument("--epochs", type=bounded(int, 1), default=5)
    parser.add_argument("--batch_size", type=bounded(int, 1), default=8)
    parser.add_argument("--lr", type=bounded(float, 0, low_open=True),
                        help="default 5e-5 (chapter 6/7's), 5e-4 for --init scratch")
    parser.add_argument("--weight_decay", type=bounded(float, 0), default=0.1)
    parser.add_argument("--dropout", type=bounded(float, 0, 1, high_open=True), default=0.0, help="for --init scratch")
    parser.add_argument("--seed", type=bounded(int, 0, 2**64 - 1), default=123)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.path.join("out", "spam", "classifier.pt"))
    parser.add_argument("--classify", metavar="TEXT", help="label TEXT with the classifier in --out, then stop")
    args = parser.parse_args(argv)
    try:
        if args.classify is not None:
            print(classify(load_classifier(args.out), gpt.Tokenizer("gpt2"), args.classify))
            return
        if args.download and not os.path.exists(args.data):
            download_sms_spam(args.data)
        examples = read_sms_spam(args.data)
        model, tokenizer = initial_model(args)
        trainable_blocks = parse_trainable(args.trainable_blocks, args.init, model.config.n_layer)
    except (OSError, ValueError) as err:  # bad input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)

    balanced = balance(examples, args.seed)
    splits = split(balanced)
    print(f"{len(examples):,} messages ({sum(label for label, _ in examples)} spam) -> {len(balanced):,} balanced -> "
          f"train {len(splits[0])}, val {len(splits[1])}, test {len(splits[2])}")
    generator = torch.Generator().manual_seed(args.seed)
    loaders = {name: DataLoader(encode(part, tokenizer, model.config.block_size), args.batch_size,
                                shuffle=name == "train", collate_fn=collate, generator=generator)
               for name, part in zip(("train", "val", "test"), splits)}

    torch.manual_seed(args.seed)
    add_classification_head(model).to(args.device)
    set_trainable(model, trainable_blocks)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = args.lr or (5e-4 if args.init == "scratch" else 5e-5)  # a random model needs larger steps
    print(f"init {args.init}: {model.config}; training {trainable:,} of "
          f"{sum(p.numel() for p in model.parameters()):,} weights (trainable blocks: {trainable_blocks}), lr {lr:g}")
    scores = train(model, loaders, args.epochs, lr, args.weight_decay, args.device)
    save_classifier(model, args.out)
    print(f"kept epoch {scores['epoch']} (best val acc {100 * scores['val']:.2f}%): test accuracy "
          f"{100 * scores['test']:.2f}% | classifier saved to {args.out}")


if __name__ == "__main__":
    main()

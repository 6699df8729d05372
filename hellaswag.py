"""
hellaswag.py - HellaSwag (Zellers et al. 2019, arXiv 1905.07830) for any model: a train.py checkpoint of every model
file, or a released checkpoint through load_hf.py. Each example is a context and four endings, one of them right;
the model picks the ending it finds most likely. Four accuracies, each named after the table it belongs to:

    acc               build-nanogpt's: ctx + " " + ending, the ending of highest summed log-likelihood
    acc_norm          build-nanogpt's: the same text, the highest mean log-likelihood per token of the ending
                      (its published GPT-2 124M figure: 0.2955)
    acc_harness       lm-evaluation-harness's acc: its text (below), the highest summed log-likelihood
                      (GPT-2 124M: 28.92%, published)
    acc_norm_harness  the harness's acc_norm: its text, the summed log-likelihood divided by the ending's length in
                      characters (GPT-2 124M: 31.14%, published)

The harness's text (lm_eval/tasks/hellaswag/utils.py): context preprocess(activity_label + ": " + ctx_a + " " +
ctx_b.capitalize()), endings preprocess(ending), joined by its target_delimiter " ", which is scored but not counted
in the length; preprocess strips, turns " [title]" into ". ", drops every "[...]" (WikiHow's bracket artifacts) and
double spaces. Random guessing scores 0.25 on all four.

The ending's tokens are those that follow the context's in the tokenization of the whole text, as the harness does
it: whole = encode(context + continuation), continuation ids = whole[len(encode(context)):], trailing spaces of the
context moved into the continuation. A BOS that the tokenizer adds (tokenizer.json's post-processor: Llama 3,
TinyLlama; not GPT-2, SmolLM2 or Qwen3) thus stays in the context, as in the harness today (add_bos_token unset: the
tokenizer's default); texts whose tokens merge across the boundary are counted in the summary. Rows longer than the
model's block_size keep their last block_size + 1 tokens (the harness's left cut); an ending longer than block_size
(a char model) is scored in windows, each token predicted from up to block_size tokens before it. A char vocabulary
cannot read every character: such examples are skipped and counted, never a crash.

Speed, on a CPU: each text's context (the ids its four rows share) goes through the model once, with the model's KV
cache (model.new_cache), which is then repeated for the four endings, fed as one right-padded batch after it (a
causal model's real positions never see the padding). On a GPU, and where the cache does not apply (rows cut at
block_size, a model without new_cache), the whole rows of many examples go through together, longest first. Only
the scored positions go through the model's lm_head and log_softmax; bf16 autocast on a GPU; under torchrun each
rank scores every world-th example and the counts are summed. bench/hellaswag_speed.py compares it with
build-nanogpt's loop.

    python hellaswag.py --ckpt out/ckpt.pt                       # a train.py checkpoint, any model file
    python hellaswag.py --model HuggingFaceTB/SmolLM2-135M       # a released checkpoint, through load_hf.py
    python hellaswag.py --weights DIR                            # a local Hugging Face folder
    python hellaswag.py --ckpt out/ckpt.pt --data FILE.jsonl --limit 500 --out results.jsonl
    torchrun --nproc_per_node=8 hellaswag.py --model gpt2

The data is HellaSwag's validation split (10,042 examples, rowanz/hellaswag's hellaswag_val.jsonl), downloaded once
into ~/.cache/nanodecoder/hellaswag; --data reads any JSON-lines file of the same fields.

Python (train.py's --hellaswag_interval, on every rank):
    examples = hellaswag.read_examples(path, limit)   # list of dicts; ValueError with a one-line message
    result = hellaswag.evaluate(model, tokenizer, examples, device, autocast, rank, world)
    result["acc_norm"], result["acc_norm_harness"], result["scored"], result["seconds"], ...
evaluate takes the model itself (or its DDP wrapper, whose inner model it calls; not a torch.compile'd one: every
batch has its own length), restores its train/eval mode, calls it the same number of times on every rank (FSDP's
forwards gather the weights from all ranks), and returns the totals over all ranks; see its docstring.
"""
import argparse
import importlib
import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

import load_hf
from data import bounded

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VALIDATION_EXAMPLES = 10042
MODEL_FILES = {"gpt": "gpt", "moderngpt": "modern_gpt", "moegpt": "moe_gpt", "mlamoe": "mla_moe", "fgram": "fgram_moe"}
RENDERINGS = ("nanogpt", "harness")  # build-nanogpt's text, the harness's text
METRICS = {  # name: (rendering, normalised by)
    "acc": ("nanogpt", None), "acc_norm": ("nanogpt", "tokens"),
    "acc_harness": ("harness", None), "acc_norm_harness": ("harness", "chars"),
}
METRICS_HARNESS = ("acc_harness", "acc_norm_harness")
FIELDS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label")


# ----------------------------------------------------------------------------- the data and its two texts

def fetch_data(cache_dir=load_hf.DEFAULT_CACHE, url=URL, timeout=30):
    """The path of HellaSwag's validation file in cache_dir/hellaswag, downloaded (streamed, size-checked) once."""
    try:
        return load_hf.download(url, os.path.join(cache_dir, "hellaswag", os.path.basename(url)), timeout)
    except ConnectionError as err:  # load_hf's advice is about model weights: here a local file goes with --data
        why = str(err).split(": check the network")[0]
        raise ConnectionError(f"{why}: check the network and run again, or pass --data with a local copy of "
                              f"{os.path.basename(url)}") from None


def read_examples(path, limit=None):
    """The first `limit` (all if None) examples of a JSON-lines file of HellaSwag's fields, each a dict with label an
    int. Raises ValueError, naming the file and line, for a missing or unreadable file and for a bad example."""
    examples = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if limit is not None and len(examples) == limit:
                    break
                if line.strip():
                    examples.append(check_example(line, f"{path} line {number}"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if not examples:
        raise ValueError(f"{path} holds no examples: give JSON lines of HellaSwag's fields ({', '.join(FIELDS)})")
    return examples


def check_example(line, where):
    try:
        example = json.loads(line)
    except ValueError as err:
        raise ValueError(f"{where} is not JSON ({err})") from None
    if not isinstance(example, dict):  # bad data, not a bad call: ValueError as for the other checks
        raise ValueError(f"{where} is not a JSON object of HellaSwag's fields ({', '.join(FIELDS)})")  # noqa: TRY004
    missing = [name for name in FIELDS if name not in example]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)} (the test split has no label: use the validation split)")
    texts = [example[name] for name in ("activity_label", "ctx_a", "ctx_b", "ctx")]
    endings, label = example["endings"], example["label"]
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{where}: activity_label, ctx_a, ctx_b and ctx must be strings")
    if not example["ctx"].strip():
        raise ValueError(f"{where}: ctx is empty, there is nothing to continue")
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
        count = f"{len(endings)} endings" if isinstance(endings, list) else "endings that are no list"
        raise ValueError(f"{where} has {count}: HellaSwag has 4 strings")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # the hub's copy (Rowan/hellaswag) stores the label as a string
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 3:
        raise ValueError(f"{where}: label {label!r} is not one of 0, 1, 2, 3")
    return dict(example, label=label)


def preprocess(text):
    """The harness's clean-up of HellaSwag text; the brackets are artifacts of its WikiHow part."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def render(example, rendering):
    """(context, the four continuations, the lengths in characters the harness divides by) of one text."""
    if rendering == "nanogpt":
        return example["ctx"], [" " + ending for ending in example["endings"]], None
    context = preprocess(example["activity_label"] + ": " + example["ctx_a"] + " " + example["ctx_b"].capitalize())
    endings = [preprocess(ending) for ending in example["endings"]]
    return context, [" " + ending for ending in endings], [len(ending) for ending in endings]


def encode_pair(tokenizer, context, continuation):
    """(context ids, continuation ids, whether the whole text's ids start with the context's): the harness's
    _encode_pair, trailing spaces of the context moved to the continuation, the continuation cut from the whole."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, context_ids = tokenizer.encode(context + continuation), tokenizer.encode(context)
    return context_ids, whole[len(context_ids):], whole[:len(context_ids)] == context_ids


def windows(ids, n_scored, block_size):
    """Pieces of one row (context + continuation ids) that the model can read: (piece, n) with the piece's last n ids
    the ones scored, each predicted from up to block_size ids before it. One piece, ids[-(block_size + 1):], unless
    the continuation alone is longer than block_size."""
    pieces, end = [], len(ids)
    while end > len(ids) - n_scored:
        start = max(0, end - 1 - block_size)
        first = max(len(ids) - n_scored, start + 1)  # the first id of this piece that is scored
        pieces.append((ids[start:end], end - first))
        end = first
    return pieces


# ----------------------------------------------------------------------------- scoring

def shared_prefix(group):
    """How many ids of one text's rows (ids, n scored, row) go through the model once, for all four: the ids they all
    share but the last, which each row feeds again after the cache. So every row feeds at least one id, and the head
    runs on all of a text's predictions of its endings in one matmul (on one position alone it is a matrix-vector
    product, several times slower per row on a CPU). The rows are context ids + continuation ids: this is the
    context's length - 1, or more where all four endings begin alike (at most the shortest row's length - 2)."""
    first, shortest = group[0][0], min(len(ids) for ids, _, _ in group)
    p = 0  # ids all rows share, at most shortest - 1: the last shared position predicts each row's own next id
    while p < shortest - 1 and all(ids[p] == first[p] for ids, _, _ in group):
        p += 1
    return p - 1


def replicate(cache, n, spare):
    """A cache of one row (model.new_cache(1), filled) as n copies of it, in place, written into the tensors in spare
    that earlier calls left (a fresh n-row copy of a block_size-long cache costs page faults: a third of the time at
    GPT-2 124M's shape). Relies on the model files' cache as main has it at 638c2d1 (tests/test_hellaswag.py checks
    all five): a list of one object per layer whose tensors hold the batch first (KVCache's k, v (B, n_kv,
    block_size, hd), mla_moe's LatentKVCache latent (B, block_size, r + dr)) beside an int pos; fgram_moe's list also
    keeps recent_tokens (B, <= max_n - 1) and fgram_vectors (F, C), the one tensor that is not per row. So every
    tensor attribute whose first dimension is 1 is repeated n times (copied: the next forward writes into it); an
    fgram_vectors of F = 1 becomes n copies of the one vector that every row index reads."""
    for i, holder in enumerate((cache, *cache)):
        for name, value in list(getattr(holder, "__dict__", {}).items()):
            if torch.is_tensor(value) and value.dim() and value.size(0) == 1:
                shape, into = (n, *value.shape[1:]), spare.get((i, name))
                if into is None or into.shape != shape or into.dtype != value.dtype:
                    into = spare[i, name] = value.new_empty(shape)
                setattr(holder, name, into.copy_(value.expand(shape)))
    return cache


@torch.no_grad()
def score_rows(model, pieces, groups, n_rows, device, autocast, batch_rows, n_forwards, progress=False):
    """Summed log-likelihood of each row (float64, n_rows), two ways. pieces (ids, n scored, row): batches of
    batch_rows pieces, longest first, right-padded. groups (p, the four rows (ids, n, row) of one text): their first p
    ids, which all four share, once through the model with a KV cache, the cache repeated four times, then the rest of
    each row after it, right-padded; one text per forward (its own cache length: the models take no padding mask).
    Only the scored positions go through the model's lm_head (a forward pre-hook picks them, as nanoGPT's generate
    keeps only the last position) and log_softmax, in float32. Then dummy forwards up to n_forwards, so every rank
    calls the model equally often."""
    net = getattr(model, "module", model)  # a DDP wrapper's forward would copy fgram_moe's cache into a plain list
    sums = torch.zeros(n_rows, dtype=torch.float64)
    picked, calls, spare = {}, [0], {}  # this forward's (b, t) positions that are scored; forwards; replicate's
    head = getattr(net, "lm_head", None)  # every model file has one; else all positions come back
    hook = head.register_forward_pre_hook(lambda _, inputs: (inputs[0][picked["b"], picked["t"]],)) if head else None

    def forward(x, scored, cache=None):
        """Add into sums the log-likelihood of each scored (b, t, id, row): the logit at x's (b, t) predicts id."""
        slots = {}  # (b, t) -> its place among the picked positions: rows that share a position share its logits
        place = [slots.setdefault((b, t), len(slots)) for b, t, _, _ in scored]
        picked["b"], picked["t"] = torch.tensor(list(slots), dtype=torch.long, device=device).view(-1, 2).unbind(1)
        with autocast:
            logits, _ = net(x.to(device)) if cache is None else net(x.to(device), cache=cache)
        if logits.dim() == 3:  # (B, T, vocab_size) from a model without lm_head, else (positions, vocab_size)
            logits = logits[picked["b"], picked["t"]]
        logprobs = logits.float().log_softmax(-1)
        ids = torch.tensor([s[2] for s in scored], dtype=torch.long, device=device)
        loglik = logprobs[torch.tensor(place, dtype=torch.long, device=device), ids]  # (len(scored),)
        sums.index_add_(0, torch.tensor([s[3] for s in scored], dtype=torch.long), loglik.double().cpu())
        calls[0] += 1
        if progress:
            print(f"\rhellaswag: forward {calls[0]} of {n_forwards}", end="", file=sys.stderr, flush=True)

    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][0]))
    try:
        for batch in (order[i:i + batch_rows] for i in range(0, len(order), batch_rows)):
            x = torch.zeros(len(batch), len(pieces[batch[0]][0]) - 1, dtype=torch.long)  # (B, T), right-padded
            scored = []
            for b, i in enumerate(batch):
                ids, n, row = pieces[i]
                x[b, :len(ids) - 1] = torch.tensor(ids[:-1])
                scored += [(b, t, ids[t + 1], row) for t in range(len(ids) - 1 - n, len(ids) - 1)]
            forward(x, scored)
        for p, group in groups:
            cache = net.new_cache(1)
            # position t < p predicts the id at t + 1, one all rows share: scored where the endings begin alike
            forward(torch.tensor([group[0][0][:p]]), [(0, j - 1, ids[j], row) for ids, n, row in group
                                                      for j in range(len(ids) - n, p + 1)], cache)
            x = torch.zeros(len(group), max(len(ids) for ids, _, _ in group) - 1 - p, dtype=torch.long)
            scored = []
            for b, (ids, n, row) in enumerate(group):
                x[b, :len(ids) - 1 - p] = torch.tensor(ids[p:-1])  # after the cache: x's t is position p + t
                scored += [(b, j - p - 1, ids[j], row) for j in range(max(len(ids) - n, p + 1), len(ids))]
            forward(x, scored, replicate(cache, len(group), spare))
    finally:
        if hook:
            hook.remove()
    if progress and calls[0]:
        print(file=sys.stderr)
    for _ in range(n_forwards - calls[0]):
        with autocast:
            net(torch.zeros(1, 1, dtype=torch.long, device=device))
    return sums


def first_max(scores):
    """The index of the largest score, the first of equal ones (numpy's argmax, as the harness uses)."""
    return max(range(len(scores)), key=lambda j: scores[j])


def evaluate(model, tokenizer, examples, device, autocast=None, rank=0, world=1, batch_rows=32,
             renderings=RENDERINGS, progress=False, use_cache=None):
    """Score `examples` (read_examples' dicts) with `model` (model(idx) -> (logits (B, T, V), loss)) and `tokenizer`
    (.encode(text) -> ids, ValueError for text it cannot encode). Rank `rank` of `world` scores examples[rank::world]
    and the counts are summed over the process group (torch.distributed, initialised by the caller when world > 1).
    autocast: the context of every forward (torch.autocast("cuda", dtype=torch.bfloat16) on a GPU; None: none);
    batch_rows: rows (context + one ending) per forward where the whole rows are scored; renderings: the texts to
    score, both by default (the harness's metrics need "harness", build-nanogpt's "nanogpt"); use_cache: a text's
    shared ids once through the model for its four endings, where the model has new_cache(batch_size) and
    forward(idx, cache=cache) (every model file) and the rows fit block_size, else whole rows; None: on a CPU only,
    where a forward costs its FLOPs (a GPU's forward of one text is latency-bound: many examples' rows go at once).

    Returns a dict of the totals over all ranks: acc, acc_norm, acc_harness, acc_norm_harness (None when nothing
    was scored or the text was not asked for), examples (all given), scored, skipped (holding characters the
    vocabulary lacks), truncated (longer than block_size: cut from the left), boundary (rows whose whole text's ids
    do not start with the context's), seconds (wall time); and records: this rank's examples, one dict each (ind,
    label, per text the four endings' summed log-likelihoods and token counts, the predictions), in its order."""
    start = time.perf_counter()
    net = getattr(model, "module", model)  # a DDP wrapper keeps the model in .module
    if use_cache is None:  # a CPU's forwards cost their FLOPs; a GPU's forward of one text is latency-bound
        use_cache = torch.device(device).type == "cpu"
    block_size, use_cache = net.config.block_size, use_cache and hasattr(net, "new_cache")
    mine = examples[rank::world]
    pieces, groups, rows, records, boundary = [], [], [], [], 0  # rows: (record, text) of each ending; pieces and
    # groups (a text's shared prefix length, its four rows) add into rows
    for example in mine:
        record = {"ind": example["ind"], "label": example["label"]}
        records.append(record)
        try:
            texts = {name: render(example, name) for name in renderings}
            encoded = {name: [encode_pair(tokenizer, context, c) for c in continuations]
                       for name, (context, continuations, _) in texts.items()}
        except ValueError as err:  # a char vocabulary meets a character it lacks
            record["skipped"] = str(err)
            continue
        record["truncated"] = False
        for name, pairs in encoded.items():
            record[name] = {"loglik": [], "tokens": [len(continuation) for _, continuation, _ in pairs]}
            if texts[name][2] is not None:
                record[name]["chars"] = texts[name][2]
            group = []  # (ids, n scored, row) of the four endings
            for context_ids, continuation_ids, clean in pairs:
                boundary += not clean
                group.append((context_ids + continuation_ids, len(continuation_ids), len(rows)))
                rows.append((record, name))
            fits = all(len(ids) - 1 <= block_size for ids, _, _ in group)
            record["truncated"] |= not fits
            p = shared_prefix(group)
            if use_cache and fits and p > 0:
                groups.append((p, group))
            else:
                pieces += [(piece, k, row) for ids, n, row in group for piece, k in windows(ids, n, block_size)]
    n_forwards = math.ceil(len(pieces) / batch_rows) + 2 * len(groups)  # a text's shared ids, then its rows
    if world > 1:
        most = torch.tensor([n_forwards], device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        n_forwards = int(most.item())
    was_training = model.training
    model.eval()
    try:
        sums = score_rows(model, pieces, groups, len(rows), device, autocast or nullcontext(), batch_rows,
                          n_forwards, progress)
    finally:
        model.train(was_training)
    for (record, name), loglik in zip(rows, sums.tolist()):
        record[name]["loglik"].append(loglik)
    counts = {"examples": len(mine), "scored": 0, "skipped": 0, "truncated": 0, "boundary": boundary}
    counts.update({metric: 0 for metric in METRICS})
    for record in records:
        if "skipped" in record:
            counts["skipped"] += 1
            continue
        counts["scored"] += 1
        counts["truncated"] += record["truncated"]
        record["pred"] = {}
        for metric, (name, by) in METRICS.items():
            if name in record:
                loglik = record[name]["loglik"]
                sizes = record[name][by] if by else [1] * len(loglik)
                scores = [ll / n if n else -math.inf for ll, n in zip(loglik, sizes)]
                record["pred"][metric] = first_max(scores)
                counts[metric] += record["pred"][metric] == record["label"]
    if world > 1:
        totals = torch.tensor(list(counts.values()), dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        counts = dict(zip(counts, (int(v) for v in totals.tolist())))
    result = {key: value for key, value in counts.items() if key not in METRICS}
    for metric, (name, _) in METRICS.items():
        result[metric] = counts[metric] / counts["scored"] if counts["scored"] and name in renderings else None
    result["seconds"] = time.perf_counter() - start
    result["records"] = records
    return result


# ----------------------------------------------------------------------------- the command line

def load_checkpoint(path, device):
    """(model, tokenizer) of a train.py checkpoint, read by the model file its model_type names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt {path}: no such checkpoint (a Hugging Face folder goes with --weights)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: only model_type is read
    except Exception as err:  # truncated, empty or not a checkpoint: torch.load has many ways to say so
        raise ValueError(f"--ckpt {path} is no readable train.py checkpoint ({type(err).__name__})") from err
    model_type = ckpt.get("model_type") if isinstance(ckpt, dict) else None
    if model_type not in MODEL_FILES:
        raise ValueError(f"--ckpt {path} holds a {model_type!r} model, not one of {', '.join(MODEL_FILES)}")
    model, tokenizer, _ = importlib.import_module(MODEL_FILES[model_type]).load_checkpoint(path, device)
    return model, tokenizer


def load_model(args, device):
    """(model in eval mode, tokenizer) from --ckpt, --weights or --model."""
    if args.ckpt:
        return load_checkpoint(args.ckpt, device)
    if args.weights and not os.path.exists(args.weights):
        raise FileNotFoundError(f"--weights {args.weights}: no such folder (a hub name goes with --model)")
    model, tokenizer, folder = load_hf.load(args.weights or args.model, device, cache_dir=args.cache_dir,
                                            timeout=args.timeout)
    if tokenizer is None:
        raise ValueError(f"{folder} has no tokenizer.json: HellaSwag is text, it needs the model's tokenizer")
    return model, tokenizer


def describe_tokenizer(tokenizer):
    added = tokenizer.encode("")  # what the tokenizer puts around every text: a BOS, or nothing
    bos = f"adds {added} to every text (its BOS)" if added else "adds no BOS"
    return f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)} tokenizer of {tokenizer.vocab_size:,} ids, {bos}"


def summary_line(result, name, block_size):
    """The one line a run prints: what was scored, the four accuracies, what was cut or skipped, the time."""
    parts = [f"hellaswag {name}: scored {result['scored']:,} of {result['examples']:,}"]
    if result["skipped"]:
        parts[0] += f"; {result['skipped']:,} hold characters this vocabulary lacks"
    scores = []
    for table, metrics in (("build-nanogpt", ("acc", "acc_norm")), ("lm-evaluation-harness", METRICS_HARNESS)):
        shown = [f"{metric} {result[metric]:.4f}" for metric in metrics if result[metric] is not None]
        scores += [" ".join(shown) + f" ({table})"] if shown else []
    parts.append(" ".join(scores) + ", random 0.25" if scores else "nothing to score")
    if result["truncated"]:
        parts.append(f"{result['truncated']:,} longer than the model's {block_size} tokens, cut from the left")
    if result["boundary"]:
        parts.append(f"{result['boundary']:,} texts whose ids merge across the end of the context")
    rate = result["scored"] / result["seconds"] if result["seconds"] > 0 else 0.0
    parts.append(f"{result['seconds']:.1f} s, {rate:.1f} examples/s")
    return "; ".join(parts)


def write_atomically(path, lines):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(path + ".tmp", path)  # a reader never sees half a file


class ArgumentParser(argparse.ArgumentParser):
    """argparse's own complaints (an unknown option, a value out of range) in one line."""

    def error(self, message):
        print(f"error: {message} (python hellaswag.py --help lists the options)", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring's table as written, and every option's default (options without one say so)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv):
    p = ArgumentParser(description="\n\n".join(__doc__.strip().split("\n\n")[:3]), formatter_class=HelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a checkpoint written by train.py, of any model file")
    source.add_argument("--model", help="a hub name, e.g. HuggingFaceTB/SmolLM2-135M or gpt2, fetched once")
    source.add_argument("--weights", help="a local Hugging Face folder: config.json, model.safetensors, tokenizer.json")
    p.add_argument("--data", help=f"a JSON-lines file of HellaSwag's fields ({', '.join(FIELDS)}); default: the "
                                  f"validation split, {VALIDATION_EXAMPLES:,} examples, downloaded once into "
                                  f"CACHE_DIR/hellaswag")
    p.add_argument("--limit", type=bounded(int, 1), help="score the first N examples only (default: all)")
    p.add_argument("--out", help="write one JSON line per example: ind, label, per text (nanogpt, harness) the four "
                                 "endings' summed log-likelihoods and token counts, the four predictions "
                                 "(default: none)")
    p.add_argument("--summary", help="write the summary's numbers as one JSON object (default: none)")
    p.add_argument("--batch_rows", type=bounded(int, 1), default=32, help="rows (a context and one ending) per forward")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or mps (bf16 autocast on a CUDA GPU that has it); under torchrun cuda:LOCAL_RANK")
    p.add_argument("--cache_dir", default=load_hf.DEFAULT_CACHE, help="where downloads are kept")
    p.add_argument("--timeout", type=bounded(float, 0, low_open=True), default=30.0,
                   help="seconds to wait for a server")
    return p.parse_args(argv)


def start_distributed(device):
    """(rank, world, device): one process, or torchrun's ranks joined by nccl (one GPU each) or gloo (CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def on_rank0_first(work, rank, world):
    """work() on rank 0, then on the other ranks (a download or a hub fetch happens once); an expected error on rank
    0 is printed there and ends every rank with exit code 2."""
    result, error = None, None
    if rank == 0:
        try:
            result = work()
        except (OSError, ValueError) as err:
            error = f"error: {err}"
    if world > 1:
        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error:
        if rank == 0:
            print(error, file=sys.stderr)
        sys.exit(2)
    return result if rank == 0 else work()


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = start_distributed(args.device)
    try:
        for flag, path in (("--out", args.out), ("--summary", args.summary)):
            folder = os.path.dirname(os.path.abspath(path)) if path else None
            if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
                raise ValueError(f"{flag} {path}: {folder} is no folder this process can write to")
        data = args.data or None

        def read():
            return read_examples(data or fetch_data(args.cache_dir, timeout=args.timeout), args.limit)

        model, tokenizer = on_rank0_first(lambda: load_model(args, device), rank, world)  # a bad --ckpt: no download
        examples = on_rank0_first(read, rank, world)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    name, block_size = args.ckpt or args.weights or args.model, model.config.block_size
    if rank == 0:
        print(f"{name}: {type(model).__name__} of {model.param_counts()['total'] / 1e6:.2f}M parameters, block_size "
              f"{block_size}; {describe_tokenizer(tokenizer)}; {len(examples):,} examples on {world} rank(s), "
              f"{device}", file=sys.stderr)
    cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda_bf16 else nullcontext()
    result = evaluate(model, tokenizer, examples, device, autocast, rank, world, args.batch_rows,
                      progress=rank == 0 and sys.stderr.isatty())
    records = result.pop("records")
    if args.out and world > 1:
        everyone = [None] * world
        dist.all_gather_object(everyone, records)
        records = [everyone[i % world][i // world] for i in range(len(examples))]  # example i was rank i % world's
    if rank == 0:
        print(summary_line(result, os.path.basename(args.data or URL), block_size))
        if args.out:
            write_atomically(args.out, [json.dumps(record) for record in records])
        if args.summary:
            summary = dict(result, data=args.data or URL, model=name, block_size=block_size, random=0.25)
            write_atomically(args.summary, [json.dumps(summary)])
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""
fineweb.py - a large corpus into token shards in llm.c's format, prepared once, resumable, read in order by train.py.

The corpus is FineWeb-Edu (Penedo et al. 2024, arXiv 2406.17557) by default: the parquet files of one subset of a
hub dataset, listed through the hub's API and downloaded one at a time (streamed, resumable, size-checked by
load_hf.download), or local parquet, JSONL and text files. Parquet is read with pyarrow one row group at a time, so
memory stays constant whatever the corpus' size. A pool of processes tokenizes the documents (GPT-2's BPE through a
cache of each space-led word's tokens, exactly what tiktoken gives: see WordCache); each document is preceded by
the separator (GPT-2's <|endoftext|>, id 50256, as build-nanogpt does), and the tokens go, in input order, into
shards of --shard_size tokens (a document may run on into the next shard), in llm.c's format:

    header   256 int32: magic 20240520, version 1, number of tokens; then uint16 tokens (ids below 65,536)
             or magic 20240801, version 7, number of tokens; then uint32 tokens (llm.c's LLaMA 3 layout)

so llm.c's and modded-nanogpt's shards train here and these train there. The first --val_tokens tokens (one shard
by default) are the validation split: NAME_val_000000.bin, then NAME_train_000001.bin, ... meta.json records the
source, the tokenizer (enough to rebuild it), the documents and tokens of each shard, and where in the input each
finished shard ends. A shard is written to a temporary file and renamed, so a run killed at any moment continues,
run again with the same command, after its last finished shard, reading the input from that document on; the
shards come out byte-identical to an uninterrupted run's, whatever --workers.

    python fineweb.py --out data/edu_fineweb10B                  # FineWeb-Edu sample-10BT, GPT-2 BPE: 20 GB of shards
    python fineweb.py --dataset HuggingFaceFW/fineweb-edu --subset sample-10BT --max_tokens 1e9 --out DIR
    python fineweb.py --input a.parquet b.jsonl c.txt --out DIR  # local files: parquet `text`, JSONL "text", one text
    python fineweb.py --input corpus.txt --tokenizer bpe --bpe out/ckpt.pt --out DIR   # a BPE learned by train.py
    python fineweb.py --input docs.jsonl --tokenizer hf --tokenizer_json path/to/tokenizer.json --out DIR

HF_ENDPOINT stands in for https://huggingface.co (a mirror, or the tests' local server); HF_TOKEN is sent for gated
datasets. The shard format (reading, atomic writing, filling in order) is shards.py; the inputs, fineweb_inputs.py.
"""
import argparse
import array
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import deque

import numpy as np

from fineweb_inputs import (
    DEFAULT_DATASET,
    DEFAULT_SUBSET,
    check_input,
    document_texts,
    hub_endpoint,
    hub_files,
    hub_headers,
    tasks_of,
)
from shards import HEADER_BYTES, DataError, Shards, read_meta, start_position, write_meta

HF_SEPARATORS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")  # tried when the tokenizer adds no BOS


# ----------------------------------------------------------------------------- tokenizers

def load_merges(path):
    """The merges of a learned BPE: from a train.py checkpoint (ckpt["tokenizer"]) or a JSON file of bpe.py's."""
    if not os.path.isfile(path):
        raise DataError(f"--bpe {path}: no such file (a train.py checkpoint or bpe.py's JSON)")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                merges = json.load(f).get("merges")
            except (ValueError, AttributeError):
                merges = None
        if not isinstance(merges, list):
            raise DataError(f"--bpe {path}: not a JSON file of bpe.py's (no \"merges\" list)")
        return merges
    import torch  # only for a checkpoint
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise DataError(f"--bpe {path}: not a readable train.py checkpoint ({type(err).__name__})") from err
    state = ckpt.get("tokenizer") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or state.get("kind") != "bpe":
        kind = state.get("kind") if isinstance(state, dict) else None
        raise DataError(f"--bpe {path}: its tokenizer is {kind!r}, not a learned BPE (for GPT-2's: --tokenizer gpt2)")
    return state["merges"]


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_separator(tokenizer, path, name):
    """(id, token) put before every document for a tokenizer.json: --separator if given, else the BOS token its
    post-processor adds in front of every text (Llama 3's <|begin_of_text|>, as llm.c does), else the first of
    HF_SEPARATORS it has (GPT-2's, Qwen3's, SmolLM's <|endoftext|>), else tokenizer_config.json's eos_token."""
    if name is None:
        added = tokenizer.encode("", add_special_tokens=True).ids
        if added:
            return added[0], tokenizer.id_to_token(added[0])
        names = list(HF_SEPARATORS)
        config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.exists(config):
            with open(config, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token")
            names.append(eos.get("content") if isinstance(eos, dict) else eos)
        name = next((n for n in names if n and tokenizer.token_to_id(n) is not None), None)
        if name is None:
            raise DataError(f"{path}: no BOS, <|endoftext|> or EOS token found: name the token that separates "
                            f"documents with --separator")
    token_id = tokenizer.token_to_id(name)
    if token_id is None:
        raise DataError(f"--separator {name!r} is not a token of {path}")
    return token_id, name


def make_tokenizer(args):
    """(spec, info): spec is what a worker needs to rebuild the tokenizer, info goes into meta.json: the kind, the
    vocabulary size, the separator and what rebuilds it (bpe: the merges, hf: the tokenizer.json's path and sha256).
    train.py rebuilds gpt2 and bpe with gpt.Tokenizer(kind, merges=info["merges"])."""
    if args.tokenizer in ("gpt2", "bpe"):
        import gpt
        try:
            merges = load_merges(args.bpe) if args.tokenizer == "bpe" else ()
            tokenizer = gpt.Tokenizer(args.tokenizer, merges=merges)
        except (ValueError, IndexError, TypeError) as err:  # merges that do not make a BPE
            if isinstance(err, DataError):
                raise
            raise DataError(f"--bpe {args.bpe}: not a BPE's merges ({err})") from None
        info = {"kind": args.tokenizer, "vocab_size": tokenizer.vocab_size,
                "separator": tokenizer.bpe.eot_token, "separator_token": "<|endoftext|>"}
        if args.tokenizer == "bpe":
            info.update(merges=[list(pair) for pair in tokenizer.merges], source=os.path.abspath(args.bpe))
        return ("tiktoken", tokenizer.bpe, info["separator"]), info
    path = args.tokenizer_json
    if path and os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not path or not os.path.isfile(path):
        raise DataError(f"--tokenizer hf needs --tokenizer_json, a tokenizer.json or its folder (got {path})")
    from tokenizers import Tokenizer
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as err:  # the library raises a plain Exception for a bad file
        raise DataError(f"{path} is not a tokenizer.json the tokenizers library reads "
                        f"({(str(err).splitlines() or [type(err).__name__])[0]})") from err
    separator, token = hf_separator(tokenizer, path, args.separator)
    info = {"kind": "hf", "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True), "separator": separator,
            "separator_token": token, "path": os.path.abspath(path), "sha256": file_sha256(path)}
    return ("hf", os.path.abspath(path), separator), info


def token_dtype(vocab_size):
    """uint16 while every id fits in 16 bits (GPT-2's 50,257, a BPE up to 65,536), else uint32 (LLaMA 3's layout)"""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ----------------------------------------------------------------------------- the workers

ENCODE = None  # (documents -> their tokens as bytes of `dtype`, the separator's bytes, dtype), set by start_worker
UNSAFE_SPACE = re.compile(r" (?!\S)")  # a space before whitespace or the end: a piece may run across it
SPACE_CUTS = re.compile(r" (?=\S)")  # each space that comes before a non-space
CACHE_WORDS, CACHE_WORD_CHARS = 1 << 17, 32  # at most 131k words of at most 32 characters per worker


def as_bytes(ids, dtype):
    """token ids as the little-endian bytes of dtype, checked to fit (array raises OverflowError): never cut"""
    try:
        tokens = array.array("H" if dtype.itemsize == 2 else "I" if array.array("I").itemsize == 4 else "L", ids)
    except OverflowError:
        raise DataError(f"token id {max(ids)} does not fit {dtype.name} shards") from None
    if sys.byteorder == "big":
        tokens.byteswap()
    return tokens.tobytes()


class WordCache(dict):
    r"""word -> bytes of the tokens of prefix + word, encoded by tiktoken the first time a word is looked up.

    GPT-2's pre-tokenizer (the GPT2_PATTERN regex tiktoken runs) never joins a space followed by a non-space to
    the text before it: the only pieces holding a space are " " + letters, " " + digits, " " + punctuation (the
    space first) and runs of whitespace, and a run of whitespace is never followed by a non-space inside its
    piece (\s+(?!\S) gives that last space up; \s++$ needs the end). So cutting a text before every such space
    cuts it between pieces, and matching resumes there as at the start of a text (the pattern has no look-behind;
    what a piece sees past its end, a space or the end of the text, ends letters, digits, punctuation and
    whitespace alike). The tokens of a text are the tokens of its space-led words, one after the other, and words
    repeat (Zipf): each is encoded once per worker. tests/test_fineweb.py holds this to encode_ordinary on
    random strings of every kind of space, letter, digit and mark. Python's \s is a superset of the regex's, so
    the cuts are a subset of the safe ones."""

    def __init__(self, encode, dtype, prefix):
        super().__init__()
        self.encode, self.dtype, self.prefix = encode, dtype, prefix

    def __missing__(self, word):
        tokens = as_bytes(self.encode(self.prefix + word), self.dtype)
        if len(self) < CACHE_WORDS and len(word) <= CACHE_WORD_CHARS:  # bounded memory; the first words stay
            self[word] = tokens
        return tokens


def cached_encoder(encode, dtype):
    """encode_ordinary(text) as bytes of dtype, through WordCaches: the text is cut at each space before a
    non-space (str.split where every space is one, the fastest cut); the first word is encoded as it is, each
    other word with the space the cut took."""
    first, after_space = WordCache(encode, dtype, ""), WordCache(encode, dtype, " ")

    def encode_text(text):
        words = text.split(" ") if UNSAFE_SPACE.search(text) is None else SPACE_CUTS.split(text)
        return first[words[0]] + b"".join(map(after_space.__getitem__, words[1:]))
    return encode_text


def start_worker(spec, dtype):
    """Builds the tokenizer once per worker process (the pool's initializer; or in-process for --workers 1)."""
    global ENCODE
    kind, tokenizer, separator = spec
    if kind == "tiktoken":
        import gpt  # the pattern the word cache's argument is made for (a fork has it imported already)
        if tokenizer._pat_str == gpt.GPT2_PATTERN:
            encode_text = cached_encoder(tokenizer.encode_ordinary, dtype)
        else:
            def encode_text(text):  # another pattern: plain tiktoken
                return as_bytes(tokenizer.encode_ordinary(text), dtype)

        def encode(texts):
            return [encode_text(text) for text in texts]
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism
        from tokenizers import Tokenizer
        hf = Tokenizer.from_file(tokenizer)
        hf.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, as encode_ordinary does

        def encode(texts):
            return [as_bytes(e.ids, dtype) for e in hf.encode_batch_fast(texts, add_special_tokens=False)]
    ENCODE = (encode, np.array([separator], dtype=dtype).tobytes(), dtype)


def tokenize(task):
    """(tokens, lengths) of a task: each document's separator and tokens, in one array; lengths[i] counts
    document i's tokens (0 for a row with no text)."""
    encode, separator, dtype = ENCODE
    texts = document_texts(task)
    encoded = iter(encode([text for text in texts if text is not None]))
    pieces, lengths = [], np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if text is not None:
            tokens = next(encoded)
            pieces += [separator, tokens]
            lengths[i] = 1 + len(tokens) // dtype.itemsize
    return np.frombuffer(b"".join(pieces), dtype=dtype), lengths


def ordered_map(tasks, workers, spec, dtype):
    """(info, tokenize(task)) for each (info, task), in order, by `workers` processes with at most two tasks per
    worker in flight: memory stays bounded and the input (downloads included) is read only as fast as it is used."""
    if workers == 1:
        start_worker(spec, dtype)
        for info, task in tasks:
            yield info, tokenize(task)
        return
    import multiprocessing
    with multiprocessing.Pool(workers, start_worker, (spec, dtype)) as pool:  # terminated on leaving
        pending = deque()
        for info, task in tasks:
            pending.append((info, pool.apply_async(tokenize, (task,))))
            if len(pending) >= 2 * workers:
                info, result = pending.popleft()
                yield info, result.get()
        while pending:
            info, result = pending.popleft()
            yield info, result.get()


# ----------------------------------------------------------------------------- progress

def human(n, unit=""):
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One line: documents, tokens, tokens/s, shards, bytes downloaded, how much of the input is read, ETA. On a
    terminal it rewrites itself twice a second; in a log it is printed once per finished shard."""

    def __init__(self, meta, sizes):
        self.meta, self.sizes, self.total = meta, sizes, max(sum(sizes), 1)
        self.start, self.shown, self.downloaded = time.perf_counter(), 0.0, 0
        # a resumed run's rate and ETA count from where it started: its first task tells how far that is
        self.tokens0, self.fraction0 = meta["tokens"], None if meta["shards"] else 0.0
        self.documents, self.tokens, self.fraction = meta["documents"], meta["tokens"], 0.0
        self.tty = sys.stdout.isatty()

    def update(self, lengths, info, shards_before):
        i, _, fraction, skip = info
        self.documents += int(np.count_nonzero(lengths)) - (1 if skip else 0)
        self.tokens += int(lengths.sum()) - skip
        self.fraction = (sum(self.sizes[:i]) + self.sizes[i] * fraction) / self.total
        if self.meta["max_tokens"]:
            self.fraction = max(self.fraction, self.tokens / self.meta["max_tokens"])
        if self.fraction0 is None:
            self.fraction0 = self.fraction
        now = time.perf_counter()
        new_shard = len(self.meta["shards"]) > shards_before
        if (self.tty and now - self.shown > 0.5) or (not self.tty and new_shard):
            self.shown = now
            print(("\r" if self.tty else "") + self.line(now), end="" if self.tty else "\n", flush=True)

    def line(self, now):
        elapsed = max(now - self.start, 1e-9)
        rate = (self.tokens - self.tokens0) / elapsed
        done = self.fraction - self.fraction0
        eta = duration(elapsed * (1 - self.fraction) / done) if done > 0 else "?"
        return (f"documents {self.documents:,} | tokens {human(self.tokens)} | {human(rate)} tokens/s | shards "
                f"{len(self.meta['shards'])} | downloaded {human(self.downloaded, 'B')} | input "
                f"{100 * self.fraction:.1f}% | ETA {eta}")


# ----------------------------------------------------------------------------- main

def token_count(text):
    """An integer that may be written 1e8."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


token_count.__name__ = "int"  # argparse's "invalid int value: 'x'"


def parse_args(argv):
    from data import bounded
    p = argparse.ArgumentParser(description="A corpus (hub parquet or local files) into llm.c-format token shards, "
                                            "resumable: run the same command again to continue.")
    p.error = lambda message: p.exit(2, f"error: {message} (python fineweb.py --help lists the options)\n")
    p.add_argument("--out", required=True, help="the folder of the shards and meta.json")
    p.add_argument("--input", nargs="+", help="local .parquet, .jsonl or text files (one document per text file) "
                                              "instead of a hub dataset")
    p.add_argument("--dataset", help=f"a hub dataset of parquet files (default {DEFAULT_DATASET})")
    p.add_argument("--subset", help=f"its subset, a config of its card (default {DEFAULT_SUBSET} for the default "
                                    f"dataset, else the card's default)")
    p.add_argument("--split", default="train")
    p.add_argument("--text_column", default="text", help="the parquet column holding the documents")
    p.add_argument("--keep_downloads", action="store_true", help="keep each downloaded parquet (OUT/downloads)")
    p.add_argument("--tokenizer", choices=("gpt2", "bpe", "hf"), default="gpt2",
                   help="GPT-2's BPE (data/gpt2.tiktoken), a learned BPE (--bpe), a tokenizer.json (--tokenizer_json)")
    p.add_argument("--bpe", help="a train.py checkpoint or bpe.py JSON holding the learned BPE's merges")
    p.add_argument("--tokenizer_json", help="a released model's tokenizer.json, or its folder")
    p.add_argument("--separator", help="the token before each document for --tokenizer hf (default: its BOS, else "
                                       "<|endoftext|>, else its EOS)")
    p.add_argument("--shard_size", type=bounded(token_count, 1, 2**31 - 1), default=10**8, help="tokens per shard")
    p.add_argument("--val_tokens", type=bounded(token_count, 0), help="tokens of the val split (default: one shard)")
    p.add_argument("--max_tokens", type=bounded(token_count, 1), help="stop after this many tokens (default: all)")
    p.add_argument("--name", help="the shards' name prefix (default: the dataset's name, or 'corpus')")
    p.add_argument("--workers", type=bounded(int, 1), default=os.cpu_count() or 1, help="tokenizing processes")
    args = p.parse_args(argv)
    if args.input and (args.dataset or args.subset):
        p.error("--input reads local files: leave out --dataset and --subset")
    if args.tokenizer == "bpe" and not args.bpe:
        p.error("--tokenizer bpe needs --bpe, a train.py checkpoint or bpe.py JSON")
    if not args.input and not args.dataset:
        args.dataset, args.subset = DEFAULT_DATASET, args.subset or DEFAULT_SUBSET
    return args


def new_meta(args, tokenizer, dtype):
    """meta.json of a preparation not yet started. Its "command" holds what decides the shards' bytes: a later run
    continues this one only if its command is the same."""
    if args.input:
        for path in args.input:
            check_input(path, args.text_column)
        source = {"files": [{"path": os.path.abspath(path), "size": os.path.getsize(path)} for path in args.input]}
        inputs = [dict(item) for item in source["files"]]  # a copy: the inputs gain document counts
    else:
        source, inputs = {"dataset": args.dataset, "subset": args.subset, "split": args.split}, None
    name = args.name or (args.dataset.split("/")[-1].lower().replace("-", "_") if args.dataset else "corpus")
    if not re.fullmatch(r"[\w.-]+", name):
        raise DataError(f"--name {name!r}: use letters, digits, '.', '-' and '_'")
    identity = {k: v for k, v in tokenizer.items() if k not in ("merges", "source", "path")}
    if "merges" in tokenizer:
        identity["sha256"] = hashlib.sha256(json.dumps(tokenizer["merges"]).encode()).hexdigest()
    sizes = {"shard_size": args.shard_size, "max_tokens": args.max_tokens,
             "val_tokens": args.shard_size if args.val_tokens is None else args.val_tokens}
    command = {"source": dict(source), "text_column": args.text_column, "tokenizer": identity, "name": name, **sizes}
    return {"format": "llm.c token shards: 256 int32 (magic, version, number of tokens, 0...), then the tokens",
            "name": name, "source": source, "inputs": inputs, "text_column": args.text_column, "tokenizer": tokenizer,
            "dtype": dtype.name, **sizes, "shards": [], "documents": 0, "tokens": 0, "complete": False,
            "command": command}


def prepare(args):
    spec, tokenizer = make_tokenizer(args)
    dtype = token_dtype(tokenizer["vocab_size"])
    meta = new_meta(args, tokenizer, dtype)
    out = args.out
    os.makedirs(out, exist_ok=True)
    previous = read_meta(out)
    start = start_position(out, meta, previous)
    if previous and previous.get("complete"):
        print(f"{out} is complete: {len(meta['shards'])} shards, {meta['tokens']:,} tokens, "
              f"{meta['documents']:,} documents")
        return meta
    if meta["inputs"] is None:  # a hub dataset listed the first time; a resumed run reuses the listing
        revision, files = hub_files(args.dataset, args.subset, args.split)
        meta["source"]["revision"], meta["inputs"] = revision, files
    hub = "dataset" in meta["source"]
    need = HEADER_BYTES + dtype.itemsize * min(args.shard_size, args.max_tokens or args.shard_size)
    need += max(item["size"] for item in meta["inputs"]) if hub else 0
    free = shutil.disk_usage(out).free
    if free < need:
        raise DataError(f"--out {out} has {human(free, 'B')} free, less than a shard and a download "
                        f"({human(need, 'B')}): free some space or lower --shard_size")
    write_meta(out, meta)
    if meta["shards"]:
        print(f"resuming after shard {len(meta['shards']) - 1} ({meta['tokens']:,} tokens): input {start[0]}, "
              f"document {start[1]}, token {start[2]}", flush=True)
    downloads = os.path.join(out, "downloads")
    progress = Progress(meta, [item["size"] for item in meta["inputs"]])

    def local_path(i):
        item = meta["inputs"][i]
        return os.path.join(downloads, item["path"].replace("/", "_")) if hub else item["path"]

    def open_input(i):
        path = local_path(i)
        if hub and not os.path.exists(path):
            import load_hf
            item, revision = meta["inputs"][i], meta["source"]["revision"]
            url = f"{hub_endpoint()}/datasets/{args.dataset}/resolve/{revision}/{item['path']}"
            print(f"downloading {item['path']} ({human(item['size'], 'B')})", flush=True)
            load_hf.download(url, path, timeout=30, progress=False, headers=hub_headers())
            progress.downloaded += os.path.getsize(path)
        return path

    def remove_finished(end):
        """The downloads whose every token is in finished shards."""
        for i in range(min(end[0], len(meta["inputs"])) if hub and not args.keep_downloads else 0):
            if os.path.exists(local_path(i)):
                os.remove(local_path(i))

    remove_finished(start)
    shards = Shards(out, meta, dtype, remove_finished)
    if shards.capacity()[1] == 0:
        shards.finish()
    else:
        results = ordered_map(tasks_of(meta["inputs"], start, open_input, args.text_column), args.workers, spec, dtype)
        for info, (tokens, lengths) in results:
            before = len(meta["shards"])
            done = shards.add(tokens, lengths, info)
            progress.update(lengths, info, before)
            if done:
                results.close()  # max_tokens reached: the pool stops
                break
        shards.finish()
        remove_finished((len(meta["inputs"]), 0, 0))
    if hub and os.path.isdir(downloads) and not os.listdir(downloads):
        os.rmdir(downloads)
    progress.documents, progress.tokens = meta["documents"], meta["tokens"]  # what the shards hold
    print(("\n" if progress.tty else "") + progress.line(time.perf_counter()))
    return meta


def report(meta, out):
    """The closing lines: what is where, and the peak memory of this process and of its largest worker."""
    import resource
    val = sum(s["tokens"] for s in meta["shards"] if s["split"] == "val")
    print(f"{out}: {len(meta['shards'])} shards, {meta['documents']:,} documents, {meta['tokens']:,} tokens "
          f"({val:,} val, {meta['tokens'] - val:,} train), {meta['dtype']}")
    if meta["tokens"] == val:
        print("warning: every token went to val: lower --val_tokens (or --shard_size) for train shards")
    peak = [resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(f"peak memory: {peak[0]:.0f} MB in this process, {peak[1]:.0f} MB in the largest worker")


def main(argv=None):
    args = parse_args(argv)
    try:
        meta = prepare(args)
    except (DataError, OSError) as err:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            message = (f"no space left on the disk of {args.out} ({err.filename or 'a write'}): free some space and "
                       f"run the same command to continue after the last finished shard")
        else:
            message = str(err)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to continue after the last finished shard", file=sys.stderr)
        sys.exit(130)
    report(meta, args.out)


if __name__ == "__main__":
    main()

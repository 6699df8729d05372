"""
bench/fineweb_tokenize.py - fineweb.py's tokenization throughput against build-nanogpt's fineweb.py way, on the
same local parquet with the same number of worker processes, and the peak memory of preparing it.

    flock /tmp/nanodecoder-bench.lock python bench/fineweb_tokenize.py                   # 2 workers, 3 rounds
    flock /tmp/nanodecoder-bench.lock python bench/fineweb_tokenize.py --workers 16 --mb 400
    flock /tmp/nanodecoder-bench.lock python bench/fineweb_tokenize.py --rss             # + peak RSS, 2 sizes

The parquet is synthetic: documents cut from --text (input.txt) at FineWeb-Edu-like lengths (log-normal, median
~3,000 characters), written in row groups of 1,000 rows. build-nanogpt's way, written out here from its
description: an mp.Pool over the documents (dicts, as a datasets iterator yields them), pool.imap(tokenize, docs,
chunksize=16), each document `[eot] + encode_ordinary(text)` made a numpy uint16 array, copied into a shard buffer
of --shard_size tokens in order, a document running on into the next shard. fineweb.py's way: tasks of about
256 KB of raw text bytes (no Python string per document in the main process), in each worker a cache of the
tokens of each space-led word (fineweb.WordCache: exact; each distinct word goes through tiktoken once), the
tokens passed back as bytes. Both runs time the whole preparation (pool start to the last shard on disk) and count
CPU seconds of the main process and of the workers; A and B alternate, the table gives the median of the rounds.
Both must give the same tokens, shard for shard, or the script fails. The word cache gains most on text whose
words repeat: Shakespeare's vocabulary is smaller than the web's, so try --text on a sample of your own corpus.
"""

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data
import fineweb
import gpt
import shards as shard_format


def synthetic_parquet(path, megabytes, text_path, seed=0):
    """Documents cut from a text, lengths log-normal (median e^8 ~ 3,000 characters, 200 to 100,000)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    text += text  # a document may wrap around the end
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < megabytes * 1e6:
        n = int(np.clip(rng.lognormal(8.0, 1.0), 200, 100_000))
        start = int(rng.integers(0, len(text) // 2))
        docs.append(text[start:start + n])
        total += len(docs[-1])
    pq.write_table(pa.table({"text": docs, "id": [f"doc-{i}" for i in range(len(docs))]}), path,
                   row_group_size=1000)
    return len(docs), total


# ----------------------------------------------------------------------------- build-nanogpt's way

ENC = None


def nanogpt_tokenize(doc):
    """build-nanogpt's tokenize(): the eot token, then the document's ordinary tokens, as uint16."""
    tokens = [ENC.eot_token]
    tokens.extend(ENC.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


def nanogpt_documents(path):
    import pyarrow.parquet as pq
    parquet = pq.ParquetFile(path)
    for group in range(parquet.metadata.num_row_groups):
        yield from ({"text": text} for text in parquet.read_row_group(group, columns=["text"]).column(0).to_pylist())


def nanogpt_prepare(path, out, shard_size, workers):
    """build-nanogpt's main loop, its shards in llm.c's format; returns the shard paths."""
    global ENC
    ENC = gpt.Tokenizer("gpt2").bpe
    paths, shard_index = [], 0
    with mp.Pool(workers) as pool:
        buffer, count = np.empty((shard_size,), dtype=np.uint16), 0
        for tokens in pool.imap(nanogpt_tokenize, nanogpt_documents(path), chunksize=16):
            while len(tokens):
                take = min(shard_size - count, len(tokens))
                buffer[count:count + take] = tokens[:take]
                count, tokens = count + take, tokens[take:]
                if count == shard_size:
                    paths.append(write(out, shard_index, buffer[:count]))
                    shard_index, count = shard_index + 1, 0
        if count:
            paths.append(write(out, shard_index, buffer[:count]))
    return paths


def write(out, index, tokens):
    split = "val" if index == 0 else "train"
    path = os.path.join(out, f"edufineweb_{split}_{index:06d}.bin")
    header = np.zeros(256, dtype=np.int32)
    header[:3] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    return path


# ----------------------------------------------------------------------------- fineweb.py's way

def fineweb_prepare(path, out, shard_size, workers):
    args = fineweb.parse_args(["--input", path, "--out", out, "--shard_size", str(shard_size),
                               "--workers", str(workers)])
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        meta = fineweb.prepare(args)
    return [os.path.join(out, shard["file"]) for shard in meta["shards"]]


def cpu_seconds(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(prepare, path, shard_size, workers):
    """(wall seconds, CPU seconds of this process, CPU seconds of the workers, the shards' tokens)"""
    with tempfile.TemporaryDirectory() as out:
        main_cpu, workers_cpu = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        paths = prepare(path, out, shard_size, workers)  # the pool is joined: its CPU time is counted
        seconds = time.perf_counter() - start
        main_cpu = cpu_seconds(resource.RUSAGE_SELF) - main_cpu
        workers_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - workers_cpu
        shards = [np.array(shard_format.read_shard(p)) for p in paths]
    return seconds, main_cpu, workers_cpu, shards


def tiktoken_alone(path):
    """CPU seconds of encode_ordinary over every document in this process: the floor for any design's total."""
    enc = gpt.Tokenizer("gpt2").bpe
    texts = [doc["text"] for doc in nanogpt_documents(path)]
    start = cpu_seconds(resource.RUSAGE_SELF)
    for text in texts:
        enc.encode_ordinary(text)
    return cpu_seconds(resource.RUSAGE_SELF) - start


def peak_rss(path, workers):
    """Maximum resident set size (MB) of `python fineweb.py` on path, from /usr/bin/time -v (the main process or
    its largest worker, whichever is larger), and fineweb.py's own line for each."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(["/usr/bin/time", "-v", sys.executable, os.path.join(ROOT, "fineweb.py"), "--input",
                                 path, "--out", out, "--workers", str(workers), "--shard_size", "1e7"],
                                capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    own = re.search(r"peak memory: .*", result.stdout).group(0)
    return kb / 1024, own


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=data.bounded(int, 1), default=2)
    parser.add_argument("--mb", type=data.bounded(float, 0, low_open=True), default=40,
                        help="megabytes of text in the parquet")
    parser.add_argument("--text", default=os.path.join(ROOT, "input.txt"), help="the text documents are cut from")
    parser.add_argument("--rounds", type=data.bounded(int, 1), default=3)
    parser.add_argument("--shard_size", type=data.bounded(int, 1), default=10**6)
    parser.add_argument("--rss", action="store_true", help="also peak RSS on parquets of --mb and 4x --mb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "docs.parquet")
        docs, chars = synthetic_parquet(path, args.mb, args.text)
        print(f"{docs:,} documents, {chars / 1e6:.1f} MB of text, {args.workers} worker processes, "
              f"shards of {args.shard_size:,} tokens, {args.rounds} rounds (interleaved)")
        runs = {"build-nanogpt's way": [], "fineweb.py": []}
        reference = None
        for _ in range(args.rounds):
            for name, prepare in (("build-nanogpt's way", nanogpt_prepare), ("fineweb.py", fineweb_prepare)):
                *measured, shards = timed(prepare, path, args.shard_size, args.workers)
                runs[name].append(measured)
                if reference is None:
                    reference = shards
                same = len(shards) == len(reference) and all(np.array_equal(a, b) for a, b in zip(shards, reference))
                assert same, f"{name} gave other tokens than build-nanogpt's way"
        tokens = sum(len(shard) for shard in reference)
        floor = tiktoken_alone(path)
        print(f"\n{tokens:,} tokens in {len(reference)} shards, the same from both, shard for shard; "
              f"encode_ordinary alone: {floor:.2f} CPU s ({tokens / floor / 1e6:.2f}M tokens/s on one core)\n")
        print("| way | wall s, median (each round) | tokens/s | ratio | CPU s: main + workers | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        base = [statistics.median(column) for column in zip(*runs["build-nanogpt's way"])]
        for name, measured in runs.items():
            wall, main_cpu, workers_cpu = (statistics.median(column) for column in zip(*measured))
            print(f"| {name} | {wall:.2f} ({', '.join(f'{m[0]:.2f}' for m in measured)}) | "
                  f"{tokens / wall / 1e6:.2f}M | {base[0] / wall:.2f}x | {main_cpu:.2f} + {workers_cpu:.2f} | "
                  f"{(base[1] + base[2]) / (main_cpu + workers_cpu):.2f}x |")
        if args.rss:
            big = os.path.join(folder, "big.parquet")
            synthetic_parquet(big, 4 * args.mb, args.text, seed=1)
            print("\n| parquet | peak RSS (/usr/bin/time -v) | fineweb.py's own report |\n| --- | --- | --- |")
            for label, p in ((f"{args.mb:g} MB of text", path), (f"{4 * args.mb:g} MB of text", big)):
                mb, own = peak_rss(p, args.workers)
                print(f"| {label}, {os.path.getsize(p) / 1e6:.0f} MB file | {mb:.0f} MB | {own} |")


if __name__ == "__main__":
    main()

"""
bpe.py - learn a byte-level BPE tokenizer from a corpus, the way GPT-2's was learned.

Byte-pair encoding (Sennrich et al. 2016, arXiv 1508.07909) starts from single symbols and repeatedly merges
the most frequent adjacent pair into a new one. GPT-2's variant (Radford et al. 2019) runs on UTF-8 bytes, so
the 256 byte values are the first tokens and any text encodes with no unknown token, and a regex first splits
the text into pre-tokens (a word with its leading space, a number, a run of punctuation or of spaces) that
merges never cross. This is the "train your own tokenizer" step of minbpe and nanochat; tiktoken turns the
merges into an Encoding, so encoding runs in Rust.

    python train.py --tokenizer bpe --bpe_vocab_size 2048   # learned on the training split, cached next to the
                                                           # corpus; the merges travel inside the checkpoint
    python bpe.py --data input.txt --vocab_size 2048        # time, compression, the first tokens learned

Rules (tests/test_bpe.py holds a plain reference implementation to them): among equally frequent pairs the
smallest (a, b) token-id pair wins, so the merges are deterministic; learning stops at vocab_size, or earlier
when no pair occurs twice (a pair seen once is not a pattern). Token bytes come out distinct, as tiktoken needs
(its ranks are a dict bytes -> rank), with no check: each merge is applied left to right to every word, so a
stretch of bytes that starts and ends on token boundaries is split as it would be on its own. Once "ab"+"c"
made "abc", every such "abc" is that one token, and "a" and "bc" never stand side by side to make it twice.
"""
import argparse
import hashlib
import heapq
import itertools
import json
import os
import time
from collections import Counter, defaultdict

import regex
import tiktoken

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def check_vocab_size(vocab_size):
    if not 257 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must be between 257 (the 256 bytes + <|endoftext|>) and 65536 "
                         f"(ids are stored as uint16), got {vocab_size}")


def pairs_of(word):
    """adjacent pair -> how many times it occurs in word (a list of token ids)"""
    return Counter(itertools.pairwise(word))


def merge_pair(word, pair, token):
    """word with each occurrence of pair replaced by token, left to right, non-overlapping (aaa -> (aa)a)"""
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(token)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


def learn_bpe(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """merges: merge i joins tokens a and b into token 256 + i. vocab_size counts the 256 byte tokens,
    the merges and <|endoftext|> (the last id), so len(merges) == vocab_size - 257 (fewer if the text
    runs out of pairs that occur twice)."""
    check_vocab_size(vocab_size)
    # Merges never cross pre-tokens, so each distinct pre-token is a word learned on once, weighted by its
    # count: Tiny Shakespeare's 1M characters are 15k distinct words.
    word_counts = Counter(regex.findall(GPT2_PATTERN, text))
    words = [list(word.encode("utf-8")) for word in word_counts]
    counts = list(word_counts.values())
    # pair_counts: (a, b) -> occurrences in the whole text; pair_words: (a, b) -> indices of the words holding
    # it. A merge changes only the words that hold its pair, so only their pairs are recounted.
    pair_counts, pair_words = Counter(), defaultdict(set)
    for i, word in enumerate(words):
        for pair, n in pairs_of(word).items():
            pair_counts[pair] += n * counts[i]
            pair_words[pair].add(i)
    # A heap of (-count, a, b) pops the most frequent pair, ties to the smallest (a, b). Entries are never
    # updated in place: a pair whose count changes is pushed again, and a popped entry whose count is no
    # longer the pair's count is stale and dropped (lazy invalidation).
    heap = [(-n, a, b) for (a, b), n in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap and len(merges) < vocab_size - 257:
        neg_count, a, b = heapq.heappop(heap)
        if -neg_count != pair_counts[a, b]:
            continue  # stale
        if -neg_count < 2:
            break  # the most frequent pair occurs once: nothing left worth learning
        token = 256 + len(merges)
        merges.append((a, b))
        changed = set()
        for i in list(pair_words[a, b]):  # a copy: the loop removes i from this set
            old = pairs_of(words[i])
            words[i] = merge_pair(words[i], (a, b), token)
            new = pairs_of(words[i])
            for pair in old.keys() | new.keys():
                if new[pair] != old[pair]:
                    pair_counts[pair] += (new[pair] - old[pair]) * counts[i]
                    changed.add(pair)
                    if pair in new:
                        pair_words[pair].add(i)
                    else:
                        pair_words[pair].discard(i)
        for pair in changed:
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], *pair))
    return merges


def learned_merges(corpus_path: str, train_text: str, vocab_size: int) -> list[tuple[int, int]]:
    """learn_bpe(train_text, vocab_size), cached next to the corpus as f"{corpus_path}.bpe{vocab_size}.json"
    (the sha256 of train_text, vocab_size and the merges); reused while the hash matches, relearned and
    rewritten otherwise. A folder we cannot write to just means learning each time."""
    check_vocab_size(vocab_size)
    path = f"{corpus_path}.bpe{vocab_size}.json"
    sha256 = hashlib.sha256(train_text.encode("utf-8")).hexdigest()
    try:
        with open(path) as f:
            cache = json.load(f)
        if cache["sha256"] == sha256 and cache["vocab_size"] == vocab_size:
            return [tuple(merge) for merge in cache["merges"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or not one we can read: learn
    merges = learn_bpe(train_text, vocab_size)
    tmp = f"{path}.{os.getpid()}.tmp"  # one per process: DDP ranks may all write at once
    try:
        with open(tmp, "w") as f:
            json.dump({"sha256": sha256, "vocab_size": vocab_size, "merges": merges}, f)
        os.replace(tmp, path)  # readers see the old file or the whole new one, never half of one
    except OSError:
        pass
    return merges


def encoding_from_merges(merges):
    """the tiktoken Encoding: token 256 + i is the bytes of a then b, <|endoftext|> the last id"""
    tokens = [bytes([b]) for b in range(256)]
    for a, b in merges:
        tokens.append(tokens[a] + tokens[b])
    ranks = {token: rank for rank, token in enumerate(tokens)}
    return tiktoken.Encoding("bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="learn a byte-level BPE on the first 90% of a text")
    parser.add_argument("--data", default="input.txt", help="the corpus, a UTF-8 text file")
    parser.add_argument("--vocab_size", type=int, default=2048, help="256 bytes + merges + <|endoftext|>")
    args = parser.parse_args()
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    n = int(0.9 * len(text))  # the training split, as the model files cut it
    t0 = time.time()
    merges = learn_bpe(text[:n], args.vocab_size)
    encoding = encoding_from_merges(merges)
    print(f"learned {len(merges)} merges in {time.time() - t0:.2f} s; on the last 10%: "
          f"{(len(text) - n) / len(encoding.encode_ordinary(text[n:])):.3f} characters per token")
    print("first tokens:", [encoding.decode([256 + i]) for i in range(min(20, len(merges)))])

"""bpe.py: merges equal to a plain reference BPE's, tiktoken's encoding equal to the merges applied by hand,
exact round trips, the same merges under any hash seed, distinct token bytes, the cache."""

import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import regex
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

import bpe
from bpe import GPT2_PATTERN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "input.txt"), encoding="utf-8") as f:
    SHAKESPEARE = f.read()
SPLIT = int(0.9 * len(SHAKESPEARE))  # the model files' training / validation split
UNICODE = (
    "naïve café, Ærø; Привет, мир! 🎉🎉 👍🏽 "
    "Ünïcödé ünïcödé 1234 56789 don't we'll\t\ttabs  and   spaces\n\n\n"
)
TRAIN = SHAKESPEARE[:3000] + 3 * UNICODE
HELD_OUT = SHAKESPEARE[3000:6000] + UNICODE


def encoding_from_merges(merges):
    """exactly how the model files build the tokenizer from the merges"""
    tokens = [bytes([b]) for b in range(256)]
    for a, b in merges:
        tokens.append(tokens[a] + tokens[b])
    ranks = {token: rank for rank, token in enumerate(tokens)}
    return tiktoken.Encoding(
        "bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )


def merge_everywhere(word, pair, token):
    """pair -> token, left to right: after a merge the last id is the new token, so aaa -> (aa)a"""
    merged = []
    for t in word:
        if merged and (merged[-1], t) == pair:
            merged[-1] = token
        else:
            merged.append(t)
    return merged


def reference_bpe(text, vocab_size):
    """the textbook loop: count every adjacent pair of every pre-token, merge the most frequent everywhere
    (ties to the smallest pair), repeat until vocab_size or until no pair occurs twice"""
    words = Counter(tuple(piece.encode("utf-8")) for piece in regex.findall(GPT2_PATTERN, text))
    merges = []
    while len(merges) < vocab_size - 257:
        pair_counts = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pair_counts[pair] += n
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair), default=None)
        if best is None or pair_counts[best] < 2:
            break
        merges.append(best)
        merged_words = Counter()
        for word, n in words.items():
            merged_words[tuple(merge_everywhere(word, best, 255 + len(merges)))] += n
        words = merged_words
    return merges


def encode_by_hand(text, merges):
    """minbpe's encode: in each pre-token, merge the adjacent pair learned first, until none was learned"""
    rank = {pair: i for i, pair in enumerate(merges)}
    ids = []
    for piece in regex.findall(GPT2_PATTERN, text):
        word = list(piece.encode("utf-8"))
        while len(word) > 1:
            pair = min(itertools.pairwise(word), key=lambda pair: rank.get(pair, len(merges)))
            if pair not in rank:
                break
            word = merge_everywhere(word, pair, 256 + rank[pair])
        ids += word
    return ids


def random_texts(n, seed=0):
    """texts made of a few short motifs over a small alphabet: runs, overlaps and ties everywhere"""
    rng = random.Random(seed)
    for _ in range(n):
        motifs = ["".join(rng.choices("abc", k=rng.randint(1, 3))) for _ in range(3)]
        words = ["".join(rng.choices(motifs, k=rng.randint(1, 6))) for _ in range(rng.randint(2, 25))]
        yield " ".join(word for word in words for _ in range(int(rng.paretovariate(0.8))))


def test_pattern_is_gpt2s():
    assert GPT2_PATTERN == r50k_pat_str  # tiktoken's name for GPT-2's


@pytest.fixture(scope="module")
def shakespeare_merges():
    return bpe.learn_bpe(SHAKESPEARE[:SPLIT], 16641)


def test_merges_match_reference():
    merges = bpe.learn_bpe(TRAIN, 257 + 200)
    assert len(merges) == 200 and merges == reference_bpe(TRAIN, 257 + 200)
    small = SHAKESPEARE[:500] + UNICODE  # runs out of pairs that occur twice long before 1000
    merges = bpe.learn_bpe(small, 1000)
    assert len(merges) < 1000 - 257 and merges == reference_bpe(small, 1000)
    assert bpe.learn_bpe("ab ab", 65536) == [(97, 98)]  # then " "+"ab" occurs once: stop
    assert bpe.learn_bpe(TRAIN, 257) == [] and bpe.learn_bpe("", 1000) == []
    for text in random_texts(40):
        assert bpe.learn_bpe(text, 400) == reference_bpe(text, 400), text


def test_token_bytes_are_distinct(shakespeare_merges):
    # tiktoken's ranks are a dict bytes -> rank: two merges making the same bytes would lose a token
    for merges in [shakespeare_merges, *(bpe.learn_bpe(text, 2000) for text in random_texts(300, seed=1))]:
        tokens = [bytes([b]) for b in range(256)]
        for a, b in merges:
            tokens.append(tokens[a] + tokens[b])
        assert len(set(tokens)) == len(tokens)
    assert len(shakespeare_merges) == 11753  # 16384 asked; the rest would be pairs seen once


def test_tiktoken_encodes_as_the_merges_applied_by_hand(shakespeare_merges):
    merges = bpe.learn_bpe(TRAIN, 257 + 200)
    assert encoding_from_merges(merges).encode_ordinary(HELD_OUT) == encode_by_hand(HELD_OUT, merges)
    validation = SHAKESPEARE[SPLIT:]
    encoding = encoding_from_merges(shakespeare_merges)
    assert encoding.encode_ordinary(validation) == encode_by_hand(validation, shakespeare_merges)


def test_round_trips_any_text():
    merges = bpe.learn_bpe(TRAIN, 257 + 200)
    encoding = encoding_from_merges(merges)
    rng = random.Random(0)
    never_seen = "".join(
        chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])) for _ in range(500)
    )
    texts = [
        "",
        " ",
        "\n",
        "\n\n\n\n",
        "\t\t \t\n  \r\n\r\n   ",
        "   trailing spaces   ",
        "\x00\x01\x7f",
        "日本語のテキスト",
        "e\u0301 a\u0300\u0323 combining",
        "👩\u200d👩\u200d👧 zero width joiner",
        "\ufeffbom",
        UNICODE,
        HELD_OUT,
        never_seen,
        "that's it's 'quoted' we'VE",
        "x" * 1000,
    ]
    for text in texts:
        ids = encoding.encode_ordinary(text)
        assert all(0 <= i < 256 + len(merges) for i in ids)
        assert encoding.decode(ids) == text
    eot = encoding.encode("a<|endoftext|>b", allowed_special="all")
    assert eot[1] == 256 + len(merges) == encoding.n_vocab - 1 and encoding.decode(eot) == "a<|endoftext|>b"


def test_deterministic_under_any_hash_seed():
    merges = bpe.learn_bpe(TRAIN, 257 + 200)
    assert bpe.learn_bpe(TRAIN, 257 + 200) == merges
    code = "import bpe, json, sys; print(json.dumps(bpe.learn_bpe(sys.stdin.buffer.read().decode(), 457)))"
    for seed in ("0", "1"):
        run = subprocess.run(
            [sys.executable, "-c", code],
            input=TRAIN.encode(),
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert [tuple(merge) for merge in json.loads(run.stdout)] == merges


def test_learned_merges_are_cached(tmp_path, monkeypatch):
    corpus = str(tmp_path / "corpus.txt")
    merges = bpe.learned_merges(corpus, TRAIN, 300)
    assert merges == bpe.learn_bpe(TRAIN, 300)
    assert os.listdir(tmp_path) == ["corpus.txt.bpe300.json"]  # and no .tmp left behind
    with open(f"{corpus}.bpe300.json") as f:
        cache = json.load(f)
    assert cache["sha256"] == hashlib.sha256(TRAIN.encode()).hexdigest() and cache["vocab_size"] == 300

    def learn_bpe(text, vocab_size):
        raise AssertionError("learned again")

    monkeypatch.setattr(bpe, "learn_bpe", learn_bpe)
    assert bpe.learned_merges(corpus, TRAIN, 300) == merges  # read back from the file, as tuples
    shutil.copy(f"{corpus}.bpe300.json", f"{corpus}.bpe301.json")  # a file of another size, renamed
    for text, vocab_size in ((HELD_OUT, 300), (TRAIN, 301), (TRAIN, 302)):  # learned again
        with pytest.raises(AssertionError, match="learned again"):
            bpe.learned_merges(corpus, text, vocab_size)
    monkeypatch.undo()
    assert bpe.learned_merges(corpus, HELD_OUT, 300) == bpe.learn_bpe(HELD_OUT, 300)
    with open(f"{corpus}.bpe300.json") as f:
        assert json.load(f)["sha256"] == hashlib.sha256(HELD_OUT.encode()).hexdigest()  # rewritten
    with open(f"{corpus}.bpe300.json", "w") as f:
        f.write('{"sha256": "')  # cut short
    assert bpe.learned_merges(corpus, HELD_OUT, 300) == bpe.learn_bpe(HELD_OUT, 300)
    unwritable = str(tmp_path / "no such folder" / "corpus.txt")
    assert bpe.learned_merges(unwritable, TRAIN, 300) == merges


@pytest.mark.parametrize("vocab_size", [0, 256, 65537])
def test_bad_vocab_sizes_raise(tmp_path, vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        bpe.learn_bpe(TRAIN, vocab_size)
    with pytest.raises(ValueError, match="vocab_size"):
        bpe.learned_merges(str(tmp_path / "corpus.txt"), TRAIN, vocab_size)

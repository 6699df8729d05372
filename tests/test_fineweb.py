"""fineweb.py: local files and a hub (a local HTTP server) into llm.c-format shards, checked token for token against
tiktoken run here directly; the shard reader against a reader and writer of llm.c's format written here from its
description; the same shards after kill -9 and the same command; a bad input of each kind."""

import base64
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import torch
from cli_checks import ROOT, one_line_error, run_script
from test_load_gpt2 import FileServer

import bpe
import fineweb
import gpt
import shards

# tiktoken's own pattern for GPT-2 (tiktoken_ext/openai_public.py), not gpt.py's rewrite of it
TIKTOKEN_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiktoken_encoding(ranks, name):
    return tiktoken.Encoding(name, pat_str=TIKTOKEN_GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


with open(os.path.join(ROOT, "data", "gpt2.tiktoken"), "rb") as f:
    GPT2 = tiktoken_encoding({base64.b64decode(token): int(rank) for token, rank in map(bytes.split, f)}, "ref")
with open(os.path.join(ROOT, "input.txt"), encoding="utf-8") as f:
    SHAKESPEARE = f.read()
# documents no slice of Shakespeare has: the separator's text inside a document (it stays text), spaces before
# whitespace and at the end (the word cache's slow cut), other scripts and spaces, an empty document
ODD = ["the <|endoftext|> token as text", "two  spaces, a tab\t and\n a space before a newline \n, end ",
       "naïve café, 日本語の文章, عربي, emoji 😀😀 and a\u00a0no-break\u3000space", "", "   ", "x"]


def documents(n, seed=0):
    rng = np.random.default_rng(seed)
    starts, lengths = rng.integers(0, len(SHAKESPEARE) - 3000, n), rng.integers(1, 3000, n)
    return [SHAKESPEARE[start:start + length] for start, length in zip(starts, lengths)]


def stream(docs, encoding=GPT2):
    """what the shards must hold: the separator, then encode_ordinary of the document, for every document"""
    return np.array([t for doc in docs for t in [encoding.eot_token] + encoding.encode_ordinary(doc)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(files, the documents of each): a parquet of several row groups with a null, a large_string parquet,
    JSONL with a blank line, a text file"""
    folder = tmp_path_factory.mktemp("corpus")
    docs = documents(60)
    a = docs[:25] + ODD
    pq.write_table(pa.table({"id": list(range(len(a) + 1)), "text": a[:10] + [None] + a[10:]}), folder / "a.parquet",
                   row_group_size=7)
    b = docs[25:40]
    pq.write_table(pa.table({"text": pa.array(b, pa.large_string())}), folder / "b.parquet")
    c = docs[40:59]
    lines = [json.dumps({"text": doc, "id": i}) for i, doc in enumerate(c)]
    (folder / "c.jsonl").write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n")
    (folder / "d.txt").write_text(docs[59])
    files = [str(folder / name) for name in ("a.parquet", "b.parquet", "c.jsonl", "d.txt")]
    return files, [a, b, c, [docs[59]]]


def prepare(out, *args):
    fineweb.main(["--out", str(out), *map(str, args)])
    return shards.read_meta(str(out))


def llmc_read(path):
    """(header, tokens) of an llm.c .bin file, read from the format's description: 256 little-endian int32, the
    first three magic, version, number of tokens; then the tokens, uint16 (20240520) or uint32 (20240801)."""
    with open(path, "rb") as f:
        data = f.read()
    header = struct.unpack("<256i", data[:1024])
    dtype = {20240520: "<u2", 20240801: "<u4"}[header[0]]
    return header, np.frombuffer(data[1024:], dtype=dtype)


def llmc_write(path, tokens, magic, version, dtype):
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", magic, version, len(tokens), *[0] * 253))
        f.write(np.asarray(tokens, dtype=dtype).tobytes())


def shard_bytes(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))
            if name.endswith(".bin")}


def check_shards(out, expected, magic=20240520):
    """Every shard's header (read here) and tokens against the expected stream, in order, val first; no leftovers."""
    meta = shards.read_meta(str(out))
    assert meta["complete"] and sorted(os.listdir(out)) == sorted([s["file"] for s in meta["shards"]] + ["meta.json"])
    position = 0
    for i, shard in enumerate(meta["shards"]):
        assert shard["file"] == f"{meta['name']}_{shard['split']}_{i:06d}.bin"
        header, tokens = llmc_read(os.path.join(out, shard["file"]))
        assert header[:3] == (magic, {20240520: 1, 20240801: 7}[magic], len(tokens)) and not any(header[3:])
        assert np.array_equal(tokens, expected[position:position + len(tokens)])
        assert shard["tokens"] == len(tokens) and shard["documents"] == np.count_nonzero(tokens == expected[0])
        position += len(tokens)
    assert position == len(expected) == meta["tokens"]
    return meta


# ----------------------------------------------------------------------------- local files

def test_local_files_become_shards_of_tiktokens_tokens_whatever_the_workers(corpus, tmp_path, capsys):
    files, per_file = corpus
    docs = [doc for docs in per_file for doc in docs]
    expected = stream(docs)
    assert np.count_nonzero(expected == 50256) == len(docs)  # "<|endoftext|>" in a document stayed text
    meta = prepare(tmp_path / "two", "--input", *files, "--shard_size", 3000, "--val_tokens", 4500, "--workers", 2)
    check_shards(tmp_path / "two", expected)
    assert [s["split"] for s in meta["shards"]][:3] == ["val", "val", "train"]
    assert [s["tokens"] for s in meta["shards"]][:3] == [3000, 1500, 3000]
    assert meta["documents"] == len(docs) and meta["tokenizer"]["kind"] == "gpt2" and meta["dtype"] == "uint16"
    out = capsys.readouterr().out
    assert "documents" in out and "tokens/s" in out and "ETA" in out and "peak memory" in out
    prepare(tmp_path / "one", "--input", *files, "--shard_size", 3000, "--val_tokens", 4500, "--workers", 1)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    # the same command again: nothing to do
    prepare(tmp_path / "one", "--input", *files, "--shard_size", 3000, "--val_tokens", 4500, "--workers", 1)
    assert "is complete" in capsys.readouterr().out
    meta = prepare(tmp_path / "capped", "--input", *files, "--shard_size", 3000, "--max_tokens", 7777, "--workers", 1)
    check_shards(tmp_path / "capped", expected[:7777])
    assert [s["tokens"] for s in meta["shards"]] == [3000, 3000, 1777]


def learned_encoding(text, vocab_size):
    """(merges, tiktoken's encoding of them built here) of a BPE bpe.py learns on text"""
    merges = bpe.learn_bpe(text, vocab_size)
    tokens = [bytes([b]) for b in range(256)]
    for a, b in merges:
        tokens.append(tokens[a] + tokens[b])
    return merges, tiktoken_encoding({token: rank for rank, token in enumerate(tokens)}, "learned")


def test_the_word_cache_is_encode_ordinary_on_every_kind_of_text():
    """fineweb's encoder caches the tokens of space-led words; strings built to break the cuts (every whitespace
    character, spaces before whitespace and at the ends, contractions, marks, digits) must come out as tiktoken's
    encode_ordinary gives them: with GPT-2's BPE, and with one learned on Python source, whose runs of whitespace are
    tokens (GPT-2 has none: there, cutting at every space would pass too)."""
    with open(os.path.join(ROOT, "gpt.py"), encoding="utf-8") as f:
        source = f.read()[:30000]
    merges, code_bpe = learned_encoding(source + source.replace("    ", " "), 400)  # indented by 4 and by 1
    for text, cut in (("x   y", 2), ("x\n \ny", 2)):  # a run of whitespace across a space not before a non-space
        assert code_bpe.encode_ordinary(text) != code_bpe.encode_ordinary(text[:cut]) + code_bpe.encode_ordinary(
            text[cut:])
    alphabet = list("     \t\n\r\x0b\x0c\x1c\x1d\x85\u00a0\u1680\u2000\u2028\u2029\u202f\u3000\u200b"
                    "aZéß日本ع0٣²'’sdmtlvre.,!?-_()\"#😀\u0301")
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 30))) for _ in range(4000)] + ODD + documents(20)
    texts += ["".join(rng.choice([" ", "  ", "\n", "\n    ", "\t", "x", "y."], rng.integers(0, 12)))
              for _ in range(3000)]  # dense in runs of whitespace with spaces inside and around them
    for kind, reference, dtype in (("gpt2", GPT2, "<u2"), ("bpe", code_bpe, "<u2")):
        fineweb.start_worker(("tiktoken", gpt.Tokenizer(kind, merges=merges).bpe, 0), np.dtype(dtype))
        encode = fineweb.ENCODE[0]
        for text in texts:
            assert np.frombuffer(encode([text])[0], dtype).tolist() == reference.encode_ordinary(text), (kind, text)


# ----------------------------------------------------------------------------- the format and the reader

def test_llm_c_shards_read_back_both_ways(tmp_path):
    rng = np.random.default_rng(0)
    small, large = rng.integers(0, 50257, 1000), rng.integers(0, 151669, 1000)  # GPT-2's, Qwen3's vocabulary
    llmc_write(tmp_path / "x_train_000001.bin", small, 20240520, 1, "<u2")
    llmc_write(tmp_path / "x_train_000002.bin", large, 20240801, 7, "<u4")
    a, b = (shards.read_shard(str(tmp_path / f"x_train_00000{i}.bin")) for i in (1, 2))
    assert isinstance(a, np.memmap) and a.dtype == np.uint16 and np.array_equal(a, small)
    assert b.dtype == np.uint32 and np.array_equal(b, large)
    shards.write_shard(str(tmp_path / "ours.bin"), large.astype(np.uint32))
    header, tokens = llmc_read(tmp_path / "ours.bin")
    assert header[:3] == (20240801, 7, 1000) and np.array_equal(tokens, large)
    shards.write_shard(str(tmp_path / "ours16.bin"), small.astype(np.uint16))
    assert llmc_read(tmp_path / "ours16.bin")[0][:3] == (20240520, 1, 1000)
    assert shards.shard_paths(str(tmp_path), "train") == [str(tmp_path / f"x_train_00000{i}.bin") for i in (1, 2)]
    assert shards.shard_paths(str(tmp_path), "val") == [] and shards.read_meta(str(tmp_path)) is None
    data = (tmp_path / "x_train_000001.bin").read_bytes()
    bad = {"truncated": data[:-2], "short": data[:100], "magic": struct.pack("<i", 1234) + data[4:],
           "version": data[:4] + struct.pack("<i", 2) + data[8:],
           "count": data[:8] + struct.pack("<i", 999) + data[12:]}
    messages = {"truncated": "truncated", "short": "shorter than", "magic": "magic number 1234",
                "version": "version 2", "count": "says 999 tokens"}
    for what, content in bad.items():
        (tmp_path / "bad.bin").write_bytes(content)
        with pytest.raises(ValueError, match=messages[what]):
            shards.read_shard(str(tmp_path / "bad.bin"))


def test_token_stream_windows_cross_shard_boundaries(tmp_path):
    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 65536, n) for n in (5, 0, 7, 1, 3)]
    paths = []
    for i, piece in enumerate(pieces):
        paths.append(str(tmp_path / f"s_train_{i:06d}.bin"))
        llmc_write(paths[-1], piece, *((20240801, 7, "<u4") if i == 2 else (20240520, 1, "<u2")))
    stream_ = shards.TokenStream(paths)
    whole = np.concatenate(pieces)
    assert len(stream_) == len(whole) == 16
    for start in range(17):
        for length in range(17 - start):
            window = stream_.window(start, length)
            assert window.dtype == np.int64 and np.array_equal(window, whole[start:start + length])
    for start, length in ((-1, 2), (10, 7), (17, 0)):
        with pytest.raises(IndexError):
            stream_.window(start, length)


# ----------------------------------------------------------------------------- other tokenizers

def test_a_vocabulary_over_65536_writes_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {f"w{i}": i for i in range(70000)} | {"[UNK]": 70000}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    rng = np.random.default_rng(2)
    docs = [" ".join(f"w{i}" for i in rng.integers(60000, 70000, rng.integers(1, 50))) + " w12 zz" for _ in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    meta = prepare(tmp_path / "out", "--input", tmp_path / "docs.jsonl", "--tokenizer", "hf", "--tokenizer_json",
                   tmp_path, "--shard_size", 500, "--workers", 2)
    expected = np.array([t for doc in docs for t in [70001] + tokenizer.encode(doc, add_special_tokens=False).ids])
    assert expected.max() >= 65536
    check_shards(tmp_path / "out", expected, magic=20240801)
    assert meta["dtype"] == "uint32" and meta["tokenizer"]["separator_token"] == "<|endoftext|>"
    assert meta["tokenizer"]["vocab_size"] == 70002 and len(meta["tokenizer"]["sha256"]) == 64
    # a tokenizer whose post-processor puts a BOS before every text (Llama 3's way): that BOS separates documents
    tokenizer.add_special_tokens(["<s>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 70002)])
    assert fineweb.hf_separator(tokenizer, "tokenizer.json", None) == (70002, "<s>")
    assert fineweb.hf_separator(tokenizer, "tokenizer.json", "<|endoftext|>") == (70001, "<|endoftext|>")


def test_a_learned_bpe_from_a_checkpoint_or_bpe_json(corpus, tmp_path):
    files, per_file = corpus
    docs = [doc for docs in per_file for doc in docs]
    merges, learned = learned_encoding(SHAKESPEARE[:20000], 300)
    expected = stream(docs, learned)
    torch.save({"model_type": "gpt", "tokenizer": {"kind": "bpe", "chars": "", "merges": merges}}, tmp_path / "ckpt.pt")
    (tmp_path / "bpe.json").write_text(json.dumps({"vocab_size": 300, "merges": merges}))
    for source in ("ckpt.pt", "bpe.json"):
        meta = prepare(tmp_path / source.split(".")[0], "--input", *files, "--tokenizer", "bpe", "--bpe",
                       tmp_path / source, "--shard_size", 4000, "--workers", 1)
        check_shards(tmp_path / source.split(".")[0], expected)
        rebuilt = gpt.Tokenizer(meta["tokenizer"]["kind"], merges=meta["tokenizer"]["merges"])
        assert rebuilt.vocab_size == meta["tokenizer"]["vocab_size"] == 256 + len(merges) + 1
    assert shard_bytes(tmp_path / "ckpt") == shard_bytes(tmp_path / "bpe")


# ----------------------------------------------------------------------------- resume

def resumed(last, output):
    """whether a run's output says it resumed after shard `last` at the position that shard recorded"""
    index, shard = last
    end = shard["end"]
    return f"resuming after shard {index} (" in output and f"input {end[0]}, document {end[1]}, token {end[2]}" in (
        output)


def test_killed_at_any_moment_the_same_command_gives_the_same_shards(tmp_path):
    docs = documents(700, seed=3)  # ~300k tokens: 150 shards of 2,000
    pq.write_table(pa.table({"text": docs}), tmp_path / "big.parquet", row_group_size=50)
    command = ["fineweb.py", "--input", str(tmp_path / "big.parquet"), "--out", str(tmp_path / "out"),
               "--shard_size", "2000", "--workers", "2"]
    last = None  # the last finished shard at the previous kill
    for kill_after in (3, 40):  # shards finished before the kill
        process = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            meta = shards.read_meta(str(tmp_path / "out"))
            if meta and len(meta["shards"]) >= kill_after:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        output = process.communicate()[0]
        if last:
            assert resumed(last, output), output
        meta = shards.read_meta(str(tmp_path / "out"))
        assert not meta["complete"] and len(meta["shards"]) >= kill_after, output
        last = len(meta["shards"]) - 1, meta["shards"][-1]
    result = run_script(*command)
    assert result.returncode == 0, result.stderr
    assert resumed(last, result.stdout) and last[1]["end"][1] > 0  # not from the first document
    check_shards(tmp_path / "out", stream(docs))
    prepare(tmp_path / "whole", *command[1:3], "--shard_size", 2000, "--workers", 1)
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "whole")


# ----------------------------------------------------------------------------- the hub

@pytest.fixture
def hub(corpus, monkeypatch):
    """A local stand-in for huggingface.co serving dataset someone/corpus: its card's configs, the file tree in two
    pages (each linking the next), and its files at a commit; it notes each request and its Authorization."""
    files, _ = corpus
    revision, base = "0123abcd", "/api/datasets/someone/corpus"
    card = {"configs": [{"config_name": "default", "data_files": "data/*.parquet"},
                        {"config_name": "sample-tiny", "data_files": [{"split": "train", "path": "sample/tiny/*"}]}]}
    tree = f"{base}/tree/{revision}/sample/tiny?recursive=true"
    entries = [{"type": "file", "path": f"sample/tiny/{i:03d}.parquet", "size": os.path.getsize(files[i])}
               for i in (0, 1)] + [{"type": "file", "path": "sample/tiny/deeper/x.parquet", "size": 1},
                                   {"type": "file", "path": "sample/tiny/README.md", "size": 1}]

    class Hub(FileServer):
        files, seen, tokens, pages = {}, [], [], {}

        def do_GET(self):
            self.tokens.append(self.headers.get("Authorization"))
            if self.path not in self.pages:
                return FileServer.do_GET(self)
            self.seen.append((self.path, None))
            body, next_page = self.pages[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if next_page:
                self.send_header("Link", f'<{address}{next_page}>; rel="next"')
            self.end_headers()
            self.wfile.write(body)

    Hub.pages = {base: (json.dumps({"id": "someone/corpus", "sha": revision, "cardData": card}).encode(), None),
                 tree: (json.dumps(entries[:1] + entries[3:]).encode(), tree + "&cursor=2"),
                 tree + "&cursor=2": (json.dumps(entries[1:3]).encode(), None)}
    for i in (0, 1):
        with open(files[i], "rb") as f:
            Hub.files[f"/datasets/someone/corpus/resolve/{revision}/sample/tiny/{i:03d}.parquet"] = f.read()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", address)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    yield Hub
    httpd.shutdown()
    httpd.server_close()


HUB_COMMAND = ["--dataset", "someone/corpus", "--subset", "sample-tiny", "--shard_size", 2500, "--workers", 1]


def test_a_hub_subset_is_listed_downloaded_one_file_at_a_time_and_deleted(corpus, hub, tmp_path, capsys):
    _, per_file = corpus
    expected = stream(per_file[0] + per_file[1])  # the two parquet files
    meta = prepare(tmp_path / "out", *HUB_COMMAND)
    check_shards(tmp_path / "out", expected)
    assert not os.path.exists(tmp_path / "out" / "downloads")  # each parquet went once its tokens were in shards
    assert meta["name"] == "corpus" and meta["source"]["revision"] == "0123abcd"
    assert [item["path"] for item in meta["inputs"]] == ["sample/tiny/000.parquet", "sample/tiny/001.parquet"]
    requested = [path for path, _ in hub.seen]
    assert not any("deeper" in path or "README" in path for path in requested)  # * stays inside its folder
    assert set(hub.tokens) == {"Bearer hf_secret"}
    assert "downloaded" in capsys.readouterr().out
    prepare(tmp_path / "kept", *HUB_COMMAND, "--keep_downloads")
    assert sorted(os.listdir(tmp_path / "kept" / "downloads")) == ["sample_tiny_000.parquet", "sample_tiny_001.parquet"]


def test_a_hub_run_cut_short_resumes_without_listing_or_downloading_again(corpus, hub, tmp_path, monkeypatch):
    commit, calls = shards.Shards.commit, []

    def crash_after_the_first_file(self, split, end):
        commit(self, split, end)
        calls.append(end)
        if end[0] >= 1:  # the first parquet is all in shards, and deleted
            raise RuntimeError("the machine went down")

    monkeypatch.setattr(shards.Shards, "commit", crash_after_the_first_file)
    with pytest.raises(RuntimeError, match="went down"):
        prepare(tmp_path / "out", *HUB_COMMAND)
    assert os.listdir(tmp_path / "out" / "downloads") == ["sample_tiny_001.parquet"]
    monkeypatch.setattr(shards.Shards, "commit", commit)
    hub.seen.clear()
    prepare(tmp_path / "out", *HUB_COMMAND)
    assert [path for path, _ in hub.seen] == []  # the listing is in meta.json, the second file already here
    prepare(tmp_path / "whole", *HUB_COMMAND)
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "whole")


# ----------------------------------------------------------------------------- bad input

def refused(capsys, out, *args):
    """The one `error:` line of a refused run, which left no shard being written behind."""
    with pytest.raises(SystemExit) as exit_:
        prepare(out, *args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")] if os.path.isdir(out) else True
    return err


def test_bad_input_of_each_kind_is_one_error_line(corpus, tmp_path, capsys, monkeypatch):
    files, _ = corpus
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    pq.write_table(pa.table({"content": ["a document"]}), tmp_path / "other.parquet")
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text("".join(json.dumps({"text": SHAKESPEARE[i:i + 900]}) + "\n"
                                                   for i in range(0, 360000, 900)) + "{not json\n")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    torch.save({"tokenizer": {"kind": "char", "chars": "ab", "merges": []}}, tmp_path / "char.pt")
    BPE = ["--tokenizer", "bpe", "--bpe"]
    cases = {
        "has no rows": ["--input", tmp_path / "empty.parquet"],
        "has no column 'text' (it has content)": ["--input", tmp_path / "other.parquet"],
        "is not UTF-8 text (byte 3)": ["--input", tmp_path / "latin1.txt"],
        "no such file": ["--input", tmp_path / "nothing.jsonl"],
        "not a readable train.py checkpoint": ["--input", files[3], *BPE, tmp_path / "ckpt.pt"],
        "its tokenizer is 'char'": ["--input", files[3], *BPE, tmp_path / "char.pt"],
        "--tokenizer hf needs --tokenizer_json": ["--input", files[3], "--tokenizer", "hf"],
    }
    for message, args in cases.items():
        assert message in refused(capsys, tmp_path / "out", *args), message
        assert shards.shard_paths(str(tmp_path / "out"), "val") == []  # refused before the first token
    # a bad line deep in a file: the shards before it stay, finished; the one being filled is not written
    err = refused(capsys, tmp_path / "broken", "--input", tmp_path / "broken.jsonl", "--shard_size", 4000,
                  "--workers", 2)
    meta = shards.read_meta(str(tmp_path / "broken"))
    assert "broken.jsonl line 401 is not JSON" in err and len(meta["shards"]) >= 2 and not meta["complete"]
    written = sorted(name for name in os.listdir(tmp_path / "broken") if name.endswith(".bin"))
    assert written == sorted(shard["file"] for shard in meta["shards"])
    # a resumed run must be the same command
    assert "other settings (shard_size: 4000 there, 5000 here)" in refused(
        capsys, tmp_path / "broken", "--input", tmp_path / "broken.jsonl", "--shard_size", 5000)
    # the hub: unreachable, a subset it does not have
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert "cannot reach the hub at http://127.0.0.1:9" in refused(capsys, tmp_path / "hub", "--dataset", "a/b")
    for option, value, message in (("--shard_size", 0, "0 is not an integer in [1, "),
                                   ("--workers", 0, "0 is not an integer >= 1"),
                                   ("--val_tokens", -1, "-1 is not an integer >= 0"), ("--max_tokens", 2.5, "invalid"),
                                   ("--shard_size", "3e9", "not an integer in [1, 2147483647]")):
        with pytest.raises(SystemExit) as exit_:
            prepare(tmp_path / "opt", "--input", files[3], option, value)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    result = run_script("fineweb.py", "--input", str(tmp_path / "other.parquet"), "--out", str(tmp_path / "cli"))
    assert "--text_column" in one_line_error(result)


def test_a_hub_subset_it_does_not_have(hub, tmp_path, capsys):
    err = refused(capsys, tmp_path / "out", "--dataset", "someone/corpus", "--subset", "sample-huge")
    assert "has no subset 'sample-huge': choose one of default, sample-tiny" in err


def test_a_full_disk_is_one_error_line_and_the_same_command_continues(corpus, tmp_path, capsys, monkeypatch):
    files, per_file = corpus
    fsync, writes = os.fsync, []

    def full_after_two_shards(fd):
        writes.append(fd)
        if len(writes) > 5:  # meta.json at the start, then each shard and meta.json
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(fineweb.os, "fsync", full_after_two_shards)
    command = ["--input", *files, "--shard_size", 3000, "--workers", 1]
    assert "no space left on the disk of" in refused(capsys, tmp_path / "out", *command)
    assert [s["tokens"] for s in shards.read_meta(str(tmp_path / "out"))["shards"]] == [3000, 3000]
    assert sorted(os.listdir(tmp_path / "out")) == ["corpus_train_000001.bin", "corpus_val_000000.bin", "meta.json"]
    monkeypatch.setattr(fineweb.os, "fsync", fsync)
    prepare(tmp_path / "out", *command)
    check_shards(tmp_path / "out", stream([doc for docs in per_file for doc in docs]))


def test_a_real_full_disk_on_a_tiny_tmpfs(corpus, tmp_path, capsys):
    files, _ = corpus
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)],
                                           capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): test_a_full_disk_is_one_error_line covers ENOSPC")
    try:
        err = refused(capsys, mount / "out", "--input", *files, "--shard_size", 5000, "--workers", 1)
        meta = shards.read_meta(str(mount / "out"))
        assert "no space left on the disk of" in err and 1 <= len(meta["shards"]) < 6
        names = sorted((n for n in os.listdir(mount / "out") if n.endswith(".bin")), key=lambda n: n[-10:])
        assert names[:len(meta["shards"])] == [s["file"] for s in meta["shards"]]
        for name in names:  # whole shards only (one renamed before a meta.json that did not fit is whole too)
            assert llmc_read(mount / "out" / name)[0][2] == 5000
    finally:
        subprocess.run(["umount", str(mount)], check=True)

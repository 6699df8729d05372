"""
shards.py - token shards in llm.c's format: read (train.py's side, numpy only), written atomically, filled in order.

    header   256 int32: magic 20240520, version 1, number of tokens; then uint16 tokens (ids below 65,536)
             or magic 20240801, version 7, number of tokens; then uint32 tokens (llm.c's LLaMA 3 layout)

fineweb.py writes a folder of them (NAME_val_000000.bin, NAME_train_000001.bin, ... and meta.json); data.py reads
them for train.py with read_shard / shard_paths / read_meta / TokenStream. So llm.c's and modded-nanogpt's shards
train here and these train there.
"""
import glob
import json
import os

import numpy as np

HEADER_INTS = 256  # llm.c's header: 256 int32, of which the first three are used
HEADER_BYTES = 4 * HEADER_INTS
# llm.c's dev/data/data_common.py HEADERS_INFO: magic -> (version, token dtype)
FORMATS = {20240520: (1, np.dtype("<u2")), 20240801: (7, np.dtype("<u4"))}
MAGIC = {np.dtype("<u2"): 20240520, np.dtype("<u4"): 20240801}
META = "meta.json"


# ----------------------------------------------------------------------------- reading shards (train.py's side)

def read_shard(path):
    """The tokens of an llm.c-format shard as a read-only np.memmap (uint16 or uint32), never read whole. The header
    is checked: a known magic number, its version, and a token count that matches the file's size."""
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size:,} bytes, shorter than the 1,024-byte header of an llm.c token shard")
    magic, version, count = (int(x) for x in np.fromfile(path, dtype="<i4", count=3))
    if magic not in FORMATS:
        raise ValueError(f"{path}: magic number {magic}, not an llm.c token shard (20240520 or 20240801)")
    expected_version, dtype = FORMATS[magic]
    if version != expected_version:
        raise ValueError(f"{path}: version {version} with magic {magic}; llm.c writes version {expected_version}")
    if count < 0 or size != HEADER_BYTES + count * dtype.itemsize:
        raise ValueError(f"{path}: the header says {count:,} tokens ({HEADER_BYTES + count * dtype.itemsize:,} "
                         f"bytes) but the file has {size:,} bytes: truncated or not finished, prepare it again")
    if count == 0:
        return np.zeros(0, dtype)  # mmap cannot map nothing
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def shard_paths(folder, split):
    """The shards of split "train" or "val" in `folder` (NAME_split_NNNNNN.bin), in order; [] if there are none."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), f"*_{split}_*.bin")))


def read_meta(folder):
    """meta.json of a folder this script prepared, or None (llm.c's and modded-nanogpt's shards have none: GPT-2)."""
    path = os.path.join(folder, META)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None


class TokenStream:
    """The shards of one split as one sequence of tokens, in order; window() may cross shard boundaries."""

    def __init__(self, paths):
        self.shards = [read_shard(path) for path in paths]
        # starts[i]: the position of shard i's first token in the stream; starts[-1]: the number of tokens
        self.starts = np.cumsum([0] + [len(shard) for shard in self.shards])

    def __len__(self):
        return int(self.starts[-1])

    def window(self, start, length):
        """tokens[start:start + length] of the stream as int64 (a copy)."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"tokens {start}:{start + length} of a stream of {len(self):,}")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1  # the shard holding token `start`
        filled = 0
        while filled < length:
            offset = start + filled - int(self.starts[i])
            take = min(length - filled, len(self.shards[i]) - offset)
            out[filled:filled + take] = self.shards[i][offset:offset + take]
            filled += take
            i += 1
        return out


# ----------------------------------------------------------------------------- writing shards

class DataError(ValueError):
    """Bad input, an unreachable hub, a setting that cannot work: one `error:` line, exit status 2."""


def write_atomic(path, write):
    """write(file) into path + ".tmp", flushed to disk, then renamed to path: readers, and a later run after a
    kill, see the old file or the whole new one. The temporary file never outlives a failure."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_shard(path, tokens):
    """tokens (a uint16 or uint32 array) as an llm.c-format shard at path, atomically."""
    dtype = tokens.dtype.newbyteorder("<")
    if len(tokens) >= 2**31:
        raise ValueError(f"{len(tokens):,} tokens do not fit llm.c's int32 token count")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC[dtype], FORMATS[MAGIC[dtype]][0], len(tokens)
    body = np.ascontiguousarray(tokens, dtype=dtype)
    write_atomic(path, lambda f: (f.write(header.tobytes()), f.write(memoryview(body))))


def write_meta(folder, meta):
    write_atomic(os.path.join(folder, META), lambda f: f.write(json.dumps(meta, indent=1).encode()))

# ----------------------------------------------------------------------------- shards in order

class Shards:
    """Tokens in stream order into shards: the first val_tokens to val shards, then train shards, every shard
    shard_size tokens but the last, max_tokens in all. Each finished shard is recorded in meta with the position
    (input, document, token) of the first token not in it, which is where a resumed run starts reading."""

    def __init__(self, out, meta, dtype, on_commit):
        self.out, self.meta, self.on_commit = out, meta, on_commit
        self.buffer = np.empty(min(meta["shard_size"], meta["max_tokens"] or meta["shard_size"]), dtype=dtype)
        self.fill, self.documents = 0, 0

    def committed(self):
        return sum(shard["tokens"] for shard in self.meta["shards"])

    def capacity(self):
        """(split, tokens) of the shard being filled; tokens is 0 once max_tokens are in shards."""
        done, meta = self.committed(), self.meta
        left = meta["max_tokens"] - done if meta["max_tokens"] else meta["shard_size"]
        if done < meta["val_tokens"]:
            return "val", min(meta["shard_size"], meta["val_tokens"] - done, left)
        return "train", min(meta["shard_size"], left)

    def add(self, tokens, lengths, info):
        """Adds one task's tokens; returns True once max_tokens are in finished shards."""
        i, first, _, skip = info
        ends = np.cumsum(lengths)  # ends[j]: where document j's tokens end in `tokens`
        starts = (ends - lengths)[lengths > 0]  # where each document with tokens starts
        position = skip  # tokens[:skip] are in an earlier run's shards
        while position < len(tokens):
            split, capacity = self.capacity()
            take = min(capacity - self.fill, len(tokens) - position)
            self.buffer[self.fill:self.fill + take] = tokens[position:position + take]
            self.documents += int(np.count_nonzero((starts >= position) & (starts < position + take)))
            self.fill += take
            position += take
            if self.fill == capacity:
                j = int(np.searchsorted(ends, position, side="right"))  # the document holding the next token
                offset = position - int(ends[j] - lengths[j]) if j < len(lengths) else 0
                self.commit(split, self.normalized((i, first + j, offset)))
                if self.capacity()[1] == 0:
                    return True
        return False

    def normalized(self, end):
        """(input + 1, 0, 0) for the position just past an input's last document, when its count is known."""
        i, document, token = end
        return (i + 1, 0, 0) if token == 0 and self.meta["inputs"][i].get("documents") == document else end

    def commit(self, split, end):
        meta = self.meta
        name = f"{meta['name']}_{split}_{len(meta['shards']):06d}.bin"
        write_shard(os.path.join(self.out, name), self.buffer[:self.fill])
        meta["shards"].append({"file": name, "split": split, "tokens": self.fill, "documents": self.documents,
                               "end": list(end)})
        meta["tokens"] = self.committed()
        meta["documents"] = sum(shard["documents"] for shard in meta["shards"])
        write_meta(self.out, meta)
        self.fill, self.documents = 0, 0
        self.on_commit(end)

    def finish(self):
        """The last, shorter shard, and meta marked complete."""
        if self.fill:
            self.commit(self.capacity()[0], (len(self.meta["inputs"]), 0, 0))
        self.meta["complete"] = True
        write_meta(self.out, self.meta)


def start_position(out, meta, previous):
    """Where to start: after the last finished shard of the same preparation in `out`, or at the beginning.
    Shards a kill left unrecorded (renamed before meta.json was) are written again, byte for byte the same."""
    if previous is None:
        if shard_paths(out, "train") or shard_paths(out, "val"):
            raise DataError(f"--out {out} holds token shards with no {META}: choose an empty folder")
        return (0, 0, 0)
    differs = [key for key in meta["command"] if previous.get("command", {}).get(key) != meta["command"][key]]
    if differs:
        key = differs[0]
        raise DataError(f"--out {out} holds a preparation with other settings ({key}: "
                        f"{json.dumps(previous.get('command', {}).get(key))[:80]} there, "
                        f"{json.dumps(meta['command'][key])[:80]} here): run the same command to continue it, "
                        f"or choose another --out")
    for shard in previous["shards"]:
        try:
            ok = len(read_shard(os.path.join(out, shard["file"]))) == shard["tokens"]
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{os.path.join(out, shard['file'])} is missing or damaged: prepare again in a new --out")
    meta.update({key: previous[key] for key in ("source", "inputs", "shards", "tokens", "documents")})
    for tmp in glob.glob(os.path.join(glob.escape(out), "*.tmp")):
        os.remove(tmp)  # a shard cut short by a kill
    return tuple(previous["shards"][-1]["end"]) if previous["shards"] else (0, 0, 0)


"""
fineweb_inputs.py - what fineweb.py tokenizes: local parquet (pyarrow, one row group at a time), JSONL and text
files cut into tasks of about CHUNK_BYTES of text, and a hub dataset's parquet files listed through the hub's API
(HF_ENDPOINT, HF_TOKEN). fineweb.py runs it; docs/fineweb.md has the details.
"""
import codecs
import json
import os
import re

import numpy as np

from shards import DataError

DEFAULT_DATASET, DEFAULT_SUBSET = "HuggingFaceFW/fineweb-edu", "sample-10BT"
CHUNK_BYTES = 1 << 18  # text per task: passing it costs ~0.1% of tokenizing it, and the workers share the work evenly


def document_texts(task):
    """The texts of a task's documents, None for a row without one (a null, a blank JSONL line)."""
    mode, path, first, blob, offsets, valid = task
    texts = []
    for i in range(len(offsets) - 1):
        raw = blob[offsets[i]:offsets[i + 1]]
        where = {"parquet": f" row {first + i}", "jsonl": f" line {first + i + 1}", "text": ""}[mode]
        if (valid is not None and not valid[i]) or (mode == "jsonl" and not raw.strip()):
            texts.append(None)
            continue
        try:
            text = raw.decode("utf-8")
            if mode == "jsonl":
                record = json.loads(text)
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{path}{where}: no \"text\" string field")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}{where} is not UTF-8 text (byte {err.start}): convert it to UTF-8") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}{where} is not JSON ({err})") from None
        texts.append(text)
    return texts


# ----------------------------------------------------------------------------- reading the input

def input_kind(path):
    name = path.lower()
    return "parquet" if name.endswith(".parquet") else "jsonl" if name.endswith((".jsonl", ".ndjson")) else "text"


def check_input(path, column):
    """What could fail later, checked before the first token: the file is there and, for parquet, has rows and a
    text column; a JSONL's first record has a "text" field; a text file is UTF-8."""
    if not os.path.isfile(path):
        raise DataError(f"--input {path}: no such file")
    kind = input_kind(path)
    if kind == "parquet":
        text_column(path, column)
    elif kind == "jsonl":
        with open(path, "rb") as f:
            line = next((line for line in f if line.strip()), None)
        if line is None:
            raise DataError(f"{path} holds no JSON lines")
        document_texts(("jsonl", path, 0, line, [0, len(line)], None))
    else:
        decoder = codecs.getincrementaldecoder("utf-8")()
        with open(path, "rb") as f:
            done = 0
            for block in iter(lambda: f.read(1 << 24), b""):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    raise DataError(f"{path} is not UTF-8 text (byte {done + err.start}): convert it to UTF-8, or "
                                    f"give its text as parquet or JSONL") from None
                done += len(block)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise DataError(f"{path} is not UTF-8 text (it ends inside a character)") from None


def text_column(path, column):
    """The opened pyarrow ParquetFile, checked to have rows and a string column `column`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path} is not a readable parquet file ({err})") from None
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise DataError(f"{path} has no column {column!r} (it has {', '.join(schema.names)}): pick one with "
                        f"--text_column")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {column!r} holds {kind}, not text: pick another with --text_column")
    if parquet.metadata.num_rows == 0:
        raise DataError(f"{path} has no rows")
    return parquet


def parquet_tasks(path, column, first_doc):
    """(task, fraction of the file read) from row first_doc on, one row group in memory at a time."""
    import pyarrow as pa
    parquet = text_column(path, column)
    rows, total = 0, parquet.metadata.num_rows
    for group in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        if rows + n > first_doc:
            array = parquet.read_row_group(group, columns=[column]).column(0).combine_chunks()
            # a string column's buffers: validity, offsets (int32; int64 for large strings), the UTF-8 bytes
            _, offset_buffer, data = array.buffers()
            width = np.int64 if pa.types.is_large_string(array.type) else np.int32
            offsets = np.frombuffer(offset_buffer, dtype=width)[array.offset:array.offset + n + 1].astype(np.int64)
            valid = np.asarray(array.is_valid()) if array.null_count else None
            data = memoryview(data if data is not None else b"")
            a = max(first_doc - rows, 0)
            while a < n:  # the rows of about CHUNK_BYTES of text, at least one
                b = max(a + 1, int(np.searchsorted(offsets, offsets[a] + CHUNK_BYTES, side="right")) - 1)
                task = ("parquet", path, rows + a, bytes(data[offsets[a]:offsets[b]]), offsets[a:b + 1] - offsets[a],
                        None if valid is None else valid[a:b])
                yield task, (rows + b) / total
                a = b
        rows += n


def jsonl_tasks(path, first_doc):
    size = max(os.path.getsize(path), 1)
    with open(path, "rb") as f:
        for _ in range(first_doc):
            f.readline()
        first, lines, length = first_doc, [], 0
        for line in f:
            lines.append(line)
            length += len(line)
            if length >= CHUNK_BYTES:
                yield jsonl_task(path, first, lines), f.tell() / size
                first, lines, length = first + len(lines), [], 0
        if lines:
            yield jsonl_task(path, first, lines), 1.0


def jsonl_task(path, first, lines):
    return "jsonl", path, first, b"".join(lines), np.cumsum([0] + [len(line) for line in lines]), None


def text_tasks(path, first_doc):
    if first_doc == 0:
        with open(path, "rb") as f:
            blob = f.read()
        yield ("text", path, 0, blob, [0, len(blob)], None), 1.0


def tasks_of(inputs, start, open_input, column):
    """(info, task) for the documents from position start = (input, document, token) on; info: (input, first
    document, fraction of the input read, tokens to skip at its start: those an earlier run put in shards)."""
    first_input, first_doc, skip = start
    for i in range(first_input, len(inputs)):
        path = open_input(i)
        doc = first_doc if i == first_input else 0
        kind = input_kind(path)
        if kind == "parquet":
            inputs[i]["documents"] = text_column(path, column).metadata.num_rows  # tells when a file is done
            tasks = parquet_tasks(path, column, doc)
        else:
            tasks = jsonl_tasks(path, doc) if kind == "jsonl" else text_tasks(path, doc)
        for task, fraction in tasks:
            yield (i, task[2], fraction, skip if (i, task[2]) == (first_input, first_doc) else 0), task


# ----------------------------------------------------------------------------- the hub

def hub_endpoint():
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_headers():
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def hub_get(url, timeout):
    """A hub API answer: (parsed JSON, the next page's URL or None)."""
    import requests
    try:
        response = requests.get(url, headers=hub_headers(), timeout=timeout)
    except requests.RequestException as err:
        raise DataError(f"cannot reach the hub at {hub_endpoint()} ({type(err).__name__}): check the network "
                        f"(HF_ENDPOINT sets a mirror), or prepare local files with --input") from None
    if response.status_code in (401, 403):
        raise DataError(f"{url} answered {response.status_code}: a gated or private dataset? accept its terms on "
                        f"huggingface.co and set HF_TOKEN to a token")
    if response.status_code == 404:
        raise DataError(f"{url} answered 404: is the dataset's name right?")
    if not response.ok:
        raise DataError(f"{url} answered {response.status_code}: try again later")
    try:
        return response.json(), response.links.get("next", {}).get("url")
    except ValueError:
        raise DataError(f"{url} did not answer JSON: is HF_ENDPOINT a hub?") from None


def data_file_patterns(card, dataset, subset, split):
    """The file patterns of a subset's split, from the dataset card's `configs` (the hub returns it as cardData):
    FineWeb-Edu's sample-10BT is sample/10BT/*. A dataset without configs: all its parquet files."""
    configs = card.get("configs") or []
    if not configs:
        if subset:
            raise DataError(f"{dataset} names no subsets in its card: leave out --subset to take all its parquet")
        return ["**"]
    names = [config.get("config_name") for config in configs]
    if subset is None:
        default = [config for config in configs if config.get("default")] or [configs[0]]
        subset = default[0].get("config_name")
    if subset not in names:
        raise DataError(f"{dataset} has no subset {subset!r}: choose one of {', '.join(map(str, names))}")
    config = configs[names.index(subset)]
    files = config.get("data_files") or []
    if isinstance(files, (str, dict)):
        files = [files]
    entries = [entry if isinstance(entry, dict) else {"split": "train", "path": entry} for entry in files]
    splits = [entry.get("split", "train") for entry in entries]
    patterns = [p for entry in entries if entry.get("split", "train") == split
                for p in ([entry["path"]] if isinstance(entry["path"], str) else entry["path"])]
    if not patterns:
        raise DataError(f"subset {subset!r} of {dataset} has no split {split!r}: it has {', '.join(set(splits))}")
    data_dir = config.get("data_dir")
    return [f"{data_dir}/{p}" if data_dir else p for p in patterns]


def glob_regex(pattern):
    """The hub's file patterns: * and ? stay inside a folder, ** crosses folders."""
    parts = re.split(r"(\*\*/?|\*|\?)", pattern)
    wild = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(part, re.escape(part)) for part in parts) + r"\Z")


def hub_files(dataset, subset, split, timeout=30):
    """(revision, files): the commit the listing was made at and the parquet files of the subset's split
    [{"path", "size"}], listed through the hub's API (the tree is paged: each page links the next)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset):
        raise DataError(f"--dataset {dataset!r} is not a hub name like {DEFAULT_DATASET}")
    info, _ = hub_get(f"{hub_endpoint()}/api/datasets/{dataset}", timeout)
    revision = info.get("sha") or "main"
    files = {}
    for pattern in data_file_patterns(info.get("cardData") or {}, dataset, subset, split):
        folder = re.split(r"[*?\[]", pattern)[0].rpartition("/")[0]
        url = f"{hub_endpoint()}/api/datasets/{dataset}/tree/{revision}" + (f"/{folder}" if folder else "")
        url += "?recursive=true"
        regex = glob_regex(pattern)
        while url:
            entries, url = hub_get(url, timeout)
            for entry in entries:
                path = entry.get("path", "")
                if entry.get("type") == "file" and path.endswith(".parquet") and regex.match(path):
                    files[path] = {"path": path, "size": entry.get("size", -1)}
    if not files:
        raise DataError(f"no parquet files in {dataset} for subset {subset!r}, split {split!r}")
    return revision, [files[path] for path in sorted(files)]

"""The shipped data files are the verified ones listed in data/SOURCES.md."""

import hashlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = {
    "shakespeare.txt": "input.txt",
    "gpt2.tiktoken": "data/gpt2.tiktoken",
    "sms_spam.tsv": "data/sms_spam.tsv",
    "instruction-data.json": "data/instruction-data.json",
}


def test_checksums_match_the_provenance_table():
    with open(os.path.join(ROOT, "data", "SOURCES.md")) as f:
        table = f.read()
    expected = dict(re.findall(r"^\| ([\w.-]+)[^|]*\| [\d,]+ \| ([0-9a-f]{64}) \|$", table, flags=re.MULTILINE))
    for name, path in SHIPPED.items():
        with open(os.path.join(ROOT, path), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == expected[name], path

"""The shipped data files are the verified ones listed in data/SOURCES.md; data.bounded, the range check of every
script's numeric options."""

import argparse
import hashlib
import os
import re

import pytest

import data

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


def test_bounded_checks_the_range_and_names_it():
    bounded = data.bounded  # every script's numeric options
    assert bounded(int, 1)("3") == 3 and bounded(float, 0, 1, high_open=True)("0") == 0.0
    assert bounded(int, 0)("1" + "0" * 400) == 10**400  # a huge integer is in range, not an OverflowError
    assert bounded(float, high=2)("-1e300") == -1e300 and bounded(int, 1).__name__ == "int"
    for convert, bounds, text, message in [
        (float, {"low": 0, "low_open": True}, "0", "0 is not a finite number > 0"),
        (float, {"low": 0, "low_open": True}, "inf", "inf is not a finite number > 0"),
        (float, {"low": 0, "high": 1, "high_open": True}, "1", "1 is not a finite number in [0, 1)"),
        (int, {"low": 1, "high": 8}, "9", "9 is not an integer in [1, 8]"),
        (float, {"high": 2, "high_open": True}, "2", "2 is not a finite number < 2"),
        (int, {"high": 2}, "3", "3 is not an integer <= 2"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
            bounded(convert, **bounds)(text)
    with pytest.raises(ValueError):  # argparse's own "invalid float value"
        bounded(float, 0)("zero")

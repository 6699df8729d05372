"""Running the project's scripts as a user does, and reading the one line they print for bad input."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args):
    """python *args from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, *args], capture_output=True, check=False, text=True, cwd=ROOT, timeout=300)


def one_line_error(result):
    """The single `error: ` line of a run refused for bad input (exit status 2, no traceback)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]

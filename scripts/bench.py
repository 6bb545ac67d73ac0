#!/usr/bin/env python3
"""Thin wrapper: `python scripts/bench.py MODEL [--clients 1,4] [--compare URL] ...` is `lm bench`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="scripts/bench.py")

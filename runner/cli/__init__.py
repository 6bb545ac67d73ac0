"""The `lm` command line."""

from runner.cli.main import app, main

__all__ = ["app", "main"]

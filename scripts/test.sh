#!/usr/bin/env bash
# Sets up lm with its test dependencies and runs the whole test suite (README's second command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
./install.sh --test --no-models
exec .venv/bin/python -m pytest -q "$@"

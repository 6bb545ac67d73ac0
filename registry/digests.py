"""sha256 digests as Ollama writes them, checked strictly because they become file names."""

from __future__ import annotations

import re

# Only lowercase hex: a digest we accept is exactly one file name, never a path.
_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-f]{64})")


class InvalidDigest(ValueError):
    """Raised for anything that is not a sha256 digest; the message is Ollama's."""

    def __init__(self, text: object):
        super().__init__("invalid digest format")
        self.text = text


def normalize_digest(text: str) -> str:
    """Return ``sha256:<hex>`` for ``sha256:<hex>`` or ``sha256-<hex>``; raise InvalidDigest."""
    match = _DIGEST_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidDigest(text)
    return f"sha256:{match.group(1)}"


def blob_filename(digest: str) -> str:
    """The file name of a blob in ``blobs/``: ``sha256-<hex>``."""
    return "sha256-" + normalize_digest(digest)[len("sha256:"):]

"""Model names, the on-disk store (Ollama's layout), manifests and GGUF metadata.

Never imports ``runner``: the store must be usable by the CLI, the daemon and tools alike.
"""

from .digests import InvalidDigest, blob_filename, normalize_digest
from .gguf_info import GGUFInfo, InvalidGGUF, human_number, is_gguf, read_gguf_info
from .manifest import (
    MEDIA_ADAPTER,
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MANIFEST,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
)
from .names import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG, InvalidName, ModelName
from .store import BlobNotFound, BlobWriter, DigestMismatch, Store, StoredModel, StoreError

__all__ = [
    "BlobNotFound", "BlobWriter", "DEFAULT_HOST", "DEFAULT_NAMESPACE", "DEFAULT_TAG",
    "DigestMismatch", "GGUFInfo", "InvalidDigest", "InvalidGGUF", "InvalidName", "Layer",
    "MEDIA_ADAPTER", "MEDIA_CONFIG", "MEDIA_LICENSE", "MEDIA_MANIFEST", "MEDIA_MESSAGES",
    "MEDIA_MODEL", "MEDIA_PARAMS", "MEDIA_PROJECTOR", "MEDIA_SYSTEM", "MEDIA_TEMPLATE", "Manifest",
    "ModelName", "Store", "StoreError", "StoredModel", "blob_filename", "human_number", "is_gguf",
    "normalize_digest", "read_gguf_info",
]

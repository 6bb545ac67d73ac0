"""Ollama's image manifest (Docker manifest v2 with Ollama layer media types)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .digests import normalize_digest

_OLLAMA = "application/vnd.ollama.image."
MEDIA_MODEL = _OLLAMA + "model"
MEDIA_ADAPTER = _OLLAMA + "adapter"
MEDIA_PROJECTOR = _OLLAMA + "projector"
MEDIA_TEMPLATE = _OLLAMA + "template"
MEDIA_SYSTEM = _OLLAMA + "system"
MEDIA_PARAMS = _OLLAMA + "params"
MEDIA_MESSAGES = _OLLAMA + "messages"
MEDIA_LICENSE = _OLLAMA + "license"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass
class Layer:
    media_type: str
    digest: str
    size: int
    from_: str | None = None
    # Newer Ollama names tensor layers; kept so that such manifests survive a rewrite.
    name: str | None = None

    def to_dict(self) -> dict:
        out = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, obj: object) -> "Layer":
        if not isinstance(obj, dict):
            raise ValueError("invalid manifest: layer is not an object")
        media_type, size = obj.get("mediaType"), obj.get("size")
        if not isinstance(media_type, str):
            raise ValueError("invalid manifest: layer without mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("invalid manifest: layer without a valid size")
        # Raises InvalidDigest (a ValueError): a manifest must not smuggle in a path.
        digest = normalize_digest(obj.get("digest"))
        from_, name = obj.get("from") or None, obj.get("name") or None
        if not isinstance(from_, (str, type(None))) or not isinstance(name, (str, type(None))):
            raise ValueError("invalid manifest: layer from/name must be strings")
        return cls(media_type, digest, size, from_, name)


@dataclass
class Manifest:
    config: Layer
    layers: list[Layer] = field(default_factory=list)
    schema_version: int = 2
    media_type: str = MEDIA_MANIFEST

    def to_bytes(self) -> bytes:
        # Ollama's key order and Go's encoder output: compact, with a trailing newline.
        obj = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"invalid manifest: {exc}") from None
        if not isinstance(obj, dict) or "config" not in obj:
            raise ValueError("invalid manifest: no config")
        layers = obj.get("layers")
        layers = [] if layers is None else layers  # Go writes a nil slice as null
        if not isinstance(layers, list):
            raise ValueError("invalid manifest: layers is not a list")
        schema_version = obj.get("schemaVersion", 2)
        media_type = obj.get("mediaType") or MEDIA_MANIFEST
        if not isinstance(schema_version, int) or not isinstance(media_type, str):
            raise ValueError("invalid manifest: bad schemaVersion or mediaType")
        return cls(
            config=Layer.from_dict(obj["config"]),
            layers=[Layer.from_dict(layer) for layer in layers],
            schema_version=schema_version,
            media_type=media_type,
        )

    def layer(self, media_type: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.media_type == media_type), None)

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    @property
    def total_size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def digests(self) -> set[str]:
        """Every blob this manifest needs, config included."""
        return {self.config.digest, *(layer.digest for layer in self.layers)}

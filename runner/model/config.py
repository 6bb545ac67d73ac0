"""A stored model resolved for serving: its GGUF path, template, system prompt, parameters, messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from registry import (
    MEDIA_ADAPTER, MEDIA_LICENSE, MEDIA_MESSAGES, MEDIA_MODEL, MEDIA_PARAMS, MEDIA_PROJECTOR, MEDIA_SYSTEM,
    MEDIA_TEMPLATE, GGUFInfo, ModelName, Store, StoredModel, read_gguf_info,
)


@lru_cache(maxsize=64)
def _gguf_info(path: Path) -> GGUFInfo:
    # Blobs are content-addressed and never change under their name: the header need be read once
    # (a 262k-token vocabulary takes ~90 ms to walk, on every request otherwise).
    return read_gguf_info(path)


ENCODER_ARCHITECTURES = ("bert", "nomic-bert", "jina-bert-v2")
RANK_POOLING = 4  # <arch>.pooling_type of a reranker (LLAMA_POOLING_TYPE_RANK)


class ModelNotFound(LookupError):
    def __init__(self, name: str):
        super().__init__(f"model '{name}' not found")


@dataclass
class ModelConfig:
    name: ModelName
    stored: StoredModel
    model_path: Path
    template: str | None = None
    system: str | None = None
    parameters: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    config_blob: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.stored.name).lower()

    @property
    def display(self) -> str:
        return self.stored.name.display

    @property
    def digest(self) -> str:
        return self.stored.digest

    @property
    def gguf(self) -> GGUFInfo:
        return _gguf_info(self.model_path)

    @property
    def is_encoder(self) -> bool:
        """A BERT-family encoder: embeddings only, and no KV cache kept between batches."""
        return self.gguf.architecture in ENCODER_ARCHITECTURES

    @property
    def capabilities(self) -> list[str]:
        caps = []
        pooling = self.gguf.model_info.get(f"{self.gguf.architecture}.pooling_type")
        if pooling == RANK_POOLING:
            caps.append("rerank")  # a cross-encoder scores (query, document) pairs; it has no embeddings
        elif self.is_encoder or pooling not in (None, 0):
            caps.append("embedding")
        else:
            caps.append("completion")
        template = self.template or ""
        if ".Tools" in template:
            caps.append("tools")
        if ".Suffix" in template:
            caps.append("insert")
        if ".Think" in template:
            caps.append("thinking")
        if self.projectors:
            caps.append("vision")
        return caps


def load_model_config(store: Store, name: ModelName) -> ModelConfig:
    stored = store.find(name)
    if stored is None:
        raise ModelNotFound(name.display)
    manifest = stored.manifest
    model_layer = manifest.layer(MEDIA_MODEL)
    if model_layer is None:
        raise ModelNotFound(name.display)
    text = lambda layer: store.read_blob_bytes(layer.digest).decode("utf-8")  # noqa: E731
    cfg = ModelConfig(name=stored.name, stored=stored, model_path=store.blob_path(model_layer.digest))
    if (layer := manifest.layer(MEDIA_TEMPLATE)) is not None:
        cfg.template = text(layer)
    if (layer := manifest.layer(MEDIA_SYSTEM)) is not None:
        cfg.system = text(layer)
    if (layer := manifest.layer(MEDIA_PARAMS)) is not None:
        cfg.parameters = json.loads(text(layer))
    if (layer := manifest.layer(MEDIA_MESSAGES)) is not None:
        cfg.messages = json.loads(text(layer))
    cfg.license = [text(layer) for layer in manifest.layers_of(MEDIA_LICENSE)]
    cfg.adapters = [store.blob_path(layer.digest) for layer in manifest.layers_of(MEDIA_ADAPTER)]
    cfg.projectors = [store.blob_path(layer.digest) for layer in manifest.layers_of(MEDIA_PROJECTOR)]
    try:
        cfg.config_blob = json.loads(store.read_blob_bytes(manifest.config.digest))
    except (OSError, ValueError):
        cfg.config_blob = {}
    return cfg

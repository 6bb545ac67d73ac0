"""A parsed Modelfile as /api/create's JSON body: what `lm create` sends and the installer uses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from modelfiles import Modelfile

from runner.model.create_checks import DRAFT_REFUSAL

_DIGEST_PREFIXES = ("sha256:", "sha256-", "@sha256:")


class ModelfileSourceError(ValueError):
    pass


def model_dir_files(directory: Path) -> list[Path]:
    """The files of a model directory that /api/create needs, chosen as Ollama's CLI chooses them.

    The weights (`model*.safetensors`, also one directory down; else `consolidated*.safetensors`;
    else `*.gguf`), then every `*.json` in the directory and one level down (sentence-transformers
    keeps its pooling config in `1_Pooling/config.json`), `tokenizer.model`, `vocab.txt` and
    `chat_template.jinja` (where newer checkpoints keep the chat template).
    """
    def glob(pattern: str) -> list[Path]:
        return sorted(p for p in directory.glob(pattern) if p.is_file())

    weights = glob("model*.safetensors")
    if weights:
        weights += glob("*/model*.safetensors")
    else:
        weights = glob("consolidated*.safetensors") or glob("*.gguf")
    if not weights:
        raise ModelfileSourceError(f"no Modelfile or safetensors files found in {directory}")
    if weights[0].suffix == ".gguf":
        if len(weights) > 1:
            raise ModelfileSourceError(f"{directory} holds several GGUF files; name one in FROM")
        return weights
    extra = glob("*.json") + glob("*/*.json") + glob("tokenizer.model") + glob("vocab.txt") + glob("chat_template.jinja")
    return weights + extra


def adapter_dir_files(directory: Path, value: str) -> list[Path]:
    """A PEFT adapter directory's files (adapter_config.json, adapter_model*.safetensors); the server
    converts them to a GGUF LoRA for the base model."""
    config = directory / "adapter_config.json"
    weights = sorted(p for p in directory.glob("adapter_model*.safetensors") if p.is_file())
    if not config.is_file():
        raise ModelfileSourceError(f"ADAPTER {value}: {directory} is not a PEFT adapter (no adapter_config.json)")
    if not weights:
        hint = " (adapter_model.bin is not supported: save it with safe_serialization=True)" \
            if (directory / "adapter_model.bin").exists() else ""
        raise ModelfileSourceError(f"ADAPTER {value}: no adapter_model.safetensors in {directory}{hint}")
    return [config, *weights]


def _resolve_path(value: str, base: Path) -> Path | None:
    """The local file a FROM/ADAPTER value names, or None when it names a model."""
    expanded = Path(os.path.expanduser(value))
    path = expanded if expanded.is_absolute() else base / expanded
    looks_like_path = value.startswith((".", "/", "~")) or value.lower().endswith(".gguf") or path.exists()
    return path if looks_like_path else None


def create_body(name: str, mf: Modelfile, base: Path, blob_for: Callable[[Path], str]) -> dict:
    """`blob_for(path)` puts a local file into the store (upload or copy) and returns its digest."""
    body: dict = {"model": name}
    # Refused before any upload: the server would refuse them too (see runner/model/create_checks.py)
    if mf.extra_from:
        raise ModelfileSourceError(f"FROM {mf.extra_from[0]}: a second FROM (such as a vision projector) is not "
                                   "supported yet")
    if mf.draft is not None:
        raise ModelfileSourceError(DRAFT_REFUSAL)
    source = mf.from_
    if source.startswith(_DIGEST_PREFIXES):
        body["files"] = {"model.gguf": source.lstrip("@").replace("sha256-", "sha256:", 1)}
    elif (path := _resolve_path(source, base)) is not None:
        if path.is_dir():
            body["files"] = {f.relative_to(path).as_posix(): blob_for(f) for f in model_dir_files(path)}
        elif not path.is_file():
            raise ModelfileSourceError(f"FROM {source}: no such file {path}")
        else:
            body["files"] = {path.name: blob_for(path)}
    else:
        body["from"] = source
    adapters = {}
    for i, value in enumerate(mf.adapters):
        path = _resolve_path(value, base) or base / value
        # The first adapter's files go under their bare names, as Ollama's CLI sends them; each further
        # one under a directory of its own, so that two PEFT adapters' files do not collide.
        prefix = f"adapter{i}/" if i else ""
        if path.is_dir():
            for f in adapter_dir_files(path, value):
                adapters[prefix + f.name] = blob_for(f)
        elif not path.is_file():
            raise ModelfileSourceError(f"ADAPTER {value}: no such file {path}")
        else:
            adapters[prefix + path.name] = blob_for(path)
    if adapters:
        body["adapters"] = adapters
    for key, value in (("template", mf.template), ("system", mf.system)):
        if value is not None:
            body[key] = value
    if mf.parameters:
        body["parameters"] = mf.parameters
    if mf.messages:
        body["messages"] = mf.messages
    if mf.license:
        body["license"] = mf.license
    for key in ("requires", "renderer", "parser"):  # sent as Ollama's CLI sends them; the server decides
        if getattr(mf, key) is not None:
            body[key] = getattr(mf, key)
    return body

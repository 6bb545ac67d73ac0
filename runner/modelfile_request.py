"""A parsed Modelfile as /api/create's JSON body: what `lm create` sends and the installer uses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from modelfiles import Modelfile

_DIGEST_PREFIXES = ("sha256:", "sha256-", "@sha256:")


class ModelfileSourceError(ValueError):
    pass


def _resolve_path(value: str, base: Path) -> Path | None:
    """The local file a FROM/ADAPTER value names, or None when it names a model."""
    expanded = Path(os.path.expanduser(value))
    path = expanded if expanded.is_absolute() else base / expanded
    looks_like_path = value.startswith((".", "/", "~")) or value.lower().endswith(".gguf") or path.exists()
    return path if looks_like_path else None


def create_body(name: str, mf: Modelfile, base: Path, blob_for: Callable[[Path], str]) -> dict:
    """`blob_for(path)` puts a local file into the store (upload or copy) and returns its digest."""
    body: dict = {"model": name}
    source = mf.from_
    if source.startswith(_DIGEST_PREFIXES):
        body["files"] = {"model.gguf": source.lstrip("@").replace("sha256-", "sha256:", 1)}
    elif (path := _resolve_path(source, base)) is not None:
        if path.is_dir():
            raise ModelfileSourceError(f"FROM {source}: creating models from safetensors directories is not supported yet")
        if not path.is_file():
            raise ModelfileSourceError(f"FROM {source}: no such file {path}")
        body["files"] = {path.name: blob_for(path)}
    else:
        body["from"] = source
    adapters = {}
    for value in mf.adapters:
        path = _resolve_path(value, base) or base / value
        if path.is_dir():
            raise ModelfileSourceError(f"ADAPTER {value}: adapter directories are not supported yet")
        if not path.is_file():
            raise ModelfileSourceError(f"ADAPTER {value}: no such file {path}")
        adapters[path.name] = blob_for(path)
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
    return body

"""What every converter shares: the source directory, its config, its tokenizer files, the output.

A family module subclasses `Converter`: `metadata()` adds the architecture's GGUF keys and the
tokenizer, `tensor_name()` maps a checkpoint tensor to its GGUF name (or None to drop it). The base
class turns that into a `GGUFFile` whose matrices are F16 (or F32) and whose vectors stay F32, as
llama.cpp expects of norms and biases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .checkpoint import Checkpoint, SafetensorsError
from .gguf_writer import F16, F32, FILE_TYPES, GGUFFile, TensorType

# tokenizer.ggml.token_type values (llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


class ConvertError(ValueError):
    """The source cannot be converted (bad or missing files, an unexpected tensor): a client error."""


class UnsupportedArchitecture(ConvertError):
    def __init__(self, architecture: str):
        super().__init__(f'unsupported architecture "{architecture}"')
        self.architecture = architecture


def read_json(path: Path, what: str | None = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{what or path.name} not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{what or path.name} is not valid JSON: {exc}") from None


def read_config(directory: Path) -> dict:
    config = read_json(directory / "config.json", "config.json")
    if not isinstance(config, dict):
        raise ConvertError("config.json must hold a JSON object")
    return config


def architecture_of(config: dict) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    if isinstance(config.get("model_type"), str):
        return config["model_type"]
    raise ConvertError("config.json names no architecture (\"architectures\" is missing)")


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's shards: those an index names, else every `*.safetensors` in the directory."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map") or {}
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise ConvertError(f"missing safetensors shard {missing[0]}")
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConvertError("no safetensors files found")
    return files


class Converter:
    """Base of a family converter; see the module docstring."""

    #: config.json "architectures" values this converter handles
    architectures: tuple[str, ...] = ()
    #: general.architecture in the output
    gguf_arch: str = ""

    def __init__(self, directory: Path, config: dict):
        self.dir = directory
        self.config = config

    # -- helpers for subclasses ---------------------------------------------------------------
    def hparam(self, *names: str, default=None, required: bool = True):
        for n in names:
            if self.config.get(n) is not None:
                return self.config[n]
        if default is None and required:
            raise ConvertError(f"config.json lacks {names[0]}")
        return default

    def key(self, suffix: str) -> str:
        return f"{self.gguf_arch}.{suffix}"

    def optional_json(self, name: str) -> Any:
        path = self.dir / name
        return read_json(path) if path.is_file() else None

    # -- what a family provides -----------------------------------------------------------------
    def metadata(self, f: GGUFFile) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def tensor_name(self, name: str) -> str | None:  # pragma: no cover - abstract
        """GGUF name for a checkpoint tensor; None drops it; ConvertError for an unexpected one."""
        raise NotImplementedError

    def transform(self, gguf_name: str, data: np.ndarray) -> np.ndarray:
        """A family's change to a tensor's data (e.g. permuting q/k for llama); identity here."""
        return data

    def tensor_type(self, gguf_name: str, shape: tuple[int, ...], file_type: str) -> TensorType:
        if len(shape) < 2 or file_type == "F32":
            return F32
        return F16

    def check(self, names: set[str]) -> None:
        """A family's check that every tensor it needs is present (after mapping)."""

    # -- the driver -----------------------------------------------------------------------------
    def build(self, checkpoint: Checkpoint, file_type: str = "F16") -> GGUFFile:
        if file_type not in FILE_TYPES:
            raise ConvertError(f"unsupported output type {file_type} (F16 or F32)")
        f = GGUFFile()
        f.add_string("general.architecture", self.gguf_arch)
        name = self.model_name()
        if name:
            f.add_string("general.name", name)
        f.add_uint32("general.file_type", FILE_TYPES[file_type])
        self.metadata(f)
        mapped: set[str] = set()
        for src in sorted(checkpoint.names(), key=_natural_key):
            dst = self.tensor_name(src)
            if dst is None:
                continue
            shape = self.out_shape(dst, checkpoint.shape(src))
            ttype = self.tensor_type(dst, shape, file_type)
            f.add_tensor(dst, shape, ttype, _producer(self, checkpoint, src, dst))
            mapped.add(dst)
        if not mapped:
            raise ConvertError("the checkpoint holds no tensors this converter knows")
        self.check(mapped)
        return f

    def out_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def model_name(self) -> str | None:
        value = self.config.get("_name_or_path")
        if isinstance(value, str) and value.strip():
            return value.strip().rstrip("/").rsplit("/", 1)[-1]
        return None


def _producer(conv: Converter, checkpoint: Checkpoint, src: str, dst: str) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        try:
            data = checkpoint.array(src)
        except SafetensorsError as exc:
            raise ConvertError(str(exc)) from None
        if data.dtype.kind != "f":
            raise ConvertError(f"tensor {src} is not a float tensor ({data.dtype})")
        return conv.transform(dst, data)

    return produce


def _natural_key(name: str) -> list:
    # "encoder.layer.10" after "encoder.layer.9": the output lists blocks in order.
    return [int(p) if p.isdigit() else p for p in name.replace(".", " . ").split()]

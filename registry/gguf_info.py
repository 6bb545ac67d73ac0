"""GGUF metadata for /api/show, /api/tags details and memory estimates, read without the weights.

The header is parsed here over a memory map rather than with ``gguf.GGUFReader``: the reader builds
numpy views for every vocabulary string and took 9 s on Gemma 3's 262k-token vocabulary, where
walking the header directly takes a fraction of a second. The ``gguf`` package still supplies the
type tables, so new quantization types come with its upgrades.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF value types -> struct format (strings = 8 and arrays = 9 are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6
_SMALL_ARRAY = 1024


class InvalidGGUF(ValueError):
    def __init__(self, reason: str):
        super().__init__(f"not a valid GGUF file: {reason}")
        self.reason = reason


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 134515008 -> "134.52M", 8030261248 -> "8.0B"."""
    for unit, scale, decimals in (("B", 10**9, 1), ("M", 10**6, 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == math.floor(value) else f"{value:.{decimals}f}{unit}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def _float32(value: float) -> float:
    # Shortest decimal that is this float32 (1e-06, not 9.99999997e-07), as Go prints it.
    return float(str(np.float32(value)))


class _Cursor:
    """Little-endian reads over the mapped header; running past the end raises struct.error."""

    def __init__(self, buf: mmap.mmap):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, keep: bool = True) -> str | None:
        length = self.scalar("Q")
        end = self.pos + length
        if end > len(self.buf):
            raise InvalidGGUF("string runs past the end of the file")
        text = self.buf[self.pos:end].decode("utf-8", errors="replace") if keep else None
        self.pos = end
        return text

    def value(self, vtype: int, keep_arrays: bool):
        """Returns (value, element count for arrays or None)."""
        if vtype == _STRING:
            return self.string(), None
        if vtype == _FLOAT32:
            return _float32(self.scalar("f")), None
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype]), None
        if vtype != _ARRAY:
            raise InvalidGGUF(f"unknown value type {vtype}")
        etype, count = self.scalar("I"), self.scalar("Q")
        if etype == _STRING:
            items = [self.string(keep_arrays) for _ in range(count)]
            return (items if keep_arrays else None), count
        if etype not in _SCALARS:
            raise InvalidGGUF(f"unsupported array element type {etype}")
        fmt = "<" + _SCALARS[etype]
        nbytes = count * struct.calcsize(fmt)
        if self.pos + nbytes > len(self.buf):
            raise InvalidGGUF("array runs past the end of the file")
        items = None
        # Small numeric arrays (per-layer settings) are kept even when not verbose; vocabulary
        # scores and types are not. Copied out so that the map can close.
        if keep_arrays or count <= _SMALL_ARRAY:
            items = np.frombuffer(self.buf, np.dtype(fmt), count, self.pos).tolist()
            if etype == _FLOAT32:
                items = [_float32(x) for x in items]
        self.pos += nbytes
        return items, count


@dataclass
class GGUFInfo:
    architecture: str
    parameter_count: int
    file_type: str
    context_length: int | None
    chat_template: str | None
    model_info: dict
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    tensor_bytes: int
    bos_token_id: int | None
    eos_token_id: int | None
    name: str | None = None  # general.name
    vocab_size: int | None = None  # entries in tokenizer.ggml.tokens
    tensor_count: int = 0
    metadata: dict = field(default_factory=dict, repr=False)  # every key, small arrays intact
    # name -> dimensions in GGUF order (innermost first, as llama.cpp's ne): checking a LoRA
    # adapter against its base needs them.
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def details(self) -> dict:
        return {
            "format": "gguf",
            "family": self.architecture,
            "families": [self.architecture],
            "parameter_size": human_number(self.parameter_count),
            "quantization_level": self.file_type,
        }


def is_gguf(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_gguf_info(path, verbose: bool = False) -> GGUFInfo:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, verbose)
    except InvalidGGUF:
        raise
    except (struct.error, EOFError):
        raise InvalidGGUF("file is truncated") from None
    except ValueError as exc:  # mmap of an empty file, bad enum values
        raise InvalidGGUF(str(exc) or "unreadable") from None
    except OSError as exc:
        raise InvalidGGUF(exc.strerror or str(exc)) from None
    except Exception as exc:  # anything odd in a hostile file is still just an invalid file
        raise InvalidGGUF(f"{type(exc).__name__}: {exc}") from None


def _parse(buf: mmap.mmap, verbose: bool) -> GGUFInfo:
    cur = _Cursor(buf)
    if buf[:4] != MAGIC:
        raise InvalidGGUF("bad magic")
    cur.pos = 4
    version = cur.scalar("I")
    if version not in (2, 3):
        raise InvalidGGUF(f"unsupported version {version}")
    n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")
    if n_tensors > len(buf) or n_kv > len(buf):
        raise InvalidGGUF("implausible tensor or key count")

    metadata, model_info, counts = {}, {}, {}
    for _ in range(n_kv):
        key = cur.string()
        value, count = cur.value(cur.scalar("I"), keep_arrays=verbose)
        metadata[key] = value
        counts[key] = count
        # As Ollama's /api/show: non-verbose, every non-empty array shows as null.
        model_info[key] = value if (count is None or count == 0 or verbose) else None

    tensors = []  # (type, element count, offset)
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        tensor_name = cur.string()
        n_dims = cur.scalar("I")
        if n_dims > _MAX_DIMS:
            raise InvalidGGUF(f"tensor with {n_dims} dimensions")
        dims = [cur.scalar("Q") for _ in range(n_dims)]
        shapes[tensor_name] = tuple(dims)
        tensors.append((cur.scalar("I"), math.prod(dims), cur.scalar("Q")))

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        raise InvalidGGUF(f"bad alignment {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    tensor_bytes, bytes_by_type = _tensor_sizes(tensors, len(buf) - data_start)

    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidGGUF("no general.architecture")
    parameter_count = sum(elements for _, elements, _ in tensors)
    model_info["general.parameter_count"] = parameter_count
    metadata["general.parameter_count"] = parameter_count
    # Ollama shows these elsewhere (name in details, template as the template), not here.
    model_info.pop("general.name", None)
    model_info.pop("tokenizer.chat_template", None)

    def arch_int(suffix: str) -> int | None:
        value = metadata.get(f"{arch}.{suffix}")
        if isinstance(value, list):  # per-layer values (e.g. OpenELM head counts)
            value = max(value) if value else None
        return value if isinstance(value, int) else None

    def int_or_none(key: str) -> int | None:
        value = metadata.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    name, template = metadata.get("general.name"), metadata.get("tokenizer.chat_template")
    return GGUFInfo(
        architecture=arch,
        parameter_count=parameter_count,
        file_type=_file_type_label(metadata.get("general.file_type"), bytes_by_type),
        context_length=arch_int("context_length"),
        chat_template=template if isinstance(template, str) else None,
        model_info=model_info,
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        tensor_bytes=tensor_bytes,
        bos_token_id=int_or_none("tokenizer.ggml.bos_token_id"),
        eos_token_id=int_or_none("tokenizer.ggml.eos_token_id"),
        name=name if isinstance(name, str) else None,
        vocab_size=counts.get("tokenizer.ggml.tokens"),
        tensor_count=n_tensors,
        metadata=metadata,
        tensor_shapes=shapes,
    )


def _tensor_sizes(tensors: list, data_size: int) -> tuple[int, dict[int, int]]:
    """Total tensor bytes and bytes per type; raises InvalidGGUF if data runs past the file."""
    if data_size < 0 and tensors:
        raise InvalidGGUF("file is truncated")
    by_offset = sorted(tensors, key=lambda t: t[2])
    total, by_type = 0, {}
    for i, (ttype, elements, offset) in enumerate(by_offset):
        sizes = GGML_QUANT_SIZES.get(_quant_type(ttype))
        if sizes:
            block, type_size = sizes
            size = -(-elements // block) * type_size
        else:  # a type newer than our gguf package: bounded by the next tensor's start
            end = by_offset[i + 1][2] if i + 1 < len(by_offset) else data_size
            size = end - offset
        if offset + size > data_size:
            raise InvalidGGUF("file is truncated (tensor data past the end)")
        total += size
        by_type[ttype] = by_type.get(ttype, 0) + size
    return total, by_type


def _quant_type(ttype: int) -> GGMLQuantizationType | None:
    try:
        return GGMLQuantizationType(ttype)
    except ValueError:
        return None


def _file_type_label(file_type, bytes_by_type: dict[int, int]) -> str:
    """Ollama's label for general.file_type ("Q4_K_M"); else the type holding the most bytes."""
    try:
        name = LlamaFileType(file_type).name
        if name != "GUESSED":
            return name.removeprefix("ALL_").removeprefix("MOSTLY_")
    except ValueError:
        pass
    if not bytes_by_type:
        return "unknown"
    dominant = _quant_type(max(bytes_by_type, key=bytes_by_type.get))
    return dominant.name if dominant is not None else "unknown"

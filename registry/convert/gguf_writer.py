"""Writing a GGUF file (version 3), streamed: the shared output side of every converter.

A converter describes the file first (metadata, then tensors with their shape, type and a function
that produces their data) and `GGUFFile.write` streams it to any binary file object, one tensor at a
time: nothing larger than one tensor is ever held in memory, and the output can go straight into a
hashing blob writer.

    f = GGUFFile()
    f.add_string("general.architecture", "bert")
    f.add_uint32("bert.block_count", 6)
    f.add_tensor("token_embd.weight", (30522, 384), F16, lambda: embeddings)
    f.write(out)

Shapes are given in numpy's order (outermost first); GGUF stores them innermost first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

import numpy as np

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32

# GGUF metadata value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = range(10)
T_UINT64, T_INT64, T_FLOAT64 = 10, 11, 12

_SCALAR_FORMATS = {
    T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I", T_INT32: "<i",
    T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorType:
    """A ggml tensor type that a converter writes directly (no block quantization here)."""

    name: str
    ggml_type: int
    dtype: np.dtype


F32 = TensorType("F32", 0, np.dtype("<f4"))
F16 = TensorType("F16", 1, np.dtype("<f2"))
# general.file_type values (llama_ftype) for files whose matrices are all of one type.
FILE_TYPES = {"F32": 0, "F16": 1}


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _pad(n: int) -> int:
    return (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    type: TensorType
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.type.dtype.itemsize


class GGUFFile:
    def __init__(self) -> None:
        self._kv: list[tuple[str, int, object, int | None]] = []  # key, type, value, array element type
        self._keys: set[str] = set()
        self.tensors: list[_Tensor] = []

    # -- metadata -----------------------------------------------------------------------------
    def _add(self, key: str, vtype: int, value, elem: int | None = None) -> None:
        if key in self._keys:
            raise ValueError(f"duplicate GGUF key {key}")
        self._keys.add(key)
        self._kv.append((key, vtype, value, elem))

    def add_string(self, key: str, value: str) -> None:
        self._add(key, T_STRING, str(value))

    def add_uint32(self, key: str, value: int) -> None:
        self._add(key, T_UINT32, int(value))

    def add_int32(self, key: str, value: int) -> None:
        self._add(key, T_INT32, int(value))

    def add_uint64(self, key: str, value: int) -> None:
        self._add(key, T_UINT64, int(value))

    def add_float32(self, key: str, value: float) -> None:
        self._add(key, T_FLOAT32, float(value))

    def add_bool(self, key: str, value: bool) -> None:
        self._add(key, T_BOOL, bool(value))

    def add_array(self, key: str, elem_type: int, values: Iterable) -> None:
        self._add(key, T_ARRAY, list(values), elem_type)

    def has(self, key: str) -> bool:
        return key in self._keys

    # -- tensors ------------------------------------------------------------------------------
    def add_tensor(self, name: str, shape: tuple[int, ...], ttype: TensorType,
                   produce: Callable[[], np.ndarray]) -> None:
        """`produce()` returns the data (any float dtype, `shape`); it is called once, while writing."""
        if any(t.name == name for t in self.tensors):
            raise ValueError(f"duplicate tensor {name}")
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), ttype, produce))

    # -- output -------------------------------------------------------------------------------
    @staticmethod
    def _value(vtype: int, value, elem: int | None) -> bytes:
        if vtype == T_STRING:
            return _string(value)
        if vtype == T_ARRAY:
            head = struct.pack("<IQ", elem, len(value))
            if elem == T_STRING:
                return head + b"".join(_string(v) for v in value)
            fmt = _SCALAR_FORMATS[elem]
            return head + struct.pack("<" + fmt[1] * len(value), *value)
        return struct.pack(_SCALAR_FORMATS[vtype], value)

    def header(self) -> bytes:
        parts = [MAGIC, struct.pack("<IQQ", VERSION, len(self.tensors), len(self._kv))]
        for key, vtype, value, elem in self._kv:
            parts += [_string(key), struct.pack("<I", vtype), self._value(vtype, value, elem)]
        offset = 0
        for t in self.tensors:
            dims = tuple(reversed(t.shape))  # GGUF: innermost dimension first
            parts += [_string(t.name), struct.pack("<I", len(dims)), struct.pack(f"<{len(dims)}Q", *dims),
                      struct.pack("<IQ", t.type.ggml_type, offset)]
            offset += t.nbytes + _pad(t.nbytes)
        head = b"".join(parts)
        return head + b"\0" * _pad(len(head))

    def write(self, out: BinaryIO, progress: Callable[[int, int], None] | None = None) -> int:
        """Writes the whole file; `progress(done, total)` after each tensor. Returns bytes written."""
        head = self.header()
        out.write(head)
        written = len(head)
        for i, t in enumerate(self.tensors):
            data = np.asarray(t.produce())
            if tuple(data.shape) != t.shape:
                raise ValueError(f"tensor {t.name}: expected shape {t.shape}, got {tuple(data.shape)}")
            data = np.ascontiguousarray(data, dtype=t.type.dtype)
            if t.type is F16:
                finite = np.isfinite(data)
                if not finite.all():
                    raise ValueError(f"tensor {t.name} does not fit in F16 (values out of range)")
            out.write(memoryview(data).cast("B"))
            pad = _pad(data.nbytes)
            if pad:
                out.write(b"\0" * pad)
            written += data.nbytes + pad
            if progress:
                progress(i + 1, len(self.tensors))
        return written

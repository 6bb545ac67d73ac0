"""Reading safetensors checkpoints (one file or shards) as numpy arrays, memory-mapped.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the raw data. Reading it directly (rather than through the `safetensors`
package's numpy front end) also covers BF16, which numpy has no dtype for: BF16 values are widened
to float32 on read, which is exact.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 << 20


class SafetensorsError(ValueError):
    pass


class _File:
    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "rb")
        try:
            raw = self._f.read(8)
            if len(raw) != 8:
                raise SafetensorsError(f"{path.name}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise SafetensorsError(f"{path.name}: not a safetensors file (header of {n} bytes)")
            try:
                header = json.loads(self._f.read(n))
            except (ValueError, UnicodeDecodeError) as exc:
                raise SafetensorsError(f"{path.name}: invalid safetensors header: {exc}") from None
            if not isinstance(header, dict):
                raise SafetensorsError(f"{path.name}: invalid safetensors header")
            self.data_start = 8 + n
            self.metadata = header.pop("__metadata__", None) or {}
            self.entries: dict[str, dict] = header
            size = path.stat().st_size
            self._map = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            for name, e in header.items():
                begin, end = e.get("data_offsets", (0, -1))
                if e.get("dtype") not in _DTYPES:
                    raise SafetensorsError(f"{path.name}: tensor {name} has unsupported dtype {e.get('dtype')}")
                count = int(np.prod(e.get("shape", []), dtype=np.int64))
                if end - begin != count * _DTYPES[e["dtype"]].itemsize or self.data_start + end > size:
                    raise SafetensorsError(f"{path.name}: tensor {name} has an invalid byte range (truncated file?)")
        except BaseException:
            self._f.close()
            raise

    def array(self, name: str) -> np.ndarray:
        e = self.entries[name]
        begin, end = e["data_offsets"]
        dtype = _DTYPES[e["dtype"]]
        raw = np.frombuffer(self._map, dtype=dtype, count=(end - begin) // dtype.itemsize,
                            offset=self.data_start + begin) if end > begin else np.zeros(0, dtype)
        if e["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.reshape(e["shape"])

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # an array still views it; it goes with the array
        self._f.close()


class Checkpoint:
    """All tensors of the `*.safetensors` files given, by name."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise SafetensorsError("no safetensors files")
        self.files = []
        self._where: dict[str, _File] = {}
        try:
            for path in sorted(paths):
                f = _File(path)
                self.files.append(f)
                for name in f.entries:
                    if name in self._where:
                        raise SafetensorsError(f"tensor {name} appears in both {self._where[name].path.name} and {path.name}")
                    self._where[name] = f
        except BaseException:
            self.close()
            raise

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].entries[name]["shape"])

    def dtype(self, name: str) -> str:
        return self._where[name].entries[name]["dtype"]

    def array(self, name: str) -> np.ndarray:
        return self._where[name].array(name)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

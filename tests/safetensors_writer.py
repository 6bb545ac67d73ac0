"""Writes safetensors files for tests (Hugging Face checkpoints and PEFT adapters made from numpy).

The format: an 8-byte little-endian header length, a JSON header (dtype, shape, byte range of each
tensor, optional "__metadata__"), then the tensors' bytes. BF16 is written from float32 by keeping the
upper 16 bits (truncation), as torch's conversion of exactly representable values does.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_NAMES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64",
          np.dtype("<i4"): "I32"}


def write_safetensors(path: Path | str, tensors: dict[str, np.ndarray], *, bf16: bool = False,
                      metadata: dict[str, str] | None = None) -> Path:
    """Writes `tensors` (float arrays as F32/F16, or BF16 with `bf16`) to `path`."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if bf16 and array.dtype.kind == "f":
            data = (array.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
            dtype = "BF16"
        else:
            array = array.astype(array.dtype.newbyteorder("<"))
            dtype = _NAMES[array.dtype]
            data = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for data in blobs:
            f.write(data)
    return path

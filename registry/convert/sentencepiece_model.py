"""Reading a SentencePiece `tokenizer.model` (a protobuf `ModelProto`) without the sentencepiece package.

Only what a GGUF vocabulary needs: each piece with its score and type, the model type (llama.cpp's
"llama" tokenizer is SentencePiece BPE), whether a dummy "▁" prefix is added, and byte fallback.
The protobuf wire format is simple enough to walk by hand: a key varint (field number << 3 | wire
type), then a varint, a fixed 64/32-bit value or a length-prefixed payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .base import ConvertError

# sentencepiece_model.proto
MODEL_UNIGRAM, MODEL_BPE, MODEL_WORD, MODEL_CHAR = 1, 2, 3, 4
_PIECE_NORMAL = 1  # the default of SentencePiece.type; its values match llama.cpp's token types


@dataclass
class SentencePieceModel:
    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    model_type: int = MODEL_UNIGRAM
    byte_fallback: bool = False
    add_dummy_prefix: bool = True


def _fields(data: bytes):
    """(field number, wire type, value) for each field of one message; bytes for payloads."""
    pos, end = 0, len(data)

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end:
                raise ConvertError("tokenizer.model is truncated or not a SentencePiece model")
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ConvertError("tokenizer.model is not a SentencePiece model (bad varint)")

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 1:
            yield number, wire, data[pos:pos + 8]
            pos += 8
        elif wire == 2:
            n = varint()
            if pos + n > end:
                raise ConvertError("tokenizer.model is truncated or not a SentencePiece model")
            yield number, wire, data[pos:pos + n]
            pos += n
        elif wire == 5:
            yield number, wire, data[pos:pos + 4]
            pos += 4
        else:
            raise ConvertError(f"tokenizer.model is not a SentencePiece model (wire type {wire})")


def read_sentencepiece_model(data: bytes) -> SentencePieceModel:
    m = SentencePieceModel()
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:  # repeated SentencePiece pieces
            piece, score, kind = "", 0.0, _PIECE_NORMAL
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    piece = v.decode("utf-8", errors="replace")
                elif n == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    kind = v
            m.pieces.append(piece)
            m.scores.append(score)
            m.types.append(kind)
        elif number == 2 and wire == 2:  # TrainerSpec
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    m.model_type = v
                elif n == 35 and w == 0:
                    m.byte_fallback = bool(v)
        elif number == 3 and wire == 2:  # NormalizerSpec
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    m.add_dummy_prefix = bool(v)
    if not m.pieces:
        raise ConvertError("tokenizer.model holds no pieces (not a SentencePiece model?)")
    return m

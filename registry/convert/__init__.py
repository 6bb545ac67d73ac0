"""Hugging Face safetensors checkpoints to GGUF, one module per model family.

`bert.py` converts BERT encoders (embeddings); `decoder.py` the decoder-only language models (Llama,
Mistral, Qwen2, Gemma 1/2/3), with their tokenizers read by `tokenizer.py`.

    from registry.convert import convert_directory
    with open("model.gguf", "wb") as out:
        result = convert_directory(Path("all-MiniLM-L6-v2"), out)   # F16 matrices, F32 vectors

A new family is a `Converter` subclass (see `base.py`) listed in `CONVERTERS`; the GGUF itself is
written by the shared streaming writer in `gguf_writer.py`. `quantize.py` re-encodes a GGUF with
llama.cpp's own quantizer (in a subprocess, so that a crash there cannot take the caller down).
Nothing here imports ``runner``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from .base import ConvertError, Converter, UnsupportedArchitecture, architecture_of, read_config, safetensors_files
from .bert import BertConverter
from .checkpoint import Checkpoint, SafetensorsError
from .decoder import DECODER_CONVERTERS
from .gguf_writer import F16, F32, GGUFFile
from .quantize import QUANT_TYPES, QuantizeError, quantize_file, quantize_type

CONVERTERS: dict[str, type[Converter]] = {
    arch: conv for conv in (BertConverter, *DECODER_CONVERTERS) for arch in conv.architectures
}


@dataclass
class ConvertResult:
    architecture: str  # config.json's, e.g. "BertModel"
    gguf_architecture: str  # e.g. "bert"
    tensor_count: int
    size: int  # bytes written


def converter_for(directory: Path) -> Converter:
    """The converter for a checkpoint directory; UnsupportedArchitecture names what config.json says."""
    config = read_config(directory)
    arch = architecture_of(config)
    cls = CONVERTERS.get(arch)
    if cls is None:
        raise UnsupportedArchitecture(arch)
    return cls(directory, config)


def convert_directory(directory: Path, out: BinaryIO, *, file_type: str = "F16",
                      progress: Callable[[int, int], None] | None = None) -> ConvertResult:
    """Converts the checkpoint in `directory`, writing the GGUF to `out` (streamed)."""
    directory = Path(directory)
    conv = converter_for(directory)
    try:
        with Checkpoint(safetensors_files(directory)) as ckpt:
            gguf = conv.build(ckpt, file_type)
            size = gguf.write(out, progress)
    except ConvertError:
        raise
    except (SafetensorsError, ValueError) as exc:  # ValueError: a tensor that does not fit its type
        raise ConvertError(str(exc)) from None
    return ConvertResult(architecture_of(conv.config), conv.gguf_arch, len(gguf.tensors), size)


__all__ = [
    "CONVERTERS", "Checkpoint", "ConvertError", "ConvertResult", "Converter", "F16", "F32", "GGUFFile",
    "QUANT_TYPES", "QuantizeError", "UnsupportedArchitecture", "convert_directory", "converter_for",
    "quantize_file", "quantize_type",
]

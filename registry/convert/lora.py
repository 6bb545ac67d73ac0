"""LoRA adapters for a base GGUF model: PEFT adapters converted to GGUF LoRA, and every adapter checked.

llama.cpp applies a LoRA GGUF (`general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`,
`general.architecture` = the base's) whose tensors are named after the base tensor they adapt:
`blk.0.attn_q.weight.lora_a` holds A as (rank, in) and `.lora_b` holds B as (out, rank) in numpy's
order. At run time it adds `alpha / rank * B @ A @ x` to the base matmul.

A PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`, as PEFT, LLaMA-Factory and
Unsloth save it) names its matrices after Hugging Face modules
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`); the `gguf` package's
TensorNameMap maps them to GGUF names, as llama.cpp's own convert_lora_to_gguf.py does.

Everything is checked against the base before a byte is written, so that a wrong adapter is refused
when the model is created, never when it is first loaded: the architecture, every target tensor
existing in the base, every shape fitting the tensor it targets.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import gguf
import numpy as np

from ..gguf_info import GGUFInfo
from .base import ConvertError, read_json
from .checkpoint import Checkpoint, SafetensorsError
from .gguf_writer import F16, F32, GGUFFile

ADAPTER_CONFIG = "adapter_config.json"

# GGUF architectures whose HF -> GGUF conversion permutes q_proj/k_proj rows (llama.cpp's LlamaModel
# and the subclasses that keep its `undo_permute`): HF checkpoints rotate halves of each head, ggml's
# "normal" RoPE rotates adjacent pairs. A LoRA delta on q/k must have its output rows (B's rows)
# permuted the same way, or it would land on the wrong dimensions of each head.
PERMUTED_QK_ARCHS = frozenset({"llama", "granite", "granitemoe", "arcee", "deci"})

# Adapters trained on a multimodal model's text part name it like this (llama.cpp strips the same).
_LANGUAGE_MODEL_PREFIXES = (("model.language_model.", "model."), ("language_model.", ""))
_LINEAR = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_EMBEDDING = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?$")
_NAME_TO_ARCH = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class AdapterError(ConvertError):
    """The adapter is not a LoRA adapter we can use, or it does not fit the base model (HTTP 400)."""


# -- GGUF LoRA files ------------------------------------------------------------------------------

def check_gguf_adapter(path: Path, base: GGUFInfo, label: str = "adapter") -> None:
    """Refuses a GGUF file that llama.cpp would not apply to `base` (its loader's own checks, made early)."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct errors, IndexError on a bad file
        raise AdapterError(f"{label}: not a valid GGUF file ({exc})") from None

    def string(key: str) -> str | None:
        field = reader.get_field(key)
        if field is None or field.types != [gguf.GGUFValueType.STRING]:
            return None
        return field.contents()

    kind = string("general.type")
    if kind != "adapter":
        raise AdapterError(f"{label}: not a LoRA adapter (general.type is {kind or 'missing'}, not 'adapter')")
    if string("adapter.type") != "lora":
        raise AdapterError(f"{label}: adapter.type must be 'lora'")
    alpha = reader.get_field(gguf.Keys.Adapter.LORA_ALPHA)
    if alpha is not None and alpha.types != [gguf.GGUFValueType.FLOAT32]:
        # llama.cpp reads it as a float32 and aborts the process on any other type
        raise AdapterError(f"{label}: {gguf.Keys.Adapter.LORA_ALPHA} must be a float32")
    arch = string("general.architecture")
    if arch != base.architecture:
        raise AdapterError(f"{label}: the adapter is for architecture '{arch}', the base model is "
                           f"'{base.architecture}'")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in reader.tensors:
        ne = tuple(int(d) for d in t.shape)  # GGUF order, as llama.cpp's ne
        if t.name.endswith((".lora_a", ".lora_b")):
            pairs.setdefault(t.name[:-7], {})[t.name[-1]] = ne
        elif not t.name.endswith("_norm.weight"):  # llama.cpp also takes norms (mergekit's adapters)
            raise AdapterError(f"{label}: unexpected tensor {t.name} (not a .lora_a/.lora_b tensor)")
        elif t.name not in base.tensor_shapes:
            raise AdapterError(f"{label}: tensor {t.name} does not exist in the base model")
    if not pairs:
        raise AdapterError(f"{label}: the adapter holds no LoRA tensors")
    for target, ab in pairs.items():
        if set(ab) != {"a", "b"}:
            raise AdapterError(f"{label}: {target} has lora_{next(iter(ab))} but not its other half")
        # numpy order (rows, columns): A is (rank, in), B is (out, rank); ne is the reverse
        _check_fit(label, target, base, ab["a"][::-1], ab["b"][::-1], target)


def _check_fit(label: str, source: str, base: GGUFInfo, a: tuple[int, ...], b: tuple[int, ...], target: str) -> None:
    """A (rank, in) and B (out, rank), numpy order, against the base tensor `target`."""
    base_ne = base.tensor_shapes.get(target)
    if base_ne is None:
        raise AdapterError(f"{label}: {source} targets {target}, which does not exist in the base model "
                           f"(an adapter for another model?)")
    if len(a) != 2 or len(b) != 2 or len(base_ne) != 2:
        raise AdapterError(f"{label}: {source} is not a pair of matrices over a matrix")
    if target == "token_embd.weight":
        # llama.cpp looks embeddings up by row: there A is stored transposed, (vocab, rank), and the
        # delta is A @ B.T, (vocab, embd)
        rank_a, delta = a[1], (a[0], b[0])
    else:
        rank_a, delta = a[0], (b[0], a[1])
    if rank_a != b[1]:
        raise AdapterError(f"{label}: lora_A and lora_B of {source} disagree on the rank ({rank_a} and {b[1]})")
    base_shape = (base_ne[1], base_ne[0])  # numpy order, as the adapter's
    if delta != base_shape:
        raise AdapterError(f"{label}: {source} does not fit the base model: the adapter changes a "
                           f"{delta[0]}x{delta[1]} matrix, {target} is {base_shape[0]}x{base_shape[1]}")


# -- PEFT adapters ----------------------------------------------------------------------------------

@dataclass
class _Target:
    """One adapted base tensor: where A and B come from, and what to do to them."""

    module: str  # the Hugging Face module, e.g. "model.layers.0.self_attn.q_proj"
    gguf_name: str  # e.g. "blk.0.attn_q.weight"
    a: str | None = None  # checkpoint tensor names
    b: str | None = None
    embedding: bool = False
    b_factor: float = 1.0  # folds a per-module scale llama.cpp cannot express into B
    permute_heads: int = 0  # permute B's rows as llama's q/k conversion does, over this many heads


def check_peft_adapter(config: Path, weights: list[Path], base: GGUFInfo, label: str = "adapter") -> int:
    """Refuses a PEFT adapter that does not fit `base`; returns how many tensors it adapts."""
    with _open(weights, label) as ckpt:
        return len(_build(_read_config(config, label), ckpt, base, label).tensors) // 2


def convert_peft_adapter(config: Path, weights: list[Path], base: GGUFInfo, out: BinaryIO,
                         label: str = "adapter", progress: Callable[[int, int], None] | None = None) -> int:
    """Writes the PEFT adapter as a GGUF LoRA for `base` to `out` (streamed); returns bytes written."""
    with _open(weights, label) as ckpt:
        f = _build(_read_config(config, label), ckpt, base, label)
        try:
            return f.write(out, progress)
        except (SafetensorsError, ValueError) as exc:  # ValueError: a value that does not fit F16
            raise AdapterError(f"{label}: {exc}") from None


def _open(weights: list[Path], label: str) -> Checkpoint:
    try:
        return Checkpoint(weights)
    except SafetensorsError as exc:
        raise AdapterError(f"{label}: {exc}") from None


def _read_config(path: Path, label: str) -> dict:
    try:
        config = read_json(path, ADAPTER_CONFIG)
    except ConvertError as exc:
        raise AdapterError(f"{label}: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{label}: {ADAPTER_CONFIG} must hold a JSON object")
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise AdapterError(f"{label}: only LoRA adapters are supported (peft_type is {peft_type})")
    if config.get("use_dora"):
        raise AdapterError(f"{label}: DoRA adapters (use_dora) are not supported")
    if config.get("alora_invocation_tokens") or config.get("invocation_string"):
        raise AdapterError(f"{label}: activated LoRA (alora_invocation_tokens) is not supported")
    for key in ("r", "lora_alpha"):
        value = config.get(key, 8)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise AdapterError(f"{label}: {ADAPTER_CONFIG}: {key} must be a non-negative number")
    return config


def _module_of(name: str, label: str) -> tuple[str, str, bool] | None:
    """(HF module, "A" or "B", is an embedding) of a checkpoint tensor; None for one to skip."""
    if name.endswith(".base_layer.weight"):  # a copy of the frozen base weight: not ours to apply
        return None
    m = _LINEAR.match(name)
    embedding = m is None
    m = m or _EMBEDDING.match(name)
    if m is None:
        raise AdapterError(f"{label}: unexpected tensor {name}: not a LoRA A/B matrix (adapters with full "
                           f"weights, e.g. modules_to_save or trained biases, are not supported)")
    module = m["module"].removeprefix("base_model.model.")
    for prefix, replacement in _LANGUAGE_MODEL_PREFIXES:
        if module.startswith(prefix):
            module = replacement + module[len(prefix):]
            break
    return module, m["ab"], embedding


def _pattern_value(patterns: dict, module: str, default, label: str):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the module name or a dotted suffix."""
    for key, value in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            raise AdapterError(f"{label}: invalid pattern {key!r} in {ADAPTER_CONFIG}") from None
    return default


def _build(config: dict, ckpt: Checkpoint, base: GGUFInfo, label: str) -> GGUFFile:
    arch = _NAME_TO_ARCH.get(base.architecture)
    if arch is None or not base.block_count:
        raise AdapterError(f"{label}: adapters for architecture '{base.architecture}' are not supported")
    names = gguf.get_tensor_name_map(arch, base.block_count)

    targets: dict[str, _Target] = {}
    for src in ckpt.names():
        found = _module_of(src, label)
        if found is None:
            continue
        module, ab, embedding = found
        gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None and re.search(r"\.\d+\.", module):
            # a block the base lacks (an adapter for a deeper model): name it, _check_fit refuses it
            wide = _wide_map(arch)
            gguf_name = wide.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise AdapterError(f"{label}: {module} is not a tensor of a {base.architecture} model "
                               f"(an adapter for another architecture?)")
        t = targets.setdefault(gguf_name, _Target(module, gguf_name, embedding=embedding))
        if t.module != module or getattr(t, ab.lower()) is not None:
            raise AdapterError(f"{label}: more than one lora_{ab} for {gguf_name}")
        setattr(t, ab.lower(), src)
    if not targets:
        raise AdapterError(f"{label}: the adapter holds no LoRA tensors")

    # llama.cpp scales every pair by one adapter.lora.alpha over that pair's rank. PEFT's own scale
    # per module is alpha/r (or alpha/sqrt(r) with rsLoRA), where alpha and r may differ per module
    # (alpha_pattern, rank_pattern): whatever the single alpha cannot express is folded into B.
    rslora = bool(config.get("use_rslora"))
    alpha = float(config.get("lora_alpha", 8))
    gguf_alpha = alpha * math.sqrt(float(config.get("r", 8))) if rslora else alpha
    permute = base.architecture in PERMUTED_QK_ARCHS
    for t in sorted(targets.values(), key=lambda t: _natural_key(t.gguf_name)):
        for half in ("a", "b"):
            if getattr(t, half) is None:
                other = "B" if half == "a" else "A"
                raise AdapterError(f"{label}: {t.module} has lora_{other} but no lora_{half.upper()}")
        for name in (t.a, t.b):
            if ckpt.dtype(name) not in _FLOAT_DTYPES:
                raise AdapterError(f"{label}: tensor {name} is not a float tensor ({ckpt.dtype(name)})")
        a_shape, b_shape = ckpt.shape(t.a), ckpt.shape(t.b)
        if t.embedding:  # PEFT keeps embedding A as (rank, vocab); llama.cpp wants it (vocab, rank)
            if len(a_shape) != 2:
                raise AdapterError(f"{label}: {t.a} is not a matrix")
            a_shape = a_shape[::-1]
            if t.gguf_name != "token_embd.weight":
                raise AdapterError(f"{label}: an embedding LoRA on {t.module} is not supported")
        _check_fit(label, t.module, base, a_shape, b_shape, t.gguf_name)
        rank = b_shape[1]
        try:
            module_alpha = float(_pattern_value(config.get("alpha_pattern"), t.module, alpha, label))
        except (TypeError, ValueError):
            raise AdapterError(f"{label}: {ADAPTER_CONFIG}: alpha_pattern values must be numbers") from None
        wanted = module_alpha / (math.sqrt(rank) if rslora else rank) if rank else 0.0
        applied = gguf_alpha / rank if gguf_alpha and rank else 1.0  # llama.cpp: no alpha, no scaling
        t.b_factor = 1.0 if math.isclose(wanted, applied, rel_tol=1e-9) else wanted / applied
        if permute and t.gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = base.head_count if t.gguf_name.endswith(".attn_q.weight") else (base.head_count_kv or base.head_count)
            if not heads or b_shape[0] % (2 * heads):
                raise AdapterError(f"{label}: {t.module} has {b_shape[0]} rows, which do not split into "
                                   f"{heads} attention heads")
            t.permute_heads = heads

    f = GGUFFile()
    f.add_string("general.architecture", base.architecture)
    f.add_string("general.type", "adapter")
    f.add_string("adapter.type", "lora")
    f.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha)
    for t in sorted(targets.values(), key=lambda t: _natural_key(t.gguf_name)):
        a_shape = ckpt.shape(t.a)[::-1] if t.embedding else ckpt.shape(t.a)
        f.add_tensor(t.gguf_name + ".lora_a", a_shape, _out_type(ckpt, t.a), _producer(ckpt, t, "a", label))
        f.add_tensor(t.gguf_name + ".lora_b", ckpt.shape(t.b), _out_type(ckpt, t.b), _producer(ckpt, t, "b", label))
    return f


def _out_type(ckpt: Checkpoint, name: str):
    # F16 stays F16 (half the size, exact); BF16 and F32 become F32, which holds every value exactly.
    return F16 if ckpt.dtype(name) == "F16" else F32


def _producer(ckpt: Checkpoint, t: _Target, half: str, label: str) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        name = getattr(t, half)
        data = ckpt.array(name)  # a float tensor: checked when the file was described
        if half == "a":
            return data.T if t.embedding else data
        if t.b_factor != 1.0:
            data = data.astype(np.float32) * np.float32(t.b_factor)
        if t.permute_heads:
            data = permute_rows(data, t.permute_heads)
        return data

    return produce


def permute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp's HF -> GGUF conversion gives llama's q/k weights: within each head,
    the two halves (HF's rotate_half layout) become interleaved pairs (ggml's rope layout)."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in name.replace(".", " . ").split()]


@functools.lru_cache(maxsize=4)
def _wide_map(arch: gguf.MODEL_ARCH) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch, 512)

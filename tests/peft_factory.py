"""PEFT LoRA adapters for the tiny llama GGUFs of gguf_factory, and the same deltas merged into a base.

`write_peft_adapter` writes what PEFT's `save_pretrained` (and LLaMA-Factory, Unsloth) write: an
adapter_config.json and an adapter_model.safetensors whose A is (r, in) and B is (out, r), named
after the Hugging Face modules. `merge_into_gguf` writes the base with the adapter's deltas added,
`alpha / r * B @ A`, in the base's GGUF layout: the reference an applied adapter must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from tests.safetensors_writer import write_safetensors

# Hugging Face module -> (GGUF tensor, rows, columns) of the tiny llama (gguf_factory's defaults)
_PROJECTIONS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}


def lora_tensor_name(layer: int, module: str, half: str) -> str:
    return f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{half}.weight"


def make_lora(*, n_layer: int = 2, n_embd: int = 256, n_out: int | None = None, r: int = 4,
              targets=("q_proj", "v_proj"), b_std: float = 0.0, a_std: float = 0.1, seed: int = 0,
              layers=None) -> dict[str, np.ndarray]:
    """The adapter's tensors: A random, B zero (as PEFT initialises it) unless `b_std` is given."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in layers if layers is not None else range(n_layer):
        for module in targets:
            out = n_out or n_embd
            tensors[lora_tensor_name(i, module, "A")] = (rng.standard_normal((r, n_embd)) * a_std).astype(np.float32)
            tensors[lora_tensor_name(i, module, "B")] = (rng.standard_normal((out, r)) * b_std).astype(np.float32)
    return tensors


def write_peft_adapter(directory: Path, tensors: dict[str, np.ndarray], *, r: int = 4, alpha: float = 8,
                       targets=("q_proj", "v_proj"), **config) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-llama",
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": list(targets), "use_rslora": False, "use_dora": False, **config,
    }))
    write_safetensors(directory / "adapter_model.safetensors", tensors)
    (directory / "README.md").write_text("a model card the CLI need not send\n")
    return directory


def permute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's HF -> GGUF row order for llama q/k (its LlamaModel.permute), written out here
    independently of the converter under test."""
    rows = x.shape[0]
    head_dim = rows // n_head
    order = [h * head_dim + half * (head_dim // 2) + j
             for h in range(n_head) for j in range(head_dim // 2) for half in (0, 1)]
    return x[order]


def merge_into_gguf(base: Path, out: Path, tensors: dict[str, np.ndarray], *, r: int, alpha: float,
                    n_head: int = 4, permute: bool = True) -> Path:
    """`base` with every LoRA delta of `tensors` added to the weight it targets (an F32 base).
    The delta is computed in Hugging Face's layout and its rows permuted as the base's conversion
    permuted q/k; `permute=False` skips that, to show that a converter which forgot it would differ."""
    deltas: dict[str, np.ndarray] = {}
    for name, a in tensors.items():
        if ".lora_A." not in name:
            continue
        b = tensors[name.replace(".lora_A.", ".lora_B.")]
        layer, module = name.split(".layers.")[1].split(".")[0], name.split(".self_attn.")[1].split(".")[0]
        delta = (alpha / r) * (b.astype(np.float64) @ a.astype(np.float64))
        if permute and module in ("q_proj", "k_proj"):
            delta = permute_rows(delta, n_head)
        deltas[f"blk.{layer}.{_PROJECTIONS[module]}.weight"] = delta
    reader = gguf.GGUFReader(str(base))
    arch = reader.get_field("general.architecture").contents()
    w = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        data = np.array(t.data)
        if t.name in deltas:
            data = (data.astype(np.float64) + deltas[t.name]).astype(np.float32)
        w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out

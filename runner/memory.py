"""How a model is placed: GPU layers and slot count from free memory and the GGUF's shape."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

GIB = 1024**3
SAFETY_MARGIN = 1 * GIB  # CUDA context, compute buffers, fragmentation
MAX_GPU_SLOTS = 64
CPU_SLOTS = 4
_KV_BYTES = {"f16": 2.0, "f32": 4.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@lru_cache(maxsize=1)
def gpu_backend() -> str:
    """"cuda", "metal" or "cpu": what the installed llama.cpp can offload to."""
    try:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return "cpu"
    except Exception:  # no usable llama.cpp: placement is moot, the runner will report the error
        return "cpu"
    return "metal" if sys.platform == "darwin" else "cuda"


def free_gpu_memory() -> int:
    """Free bytes on the first CUDA GPU (0 when unknown)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.split()
        return int(out[0]) * 1024 * 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class Placement:
    gpu_layers: int
    n_layers: int
    parallel: int
    weights_bytes: int
    kv_bytes: int

    @property
    def size(self) -> int:
        return self.weights_bytes + self.kv_bytes

    @property
    def size_vram(self) -> int:
        if self.n_layers <= 0:
            return 0
        frac = min(self.gpu_layers, self.n_layers) / self.n_layers
        return int(self.size * frac)


def kv_bytes_per_token(n_layers: int, n_embd: int, n_head: int, n_head_kv: int, kv_type: str) -> int:
    head_dim = n_embd // max(n_head, 1)
    return int(2 * n_layers * n_head_kv * head_dim * _KV_BYTES.get(kv_type, 2.0))


def place(*, weights_bytes: int, n_layers: int, n_embd: int, n_head: int, n_head_kv: int, num_ctx: int,
          kv_type: str, num_gpu: int | None, parallel: int | None) -> Placement:
    per_token = kv_bytes_per_token(n_layers, n_embd, n_head, n_head_kv, kv_type)
    backend = gpu_backend()
    if backend == "cpu":
        slots = parallel or CPU_SLOTS
        return Placement(0, n_layers, slots, weights_bytes, per_token * num_ctx * slots)
    if backend == "metal":
        slots = parallel or CPU_SLOTS
        layers = n_layers + 1 if num_gpu is None or num_gpu < 0 else num_gpu
        return Placement(layers, n_layers, slots, weights_bytes, per_token * num_ctx * slots)
    free = free_gpu_memory() - SAFETY_MARGIN
    per_slot = per_token * num_ctx
    if parallel:
        slots = parallel
    else:  # as many slots as fit beside the weights, at least CPU_SLOTS
        room = free - weights_bytes
        slots = max(CPU_SLOTS, min(MAX_GPU_SLOTS, room // per_slot if per_slot else MAX_GPU_SLOTS))
    kv = per_slot * slots
    if num_gpu is not None and num_gpu >= 0:
        layers = num_gpu
    else:
        per_layer = (weights_bytes + kv) / max(n_layers, 1)
        layers = int(max(free, 0) // per_layer) if per_layer else n_layers
        layers = n_layers + 1 if layers >= n_layers else layers  # +1: the output layer too
    return Placement(layers, n_layers, int(slots), weights_bytes, kv)


def processor_label(size: int, size_vram: int) -> str:
    """As `ollama ps` shows it: "100% GPU", "48%/52% CPU/GPU", "100% CPU"."""
    if size <= 0 or size_vram <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu = round(100 * size_vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"

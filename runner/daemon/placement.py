"""How a model is placed: GPU layers, GPUs, tensor split and slot count from free memory and the GGUF's shape.

`plan_gpus` is the planner: a pure function of the model's shape, each GPU's free bytes and the settings,
so tests drive it with given numbers. `place` gathers those inputs (nvidia-smi, the installed llama.cpp's
backend) and calls it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

GIB = 1024**3
SAFETY_MARGIN = 1 * GIB  # per GPU used: CUDA context, compute buffers, fragmentation
MAX_GPU_SLOTS = 64
CPU_SLOTS = 4
# Bytes per KV element (ggml block sizes: q8_0 is 34 bytes per 32 values, q4_0 18 per 32)
KV_ELEMENT_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
KV_PAD = 256  # llama.cpp pads the context (and each sequence's share of it) to a multiple of 256 cells


@lru_cache(maxsize=1)
def gpu_backend() -> str:
    """"cuda", "metal" or "cpu": what the installed llama.cpp can offload to."""
    try:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return "cpu"
    except Exception:  # no usable llama.cpp: placement is moot, the runner will report the error
        return "cpu"
    if sys.platform == "darwin":
        return "metal"
    # A build with ggml's RPC backend "supports GPU offload" on any host (to RPC devices): CUDA is there
    # only where its backend library is installed, beside the libllama that was loaded (the package's lib/,
    # or LLAMA_CPP_LIB_PATH's folder, as the GPU benchmarks load their own build).
    lib = str(getattr(llama_cpp.llama_cpp, "_base_path", os.path.join(os.path.dirname(llama_cpp.__file__), "lib")))
    return "cuda" if any(n.startswith("libggml-cuda") for n in _listdir(lib)) else "cpu"


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


# -- GPU discovery ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuInfo:
    index: int  # the CUDA ordinal the runner sees (position among the visible GPUs)
    free: int  # bytes
    total: int = 0
    name: str = ""
    uuid: str = ""


def _visible(gpus: list[GpuInfo], visible: str | None) -> list[GpuInfo]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves, in its order, renumbered as CUDA numbers them.

    Entries are nvidia-smi indices or UUIDs (or their prefixes); as in CUDA, an invalid entry ends the list.
    Entries nvidia-smi cannot name (MIG instances) leave the list as it is: better a rough estimate than
    none."""
    if visible is None:
        return gpus
    if not visible.strip():
        return []
    out: list[GpuInfo] = []
    for entry in (e.strip() for e in visible.split(",")):
        match = [g for g in gpus if (entry.isdigit() and g.index == int(entry))
                 or (entry and not entry.isdigit() and g.uuid.startswith(entry))]
        if len(match) != 1 or match[0] in out:
            if not out and entry.upper().startswith("MIG-"):
                return gpus
            break
        out.append(match[0])
    return [GpuInfo(i, g.free, g.total, g.name, g.uuid) for i, g in enumerate(out)]


def parse_nvidia_smi(text: str, visible: str | None = None) -> list[GpuInfo]:
    """GPUs from `nvidia-smi --query-gpu=index,uuid,name,memory.free,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        try:
            gpus.append(GpuInfo(int(parts[0]), int(parts[3]) * 1024 * 1024, int(parts[4]) * 1024 * 1024,
                                parts[2], parts[1]))
        except ValueError:
            continue  # "[N/A]" on some devices
    return _visible(gpus, visible)


def gpu_devices() -> list[GpuInfo]:
    """The CUDA GPUs the runner will see, with their free memory now ([] when unknown).

    nvidia-smi, not llama.cpp: querying CUDA in the daemon would put a CUDA context on every GPU. Its
    indices are in PCI bus order; the runner is started with CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA
    numbers the GPUs the same way (see runner/engine/__main__.py)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name,memory.free,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out, os.environ.get("CUDA_VISIBLE_DEVICES"))


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


class MemoryProbe(Protocol):
    """What placement and the scheduler ask of the machine: the offload backend, the GPUs' free memory,
    the free RAM. The scheduler takes one (tests/test_scheduler_logic.py gives fixed numbers)."""

    def backend(self) -> str: ...  # as gpu_backend
    def gpus(self) -> list[GpuInfo]: ...  # as gpu_devices
    def ram(self) -> int | None: ...  # as available_ram


class SystemProbe:
    """This machine, asked now (nvidia-smi, /proc/meminfo, the installed llama.cpp)."""

    def backend(self) -> str:
        return gpu_backend()

    def gpus(self) -> list[GpuInfo]:
        return gpu_devices()

    def ram(self) -> int | None:
        return available_ram()


SYSTEM = SystemProbe()


# -- the model's shape and its KV cache ---------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    weights_bytes: int
    n_layers: int
    n_head_kv: int
    key_length: int  # per head
    value_length: int

    def without_kv_cache(self) -> "ModelShape":
        """An embedding-only model (an encoder such as BERT) keeps no KV cache between batches."""
        return ModelShape(self.weights_bytes, self.n_layers, 0, self.key_length, self.value_length)

    @classmethod
    def from_gguf(cls, info) -> "ModelShape":
        """From registry.GGUFInfo. Head sizes come from attention.key_length/value_length where the GGUF
        has them (gemma3: 256, not n_embd / n_head)."""
        n_head = info.head_count or 1
        head_dim = (info.embedding_length or 0) // n_head
        meta = info.metadata or {}

        def meta_int(key: str, default: int) -> int:
            value = meta.get(f"{info.architecture}.{key}")
            return value if isinstance(value, int) and value > 0 else default

        n_head_kv = info.head_count_kv if isinstance(info.head_count_kv, int) else n_head
        return cls(info.tensor_bytes, info.block_count or 1, n_head_kv or n_head,
                   meta_int("attention.key_length", head_dim), meta_int("attention.value_length", head_dim))


def kv_bytes_per_token(shape: ModelShape, kv_type: str) -> int:
    """K and V of every layer for one cell (both of `kv_type`, as the runner sets type_k = type_v)."""
    elements = shape.n_layers * shape.n_head_kv * (shape.key_length + shape.value_length)
    return int(elements * KV_ELEMENT_BYTES.get(kv_type, 2.0))


def _pad(n: int, to: int = KV_PAD) -> int:
    return -(-n // to) * to


def kv_cells(num_ctx: int, slots: int, unified: bool) -> int:
    """Cells llama.cpp allocates for `slots` sequences of `num_ctx` (llama_context's padding rules): one
    pool padded to 256, or, per sequence, its share of that pool padded to 256 again."""
    total = _pad(num_ctx * slots)
    return total if unified else _pad(total // slots) * slots


# -- placements ----------------------------------------------------------------------------------

@dataclass
class Placement:
    gpu_layers: int
    n_layers: int
    parallel: int
    weights_bytes: int
    kv_bytes: int
    kv_type: str = "f16"
    split_mode: str = "none"  # "none": one GPU (main_gpu); "layer": layers spread by tensor_split
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()  # per CUDA ordinal, for split_mode "layer"
    gpus: tuple[tuple[int, int], ...] = field(default=())  # (CUDA ordinal, estimated bytes) per GPU used
    # With RPC workers: the runner's device list, by name ("CUDA0", ..., then "RPC[host:port]#0", ...);
    # the indices above (main_gpu, tensor_split, gpus) are positions in it. Empty: llama.cpp's own list.
    devices: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.weights_bytes + self.kv_bytes

    @property
    def size_vram(self) -> int:
        if self.n_layers <= 0:
            return 0
        frac = min(self.gpu_layers, self.n_layers) / self.n_layers
        return int(self.size * frac)

    @property
    def kv_bytes_per_slot(self) -> int:
        return self.kv_bytes // max(self.parallel, 1)

    @property
    def remote(self) -> bool:
        """Some of the model is on RPC workers' devices."""
        return any(self.devices[i].startswith("RPC") for i, _ in self.gpus if i < len(self.devices))

    def layers_by_device(self) -> dict[int, int]:
        """Layers (the output layer counted as one) per device index used, as llama.cpp assigns them."""
        if self.gpu_layers <= 0 or not self.gpus:
            return {}
        if self.split_mode != "layer" or not self.tensor_split:
            return {self.main_gpu: min(self.gpu_layers, self.n_layers + 1)}
        return layers_per_device(self.n_layers, self.gpu_layers, self.tensor_split)


def layers_per_device(n_layers: int, gpu_layers: int, tensor_split: tuple[float, ...]) -> dict[int, int]:
    """llama.cpp's split (llama-model.cpp, load_tensors): the last `gpu_layers` of the n_layers + 1 (the
    output layer last) go to the devices in order, each taking the run up to its cumulative share."""
    total = sum(tensor_split)
    if total <= 0:
        return {}
    bounds, running = [], 0.0
    for share in tensor_split:
        running += share
        bounds.append(running / total)
    offloaded = min(gpu_layers, n_layers + 1)
    start = n_layers + 1 - offloaded
    counts: dict[int, int] = {}
    for layer in range(start, n_layers + 1):
        position = (layer - start) / offloaded
        device = next((i for i, b in enumerate(bounds) if b > position), len(bounds) - 1)
        counts[device] = counts.get(device, 0) + 1
    return counts


def _cpu_placement(shape: ModelShape, per_token: int, num_ctx: int, slots: int, kv_type: str,
                   gpu_layers: int = 0) -> Placement:
    # main_gpu -1 with split_mode "none": llama.cpp then uses no GPU at all (no CUDA context either)
    return Placement(gpu_layers, shape.n_layers, slots, shape.weights_bytes,
                     per_token * kv_cells(num_ctx, slots, unified=False), kv_type, main_gpu=0 if gpu_layers else -1)


def plan_gpus(shape: ModelShape, gpus: list[GpuInfo], *, num_ctx: int, kv_type: str = "f16",
              parallel: int | None = None, num_gpu: int | None = None, main_gpu: int | None = None,
              spread: bool = False, margin: int = SAFETY_MARGIN, remote_from: int | None = None) -> Placement:
    """Where a model goes on CUDA GPUs. Pure: no I/O, so tests give it the numbers.

    A model that fits one GPU whole goes on one (the one with the most free memory, or `main_gpu`):
    no traffic between GPUs. One that fits none alone (or any model when `spread`) is split by layers
    across all GPUs, each getting a share proportional to its free memory, so that each fills alike.
    What fits nowhere whole is offloaded in part (the first layers stay on the CPU), across all GPUs.
    `num_gpu` (Ollama's option: layers to offload; 0 keeps the model on the CPU) overrides the count.
    Slots: `parallel`, or as many as fit beside the weights (CPU_SLOTS..MAX_GPU_SLOTS).
    `remote_from`: devices from this index on are RPC workers'; a model that fits one local GPU stays on
    it, before any remote one (no network between its layers)."""
    per_token = kv_bytes_per_token(shape, kv_type)
    min_slots = parallel or CPU_SLOTS
    if not gpus or num_gpu == 0:
        return _cpu_placement(shape, per_token, num_ctx, min_slots, kv_type)
    usable = {g.index: max(g.free - margin, 0) for g in gpus}
    n_all = shape.n_layers + 1  # the repeating layers and the output layer

    def need(slots: int) -> int:  # the whole model: weights and the KV cache (a stream per slot)
        return shape.weights_bytes + per_token * kv_cells(num_ctx, slots, unified=False)

    def layer_bytes(layers: int, slots: int) -> int:
        return need(slots) * min(layers, shape.n_layers) // max(shape.n_layers, 1)

    want = n_all if num_gpu is None or num_gpu < 0 else min(num_gpu, n_all)
    by_index = sorted(gpus, key=lambda g: g.index)
    main = next((g for g in gpus if g.index == main_gpu), None)
    def is_remote(g: GpuInfo) -> bool:
        return remote_from is not None and g.index >= remote_from

    singles = [main] if main else sorted(gpus, key=lambda g: (is_remote(g), -usable[g.index], g.index))
    candidates = [[g] for g in singles] if not (spread and len(gpus) > 1) else []
    if len(gpus) > 1 or not candidates:
        candidates.append(by_index)
    chosen = next((c for c in candidates if sum(usable[g.index] for g in c) >= layer_bytes(want, min_slots)),
                  candidates[-1])
    room = sum(usable[g.index] for g in chosen)

    slots = min_slots
    if not parallel and room >= need(CPU_SLOTS):  # whole on the GPUs: as many slots as fit, within bounds
        per_slot = max(per_token * num_ctx, 1)
        slots = max(CPU_SLOTS, min(MAX_GPU_SLOTS, (room - shape.weights_bytes) // per_slot))
        while slots > CPU_SLOTS and need(slots) > room:  # padding can push the last one over
            slots -= 1
    if num_gpu is not None and num_gpu >= 0:
        layers = want
    else:
        per_layer = need(slots) / max(shape.n_layers, 1)
        layers = int(room // per_layer) if per_layer else n_all
        layers = n_all if layers >= shape.n_layers else layers
    if layers <= 0:
        return _cpu_placement(shape, per_token, num_ctx, slots, kv_type)

    placement = Placement(layers, shape.n_layers, int(slots), shape.weights_bytes,
                          per_token * kv_cells(num_ctx, slots, unified=False), kv_type)
    vram = placement.size_vram
    if len(chosen) == 1:
        placement.main_gpu = chosen[0].index
        placement.gpus = ((chosen[0].index, vram),)
        return placement
    shares = [usable[g.index] / room if room else 1 / len(chosen) for g in chosen]
    split = [0.0] * (max(g.index for g in gpus) + 1)
    for g, share in zip(chosen, shares):
        split[g.index] = round(share, 4)
    placement.split_mode = "layer"
    placement.main_gpu = main.index if main else chosen[0].index
    placement.tensor_split = tuple(split)
    placement.gpus = tuple((g.index, int(vram * share)) for g, share in zip(chosen, shares))
    return placement


def plan_with_remote(shape: ModelShape, local: list[GpuInfo], remote: list, **kw) -> Placement:
    """`plan_gpus` over this host's GPUs and RPC workers' devices (runner/rpc.RemoteDevice), numbered as
    the runner lists them: the local GPUs first, then the workers' devices in LM_RPC_WORKERS order."""
    n = len(local)
    gpus = list(local) + [GpuInfo(n + i, d.free, d.total, d.name) for i, d in enumerate(remote)]
    placement = plan_gpus(shape, gpus, remote_from=n, **kw)
    placement.devices = tuple(f"CUDA{g.index}" for g in local) + tuple(d.name for d in remote)
    if not placement.remote:  # it fits this host's GPUs: no workers, llama.cpp's own device list
        placement.devices, placement.tensor_split = (), placement.tensor_split[:n]
    return placement


def place(shape: ModelShape, *, num_ctx: int, kv_type: str, num_gpu: int | None, parallel: int | None,
          main_gpu: int | None = None, spread: bool = False, remote: list | None = None,
          probe: MemoryProbe = SYSTEM) -> Placement:
    """The placement on the machine `probe` describes, now (and on the RPC workers' devices in `remote`)."""
    per_token = kv_bytes_per_token(shape, kv_type)
    backend = probe.backend()
    if remote:
        local = probe.gpus() if backend == "cuda" else []
        return plan_with_remote(shape, local, remote, num_ctx=num_ctx, kv_type=kv_type, parallel=parallel,
                                num_gpu=num_gpu, main_gpu=main_gpu, spread=spread)
    if backend == "cpu":
        return _cpu_placement(shape, per_token, num_ctx, parallel or CPU_SLOTS, kv_type)
    if backend == "metal":  # one unified-memory device: llama.cpp offloads what it is told
        layers = shape.n_layers + 1 if num_gpu is None or num_gpu < 0 else num_gpu
        return _cpu_placement(shape, per_token, num_ctx, parallel or CPU_SLOTS, kv_type, layers)
    return plan_gpus(shape, probe.gpus(), num_ctx=num_ctx, kv_type=kv_type, parallel=parallel, num_gpu=num_gpu,
                     main_gpu=main_gpu, spread=spread)


def processor_label(size: int, size_vram: int) -> str:
    """As `ollama ps` shows it: "100% GPU", "48%/52% CPU/GPU", "100% CPU"."""
    if size <= 0 or size_vram <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu = round(100 * size_vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"

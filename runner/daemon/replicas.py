"""One copy of a model per GPU (LM_REPLICAS): which GPUs get a copy, and which copy takes a request.

Pure functions, so tests drive them with given numbers; runner/daemon/scheduler.py starts the runners.

A model split across GPUs by layers gains memory, not speed: one GPU computes while the others wait.
A model that fits one GPU whole can instead run as a copy on each, each with its own slots, so N GPUs
serve N times the requests at once.
"""

from __future__ import annotations

from runner.daemon.placement import GpuInfo, ModelShape, Placement, plan_gpus


def replica_count(setting: int | str, n_gpus: int) -> int:
    """How many copies LM_REPLICAS asks for on `n_gpus` GPUs: "auto" one per GPU, a number at most one
    per GPU; never fewer than one (the CPU, or one GPU: one copy, as without the setting)."""
    wanted = n_gpus if setting == "auto" else int(setting)
    return max(1, min(wanted, n_gpus))


def plan_replicas(shape: ModelShape, gpus: list[GpuInfo], setting: int | str, **plan) -> list[Placement]:
    """The placement of each copy: one per GPU that holds the whole model (most free memory first), as
    many as `setting` asks; or the one placement plan_gpus makes where fewer than two GPUs hold it whole
    (the model is then split by layers, or partly offloaded, as without replicas).

    `plan`: plan_gpus's keywords (num_ctx, kv_type, parallel, num_gpu, ...). An explicit main_gpu or
    spread (LM_SCHED_SPREAD) asks for one placement, so either means one copy."""
    count = replica_count(setting, len(gpus))
    if count < 2 or plan.get("main_gpu") is not None or plan.get("spread"):
        return [plan_gpus(shape, gpus, **plan)]
    whole = []
    for gpu in sorted(gpus, key=lambda g: (-g.free, g.index)):
        placement = plan_gpus(shape, [gpu], **plan)
        if placement.gpu_layers > placement.n_layers:  # every layer and the output on this GPU
            whole.append(placement)
    if len(whole) < 2:
        return [plan_gpus(shape, gpus, **plan)]
    return sorted(whole[:count], key=lambda p: p.main_gpu)


def pick_replica(active: list[int], slots: list[int]) -> int:
    """The copy a new request goes to: the one with the most free slots (or, all full, the shortest
    queue beyond them); on a tie the first."""
    return max(range(len(active)), key=lambda i: (slots[i] - active[i], -i))

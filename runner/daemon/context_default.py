"""The default `num_ctx` when neither the request, the Modelfile nor LM_CONTEXT_LENGTH sets one.

Ollama's rule (server/routes.go, Serve: "vram-based default context"): the total memory of all GPUs
(each GPU's total, not its free memory, less the overhead its envconfig.GpuOverhead reserves; lm
reserves none) picks a tier: 4,096 below 23 GiB, 32,768 below 47 GiB and 262,144 from there (its
thresholds sit a little under 24 and 48 GiB so that cards sold as such qualify). No GPU sums to 0: 4,096. The scheduler then caps it at the model's trained
context (server/sched.go effectiveContext, llm/server.go NewLlamaServer), so a small model does not
reserve KV cache it could never use.
"""

from __future__ import annotations

GIB = 1024**3
TIERS = ((47 * GIB, 262_144), (23 * GIB, 32_768))  # (at least this much GPU memory, default num_ctx)
SMALLEST = 4_096  # below every tier, and with no GPU


def tier_num_ctx(gpu_totals: list[int], overhead_per_gpu: int = 0) -> int:
    """The tier's num_ctx for GPUs of these total sizes (bytes)."""
    total = sum(max(t - overhead_per_gpu, 0) for t in gpu_totals)
    for least, num_ctx in TIERS:
        if total >= least:
            return num_ctx
    return SMALLEST


def default_num_ctx(gpu_totals: list[int], trained_context: int | None, overhead_per_gpu: int = 0) -> int:
    """The tier's num_ctx, at most the model's trained context (the GGUF's context_length; unknown or 0:
    no cap)."""
    num_ctx = tier_num_ctx(gpu_totals, overhead_per_gpu)
    if trained_context and trained_context > 0:
        return min(num_ctx, trained_context)
    return num_ctx

"""Which models are loaded: load on first use, keep for keep_alive, evict, queue, reload when needed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from runner.settings import Settings
from runner.daemon.context_default import default_num_ctx
from runner.daemon.placement import SYSTEM, MemoryProbe, ModelShape, Placement, place
from runner.model.config import ModelConfig
from runner.daemon.replicas import pick_replica, plan_replicas
from runner.ggml.rpc_client import WorkerError, parse_workers, probe_all
from runner.daemon.runner_client import RunnerError, RunnerClient
from runner.engine.protocol import LaunchConfig

log = logging.getLogger("lm.scheduler")
FOREVER = float("inf")


class ServerBusy(Exception):
    """More requests are waiting than LM_MAX_QUEUE allows (HTTP 503)."""


class Runner(Protocol):
    """What the scheduler does with a runner process: start it (returning once it serves), ask whether it
    still runs, wait for its exit, stop it. RunnerClient is the real one; the routes use the rest of it
    (completion_batches, embed, ...) through Lease.proc, so a fake for the scheduler's tests needs only
    these."""

    @property
    def alive(self) -> bool: ...

    async def start(self, timeout: float) -> dict: ...

    async def wait_exited(self, timeout: float) -> None: ...

    async def stop(self) -> None: ...


class RunnerFactory(Protocol):
    """A runner, not started yet, for its launch config (RunnerClient's own constructor is the real
    factory)."""

    def __call__(self, launch: LaunchConfig, *, debug: bool = False) -> Runner: ...


@dataclass
class Replica:
    """One runner process holding a copy of the model (one per GPU with LM_REPLICAS; usually the only one)."""
    proc: Runner
    placement: Placement
    active: int = 0


@dataclass
class ResidentModel:
    config: ModelConfig
    num_ctx: int
    num_gpu: int | None
    replicas: list[Replica]
    keep_alive: float
    active: int = 0  # requests on all replicas
    expires_at: float = FOREVER  # wall-clock time, for /api/ps
    _expiry: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    main_gpu: int | None = None  # the request's main_gpu option when it was loaded
    use_mmap: bool = True  # weights mapped from the file (use_mmap false: read into memory)
    draft_count: int = 0  # speculative decoding, over the requests it served: tokens drafted
    draft_accepted_count: int = 0  # and of those, accepted

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def placement(self) -> Placement:  # the first copy's: what one copy costs, and where it lies
        return self.replicas[0].placement

    @property
    def proc(self) -> Runner:
        return self.replicas[0].proc

    @property
    def alive(self) -> bool:
        return all(r.proc.alive for r in self.replicas)

    @property
    def slots(self) -> int:
        return sum(r.placement.parallel for r in self.replicas)

    @property
    def holds_workers(self) -> bool:
        """On RPC workers' devices: a worker serves one runner at a time (runner/ggml/rpc_client.py)."""
        return any(r.placement.remote for r in self.replicas)


@dataclass
class Lease:
    """One request's hold on a loaded model: the model, and the replica that serves the request."""
    model: ResidentModel
    replica: Replica

    @property
    def proc(self) -> Runner:
        return self.replica.proc

    @property
    def placement(self) -> Placement:
        return self.replica.placement

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def num_ctx(self) -> int:
        return self.model.num_ctx

    @property
    def keep_alive(self) -> float:
        return self.model.keep_alive

    @property
    def active(self) -> int:
        return self.model.active


class Scheduler:
    def __init__(self, settings: Settings, *, runner_factory: RunnerFactory = RunnerClient,
                 memory: MemoryProbe = SYSTEM):
        """`runner_factory` makes the runner processes and `memory` tells what the machine has free: the
        real ones unless a test gives fakes (tests/test_scheduler_logic.py)."""
        self.settings = settings
        self.runner_factory = runner_factory
        self.memory = memory
        self.loaded: dict[str, ResidentModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[str, int] = {}
        self._gpu_totals: list[int] | None = None  # asked once: a GPU's total memory does not change

    def _num_ctx(self, config: ModelConfig, options: dict) -> int:
        value = options.get("num_ctx") or config.parameters.get("num_ctx") or self.settings.context_length
        if not value:  # Ollama's automatic default: by GPU memory, at most the model's trained context
            value = default_num_ctx(self._gpus_total_memory(), config.gguf.context_length)
        return max(int(value), 16)

    def _gpus_total_memory(self) -> list[int]:
        """Each usable GPU's total bytes (none where the installed llama.cpp cannot offload to CUDA)."""
        if self._gpu_totals is None:
            gpus = self.memory.gpus() if self.memory.backend() == "cuda" else []
            self._gpu_totals = [g.total for g in gpus]
        return self._gpu_totals

    def _num_gpu(self, config: ModelConfig, options: dict) -> int | None:
        value = options.get("num_gpu", config.parameters.get("num_gpu"))
        return None if value is None else int(value)

    @staticmethod
    def _main_gpu(config: ModelConfig, options: dict) -> int | None:
        value = options.get("main_gpu", config.parameters.get("main_gpu"))
        return None if value is None else int(value)

    async def acquire(self, config: ModelConfig, options: dict, keep_alive: float | None) -> Lease:
        """A loaded runner for `config` (the replica with the most free slots), with this request counted
        as active on it."""
        key = config.key
        loaded = self.loaded.get(key)
        slots = loaded.slots if loaded else (self.settings.num_parallel or 4)
        if self._inflight.get(key, 0) >= slots + self.settings.max_queue:
            raise ServerBusy("server busy, please try again.  maximum pending requests exceeded")
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            async with self._locks.setdefault(key, asyncio.Lock()):
                lm = await self._ensure_loaded(config, options, keep_alive)
                replica = lm.replicas[pick_replica([r.active for r in lm.replicas],
                                                   [r.placement.parallel for r in lm.replicas])]
                replica.active += 1
                lm.active += 1
                lm.idle.clear()
                self._cancel_expiry(lm)
                return Lease(lm, replica)
        except BaseException:
            self._inflight[key] -= 1
            raise

    async def _ensure_loaded(self, config: ModelConfig, options: dict, keep_alive: float | None) -> ResidentModel:
        num_ctx, num_gpu = self._num_ctx(config, options), self._num_gpu(config, options)
        main_gpu = self._main_gpu(config, options)
        lm = self.loaded.get(config.key)
        if lm is not None:
            stale = (lm.num_ctx != num_ctx or lm.config.digest != config.digest
                     or (num_gpu is not None and num_gpu != lm.num_gpu)
                     or (main_gpu is not None and main_gpu != lm.main_gpu)
                     or self._use_mmap(config, options) != lm.use_mmap)
            if not lm.alive:
                log.warning("runner for %s died; reloading", config.display)
                await self._unload(lm)
            elif stale:
                await lm.idle.wait() if lm.active else None  # let running requests finish first
                await self._unload(lm)
            else:
                if keep_alive is not None:
                    lm.keep_alive = keep_alive
                return lm
        await self._make_room()
        placements = await self._place(config, num_ctx, num_gpu, main_gpu)
        # Memory: a model that would not fit whole on the GPU (or in RAM) first evicts idle models.
        while not all(self._fits(p) for p in placements) and any(m.active == 0 for m in self.loaded.values()):
            await self._unload(min((m for m in self.loaded.values() if m.active == 0), key=lambda m: m.expires_at))
            placements = await self._place(config, num_ctx, num_gpu, main_gpu)
        lm = await self._load(config, options, placements, num_ctx, num_gpu, keep_alive)
        lm.main_gpu = main_gpu
        return lm

    async def _remote_devices(self) -> list:
        """The RPC workers' devices to plan with: none where no worker is set, or while another loaded
        model holds the workers (a worker serves one runner at a time: this model then stays on this
        host). A worker that does not answer fails the load with its reason: a model meant to span the
        workers is not quietly loaded without one."""
        endpoints = parse_workers(",".join(self.settings.rpc_workers))
        if not endpoints or any(m.holds_workers for m in self.loaded.values()):
            return []
        try:
            return await asyncio.to_thread(probe_all, endpoints)
        except WorkerError as exc:
            raise RunnerError(str(exc)) from None

    async def _place(self, config: ModelConfig, num_ctx: int, num_gpu: int | None,
                     main_gpu: int | None) -> list[Placement]:
        """One placement per replica to start (one, unless LM_REPLICAS gives a model that fits one GPU
        a copy on each)."""
        kv_type, _flash = self.settings.engine_kv
        shape = ModelShape.from_gguf(config.gguf)
        if config.is_encoder:
            shape = shape.without_kv_cache()
        plan = dict(num_ctx=num_ctx, kv_type=kv_type, num_gpu=num_gpu, parallel=self.settings.num_parallel or None,
                    main_gpu=main_gpu, spread=self.settings.sched_spread)
        remote = await self._remote_devices()
        if self.settings.replicas != 1 and not remote and self.memory.backend() == "cuda":
            return plan_replicas(shape, self.memory.gpus(), self.settings.replicas, **plan)
        return [place(shape, remote=remote, probe=self.memory, **plan)]

    @staticmethod
    def _placement_launch(placement: Placement, kv_type: str, flash: str) -> dict:
        """The runner's settings for where the model goes and how its KV cache is stored."""
        return dict(gpu_layers=placement.gpu_layers, kv_type=kv_type, flash_attn=flash,
                    split_mode=placement.split_mode, main_gpu=placement.main_gpu,
                    tensor_split=tuple(placement.tensor_split))

    def _fits(self, placement: Placement) -> bool:
        if self.memory.backend() == "cuda":
            return placement.gpu_layers > placement.n_layers  # every layer and the output on the GPU
        available = self.memory.ram()
        return available is None or placement.size <= available

    async def _make_room(self) -> None:
        """LM_MAX_LOADED_MODELS: evict the idle model expiring soonest (or wait for one to go idle)."""
        limit = self.settings.max_loaded_models or 3
        while len(self.loaded) >= limit:
            idle = [m for m in self.loaded.values() if m.active == 0]
            if not idle:
                # Every loaded model is busy: wait for one to become idle, then evict it.
                waiters = [asyncio.create_task(m.idle.wait()) for m in self.loaded.values()]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                continue
            victim = min(idle, key=lambda m: m.expires_at)
            await self._unload(victim)

    async def _load(self, config: ModelConfig, options: dict, placements: list[Placement], num_ctx: int,
                    num_gpu: int | None, keep_alive) -> ResidentModel:
        """Starts a runner per placement (together); if one fails, none is left running."""
        procs = [self._runner(config, options, p, num_ctx) for p in placements]
        results = await asyncio.gather(*(p.start(self.settings.load_timeout) for p in procs), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
            raise failed[0]
        lm = ResidentModel(config, num_ctx, num_gpu, [Replica(proc, p) for proc, p in zip(procs, placements)],
                         keep_alive if keep_alive is not None else self.settings.keep_alive)
        lm.use_mmap = self._use_mmap(config, options)
        lm.idle.set()
        self.loaded[config.key] = lm
        return lm

    def _runner(self, config: ModelConfig, options: dict, placement: Placement, num_ctx: int) -> Runner:
        """The runner process (not started yet) for one copy of the model at `placement`."""
        kv_type, flash = self.settings.engine_kv
        launch = dict(model=str(config.model_path), num_ctx=num_ctx, parallel=placement.parallel,
                      **self._placement_launch(placement, kv_type, flash))
        threads = options.get("num_thread") or config.parameters.get("num_thread")
        if threads:
            launch["num_thread"] = int(threads)
        batch = options.get("num_batch") or config.parameters.get("num_batch")
        if batch:  # tokens per llama_decode (and micro-batch): bigger prefills faster, at more memory
            launch["num_batch"] = int(batch)
        if placement.gpu_layers > 0:
            launch["mixed_prefill"] = True  # GPU: throughput over bit-exact batch invariance
        invariant = self.settings.batch_invariant
        if invariant or (invariant is None and placement.gpu_layers == 0):
            launch["repack"] = False  # the same seed gives the same text alone and under load
        pipeline = self.settings.pipeline
        if pipeline is None:  # on a GPU; not across workers, whose one connection each step crosses
            pipeline = placement.gpu_layers > 0 and not placement.remote
        if pipeline and placement.parallel >= 4 and placement.parallel % 2 == 0:
            launch["contexts"] = 2  # sample one half of the slots while the GPU runs the other
        if {"embedding", "rerank"} & set(config.capabilities):
            launch["embedding_only"] = True  # an embedding model or reranker (BERT and kin): no generation context
        launch["use_mmap"] = self._use_mmap(config, options)
        # Engine settings the runner no longer reads from the environment itself
        launch.update(spec_max_sequences=self.settings.spec_max_sequences,
                      profile_every=self.settings.engine_profile)
        launch["adapters"] = tuple(str(a) for a in config.adapters)  # LoRA layers, applied in manifest order
        if placement.remote:  # the workers' devices follow this host's GPUs, as the plan numbered them
            launch["rpc_workers"] = tuple(self.settings.rpc_workers)
        layers = placement.layers_by_device()
        gpus = ", ".join(f"{device_label(placement, i)} {b / 2**30:.1f} GiB"
                         + (f" ({layers[i]} layers)" if placement.devices and i in layers else "")
                         for i, b in placement.gpus)
        log.info("loading %s (ctx %d, %d slots, %d GPU layers%s; KV cache %s, %.1f MiB per slot, flash attention %s)",
                 config.display, num_ctx, placement.parallel, placement.gpu_layers, f": {gpus}" if gpus else "",
                 kv_type, placement.kv_bytes_per_slot / 2**20, flash)
        return self.runner_factory(LaunchConfig(**launch), debug=self.settings.debug)

    @staticmethod
    def _use_mmap(config: ModelConfig, options: dict) -> bool:
        """The request's use_mmap, else the model's PARAMETER; unset maps the weights (llama.cpp's default)."""
        value = options.get("use_mmap", config.parameters.get("use_mmap"))
        return value is not False

    def release(self, lease: Lease) -> None:
        lease.replica.active -= 1
        lm = lease.model
        lm.active -= 1
        self._inflight[lm.key] = max(self._inflight.get(lm.key, 1) - 1, 0)
        if lm.active > 0:
            return
        lm.idle.set()
        self._schedule_expiry(lm)

    def _schedule_expiry(self, lm: ResidentModel) -> None:
        self._cancel_expiry(lm)
        if lm.keep_alive < 0:
            lm.expires_at = FOREVER
            return
        lm.expires_at = time.time() + lm.keep_alive
        loop = asyncio.get_running_loop()
        lm._expiry = loop.call_later(lm.keep_alive, lambda: asyncio.ensure_future(self._expire(lm)))

    def _cancel_expiry(self, lm: ResidentModel) -> None:
        if lm._expiry:
            lm._expiry.cancel()
            lm._expiry = None
        lm.expires_at = FOREVER

    async def _expire(self, lm: ResidentModel) -> None:
        async with self._locks.setdefault(lm.key, asyncio.Lock()):
            if lm.active == 0 and self.loaded.get(lm.key) is lm:
                await self._unload(lm)

    async def _unload(self, lm: ResidentModel) -> None:
        self._cancel_expiry(lm)
        if self.loaded.get(lm.key) is lm:
            del self.loaded[lm.key]
        await asyncio.gather(*(r.proc.stop() for r in lm.replicas))
        log.info("unloaded %s", lm.config.display)

    async def unload(self, key: str) -> bool:
        lm = self.loaded.get(key)
        if lm is None:
            return False
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self.loaded.get(key) is lm:
                await self._unload(lm)
        return True

    async def reap_if_dead(self, lease: Lease, *, failed: bool = False) -> None:
        """After a runner error: forget a dead runner so the next request loads the model again.

        `failed`: the request saw the runner break. Its exit status reaches asyncio a moment after the
        broken stream, so wait briefly for it; else the next request could be sent to the dead runner.
        Other replicas of the model finish their requests first, then stop with it."""
        lm, proc = lease.model, lease.proc
        if failed and proc.alive:
            await proc.wait_exited(timeout=2)
        if not proc.alive and self.loaded.get(lm.key) is lm:
            del self.loaded[lm.key]
            self._cancel_expiry(lm)
            await proc.stop()
            if len(lm.replicas) > 1:
                asyncio.ensure_future(self._retire(lm))

    @staticmethod
    async def _retire(lm: ResidentModel) -> None:
        await lm.idle.wait()
        await asyncio.gather(*(r.proc.stop() for r in lm.replicas), return_exceptions=True)

    async def shutdown(self) -> None:
        await asyncio.gather(*(self._unload(lm) for lm in list(self.loaded.values())), return_exceptions=True)


def device_label(placement: Placement, index: int) -> str:
    """A device of a placement as the load log and /api/ps name it: GPU0, or the runner's device name."""
    if placement.devices and index < len(placement.devices):
        return placement.devices[index]
    return f"GPU{index}"


def placement_devices(placement: Placement) -> list[dict]:
    """/api/ps's "gpus": each device a placement uses, its estimated bytes, and with RPC workers its name
    and layer count (the split across hosts)."""
    layers = placement.layers_by_device() if placement.devices else {}
    out = []
    for index, size in placement.gpus:
        entry = {"id": index, "size_vram": size}
        if placement.devices:
            entry.update(name=device_label(placement, index), layers=layers.get(index, 0))
        out.append(entry)
    return out


__all__ = ["Scheduler", "ServerBusy", "ResidentModel", "Lease", "Replica", "RunnerError", "device_label",
           "placement_devices"]

"""Which models are loaded: load on first use, keep for keep_alive, evict, queue, reload when needed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from .config import Settings
from .memory import ModelShape, Placement, available_ram, gpu_backend, place
from .model_config import ModelConfig
from .runner_process import RunnerError, RunnerProcess

log = logging.getLogger("lm.scheduler")
FOREVER = float("inf")


class ServerBusy(Exception):
    """More requests are waiting than LM_MAX_QUEUE allows (HTTP 503)."""


@dataclass
class LoadedModel:
    config: ModelConfig
    num_ctx: int
    num_gpu: int | None
    placement: Placement
    proc: RunnerProcess
    keep_alive: float
    active: int = 0
    expires_at: float = FOREVER  # wall-clock time, for /api/ps
    _expiry: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    main_gpu: int | None = None  # the request's main_gpu option when it was loaded
    draft_count: int = 0  # speculative decoding, over the requests it served: tokens drafted
    draft_accepted_count: int = 0  # and of those, accepted

    @property
    def key(self) -> str:
        return self.config.key


class Scheduler:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[str, int] = {}

    def _num_ctx(self, config: ModelConfig, options: dict) -> int:
        value = options.get("num_ctx") or config.parameters.get("num_ctx") or self.settings.context_length
        return max(int(value), 16)

    def _num_gpu(self, config: ModelConfig, options: dict) -> int | None:
        value = options.get("num_gpu", config.parameters.get("num_gpu"))
        return None if value is None else int(value)

    @staticmethod
    def _main_gpu(config: ModelConfig, options: dict) -> int | None:
        value = options.get("main_gpu", config.parameters.get("main_gpu"))
        return None if value is None else int(value)

    async def acquire(self, config: ModelConfig, options: dict, keep_alive: float | None) -> LoadedModel:
        """A loaded runner for `config`, with this request counted as active on it."""
        key = config.key
        loaded = self.loaded.get(key)
        slots = loaded.placement.parallel if loaded else (self.settings.num_parallel or 4)
        if self._inflight.get(key, 0) >= slots + self.settings.max_queue:
            raise ServerBusy("server busy, please try again.  maximum pending requests exceeded")
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            async with self._locks.setdefault(key, asyncio.Lock()):
                lm = await self._ensure_loaded(config, options, keep_alive)
                lm.active += 1
                lm.idle.clear()
                self._cancel_expiry(lm)
                return lm
        except BaseException:
            self._inflight[key] -= 1
            raise

    async def _ensure_loaded(self, config: ModelConfig, options: dict, keep_alive: float | None) -> LoadedModel:
        num_ctx, num_gpu = self._num_ctx(config, options), self._num_gpu(config, options)
        main_gpu = self._main_gpu(config, options)
        lm = self.loaded.get(config.key)
        if lm is not None:
            stale = (lm.num_ctx != num_ctx or lm.config.digest != config.digest
                     or (num_gpu is not None and num_gpu != lm.num_gpu)
                     or (main_gpu is not None and main_gpu != lm.main_gpu))
            if not lm.proc.alive:
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
        placement = self._place(config, num_ctx, num_gpu, main_gpu)
        # Memory: a model that would not fit whole on the GPU (or in RAM) first evicts idle models.
        while not self._fits(placement) and any(m.active == 0 for m in self.loaded.values()):
            await self._unload(min((m for m in self.loaded.values() if m.active == 0), key=lambda m: m.expires_at))
            placement = self._place(config, num_ctx, num_gpu, main_gpu)
        lm = await self._load(config, options, placement, num_ctx, num_gpu, keep_alive)
        lm.main_gpu = main_gpu
        return lm

    def _place(self, config: ModelConfig, num_ctx: int, num_gpu: int | None, main_gpu: int | None) -> Placement:
        kv_type, _flash = self.settings.engine_kv
        shape = ModelShape.from_gguf(config.gguf)
        if config.is_encoder:
            shape = shape.without_kv_cache()
        return place(
            shape, num_ctx=num_ctx, kv_type=kv_type, num_gpu=num_gpu,
            parallel=self.settings.num_parallel or None, main_gpu=main_gpu, spread=self.settings.sched_spread,
        )

    @staticmethod
    def _placement_args(placement: Placement, kv_type: str, flash: str) -> list[str]:
        """The runner's arguments for where the model goes and how its KV cache is stored."""
        args = ["--gpu-layers", str(placement.gpu_layers), "--kv-type", kv_type, "--flash-attn", flash,
                "--split-mode", placement.split_mode, "--main-gpu", str(placement.main_gpu)]
        if placement.tensor_split:
            args += ["--tensor-split", ",".join(f"{x:g}" for x in placement.tensor_split)]
        return args

    @staticmethod
    def _fits(placement: Placement) -> bool:
        if gpu_backend() == "cuda":
            return placement.gpu_layers > placement.n_layers  # every layer and the output on the GPU
        available = available_ram()
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

    async def _load(self, config: ModelConfig, options: dict, placement: Placement, num_ctx: int,
                    num_gpu: int | None, keep_alive) -> LoadedModel:
        kv_type, flash = self.settings.engine_kv
        args = ["--ctx", str(num_ctx), "--parallel", str(placement.parallel),
                *self._placement_args(placement, kv_type, flash)]
        threads = options.get("num_thread") or config.parameters.get("num_thread")
        if threads:
            args += ["--threads", str(int(threads))]
        batch = options.get("num_batch") or config.parameters.get("num_batch")
        if batch:  # tokens per llama_decode (and micro-batch): bigger prefills faster, at more memory
            args += ["--batch", str(int(batch))]
        if placement.gpu_layers > 0:
            args.append("--mixed-prefill")  # GPU: throughput over bit-exact batch invariance
            if placement.gpu_layers > placement.n_layers:  # the output layer is on the GPU: sample there too
                if self.settings.gpu_sampling:
                    args.append("--backend-sampling")
                elif self.settings.gpu_top_k > 0:
                    args += ["--backend-top-k", str(self.settings.gpu_top_k)]
        pipeline = self.settings.pipeline
        if pipeline is None:
            pipeline = placement.gpu_layers > 0
        if pipeline and placement.parallel >= 4 and placement.parallel % 2 == 0:
            args += ["--contexts", "2"]  # sample one half of the slots while the GPU runs the other
        if {"embedding", "rerank"} & set(config.capabilities):
            args.append("--embedding")  # an embedding model or reranker (BERT and kin): no generation context
        for adapter in config.adapters:  # LoRA layers, applied in manifest order
            args += ["--adapter", str(adapter)]
        proc = RunnerProcess(config.model_path, args, debug=self.settings.debug)
        gpus = ", ".join(f"GPU{i} {b / 2**30:.1f} GiB" for i, b in placement.gpus)
        log.info("loading %s (ctx %d, %d slots, %d GPU layers%s; KV cache %s, %.1f MiB per slot, flash attention %s)",
                 config.display, num_ctx, placement.parallel, placement.gpu_layers, f": {gpus}" if gpus else "",
                 kv_type, placement.kv_bytes_per_slot / 2**20, flash)
        await proc.start(self.settings.load_timeout)
        lm = LoadedModel(config, num_ctx, num_gpu, placement, proc,
                         keep_alive if keep_alive is not None else self.settings.keep_alive)
        lm.idle.set()
        self.loaded[config.key] = lm
        return lm

    def release(self, lm: LoadedModel) -> None:
        lm.active -= 1
        self._inflight[lm.key] = max(self._inflight.get(lm.key, 1) - 1, 0)
        if lm.active > 0:
            return
        lm.idle.set()
        self._schedule_expiry(lm)

    def _schedule_expiry(self, lm: LoadedModel) -> None:
        self._cancel_expiry(lm)
        if lm.keep_alive < 0:
            lm.expires_at = FOREVER
            return
        lm.expires_at = time.time() + lm.keep_alive
        loop = asyncio.get_running_loop()
        lm._expiry = loop.call_later(lm.keep_alive, lambda: asyncio.ensure_future(self._expire(lm)))

    def _cancel_expiry(self, lm: LoadedModel) -> None:
        if lm._expiry:
            lm._expiry.cancel()
            lm._expiry = None
        lm.expires_at = FOREVER

    async def _expire(self, lm: LoadedModel) -> None:
        async with self._locks.setdefault(lm.key, asyncio.Lock()):
            if lm.active == 0 and self.loaded.get(lm.key) is lm:
                await self._unload(lm)

    async def _unload(self, lm: LoadedModel) -> None:
        self._cancel_expiry(lm)
        if self.loaded.get(lm.key) is lm:
            del self.loaded[lm.key]
        await lm.proc.stop()
        log.info("unloaded %s", lm.config.display)

    async def unload(self, key: str) -> bool:
        lm = self.loaded.get(key)
        if lm is None:
            return False
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self.loaded.get(key) is lm:
                await self._unload(lm)
        return True

    async def reap_if_dead(self, lm: LoadedModel, *, failed: bool = False) -> None:
        """After a runner error: forget a dead runner so the next request loads the model again.

        `failed`: the request saw the runner break. Its exit status reaches asyncio a moment after the
        broken stream, so wait briefly for it; else the next request could be sent to the dead runner."""
        if failed and lm.proc.alive:
            try:
                await asyncio.wait_for(lm.proc.proc.wait(), timeout=2)
            except asyncio.TimeoutError:
                pass
        if not lm.proc.alive and self.loaded.get(lm.key) is lm:
            del self.loaded[lm.key]
            await lm.proc.stop()

    async def shutdown(self) -> None:
        await asyncio.gather(*(self._unload(lm) for lm in list(self.loaded.values())), return_exceptions=True)


__all__ = ["Scheduler", "ServerBusy", "LoadedModel", "RunnerError"]

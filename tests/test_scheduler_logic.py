"""The scheduler's decisions (runner/daemon/scheduler.py) with fake runners and a fake machine: load on
first use, eviction, reload, keep_alive, the queue limit, a dead runner replaced. Pure asyncio: no
subprocess, no llama.cpp; the real runners under the same scheduler are driven through the daemon in
tests/test_generate.py and tests/test_faults.py.

The fake machine is a CPU host whose free RAM is its capacity less the weights of the fake runners
that are running, so that stopping a runner gives its memory back, as a real one does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from registry import GGUFInfo, ModelName, StoredModel
from runner.daemon.placement import GIB, GpuInfo
from runner.daemon.runner_client import RunnerError
from runner.daemon.scheduler import FOREVER, Scheduler, ServerBusy
from runner.model.config import ModelConfig
from runner.settings import Settings

SETTINGS = Settings(host="127.0.0.1", port=0, models_dir=Path("/nonexistent"), keep_alive=300.0, num_parallel=1,
                    max_loaded_models=0, max_queue=512, context_length=2048, flash_attention=None,
                    kv_cache_type="f16", load_timeout=30.0, debug=False, noprune=False)


@dataclass
class FakeModel(ModelConfig):
    """A ModelConfig whose GGUF header is given, not read from a file."""
    info: GGUFInfo | None = None

    @property
    def gguf(self) -> GGUFInfo:
        return self.info


def model(name: str, weights: int = GIB, digest: str = "sha-1") -> FakeModel:
    info = GGUFInfo(architecture="llama", parameter_count=1, file_type="F16", context_length=4096,
                    chat_template=None, model_info={}, block_count=2, embedding_length=64, head_count=4,
                    head_count_kv=4, tensor_bytes=weights, bos_token_id=1, eos_token_id=2)
    stored = StoredModel(ModelName.parse(name), None, digest, datetime.now(timezone.utc), weights)
    return FakeModel(name=stored.name, stored=stored, model_path=Path(f"/models/{name}-{digest}.gguf"), info=info)


class FakeRunner:
    """Stands in for RunnerClient: `start` returns at once (or when the factory's gate opens), `die` is
    the process ending on its own."""

    def __init__(self, factory: "FakeRunners", launch, debug: bool):
        # the launch config as the runner would read it: its model file and its command line
        self.factory, self.model_path, self.args, self.debug = factory, Path(launch.model), launch.to_argv(), debug
        self.started = self.stopped = self.dead = False
        self.start_timeout: float | None = None
        self.waited: float | None = None  # the timeout wait_exited was given
        self.dies_on_wait = False  # the exit status arrives only while the scheduler waits for it

    @property
    def alive(self) -> bool:
        return self.started and not (self.stopped or self.dead)

    @property
    def ctx(self) -> int:
        return int(self.args[self.args.index("--num-ctx") + 1])

    async def start(self, timeout: float) -> dict:
        self.start_timeout = timeout
        if self.factory.gate is not None:
            await self.factory.gate.wait()
        if self.factory.fail_with is not None:
            raise self.factory.fail_with
        self.started = True
        return {"status": "ok"}

    async def wait_exited(self, timeout: float) -> None:
        self.waited = timeout
        if self.dies_on_wait:
            self.dead = True

    async def stop(self) -> None:
        self.stopped = True

    def die(self) -> None:
        self.dead = True


class FakeRunners:
    """The runner factory: every runner it made, in order."""

    def __init__(self):
        self.made: list[FakeRunner] = []
        self.gate: asyncio.Event | None = None  # set: starts wait for it (a slow load)
        self.fail_with: BaseException | None = None  # set: starts raise it (a load that fails)

    def __call__(self, launch, *, debug: bool = False) -> FakeRunner:
        runner = FakeRunner(self, launch, debug)
        self.made.append(runner)
        return runner

    def running(self) -> list[FakeRunner]:
        return [r for r in self.made if r.alive]

    def of(self, config: ModelConfig) -> list[FakeRunner]:
        return [r for r in self.made if r.model_path == config.model_path]


@dataclass
class FakeMemory:
    """A CPU host with `capacity` bytes of RAM, less what the running fake runners' weights take; or,
    with backend "cuda", a host whose one GPU has that capacity (and RAM to spare)."""
    runners: FakeRunners
    weights: dict[Path, int]
    capacity: int | None = 64 * GIB  # None: the RAM is unknown (no /proc/meminfo)
    kind: str = "cpu"

    def backend(self) -> str:
        return self.kind

    def _free(self) -> int | None:
        if self.capacity is None:
            return None
        return self.capacity - sum(self.weights[r.model_path] for r in self.runners.running())

    def gpus(self) -> list[GpuInfo]:
        return [GpuInfo(0, self._free(), self.capacity, "fake GPU")] if self.kind == "cuda" else []

    def ram(self) -> int | None:
        return self._free() if self.kind == "cpu" else 512 * GIB


def scheduler(*models: FakeModel, capacity: int | None = 64 * GIB, backend: str = "cpu",
              **settings) -> tuple[Scheduler, FakeRunners, FakeMemory]:
    runners = FakeRunners()
    memory = FakeMemory(runners, {m.model_path: m.gguf.tensor_bytes for m in models}, capacity, backend)
    return Scheduler(dataclasses.replace(SETTINGS, **settings), runner_factory=runners, memory=memory), runners, memory


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


async def use(sched: Scheduler, config: ModelConfig, options: dict | None = None, keep_alive: float | None = None):
    """One request that ends at once: acquire, then release."""
    lease = await sched.acquire(config, options or {}, keep_alive)
    sched.release(lease)
    return lease


# -- load on first use ----------------------------------------------------------------------------

def test_the_first_request_loads_the_model_and_the_next_reuse_its_runner():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        assert sched.loaded == {} and runners.made == []
        lease = await sched.acquire(a, {}, None)
        (runner,) = runners.made
        assert lease.proc is runner and runner.alive and runner.start_timeout == SETTINGS.load_timeout
        assert runner.model_path == a.model_path and runner.ctx == SETTINGS.context_length
        assert runner.args[runner.args.index("--parallel") + 1] == "1"  # LM_NUM_PARALLEL
        assert list(sched.loaded) == [a.key] and lease.active == 1 and not lease.model.idle.is_set()
        second = await sched.acquire(a, {}, None)
        assert second.proc is runner and len(runners.made) == 1 and lease.model.active == 2
        sched.release(lease)
        sched.release(second)
        assert lease.model.active == 0 and lease.model.idle.is_set()
        await sched.shutdown()
        assert runner.stopped and sched.loaded == {}

    run(scenario)


def test_the_engine_settings_reach_the_runner_through_its_launch_config():
    a = model("a")
    sched, runners, _ = scheduler(a, spec_max_sequences=0, engine_profile=50)
    plain, plain_runners, _ = scheduler(a)

    async def scenario():
        await use(sched, a)
        await use(plain, a)
        (runner,), (default,) = runners.made, plain_runners.made
        assert runner.args[runner.args.index("--spec-max-sequences") + 1] == "0"  # LM_SPEC_MAX_SEQUENCES
        assert runner.args[runner.args.index("--profile-every") + 1] == "50"  # LM_ENGINE_PROFILE
        assert default.args[default.args.index("--spec-max-sequences") + 1] == "4"
        assert default.args[default.args.index("--profile-every") + 1] == "0"  # off
        await sched.shutdown()
        await plain.shutdown()

    run(scenario)


# -- eviction ---------------------------------------------------------------------------------------

def test_short_memory_evicts_the_least_recently_used_idle_model():
    a, b, c = model("a"), model("b"), model("c")
    sched, runners, memory = scheduler(a, b, c, capacity=int(2.5 * GIB))  # room for two of the three

    async def scenario():
        await use(sched, a)
        await asyncio.sleep(0.01)
        await use(sched, b)
        await asyncio.sleep(0.01)
        await use(sched, a)  # a is used again: b is now the one used longest ago
        assert memory.ram() < GIB
        await use(sched, c)
        assert set(sched.loaded) == {a.key, c.key}
        (rb,) = runners.of(b)
        assert rb.stopped and [r.alive for r in runners.of(a)] == [True]
        await sched.shutdown()

    run(scenario)


def test_eviction_stops_once_the_new_model_fits():
    a, b, c = model("a"), model("b"), model("c", weights=2 * GIB)
    sched, runners, _ = scheduler(a, b, c, capacity=int(3.5 * GIB))

    async def scenario():
        await use(sched, a)
        await asyncio.sleep(0.01)
        await use(sched, b)
        await use(sched, c)  # 2 GiB: freeing a (1.5 GiB free then 2.5) is enough; b stays
        assert set(sched.loaded) == {b.key, c.key} and runners.of(a)[0].stopped
        await sched.shutdown()

    run(scenario)


def test_on_a_gpu_each_eviction_places_the_model_again_with_the_memory_freed():
    """On CUDA a model fits when all of it is on the GPU. Before any eviction c gets no GPU layers (no
    room beside a and b); once a is gone, placed again, it goes whole on the GPU, and b stays."""
    a, b, c = model("a"), model("b"), model("c")
    sched, runners, memory = scheduler(a, b, c, capacity=int(3.5 * GIB), backend="cuda")  # 1 GiB kept spare

    async def scenario():
        await use(sched, a)
        await asyncio.sleep(0.01)
        await use(sched, b)
        await use(sched, c)
        assert set(sched.loaded) == {b.key, c.key} and runners.of(a)[0].stopped
        (rc,) = runners.of(c)
        assert rc.args[rc.args.index("--gpu-layers") + 1] == "3"  # two layers and the output layer
        assert sched.loaded[c.key].placement.gpus == ((0, sched.loaded[c.key].placement.size),)
        await sched.shutdown()

    run(scenario)


def test_a_busy_model_is_not_evicted_for_memory_the_new_one_loads_beside_it():
    a, b = model("a"), model("b")
    sched, runners, _ = scheduler(a, b, capacity=int(1.5 * GIB))

    async def scenario():
        busy = await sched.acquire(a, {}, None)
        await use(sched, b)  # does not fit beside a, but a is serving: loaded anyway
        assert set(sched.loaded) == {a.key, b.key} and busy.proc.alive
        sched.release(busy)
        await sched.shutdown()

    run(scenario)


def test_unknown_ram_evicts_nothing():
    a, b = model("a", weights=100 * GIB), model("b", weights=100 * GIB)
    sched, runners, _ = scheduler(a, b, capacity=None)

    async def scenario():
        await use(sched, a)
        await use(sched, b)
        assert set(sched.loaded) == {a.key, b.key} and len(runners.running()) == 2
        await sched.shutdown()

    run(scenario)


def test_max_loaded_models_evicts_the_idle_model_expiring_soonest():
    a, b, c = model("a"), model("b"), model("c")
    sched, runners, _ = scheduler(a, b, c, max_loaded_models=2)

    async def scenario():
        await use(sched, a, keep_alive=600)
        await use(sched, b, keep_alive=60)  # used later, but expires sooner: it goes
        await use(sched, c)
        assert set(sched.loaded) == {a.key, c.key} and runners.of(b)[0].stopped
        await sched.shutdown()

    run(scenario)


def test_max_loaded_models_with_every_model_busy_waits_for_one_to_go_idle():
    a, b = model("a"), model("b")
    sched, runners, _ = scheduler(a, b, max_loaded_models=1)

    async def scenario():
        busy = await sched.acquire(a, {}, None)
        waiting = asyncio.create_task(sched.acquire(b, {}, None))
        await asyncio.sleep(0.05)
        assert not waiting.done() and runners.of(b) == [] and list(sched.loaded) == [a.key]
        sched.release(busy)
        lease = await waiting
        assert list(sched.loaded) == [b.key] and runners.of(a)[0].stopped and lease.proc.alive
        sched.release(lease)
        await sched.shutdown()

    run(scenario)


# -- reload -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("first, then", [
    ({"num_ctx": 1024}, {"num_ctx": 2048}),
    ({}, {"num_ctx": 4096}),  # from the default context_length
    ({}, {"use_mmap": False}),
    ({"num_gpu": 0}, {"num_gpu": 1}),
    ({}, {"num_gpu": 0}),
    ({"main_gpu": 0}, {"main_gpu": 1}),
])
def test_options_that_shape_the_runner_reload_it(first, then):
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        await use(sched, a, first)
        await use(sched, a, then)
        old, new = runners.made
        assert old.stopped and new.alive and sched.loaded[a.key].proc is new
        await sched.shutdown()

    run(scenario)


@pytest.mark.parametrize("first, then", [
    ({"num_ctx": 1024}, {"num_ctx": 1024, "temperature": 0.1, "seed": 7, "num_predict": 3}),
    ({"num_gpu": 0}, {}),  # a request that does not say num_gpu takes the loaded runner as it is
    ({"main_gpu": 1}, {}),
    ({"num_ctx": 8}, {"num_ctx": 16}),  # both below the floor of 16 cells
])
def test_options_that_do_not_shape_the_runner_keep_it(first, then):
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        await use(sched, a, first)
        await use(sched, a, then)
        assert len(runners.made) == 1 and runners.made[0].alive
        await sched.shutdown()

    run(scenario)


def test_a_new_num_ctx_starts_the_runner_with_it():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        await use(sched, a, {"num_ctx": 1024})
        await use(sched, a, {"num_ctx": 3000})
        assert [r.ctx for r in runners.made] == [1024, 3000] and sched.loaded[a.key].num_ctx == 3000
        await sched.shutdown()

    run(scenario)


def test_a_model_created_anew_under_its_name_is_reloaded():
    old, new = model("a", digest="sha-1"), model("a", digest="sha-2")
    sched, runners, _ = scheduler(old, new)

    async def scenario():
        await use(sched, old)
        await use(sched, new)
        assert [r.model_path for r in runners.made] == [old.model_path, new.model_path]
        assert runners.made[0].stopped and sched.loaded[new.key].config is new
        await sched.shutdown()

    run(scenario)


def test_a_reload_waits_for_the_running_requests_to_finish():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        running = await sched.acquire(a, {"num_ctx": 1024}, None)
        reload = asyncio.create_task(sched.acquire(a, {"num_ctx": 2048}, None))
        await asyncio.sleep(0.05)
        assert not reload.done() and len(runners.made) == 1 and running.proc.alive
        sched.release(running)
        lease = await reload
        assert running.proc.stopped and lease.proc is runners.made[1] and lease.num_ctx == 2048
        sched.release(lease)
        await sched.shutdown()

    run(scenario)


# -- keep_alive -------------------------------------------------------------------------------------

def test_keep_alive_expiry_unloads_the_idle_model():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        before = time.time()
        lease = await use(sched, a, keep_alive=0.05)
        assert list(sched.loaded) == [a.key]  # not at once
        assert before + 0.05 <= lease.model.expires_at <= time.time() + 0.05
        await asyncio.sleep(0.2)
        assert sched.loaded == {} and runners.made[0].stopped

    run(scenario)


def test_keep_alive_zero_unloads_after_the_request():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        lease = await sched.acquire(a, {}, 0)
        await asyncio.sleep(0.05)
        assert list(sched.loaded) == [a.key]  # never while the request runs
        sched.release(lease)
        await asyncio.sleep(0.05)
        assert sched.loaded == {} and runners.made[0].stopped

    run(scenario)


def test_a_request_within_keep_alive_keeps_the_model():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        await use(sched, a, keep_alive=0.05)
        lease = await sched.acquire(a, {}, None)  # keep_alive unset: the model keeps its 0.05 s
        assert lease.model.expires_at == FOREVER  # busy: no expiry
        await asyncio.sleep(0.2)
        assert list(sched.loaded) == [a.key] and len(runners.made) == 1 and runners.made[0].alive
        sched.release(lease)
        await asyncio.sleep(0.2)
        assert sched.loaded == {}

    run(scenario)


def test_keep_alive_unset_is_the_setting_and_a_later_request_changes_it():
    a = model("a")
    sched, runners, _ = scheduler(a, keep_alive=0.05)

    async def scenario():
        lease = await use(sched, a, keep_alive=None)
        assert lease.keep_alive == 0.05
        await asyncio.sleep(0.2)
        assert sched.loaded == {}
        await use(sched, a, keep_alive=None)
        lease = await use(sched, a, keep_alive=600)
        assert lease.keep_alive == 600
        await asyncio.sleep(0.2)
        assert list(sched.loaded) == [a.key]
        await sched.shutdown()

    run(scenario)


def test_negative_keep_alive_keeps_the_model_forever():
    a = model("a")
    sched, runners, _ = scheduler(a, keep_alive=0.01)

    async def scenario():
        lease = await use(sched, a, keep_alive=-1)
        assert lease.model.expires_at == FOREVER and lease.model._expiry is None
        await asyncio.sleep(0.2)
        assert list(sched.loaded) == [a.key] and runners.made[0].alive
        await sched.shutdown()

    run(scenario)


# -- the queue limit --------------------------------------------------------------------------------

def test_requests_beyond_the_slots_and_max_queue_get_server_busy():
    a = model("a")
    sched, runners, _ = scheduler(a, num_parallel=1, max_queue=2)

    async def scenario():
        leases = [await sched.acquire(a, {}, None) for _ in range(3)]  # 1 slot + 2 queued
        with pytest.raises(ServerBusy, match="maximum pending requests exceeded"):
            await sched.acquire(a, {}, None)
        sched.release(leases.pop())
        leases.append(await sched.acquire(a, {}, None))  # a place came free
        with pytest.raises(ServerBusy):
            await sched.acquire(a, {}, None)
        for lease in leases:
            sched.release(lease)
        assert len(runners.made) == 1
        await sched.shutdown()

    run(scenario)


def test_requests_waiting_for_the_load_count_towards_the_queue():
    a = model("a")
    sched, runners, _ = scheduler(a, num_parallel=1, max_queue=1)

    async def scenario():
        runners.gate = asyncio.Event()  # the load takes a while
        waiting = [asyncio.create_task(sched.acquire(a, {}, None)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)
        with pytest.raises(ServerBusy):
            await sched.acquire(a, {}, None)
        runners.gate.set()
        leases = await asyncio.gather(*waiting)
        assert len(runners.made) == 1 and {lease.proc for lease in leases} == {runners.made[0]}
        for lease in leases:
            sched.release(lease)
        await sched.shutdown()

    run(scenario)


def test_a_load_that_fails_leaves_no_runner_and_frees_its_place():
    a = model("a")
    sched, runners, _ = scheduler(a, num_parallel=1, max_queue=0)

    async def scenario():
        runners.fail_with = RunnerError("llama runner process has terminated: out of memory")
        with pytest.raises(RunnerError, match="out of memory"):
            await sched.acquire(a, {}, None)
        assert sched.loaded == {} and runners.made[0].stopped
        runners.fail_with = None
        lease = await sched.acquire(a, {}, None)  # max_queue 0: only if the failed one let go of its place
        assert lease.proc is runners.made[1]
        sched.release(lease)
        await sched.shutdown()

    run(scenario)


# -- a runner that dies -----------------------------------------------------------------------------

def test_a_runner_that_died_while_idle_is_replaced_on_the_next_request():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        await use(sched, a)
        runners.made[0].die()
        lease = await sched.acquire(a, {}, None)
        dead, new = runners.made
        assert dead.stopped and lease.proc is new and new.alive and sched.loaded[a.key].proc is new
        sched.release(lease)
        await sched.shutdown()

    run(scenario)


def test_a_runner_that_broke_a_request_is_forgotten_once_its_exit_arrives():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        lease = await sched.acquire(a, {}, None)
        runner = runners.made[0]
        runner.dies_on_wait = True  # the stream broke; the exit status is a moment behind
        sched.release(lease)
        await sched.reap_if_dead(lease, failed=True)
        assert runner.waited == 2 and runner.stopped and sched.loaded == {}
        second = await sched.acquire(a, {}, None)
        assert second.proc is runners.made[1] and second.proc.alive
        sched.release(second)
        await sched.shutdown()

    run(scenario)


def test_a_live_runner_survives_reaping():
    a = model("a")
    sched, runners, _ = scheduler(a)

    async def scenario():
        lease = await use(sched, a)
        await sched.reap_if_dead(lease)  # a request that did not break: no wait, nothing forgotten
        assert runners.made[0].waited is None and sched.loaded[a.key].proc is runners.made[0]
        await sched.reap_if_dead(lease, failed=True)  # broke, but the runner lives on (it refused one request)
        assert runners.made[0].waited == 2 and runners.made[0].alive and list(sched.loaded) == [a.key]
        await sched.shutdown()

    run(scenario)

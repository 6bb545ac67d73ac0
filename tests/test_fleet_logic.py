"""The pure decisions of issue 27, with given numbers: RPC worker addresses and binds, placement over
local and remote devices (runner/memory.plan_with_remote), llama.cpp's layer split, and replicas
(runner/daemon/replicas.py: which GPUs get a copy, which copy takes a request).

The processes themselves (lm worker, the daemon across workers, nginx) are driven in tests/test_fleet.py.
"""

from __future__ import annotations

import pytest

from runner.daemon.placement import GIB, SAFETY_MARGIN, GpuInfo, ModelShape, layers_per_device, plan_gpus, plan_with_remote
from runner.daemon.replicas import pick_replica, plan_replicas, replica_count
from runner.ggml.rpc_client import Endpoint, RemoteDevice, WorkerError, is_loopback, parse_endpoint, parse_workers
from runner.ggml.rpc_server import check_listen, choose_devices
from runner.ggml.backend import Device

LLAMA8B = ModelShape(weights_bytes=int(4.6 * GIB), n_layers=32, n_head_kv=8, key_length=128, value_length=128)
LLAMA70B = ModelShape(weights_bytes=40 * GIB, n_layers=80, n_head_kv=8, key_length=128, value_length=128)


def gpus(*free_gib: float) -> list[GpuInfo]:
    return [GpuInfo(i, int(f * GIB), 80 * GIB, "H100") for i, f in enumerate(free_gib)]


def remote(*free_gib: float, host: str = "10.0.0.2") -> list[RemoteDevice]:
    return [RemoteDevice(Endpoint(host, 50052 + i), 0, int(f * GIB), 80 * GIB) for i, f in enumerate(free_gib)]


# -- addresses ------------------------------------------------------------------------------------

def test_workers_parse_in_order_once_each():
    assert parse_workers(" 127.0.0.1:5001, host-b:5002,127.0.0.1:5001,") == (
        Endpoint("127.0.0.1", 5001), Endpoint("host-b", 5002))
    assert parse_workers(None) == () and parse_workers("") == ()
    for bad in ("127.0.0.1", "host:", ":5000", "host:0", "host:70000", "host:12ab", "::1:5000"):
        with pytest.raises(WorkerError, match="host:port"):
            parse_endpoint(bad)


def test_a_public_bind_needs_the_explicit_flag():
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.org")
    assert check_listen("127.0.0.1:50052", allow_public=False) == Endpoint("127.0.0.1", 50052)
    assert check_listen("localhost:50052", allow_public=False) == Endpoint("127.0.0.1", 50052)
    for host in ("0.0.0.0", "10.0.0.5"):
        with pytest.raises(WorkerError, match="no authentication"):
            check_listen(f"{host}:50052", allow_public=False)
        assert check_listen(f"{host}:50052", allow_public=True).host == host
    with pytest.raises(WorkerError, match="needs an IPv4 address"):  # ggml's server resolves no names
        check_listen("worker.lan:50052", allow_public=True)


def test_worker_serves_named_devices_else_gpus_else_the_cpu():
    cpu = Device(1, "CPU", "Xeon", "CPU", 0, 0)
    gpu0, gpu1 = Device(2, "CUDA0", "H200", "GPU", 0, 0), Device(3, "CUDA1", "H200", "GPU", 0, 0)
    rpc = Device(4, "RPC0", "10.0.0.2:50052", "GPU", 0, 0)
    assert choose_devices([cpu], []) == [cpu]
    assert choose_devices([cpu, gpu0, gpu1, rpc], []) == [gpu0, gpu1]  # never re-serves a remote device
    assert choose_devices([cpu, gpu0, gpu1], ["cuda1", "CPU"]) == [gpu1, cpu]
    with pytest.raises(WorkerError, match="unknown device 'CUDA7'.*CPU, CUDA0"):
        choose_devices([cpu, gpu0], ["CUDA7"])


# -- placement over local and remote devices ------------------------------------------------------

def test_a_model_that_fits_a_local_gpu_stays_local():
    p = plan_with_remote(LLAMA8B, gpus(20), remote(70), num_ctx=4096, parallel=4)
    assert p.split_mode == "none" and p.main_gpu == 0 and not p.remote
    assert p.devices == () and p.tensor_split == ()  # the runner gets no --rpc: llama.cpp's own list


def test_a_model_too_big_for_this_host_spans_the_workers_by_free_memory():
    p = plan_with_remote(LLAMA70B, gpus(24), remote(30, 18), num_ctx=4096, parallel=4)
    assert p.remote and p.split_mode == "layer" and p.gpu_layers == 81
    assert p.devices == ("CUDA0", "RPC[10.0.0.2:50052]#0", "RPC[10.0.0.2:50053]#0")
    usable = [24 * GIB - SAFETY_MARGIN, 30 * GIB - SAFETY_MARGIN, 18 * GIB - SAFETY_MARGIN]
    assert p.tensor_split == pytest.approx([u / sum(usable) for u in usable], abs=1e-3)
    layers = p.layers_by_device()
    assert sum(layers.values()) == 81 and all(layers[i] > 0 for i in range(3))
    assert layers[1] > layers[0] > layers[2]  # in proportion to free memory


def test_a_cpu_host_puts_the_model_on_its_workers_and_spread_uses_each():
    one = plan_with_remote(LLAMA8B, [], remote(60, 60), num_ctx=4096, parallel=4)
    assert one.remote and one.split_mode == "none" and one.layers_by_device() == {0: 33}
    both = plan_with_remote(LLAMA8B, [], remote(60, 60), num_ctx=4096, parallel=4, spread=True)
    assert both.tensor_split == (0.5, 0.5) and both.layers_by_device() == {0: 17, 1: 16}


def test_what_fits_nowhere_keeps_its_first_layers_on_this_host():
    p = plan_with_remote(LLAMA70B, [], remote(10, 10), num_ctx=4096, parallel=4)
    assert p.remote and 0 < p.gpu_layers < 80
    assert sum(p.layers_by_device().values()) == p.gpu_layers


def test_layer_split_matches_llama_cpp():
    # llama-model.cpp: layer il (of n_layer + 1, the output last) from i_gpu_start goes to the first
    # device whose cumulative share exceeds (il - i_gpu_start) / n_gpu_layers
    assert layers_per_device(30, 31, (0.5, 0.5)) == {0: 16, 1: 15}
    assert layers_per_device(30, 31, (0.0, 1.0, 1.0)) == {1: 16, 2: 15}
    assert layers_per_device(30, 10, (3.0, 1.0)) == {0: 8, 1: 2}  # the last 10 only
    assert layers_per_device(30, 99, (1.0,)) == {0: 31}
    assert layers_per_device(30, 5, (0.0, 0.0)) == {}


# -- replicas -------------------------------------------------------------------------------------

def test_replica_count_is_one_per_gpu_at_most_and_one_without_gpus():
    assert replica_count("auto", 4) == 4 and replica_count(2, 4) == 2 and replica_count(8, 2) == 2
    assert replica_count("auto", 1) == 1 and replica_count("auto", 0) == 1 and replica_count(3, 0) == 1


def test_a_model_that_fits_one_gpu_gets_a_copy_on_each():
    copies = plan_replicas(LLAMA8B, gpus(60, 70, 50), "auto", num_ctx=4096, parallel=8)
    assert [p.main_gpu for p in copies] == [0, 1, 2]
    assert all(p.split_mode == "none" and p.gpu_layers == 33 and p.parallel == 8 for p in copies)
    two = plan_replicas(LLAMA8B, gpus(60, 70, 50), 2, num_ctx=4096, parallel=8)
    assert [p.main_gpu for p in two] == [0, 1]  # the two with the most free memory


def test_replicas_leave_out_a_gpu_the_model_does_not_fit():
    copies = plan_replicas(LLAMA8B, gpus(60, 3, 50), "auto", num_ctx=4096, parallel=4)
    assert [p.main_gpu for p in copies] == [0, 2]


def test_one_copy_where_replicas_cannot_help():
    # one device, a model that fits no single GPU, or a request that pins one GPU or spreads
    for case in (dict(gpus_=gpus(60)), dict(gpus_=[])):
        p, = plan_replicas(LLAMA8B, case["gpus_"], "auto", num_ctx=4096, parallel=4)
        assert p == plan_gpus(LLAMA8B, case["gpus_"], num_ctx=4096, parallel=4)
    split, = plan_replicas(LLAMA70B, gpus(30, 30), "auto", num_ctx=4096, parallel=4)
    assert split.split_mode == "layer"
    assert len(plan_replicas(LLAMA8B, gpus(60, 60), "auto", num_ctx=4096, parallel=4, main_gpu=1)) == 1
    assert len(plan_replicas(LLAMA8B, gpus(60, 60), "auto", num_ctx=4096, parallel=4, spread=True)) == 1
    assert len(plan_replicas(LLAMA8B, gpus(60, 60), 1, num_ctx=4096, parallel=4)) == 1


def test_requests_go_to_the_replica_with_the_most_free_slots():
    assert pick_replica([0, 0], [4, 4]) == 0
    assert pick_replica([1, 0], [4, 4]) == 1
    assert pick_replica([3, 1, 2], [4, 4, 4]) == 1
    assert pick_replica([2, 3], [4, 8]) == 1  # free slots, not fewest requests
    assert pick_replica([6, 5], [4, 4]) == 1  # all full: the shorter queue


def test_spreading_requests_keeps_replicas_even():
    active, slots = [0, 0, 0], [4, 4, 4]
    for _ in range(9):
        active[pick_replica(active, slots)] += 1
    assert active == [3, 3, 3]

"""The placement planner (runner/daemon/placement.py plan_gpus): our arithmetic, driven with given GPU numbers.

These are the decisions a multi-GPU machine makes; what llama.cpp then does with tensor_split is
measured on real GPUs (scripts/gpu_bench.sh), not here.
"""

from __future__ import annotations

import ctypes

import pytest

from runner.daemon.placement import (
    GIB, MAX_GPU_SLOTS, SAFETY_MARGIN, GpuInfo, ModelShape, kv_bytes_per_token, kv_cells, parse_nvidia_smi,
    plan_gpus,
)

# An 8B-shaped model: 32 layers, 8 KV heads of 128, Q4_K weights of ~4.6 GiB
LLAMA8B = ModelShape(weights_bytes=int(4.6 * GIB), n_layers=32, n_head_kv=8, key_length=128, value_length=128)
# A 70B-shaped one: 80 layers, ~40 GiB
LLAMA70B = ModelShape(weights_bytes=40 * GIB, n_layers=80, n_head_kv=8, key_length=128, value_length=128)


def gpus(*free_gib: float) -> list[GpuInfo]:
    return [GpuInfo(i, int(f * GIB), 80 * GIB, "H100") for i, f in enumerate(free_gib)]


def test_kv_bytes_match_llama_cpp_block_sizes():
    per_token = kv_bytes_per_token(LLAMA8B, "f16")
    assert per_token == 32 * 8 * 256 * 2  # 128 KiB per token, as llama.cpp reports for Llama-3-8B
    assert kv_bytes_per_token(LLAMA8B, "q8_0") == per_token * 34 // 64
    assert kv_bytes_per_token(LLAMA8B, "q4_0") == per_token * 18 // 64
    # llama.cpp's padding: one pool padded to 256, or each sequence's share padded again
    assert kv_cells(100, 3, unified=True) == 512 and kv_cells(100, 3, unified=False) == 768
    assert kv_cells(1000, 4, unified=False) == 4096 and kv_cells(300, 2, unified=True) == 768


def test_fitting_model_stays_on_the_gpu_with_most_free_memory():
    p = plan_gpus(LLAMA8B, gpus(20, 60), num_ctx=4096, parallel=4)
    assert p.gpu_layers == 33 and p.split_mode == "none" and p.main_gpu == 1 and p.tensor_split == ()
    assert p.gpus == ((1, p.size_vram),) and p.size_vram == p.size


def test_model_too_big_for_one_gpu_is_split_in_proportion_to_free_memory():
    p = plan_gpus(LLAMA70B, gpus(30, 20), num_ctx=4096, parallel=4)
    assert p.gpu_layers == 81 and p.split_mode == "layer"
    usable = [30 * GIB - SAFETY_MARGIN, 20 * GIB - SAFETY_MARGIN]
    assert p.tensor_split == pytest.approx([u / sum(usable) for u in usable], abs=1e-3)
    assert [i for i, _ in p.gpus] == [0, 1]
    assert sum(b for _, b in p.gpus) == pytest.approx(p.size_vram, rel=1e-6)
    # each GPU's share of the estimate fits its free memory
    assert all(b <= u for (_, b), u in zip(p.gpus, usable))


def test_spread_splits_even_a_fitting_model():
    p = plan_gpus(LLAMA8B, gpus(60, 60), num_ctx=4096, parallel=4, spread=True)
    assert p.split_mode == "layer" and p.tensor_split == (0.5, 0.5) and p.gpu_layers == 33
    assert plan_gpus(LLAMA8B, gpus(60), num_ctx=4096, parallel=4, spread=True).split_mode == "none"


def test_too_big_for_all_gpus_offloads_part_across_all():
    p = plan_gpus(LLAMA70B, gpus(12, 12), num_ctx=4096, parallel=4)
    assert 0 < p.gpu_layers < 80 and p.split_mode == "layer" and p.tensor_split == (0.5, 0.5)
    assert p.size_vram <= 22 * GIB


def test_num_gpu_is_the_layer_count():
    p = plan_gpus(LLAMA8B, gpus(60, 60), num_ctx=4096, parallel=4, num_gpu=10)
    assert p.gpu_layers == 10 and p.split_mode == "none"
    cpu = plan_gpus(LLAMA8B, gpus(60, 60), num_ctx=4096, parallel=4, num_gpu=0)
    assert cpu.gpu_layers == 0 and cpu.gpus == () and cpu.main_gpu == -1
    # more layers than fit one GPU: split over both
    p = plan_gpus(LLAMA70B, gpus(30, 30), num_ctx=4096, parallel=4, num_gpu=60)
    assert p.gpu_layers == 60 and p.split_mode == "layer"


def test_main_gpu_picks_the_gpu_for_a_fitting_model():
    p = plan_gpus(LLAMA8B, gpus(60, 20), num_ctx=4096, parallel=4, main_gpu=1)
    assert p.split_mode == "none" and p.main_gpu == 1 and p.gpus[0][0] == 1
    # when it does not fit there, the model is split and main_gpu still named
    p = plan_gpus(LLAMA70B, gpus(30, 30), num_ctx=4096, parallel=4, main_gpu=1)
    assert p.split_mode == "layer" and p.main_gpu == 1
    # a GPU that does not exist is ignored
    assert plan_gpus(LLAMA8B, gpus(20, 60), num_ctx=4096, parallel=4, main_gpu=7).main_gpu == 1


def test_slots_fill_the_chosen_gpus_within_bounds():
    p = plan_gpus(LLAMA8B, gpus(80), num_ctx=4096)
    per_slot = kv_bytes_per_token(LLAMA8B, "f16") * 4096  # 512 MiB
    assert p.parallel == min(MAX_GPU_SLOTS, (79 * GIB - LLAMA8B.weights_bytes) // per_slot)
    assert p.size <= 79 * GIB
    # q8_0 is 34/64 of f16: nearly twice the slots in the same memory
    q8 = plan_gpus(LLAMA8B, gpus(20), num_ctx=4096, kv_type="q8_0")
    f16 = plan_gpus(LLAMA8B, gpus(20), num_ctx=4096)
    assert q8.parallel >= 1.8 * f16.parallel and q8.kv_type == "q8_0"
    assert q8.kv_bytes_per_slot == kv_bytes_per_token(LLAMA8B, "q8_0") * 4096


def test_no_gpus_means_cpu():
    p = plan_gpus(LLAMA8B, [], num_ctx=2048, parallel=None)
    assert p.gpu_layers == 0 and p.parallel == 4 and p.main_gpu == -1


def test_nvidia_smi_parsing_honours_cuda_visible_devices():
    text = ("0, GPU-aaa, NVIDIA H200, 1000, 143771\n"
            "1, GPU-bbb, NVIDIA H200, 2000, 143771\n"
            "2, GPU-ccc, NVIDIA H200, [N/A], 143771\n")
    all_ = parse_nvidia_smi(text)
    assert [(g.index, g.free // 2**20) for g in all_] == [(0, 1000), (1, 2000)]
    # CUDA renumbers the visible GPUs in the order given; an invalid entry ends the list
    assert [(g.index, g.uuid) for g in parse_nvidia_smi(text, "1,0")] == [(0, "GPU-bbb"), (1, "GPU-aaa")]
    assert [g.uuid for g in parse_nvidia_smi(text, "GPU-bb,7,0")] == ["GPU-bbb"]
    assert parse_nvidia_smi(text, "") == []
    assert len(parse_nvidia_smi(text, "MIG-0123")) == 2  # MIG: nvidia-smi cannot say, keep the estimate


def test_runner_hands_tensor_split_to_llama_cpp():
    """The model params the runner builds: split mode, main GPU and a float array of llama_max_devices()."""
    import llama_cpp as ll

    from runner.engine.model import _model_params
    from runner.engine.protocol import LaunchConfig

    mparams, keep = _model_params(LaunchConfig(model="unused.gguf", gpu_layers=81, split_mode="layer", main_gpu=1,
                                               tensor_split=(0.6, 0.4)))
    n = ll.llama_max_devices()
    assert mparams.split_mode == ll.LLAMA_SPLIT_MODE_LAYER and mparams.main_gpu == 1 and mparams.n_gpu_layers == 81
    assert [mparams.tensor_split[i] for i in range(n)] == pytest.approx([0.6, 0.4] + [0.0] * (n - 2))
    assert ctypes.addressof(keep) == ctypes.cast(mparams.tensor_split, ctypes.c_void_p).value
    single, none = _model_params(LaunchConfig(model="unused.gguf", split_mode="none", main_gpu=-1))
    assert none is None and not single.tensor_split and single.split_mode == ll.LLAMA_SPLIT_MODE_NONE


def test_lm_ps_shows_each_gpus_share():
    from runner.cli.main import _processor

    split = {"processor": "100% GPU", "gpus": [{"id": 0, "size_vram": 6 * GIB}, {"id": 1, "size_vram": 4 * GIB}]}
    assert _processor(split) == "100% GPU (0: 60%, 1: 40%)"
    assert _processor({"processor": "100% GPU", "gpus": [{"id": 1, "size_vram": GIB}]}) == "100% GPU"
    assert _processor({"processor": "100% CPU", "gpus": []}) == "100% CPU"

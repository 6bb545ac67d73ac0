"""Which CPU kernels make a sequence's logits depend on the others in its batch, per quantization the
store offers (issue 25). Real llama.cpp through the runner's LoadedModel: one decode step of a sequence
alone, then the same step beside three other sequences, compared bit for bit.

- Repacked weights (llama.cpp's CPU "extra buffer types", on by default) compute four rows at once with
  another kernel than one row: Q4_K (and Q3_K in a Q3_K_M file, both Q4_K inside) differ. lm loads models
  without them on the CPU (LM_BATCH_INVARIANT), and every quantized type is then invariant.
- Unquantized weights (F32, F16, BF16) are invariant only in a build without llamafile's sgemm: it takes
  the products of two rows or more, ggml's vec_dot those of one, and the two sum in another order. That
  is a build option of llama.cpp (GGML_LLAMAFILE), so install.sh's CPU build turns it off (and rebuilds a
  build that has it): see docs/performance.md.

The tiny test model's weights are random; its logits, compared exactly, show any difference (the texts of
the real models under load are in test_engine_load.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from registry.convert.quantize import QUANT_TYPES, quantize_file

UNQUANTIZED = ("F32", "F16", "BF16")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_gguf):
    """The tiny model in each type, made once by llama.cpp's quantizer (the store's `quantize`)."""
    out = tmp_path_factory.mktemp("quants")
    made = {}

    def get(qtype: str) -> Path:
        if qtype not in made:
            made[qtype] = out / f"tiny-{qtype}.gguf"
            quantize_file(tiny_gguf, made[qtype], qtype)
        return made[qtype]

    return get


def _decode(model, items):
    import llama_cpp as ll

    batch = ll.llama_batch_init(len(items), 0, 4)
    try:
        for i, (token, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, 1
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(items)
        assert ll.llama_decode(model.ctx, batch) == 0
        return [np.ctypeslib.as_array(ll.llama_get_logits_ith(model.ctx, i), shape=(model.n_vocab,)).copy()
                for i in range(len(items))]
    finally:
        ll.llama_batch_free(batch)


def _alone_and_beside_others(path: Path, *, repack: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sequence 0's logits for one decode step alone, and for the same step beside three others."""
    import llama_cpp as ll

    from runner.engine.model import LoadedModel
    from runner.engine.protocol import LaunchConfig

    model = LoadedModel(LaunchConfig(model=str(path), num_ctx=64, parallel=4, repack=repack))
    try:
        for seq in range(4):  # each prefilled in a step of its own, as the engine does on the CPU
            _decode(model, [(token, pos, seq) for pos, token in enumerate([1 + seq, 7, 9, 11])])
        alone = _decode(model, [(13, 4, 0)])[0]
        ll.llama_memory_seq_rm(model.memory, 0, 4, -1)
        together = _decode(model, [(13, 4, 0), *((17 + seq, 4, seq) for seq in (1, 2, 3))])[0]
        return alone, together
    finally:
        model.close()


def test_the_cpu_build_has_no_llamafile_sgemm():
    # install.sh builds llama.cpp with GGML_LLAMAFILE=OFF on the CPU: without it F32/F16/BF16 would not be
    # invariant (the case below), and this names the cause rather than a logits difference.
    import llama_cpp as ll

    assert b"LLAMAFILE = 1" not in ll.llama_print_system_info(), "rebuild with ./install.sh"


@pytest.mark.parametrize("qtype", [*UNQUANTIZED, *(q for q in QUANT_TYPES if q not in UNQUANTIZED)])
def test_every_type_is_batch_invariant_without_repacked_weights(quantized, qtype):
    alone, together = _alone_and_beside_others(quantized(qtype), repack=False)
    assert np.array_equal(alone, together), f"{qtype}: max difference {np.abs(alone - together).max():g}"


def test_repacked_q4_k_weights_are_what_breaks_it(quantized):
    # The cause, kept in view: with llama.cpp's default (repacked) weights, Q4_K_M is not invariant.
    alone, together = _alone_and_beside_others(quantized("Q4_K_M"), repack=True)
    assert not np.array_equal(alone, together)


def test_the_daemon_loads_cpu_models_without_repacked_weights(make_daemon, tiny_gguf):
    from tests.test_faults import runner_pids

    for env, expected in (({}, True), ({"LM_BATCH_INVARIANT": "false"}, False)):
        d = make_daemon(env)
        d.create_from_gguf("tiny", tiny_gguf)
        assert d.post("/api/generate", {"model": "tiny", "prompt": "", "stream": False})[0] == 200
        (pid,) = runner_pids(d.proc.pid)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert (b"--no-repack" in f.read().split(b"\0")) == expected, env
        d.stop()

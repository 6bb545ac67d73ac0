"""LoRA adapters (ADAPTER in a Modelfile, `adapters` in /api/create): PEFT directories converted at
create, GGUF LoRA files used as they are, both checked against the base at create and applied by
llama.cpp when the model loads. Real daemon, real llama.cpp, the tiny llama GGUF as the base."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from registry.convert.lora import AdapterError, convert_peft_adapter
from registry.gguf_info import read_gguf_info
from tests.peft_factory import lora_tensor_name, make_lora, merge_into_gguf, permute_rows, write_peft_adapter

GREEDY = {"temperature": 0, "num_predict": 16, "seed": 0}
PROMPT = "the sky is blue and"


def generate(daemon, model: str) -> list[int]:
    """The tokens a greedy completion produced (prompt and answer, as the final `context`)."""
    status, body = daemon.post("/api/generate", {"model": model, "prompt": PROMPT, "stream": False,
                                                 "options": GREEDY})
    assert status == 200, body
    assert body["eval_count"] > 3, body  # enough tokens to compare
    return body["context"]


def upload_dir(daemon, directory: Path, prefix: str = "") -> dict:
    return {prefix + name: daemon.upload_blob(directory / name)
            for name in ("adapter_config.json", "adapter_model.safetensors")}


def create(daemon, name: str, **body):
    return daemon.post("/api/create", {"model": name, "stream": False, **body})


def adapter_blobs(daemon, name: str) -> list[Path]:
    status, info = daemon.post("/api/show", {"model": name})
    assert status == 200, info
    return [daemon.models_dir / "blobs" / a["digest"].replace(":", "-") for a in info["adapters"]]


@pytest.fixture(scope="module")
def peft(tmp_path_factory):
    """Three PEFT adapters for the tiny model: B zero (as PEFT initialises it), B large, and one on q/k only."""
    root = tmp_path_factory.mktemp("peft")
    return {
        "zero": write_peft_adapter(root / "zero", make_lora(b_std=0.0)),
        "big": write_peft_adapter(root / "big", make_lora(b_std=0.2, seed=1)),
        "qk": write_peft_adapter(root / "qk", make_lora(b_std=0.3, seed=2, targets=("q_proj", "k_proj")),
                                 targets=("q_proj", "k_proj")),
    }


@pytest.fixture(scope="module")
def lora_big(daemon, tiny, peft) -> str:
    status, body = create(daemon, "tiny-lora-big", **{"from": tiny}, adapters=upload_dir(daemon, peft["big"]))
    assert status == 200, body
    return "tiny-lora-big"


def test_zero_adapter_changes_nothing_and_a_trained_one_does(daemon, tiny, tiny_gguf, peft, lora_big):
    # FROM a GGUF file this time (the create path that uploads the model), B = 0: the identity
    status, body = create(daemon, "tiny-lora-zero", files={"tiny.gguf": daemon.upload_blob(tiny_gguf)},
                          adapters=upload_dir(daemon, peft["zero"]))
    assert status == 200, body
    base = generate(daemon, tiny)
    assert generate(daemon, "tiny-lora-zero") == base
    assert generate(daemon, lora_big) != base
    # each is a model of its own for the scheduler, loaded beside its base
    status, ps = daemon.get("/api/ps")
    loaded = {m["name"] for m in ps["models"]}
    assert {"tiny:latest", "tiny-lora-zero:latest", "tiny-lora-big:latest"} <= loaded


def test_adapter_equals_its_deltas_merged_into_the_base(daemon, tiny_gguf, peft, tmp_path):
    """The q/k LoRA applied by llama.cpp gives what the base with alpha/r * B @ A merged in gives,
    the q/k deltas permuted as llama's conversion permutes q/k: the permutation and the scale are right."""
    status, body = create(daemon, "tiny-lora-qk", files={"tiny.gguf": daemon.upload_blob(tiny_gguf)},
                          adapters=upload_dir(daemon, peft["qk"]))
    assert status == 200, body
    tensors = make_lora(b_std=0.3, seed=2, targets=("q_proj", "k_proj"))
    merged = merge_into_gguf(tiny_gguf, tmp_path / "merged.gguf", tensors, r=4, alpha=8)
    daemon.create_from_gguf("tiny-merged-qk", merged)
    unpermuted = merge_into_gguf(tiny_gguf, tmp_path / "unpermuted.gguf", tensors, r=4, alpha=8, permute=False)
    daemon.create_from_gguf("tiny-merged-qk-unpermuted", unpermuted)
    with_adapter = generate(daemon, "tiny-lora-qk")
    assert with_adapter == generate(daemon, "tiny-merged-qk")
    # the test has the power to see a missing permutation
    assert with_adapter != generate(daemon, "tiny-merged-qk-unpermuted")


def test_cli_creates_from_a_peft_directory_and_show_lists_it(daemon, tiny, peft, lora_big, tmp_path):
    shutil.copytree(peft["big"], tmp_path / "my-adapter")
    (tmp_path / "Modelfile").write_text(f"FROM {tiny}\nADAPTER ./my-adapter\n")
    result = daemon.cli("create", "tiny-lora-cli", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 0, result.stderr
    # the same adapter through the API and through the CLI: the same converted layer, the same output
    assert adapter_blobs(daemon, "tiny-lora-cli") == adapter_blobs(daemon, lora_big)
    assert generate(daemon, "tiny-lora-cli") == generate(daemon, lora_big)

    shown = daemon.cli("show", "tiny-lora-cli", "--modelfile")
    assert shown.returncode == 0, shown.stderr
    adapter_lines = [line for line in shown.stdout.splitlines() if line.startswith("ADAPTER ")]
    assert adapter_lines == [f"ADAPTER {adapter_blobs(daemon, lora_big)[0]}"]
    summary = daemon.cli("show", "tiny-lora-cli")
    assert "Adapters" in summary.stdout and adapter_blobs(daemon, lora_big)[0].name[7:19] in summary.stdout


def test_a_gguf_lora_file_works(daemon, tiny, lora_big, tmp_path):
    # the GGUF our converter wrote, given back as a file: Modelfile ADAPTER with a .gguf path
    converted = adapter_blobs(daemon, lora_big)[0]
    shutil.copy(converted, tmp_path / "lora.gguf")
    (tmp_path / "Modelfile").write_text(f"FROM {tiny}\nADAPTER lora.gguf\n")
    result = daemon.cli("create", "tiny-lora-gguf", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 0, result.stderr
    assert generate(daemon, "tiny-lora-gguf") == generate(daemon, lora_big)


def test_two_adapters_at_once(daemon, tiny, peft, lora_big, tmp_path):
    (tmp_path / "Modelfile").write_text(f"FROM {tiny}\nADAPTER {peft['zero']}\nADAPTER {peft['big']}\n")
    result = daemon.cli("create", "tiny-lora-two", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 0, result.stderr
    assert len(adapter_blobs(daemon, "tiny-lora-two")) == 2
    # both are applied: zero adds nothing to the trained one
    assert generate(daemon, "tiny-lora-two") == generate(daemon, lora_big)
    # a model built FROM a model with adapters keeps them and adds its own
    status, body = create(daemon, "tiny-lora-three", **{"from": "tiny-lora-two"},
                          adapters=upload_dir(daemon, peft["qk"]))
    assert status == 200, body
    assert len(adapter_blobs(daemon, "tiny-lora-three")) == 3
    assert len(generate(daemon, "tiny-lora-three")) > 0


# -- refused at create -------------------------------------------------------------------------------

def _store_files(daemon) -> set[str]:
    return {str(p.relative_to(daemon.models_dir)) for p in daemon.models_dir.rglob("*") if p.is_file()}


def _write_gguf_lora(path: Path, arch: str, tensors: dict[str, np.ndarray], general_type: str = "adapter") -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", general_type)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 8.0)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gpt2_adapter(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    tensors = {}
    for half, shape in (("A", (4, 256)), ("B", (768, 4))):
        tensors[f"base_model.model.transformer.h.0.attn.c_attn.lora_{half}.weight"] = \
            rng.standard_normal(shape).astype(np.float32)
    return write_peft_adapter(directory, tensors, targets=("c_attn",))


def test_mismatched_adapters_are_refused_at_create(daemon, tiny, tmp_path):
    q_a, q_b = np.zeros((4, 256), np.float32), np.zeros((256, 4), np.float32)
    cases = {
        "wrong shapes": (write_peft_adapter(tmp_path / "narrow", make_lora(n_out=128)),
                         "model.layers.0.self_attn.q_proj does not fit the base model: the adapter changes a "
                         "128x256 matrix, blk.0.attn_q.weight is 256x256"),
        "a deeper model": (write_peft_adapter(tmp_path / "deep", make_lora(layers=[0, 5])),
                           "blk.5.attn_q.weight, which does not exist in the base model"),
        "another architecture (PEFT)": (_gpt2_adapter(tmp_path / "gpt2"),
                                        "transformer.h.0.attn.c_attn is not a tensor of a llama model"),
        "another architecture (GGUF)": (
            _write_gguf_lora(tmp_path / "qwen2.gguf", "qwen2", {"blk.0.attn_q.weight.lora_a": q_a,
                                                                "blk.0.attn_q.weight.lora_b": q_b}),
            "the adapter is for architecture 'qwen2', the base model is 'llama'"),
        "a GGUF that is no adapter": (
            _write_gguf_lora(tmp_path / "model.gguf", "llama", {"blk.0.attn_q.weight": q_b}, "model"),
            "not a LoRA adapter"),
        "a GGUF with a wrong shape": (
            _write_gguf_lora(tmp_path / "bad.gguf", "llama", {"blk.1.attn_k.weight.lora_a": q_a,
                                                              "blk.1.attn_k.weight.lora_b": q_b[:100]}),
            "blk.1.attn_k.weight does not fit the base model"),
    }
    for what, (source, message) in cases.items():
        if source.is_dir():
            adapters = upload_dir(daemon, source)
        else:
            adapters = {source.name: daemon.upload_blob(source)}
        before = _store_files(daemon)
        status, body = create(daemon, "tiny-mismatch", **{"from": tiny}, adapters=adapters)
        assert status == 400, (what, body)
        assert message in body["error"], (what, body["error"])
        assert _store_files(daemon) == before, what  # no manifest, no layer, no temp file
    status, _ = daemon.post("/api/show", {"model": "tiny-mismatch"})
    assert status == 404

    # the CLI: one line, a non-zero exit
    (tmp_path / "Modelfile").write_text(f"FROM {tiny}\nADAPTER ./narrow\n")
    result = daemon.cli("create", "tiny-mismatch", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "Error: adapter: model.layers.0.self_attn.q_proj does not fit the base model: the adapter changes a "
        "128x256 matrix, blk.0.attn_q.weight is 256x256"]


def test_bad_adapter_requests(daemon, tiny, tmp_path):
    config_only = {"adapter_config.json": daemon.upload_blob(write_peft_adapter(tmp_path / "a", make_lora())
                                                           / "adapter_config.json")}
    status, body = create(daemon, "tiny-bad", **{"from": tiny}, adapters=config_only)
    assert status == 400 and "adapter_model.safetensors" in body["error"]
    status, body = create(daemon, "tiny-bad", **{"from": tiny}, adapters={"x.gguf": "sha256:" + "0" * 64})
    assert status == 400 and "not found" in body["error"]
    dora = write_peft_adapter(tmp_path / "dora", make_lora(), use_dora=True)
    status, body = create(daemon, "tiny-bad", **{"from": tiny}, adapters=upload_dir(daemon, dora))
    assert status == 400 and "DoRA" in body["error"]
    (tmp_path / "Modelfile").write_text(f"FROM {tiny}\nADAPTER ./nowhere\n")
    result = daemon.cli("create", "tiny-bad", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode != 0 and "no such file" in result.stderr


# -- the converter alone ---------------------------------------------------------------------------

def test_converter_scales_and_permutes(tiny_gguf, tmp_path):
    """rsLoRA and alpha_pattern scales, which llama.cpp's single alpha/rank cannot say, are folded
    into B; q/k B rows are permuted as the base's q/k were, v's are not."""
    base = read_gguf_info(tiny_gguf)
    tensors = make_lora(b_std=0.1, targets=("q_proj", "v_proj"))
    d = write_peft_adapter(tmp_path / "a", tensors, r=4, alpha=8, use_rslora=True, alpha_pattern={"v_proj": 2})
    out = tmp_path / "a.gguf"
    with open(out, "wb") as f:
        convert_peft_adapter(d / "adapter_config.json", [d / "adapter_model.safetensors"], base, f)
    reader = gguf.GGUFReader(str(out))
    gguf_alpha = reader.get_field("adapter.lora.alpha").contents()
    assert gguf_alpha == pytest.approx(8 * 2)  # rsLoRA: alpha / sqrt(r) == (alpha * sqrt(r)) / r
    got = {t.name: np.array(t.data) for t in reader.tensors}
    applied = gguf_alpha / 4  # what llama.cpp multiplies by
    q_b = tensors[lora_tensor_name(0, "q_proj", "B")]
    v_b = tensors[lora_tensor_name(0, "v_proj", "B")]
    np.testing.assert_allclose(got["blk.0.attn_q.weight.lora_b"] * applied, permute_rows(q_b, 4) * 8 / 2, rtol=1e-6)
    np.testing.assert_allclose(got["blk.0.attn_v.weight.lora_b"] * applied, v_b * 2 / 2, rtol=1e-6)
    np.testing.assert_array_equal(got["blk.0.attn_q.weight.lora_a"], tensors[lora_tensor_name(0, "q_proj", "A")])

    broken = dict(tensors)
    del broken[lora_tensor_name(1, "v_proj", "B")]
    d = write_peft_adapter(tmp_path / "b", broken)
    with pytest.raises(AdapterError, match="has lora_A but no lora_B"), open(tmp_path / "b.gguf", "wb") as f:
        convert_peft_adapter(d / "adapter_config.json", [d / "adapter_model.safetensors"], base, f)

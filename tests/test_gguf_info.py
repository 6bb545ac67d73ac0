import numpy as np
import pytest

import gguf
from registry import InvalidGGUF, human_number, is_gguf, read_gguf_info
from tests.gguf_factory import quantize_q4_k, write_tiny_gguf

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {
        "f32": write_tiny_gguf(d / "tiny-f32.gguf", chat_template=TEMPLATE),
        "q4_k": write_tiny_gguf(d / "tiny-q4k.gguf", quant="q4_k", n_head_kv=2, name="tiny-q"),
    }


@pytest.mark.parametrize(
    "n, text",
    [(0, "0"), (999, "999"), (1000, "1K"), (1001, "1K"), (1_000_000, "1M"), (125_000_000, "125M"),
     (500_500_000, "500.50M"), (500_550_000, "500.55M"), (134_515_008, "134.52M"), (10**9, "1B"),
     (2_800_000_000, "2.8B"), (2_850_000_000, "2.9B"), (8_030_261_248, "8.0B"), (10**12, "1000B")],
)
def test_human_number_matches_ollama(n, text):
    assert human_number(n) == text


def test_info_f32(tiny):
    info = read_gguf_info(tiny["f32"])
    assert info.architecture == "llama"
    assert info.file_type == "F32"
    assert (info.block_count, info.embedding_length, info.head_count, info.head_count_kv) == (2, 256, 4, 4)
    assert info.context_length == 2048
    assert info.chat_template == TEMPLATE
    assert (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert info.name == "tiny"
    vocab = info.vocab_size
    expected_params = 2 * vocab * 256 + 256 + 2 * (2 * 256 + 4 * 256 * 256 + 3 * 256 * 512)
    assert info.parameter_count == expected_params
    assert info.tensor_bytes == 4 * expected_params
    assert info.details() == {"format": "gguf", "family": "llama", "families": ["llama"],
                              "parameter_size": human_number(expected_params), "quantization_level": "F32"}
    mi = info.model_info
    assert mi["general.architecture"] == "llama"
    assert mi["general.parameter_count"] == expected_params
    assert mi["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # float32 shown as Go shows it
    assert mi["tokenizer.ggml.model"] == "llama" and mi["tokenizer.ggml.add_bos_token"] is True
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert key in mi and mi[key] is None
    # As in Ollama's /api/show: these two are shown elsewhere.
    assert "general.name" not in mi and "tokenizer.chat_template" not in mi


def test_info_verbose_has_arrays(tiny):
    info = read_gguf_info(tiny["f32"], verbose=True)
    tokens = info.model_info["tokenizer.ggml.tokens"]
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3] == "<0x00>" and len(tokens) == info.vocab_size
    assert len(info.model_info["tokenizer.ggml.scores"]) == info.vocab_size
    assert info.model_info["tokenizer.ggml.token_type"][3] == int(gguf.TokenType.BYTE)


def test_info_q4_k(tiny):
    info = read_gguf_info(tiny["q4_k"])
    assert info.file_type == "Q4_K_M"
    assert info.details()["quantization_level"] == "Q4_K_M"
    assert info.head_count_kv == 2 and info.name == "tiny-q" and info.chat_template is None
    assert info.tensor_bytes < info.parameter_count  # ~4.5 bits a weight
    assert info.tensor_bytes + 1000 < tiny["q4_k"].stat().st_size


def test_file_type_falls_back_to_dominant_tensor_type(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    w.add_tensor("a", quantize_q4_k(np.zeros((4, 256), np.float32)), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.add_tensor("b", np.zeros(16, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_gguf_info(tmp_path / "x.gguf")
    assert info.file_type == "Q4_K" and info.parameter_count == 4 * 256 + 16
    assert info.context_length is None and info.block_count is None and info.bos_token_id is None


def test_q4_k_quantizer_matches_gguf_dequantizer():
    x = (np.random.default_rng(3).standard_normal((4, 512)) * 0.02).astype(np.float32)
    y = gguf.quants.dequantize(quantize_q4_k(x), gguf.GGMLQuantizationType.Q4_K)
    assert y.shape == x.shape
    assert np.abs(x - y).max() < 0.01 and np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError):
        quantize_q4_k(np.zeros((2, 100), np.float32))


def test_garbage_and_truncated_files(tiny, tmp_path):
    cases = {
        "empty.gguf": b"",
        "text.gguf": b"this is not a model at all\n" * 10,
        "magic-only.gguf": b"GGUF",
        "bad-version.gguf": b"GGUF" + (99).to_bytes(4, "little") + bytes(16),
        "huge-counts.gguf": b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") * 2,
    }
    data = tiny["q4_k"].read_bytes()
    cases["truncated-header.gguf"] = data[:5000]
    cases["truncated-data.gguf"] = data[: len(data) - 100]
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(InvalidGGUF, match="^not a valid GGUF file: "):
            read_gguf_info(path)
    with pytest.raises(InvalidGGUF):
        read_gguf_info(tmp_path / "missing.gguf")


def test_is_gguf(tiny, tmp_path):
    assert is_gguf(tiny["f32"])
    (tmp_path / "x").write_bytes(b"GGML")
    assert not is_gguf(tmp_path / "x") and not is_gguf(tmp_path / "missing")


@pytest.mark.parametrize("quant", ["f32", "q4_k"])
def test_tiny_gguf_loads_and_generates_in_llama_cpp(tiny, quant):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(tiny[quant]), n_ctx=256, verbose=False)
    try:
        text = "Hello, wörld! 🙂"
        tokens = llm.tokenize(text.encode())
        assert tokens[0] == 1  # BOS added
        assert llm.detokenize(tokens).decode() == text
        out = llm.create_completion("Once upon a time", max_tokens=4, temperature=0)
        assert out["usage"]["completion_tokens"] >= 1
        assert isinstance(out["choices"][0]["text"], str)
    finally:
        llm.close()

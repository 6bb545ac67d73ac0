"""Decoder checkpoints (Llama, Mistral, Qwen2, Gemma 1/2/3) converted to GGUF: llama.cpp against numpy.

The checkpoints are tiny ones written by tests/hf_factory.py. The reference is the Hugging Face
forward pass of each family written out in numpy (float64) from the safetensors weights: llama.cpp's
logits on the converted GGUF must match it, which catches a wrong q/k permutation, rope base or
scaling, norm offset, GQA grouping, soft-capping or sliding window. Tokenization is compared with
the reference BPE in hf_factory (Hugging Face's algorithm), and `lm create` runs it all end to end.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from registry.convert import Checkpoint, ConvertError, convert_directory
from runner.model.modelfile_request import model_dir_files
from tests.hf_factory import CHAT_TEMPLATES, FAMILIES, encode, write_hf_model
from tests.test_convert import _kv, _store_state

TEXTS = ["Hello world, the quick brown fox!", "I'm running 12345 times\n\nsé ☃ thank you", "  two  spaces "]


# -- the reference: Hugging Face's forward passes in numpy ---------------------------------------------------
def _rms(x, w, eps, gemma):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * ((1.0 + w) if gemma else w)


def _inv_freq(cfg: dict, head_dim: int, theta: float, scaled: bool) -> np.ndarray:
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    rs = cfg.get("rope_scaling") if scaled else None
    if rs and rs["rope_type"] == "linear":
        inv = inv / rs["factor"]
    elif rs and rs["rope_type"] == "llama3":  # transformers' _compute_llama3_parameters
        old, factor = rs["original_max_position_embeddings"], rs["factor"]
        low, high = rs["low_freq_factor"], rs["high_freq_factor"]
        wavelen = 2 * math.pi / inv
        scaled_inv = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, (1 - smooth) * scaled_inv / factor + smooth * scaled_inv, scaled_inv)
    return inv


def _rope(x, inv):  # x: (tokens, heads, dim); Hugging Face's rotate_half
    pos = np.arange(x.shape[0])[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(pos), np.cos(pos)], -1)[:, None, :]
    sin = np.concatenate([np.sin(pos), np.sin(pos)], -1)[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_logits(directory: Path, ids: list[int]) -> np.ndarray:
    cfg = json.loads((directory / "config.json").read_text())
    family = {"gemma3_text": "gemma3"}.get(cfg["model_type"], cfg["model_type"])
    gemma = family.startswith("gemma")
    with Checkpoint([directory / "model.safetensors"]) as ck:
        w = {n: np.array(ck.array(n), dtype=np.float64) for n in ck.names()}
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, n = cfg.get("head_dim", h // nh), cfg["rms_norm_eps"], len(ids)
    x = w["model.embed_tokens.weight"][ids] * (math.sqrt(h) if gemma else 1.0)
    scale = cfg.get("query_pre_attn_scalar", hd) ** -0.5
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."

        def lin(t, name):
            out = t @ w[p + name + ".weight"].T
            return out + w[p + name + ".bias"] if p + name + ".bias" in w else out

        sliding = (family == "gemma2" and layer % 2 == 0) or (family == "gemma3" and (layer + 1) % 6 != 0)
        a = _rms(x, w[p + "input_layernorm.weight"], eps, gemma)
        q = lin(a, "self_attn.q_proj").reshape(n, nh, hd)
        k = lin(a, "self_attn.k_proj").reshape(n, nkv, hd)
        v = lin(a, "self_attn.v_proj").reshape(n, nkv, hd)
        if family == "gemma3":
            q = _rms(q, w[p + "self_attn.q_norm.weight"], eps, True)
            k = _rms(k, w[p + "self_attn.k_norm.weight"], eps, True)
        theta = cfg["rope_local_base_freq"] if family == "gemma3" and sliding else cfg["rope_theta"]
        inv = _inv_freq(cfg, hd, theta, scaled=not sliding)
        q, k = _rope(q, inv), _rope(k, inv)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)  # GQA
        s = np.einsum("qhd,khd->hqk", q, k) * scale
        if cfg.get("attn_logit_softcapping"):
            s = np.tanh(s / cfg["attn_logit_softcapping"]) * cfg["attn_logit_softcapping"]
        masked = (j > i) | ((i - j >= cfg["sliding_window"]) if sliding else False)
        s = np.where(masked[None], -np.inf, s)
        s = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("hqk,khd->qhd", s / s.sum(-1, keepdims=True), v).reshape(n, nh * hd)
        o = lin(o, "self_attn.o_proj")
        if family in ("gemma2", "gemma3"):
            x = x + _rms(o, w[p + "post_attention_layernorm.weight"], eps, True)
            a = _rms(x, w[p + "pre_feedforward_layernorm.weight"], eps, True)
        else:
            x = x + o
            a = _rms(x, w[p + "post_attention_layernorm.weight"], eps, gemma)
        gate = lin(a, "mlp.gate_proj")
        gate = _gelu_tanh(gate) if gemma else gate / (1 + np.exp(-gate))
        m = lin(gate * lin(a, "mlp.up_proj"), "mlp.down_proj")
        if family in ("gemma2", "gemma3"):
            m = _rms(m, w[p + "post_feedforward_layernorm.weight"], eps, True)
        x = x + m
    x = _rms(x, w["model.norm.weight"], eps, gemma)
    logits = x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T
    if cfg.get("final_logit_softcapping"):
        logits = np.tanh(logits / cfg["final_logit_softcapping"]) * cfg["final_logit_softcapping"]
    return logits


def llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    """All positions' logits from llama.cpp (F32 KV cache, so that only the weights' type differs)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=64, n_threads=2, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float64)
    finally:
        llm.close()


def llama_cpp_tokens(gguf_path: Path, text: str, add_bos: bool = False) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode(), add_bos=add_bos, special=True)
    finally:
        llm.close()


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family: write_hf_model(root / family, family) for family in FAMILIES}


def _convert(directory: Path, out: Path, file_type: str = "F16") -> Path:
    with open(out, "wb") as f:
        convert_directory(directory, f, file_type=file_type)
    return out


@pytest.fixture(scope="module")
def ggufs(hf_dirs, tmp_path_factory) -> dict[str, Path]:
    """F32 conversions: llama.cpp's logits then differ from the float64 reference by rounding only."""
    root = tmp_path_factory.mktemp("gguf")
    return {family: _convert(d, root / f"{family}.gguf", "F32") for family, d in hf_dirs.items()}


def _prompt_ids(directory: Path) -> list[int]:
    tok = json.loads((directory / "tokenizer.json").read_text())
    return encode(tok, "The quick brown fox jumps over the lazy dog, hello world")[:12]


# -- logits -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_reference(family, hf_dirs, ggufs):
    ids = _prompt_ids(hf_dirs[family])
    assert len(ids) >= 10  # longer than the Gemma sliding windows (4)
    ref = reference_logits(hf_dirs[family], ids)
    got = llama_cpp_logits(ggufs[family], ids)
    assert got.shape == ref.shape  # the vocabulary padded to the embedding's rows
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 2e-3, f"{family}: relative error {err:.2e}"
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_f16_default_is_close(hf_dirs, tmp_path):
    out = _convert(hf_dirs["llama"], tmp_path / "llama-f16.gguf")
    kinds = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["token_embd.weight"] == "F16"
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["rope_freqs.weight"] == "F32"
    ids = _prompt_ids(hf_dirs["llama"])
    ref = reference_logits(hf_dirs["llama"], ids)
    got = llama_cpp_logits(out, ids)[:, :ref.shape[1]]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 2e-2


# -- metadata ---------------------------------------------------------------------------------------------
def test_llama_metadata(ggufs, hf_dirs):
    r = GGUFReader(ggufs["llama"])
    assert _kv(r, "general.architecture") == "llama" and _kv(r, "general.name") == "tiny-llama"
    assert _kv(r, "llama.block_count") == 2 and _kv(r, "llama.context_length") == 256
    assert _kv(r, "llama.embedding_length") == 64 and _kv(r, "llama.feed_forward_length") == 128
    assert (_kv(r, "llama.attention.head_count"), _kv(r, "llama.attention.head_count_kv")) == (4, 2)
    assert _kv(r, "llama.rope.freq_base") == 500000.0 and _kv(r, "llama.rope.dimension_count") == 16
    assert abs(_kv(r, "llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-10
    assert _kv(r, "tokenizer.ggml.model") == "gpt2" and _kv(r, "tokenizer.ggml.pre") == "llama-bpe"
    tokens, types = _kv(r, "tokenizer.ggml.tokens"), _kv(r, "tokenizer.ggml.token_type")
    tok = json.loads((hf_dirs["llama"] / "tokenizer.json").read_text())
    assert len(tokens) == _kv(r, "llama.vocab_size") == len(tok["model"]["vocab"]) + 5 + 3
    bos = tokens.index("<|begin_of_text|>")
    assert types[bos] == 3 and types[tokens.index("Ġthe")] == 1 and types[-1] == 5  # control, normal, unused
    assert len(_kv(r, "tokenizer.ggml.merges")) == len(tok["model"]["merges"])
    assert _kv(r, "tokenizer.ggml.bos_token_id") == bos
    assert _kv(r, "tokenizer.ggml.eos_token_id") == tokens.index("<|eot_id|>")
    assert _kv(r, "tokenizer.ggml.add_bos_token") is True and _kv(r, "tokenizer.ggml.add_eos_token") is False
    assert _kv(r, "tokenizer.chat_template") == CHAT_TEMPLATES["llama3"]
    names = {t.name for t in r.tensors}
    assert "output.weight" in names and "rope_freqs.weight" in names


def test_qwen2_and_gemma_metadata(ggufs, hf_dirs):
    r = GGUFReader(ggufs["qwen2"])
    assert _kv(r, "tokenizer.ggml.pre") == "qwen2" and _kv(r, "tokenizer.ggml.add_bos_token") is False
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names and "blk.0.attn_q.bias" in names  # tied: llama.cpp reuses token_embd
    r = GGUFReader(ggufs["gemma3"])
    assert _kv(r, "tokenizer.ggml.model") == "llama" and _kv(r, "tokenizer.ggml.add_space_prefix") is False
    assert _kv(r, "gemma3.attention.sliding_window") == 4 and _kv(r, "gemma3.rope.scaling.type") == "linear"
    tokens, types = _kv(r, "tokenizer.ggml.tokens"), _kv(r, "tokenizer.ggml.token_type")
    assert types[tokens.index("<0x41>")] == 6 and types[tokens.index("<unk>")] == 2
    assert types[tokens.index("<start_of_turn>")] == 3
    # Gemma's RMSNorm multiplies by 1 + w: stored + 1
    with Checkpoint([hf_dirs["gemma3"] / "model.safetensors"]) as ck:
        src = np.array(ck.array("model.layers.0.self_attn.q_norm.weight"))
    stored = {t.name: t for t in r.tensors}["blk.0.attn_q_norm.weight"]
    np.testing.assert_allclose(np.asarray(stored.data), src + 1, rtol=1e-6)
    r = GGUFReader(ggufs["mistral"])
    assert _kv(r, "general.architecture") == "llama" and _kv(r, "tokenizer.ggml.add_space_prefix") is True


# -- tokenization -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma"])
def test_tokenization_matches_hugging_face_bpe(family, hf_dirs, ggufs):
    tok = json.loads((hf_dirs[family] / "tokenizer.json").read_text())
    specials = {"llama": "<|start_header_id|>user<|end_header_id|>", "qwen2": "<|im_start|>user\nhi<|im_end|>",
                "mistral": "</s>[INST] hi", "gemma": "<start_of_turn>user\nhello<end_of_turn>"}
    for text in TEXTS + [specials[family]]:
        assert llama_cpp_tokens(ggufs[family], text) == encode(tok, text), text


# -- bad input ------------------------------------------------------------------------------------------
def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_unknown_pre_tokenizer_is_refused(hf_dirs, tmp_path):
    d = write_hf_model(tmp_path / "m", "llama")
    _edit_json(d / "tokenizer.json",
               lambda t: t["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+|\s+"))
    with pytest.raises(ConvertError, match=r"unsupported pre-tokenizer regex '\\\\w\+\|\\\\s\+'"):
        convert_directory(d, open(os.devnull, "wb"))


def test_sentencepiece_scores_need_complete_merges(tmp_path):
    d = write_hf_model(tmp_path / "m", "gemma")
    _edit_json(d / "tokenizer.json", lambda t: t["model"].update(merges=t["model"]["merges"][:-5]))
    with pytest.raises(ConvertError, match="cannot derive SentencePiece scores.*add tokenizer.model"):
        convert_directory(d, open(os.devnull, "wb"))


def test_unsupported_gemma3_layout_is_refused(tmp_path):
    d = write_hf_model(tmp_path / "m", "gemma3")
    _edit_json(d / "config.json", lambda c: c.update(sliding_window_pattern=4))
    with pytest.raises(ConvertError, match="sliding_window_pattern 4 is not supported"):
        convert_directory(d, open(os.devnull, "wb"))


def test_missing_layer_tensor(tmp_path):
    d = write_hf_model(tmp_path / "m", "qwen2")
    _edit_json(d / "config.json", lambda c: c.update(num_hidden_layers=3))
    with pytest.raises(ConvertError, match="lacks tensor blk.2.attn_norm.weight"):
        convert_directory(d, open(os.devnull, "wb"))


# -- end to end: `lm create` FROM the directory, then generate and chat ---------------------------------------
def _create(daemon, name: str, directory: Path):
    mf = directory.parent / f"{name}.Modelfile"
    mf.write_text(f"FROM {directory}\n")
    return daemon.cli("create", name, "-f", str(mf))


@pytest.fixture(scope="module")
def created(daemon, hf_dirs) -> dict[str, str]:
    names = {}
    for family in ("llama", "qwen2"):
        result = _create(daemon, f"tiny-hf-{family}", hf_dirs[family])
        assert result.returncode == 0, result.stderr + result.stdout
        assert "converting model" in result.stdout and result.stdout.strip().endswith("success")
        names[family] = f"tiny-hf-{family}"
    return names


def test_create_then_generate(daemon, created):
    for name in created.values():
        status, out = daemon.post("/api/generate", {"model": name, "prompt": "hello world", "stream": False,
                                                    "options": {"num_predict": 4, "temperature": 0}})
        assert status == 200, out
        assert out["done"] and out["eval_count"] >= 1
        status, show = daemon.post("/api/show", {"model": name})
        assert show["details"]["format"] == "gguf" and show["details"]["quantization_level"] == "F16"


def test_chat_uses_the_checkpoint_chat_template(daemon, created, hf_dirs):
    from modelfiles import render_jinja

    messages = [{"role": "user", "content": "hello there"}]
    for family, name in created.items():
        tok = json.loads((hf_dirs[family] / "tokenizer.json").read_text())
        prompt = render_jinja(CHAT_TEMPLATES["llama3" if family == "llama" else "chatml"], messages=messages)
        expected = ([tok["added_tokens"][0]["id"]] if family == "llama" else []) + encode(tok, prompt)
        opts = {"num_predict": 3, "temperature": 0, "seed": 1}
        status, chat = daemon.post("/api/chat", {"model": name, "messages": messages, "stream": False,
                                                 "options": opts})
        assert status == 200, chat
        status, raw = daemon.post("/api/generate", {"model": name, "prompt": prompt, "raw": True, "stream": False,
                                                    "options": opts})
        assert status == 200, raw
        assert chat["prompt_eval_count"] == raw["prompt_eval_count"] == len(expected), family
        assert chat["message"]["content"] == raw["response"]


def test_create_unsupported_decoder_is_a_clear_400(daemon, tmp_path):
    d = write_hf_model(tmp_path / "phi", "llama")
    _edit_json(d / "config.json", lambda c: c.update(architectures=["Phi3ForCausalLM"], model_type="phi3"))
    files = {p.relative_to(d).as_posix(): daemon.upload_blob(p) for p in model_dir_files(d)}
    before = _store_state(daemon)
    status, body = daemon.post("/api/create", {"model": "phi-x", "files": files, "stream": False})
    assert status == 400 and body["error"] == 'unsupported architecture "Phi3ForCausalLM"'
    assert _store_state(daemon) == before
    result = _create(daemon, "phi-y", d)
    assert result.returncode != 0 and 'unsupported architecture "Phi3ForCausalLM"' in result.stderr + result.stdout


def test_failed_conversion_leaves_nothing(daemon, tmp_path):
    """A checkpoint that fails half-way through writing the GGUF (a tensor out of F16's range)."""
    from tests.safetensors_writer import write_safetensors

    d = write_hf_model(tmp_path / "big", "qwen2")
    with Checkpoint([d / "model.safetensors"]) as ck:
        tensors = {n: np.array(ck.array(n)) for n in ck.names()}
    tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = 1e6  # written late: other tensors went out first
    write_safetensors(d / "model.safetensors", tensors)
    files = {p.relative_to(d).as_posix(): daemon.upload_blob(p) for p in model_dir_files(d)}
    before = _store_state(daemon)
    status, body = daemon.post("/api/create", {"model": "too-big", "files": files, "stream": False})
    assert status == 400 and "does not fit in F16" in body["error"], body
    assert _store_state(daemon) == before


# -- tokenizer.model ----------------------------------------------------------------------------------------
def test_scores_from_tokenizer_model(tmp_path):
    """With tokenizer.model beside tokenizer.json its scores are used (no need for complete merges);
    alone, it is the whole vocabulary."""
    from tests.hf_factory import sentencepiece_model_bytes

    d = write_hf_model(tmp_path / "m", "mistral")
    tok = json.loads((d / "tokenizer.json").read_text())
    (d / "tokenizer.model").write_bytes(sentencepiece_model_bytes(tok, add_dummy_prefix=True))
    _edit_json(d / "tokenizer.json", lambda t: t["model"].update(merges=t["model"]["merges"][:-5]))
    both = _convert(d, tmp_path / "both.gguf")
    r = GGUFReader(both)
    scores, tokens = _kv(r, "tokenizer.ggml.scores"), _kv(r, "tokenizer.ggml.tokens")
    i = tokens.index("\u2581the")
    assert scores[i] == -i and _kv(r, "tokenizer.ggml.add_space_prefix") is True
    (d / "tokenizer.json").unlink()
    alone = _convert(d, tmp_path / "alone.gguf")
    r = GGUFReader(alone)
    assert _kv(r, "tokenizer.ggml.tokens") == tokens and _kv(r, "tokenizer.ggml.token_type") == \
        _kv(GGUFReader(both), "tokenizer.ggml.token_type")
    assert _kv(r, "tokenizer.ggml.unknown_token_id") == 0 and _kv(r, "tokenizer.ggml.bos_token_id") == 1
    for text in TEXTS:
        assert llama_cpp_tokens(alone, text) == llama_cpp_tokens(both, text) == encode(tok, text), text


def test_cli_uploads_a_chat_template_file(tmp_path):
    # Newer checkpoints keep the template in chat_template.jinja rather than tokenizer_config.json.
    from runner.model.modelfile_request import model_dir_files
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "README.md"):
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in model_dir_files(tmp_path)) == [
        "chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json"]

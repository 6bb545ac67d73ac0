"""Tiny Hugging Face-format decoder checkpoints for tests, built from numpy and json alone.

`write_hf_model(directory, family)` writes config.json, model.safetensors (random weights: hidden 64,
4 heads, 2 KV heads), tokenizer.json and tokenizer_config.json (with a chat template), as the
Hub's llama / mistral / qwen2 / gemma / gemma2 / gemma3 checkpoints lay them out. The tokenizers are
trained here on a small corpus, so that their merges are real:
- byte-level BPE (Llama 3 and Qwen2 style): the 256 byte tokens, merges, special tokens;
- SentencePiece-style BPE (Mistral and Gemma style, byte_fallback): <0xXX> byte tokens, "▁" for
  spaces, and merges listed for every pair that concatenates to a token, as transformers writes
  them when it converts a SentencePiece model.
`bpe_encode` is the reference tokenizer the tests compare llama.cpp's with.
"""

from __future__ import annotations

import json
from pathlib import Path

import re
import struct

import numpy as np

from tests.safetensors_writer import write_safetensors

CORPUS = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away! "
    "Hello world, hello there: how are you today? I am fine, thank you. "
    "Tokenizers split text into pieces, then merge the most frequent pairs of pieces. "
    "Numbers like 1234 and 2024 appear too, and so do words such as running, jumping and sleeping. "
    "It's what they've said and we'll see what you'd do.\n"
)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPACE = "\u2581"
# Python's re has no \p{L} / \p{N}: the letters and digits of the texts tests use (ASCII, Latin) instead.
_LETTER, _DIGIT = "A-Za-z\u00C0-\u024F", "0-9"


def python_regex(pattern: str) -> str:
    """A tokenizer.json Split regex in Python's re dialect (see _LETTER)."""
    pattern = pattern.replace("[^\\r\\n\\p{L}\\p{N}]", f"[^\\r\\n{_LETTER}{_DIGIT}]")
    pattern = pattern.replace("[^\\s\\p{L}\\p{N}]", f"[^\\s{_LETTER}{_DIGIT}]")
    return pattern.replace("\\p{L}", f"[{_LETTER}]").replace("\\p{N}", f"[{_DIGIT}]")

CHAT_TEMPLATES = {
    "llama3": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma": ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
              "else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "mistral": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"),
}


# -- byte-level BPE ----------------------------------------------------------------------------------------
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters (space -> 'Ġ', newline -> 'Ċ')."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _apply_merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def bpe_word(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merges the lowest-ranked adjacent pair, left to right, until no listed pair remains."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, 1 << 60), p) for p in zip(symbols, symbols[1:])]
        rank, pair = min(pairs)
        if rank == 1 << 60:
            break
        symbols = _apply_merge(symbols, pair)
    return symbols


def _train(words: list[list[str]], n_merges: int) -> list[tuple[str, str]]:
    merges = []
    for _ in range(n_merges):
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then alphabetical
        if counts[best] < 2:
            break
        merges.append(best)
        words = [_apply_merge(w, best) for w in words]
    return merges


def byte_level_tokenizer(style: str, n_merges: int = 120) -> tuple[dict, list[str]]:
    """(tokenizer.json, special tokens) for a Llama 3 ("llama3") or Qwen2 ("qwen2") style BPE."""
    b2u = byte_to_unicode()
    split = LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT
    words = [[b2u[b] for b in piece.encode()] for piece in re.findall(python_regex(split), CORPUS)]
    merges = _train(words, n_merges)
    vocab = {b2u[b]: b for b in range(256)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    added = [{"id": len(vocab) + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if style == "llama3":
        bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
        post = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {}}]}
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None if style == "llama3" else {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": style == "llama3", "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    return tok, specials


def encode_byte_level(tok: dict, text: str) -> list[int]:
    """What Hugging Face's tokenizer gives for `text` (special tokens recognised, none added)."""
    b2u = byte_to_unicode()
    model = tok["model"]
    vocab = dict(model["vocab"])
    specials = {a["content"]: a["id"] for a in tok["added_tokens"]}
    ranks = {tuple(m): i for i, m in enumerate(model["merges"])}
    split = python_regex(tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"])
    ids = []
    for part in re.split("(" + "|".join(re.escape(s) for s in specials) + ")", text):
        if part in specials:
            ids.append(specials[part])
            continue
        for piece in re.findall(split, part):
            word = "".join(b2u[b] for b in piece.encode())
            if model.get("ignore_merges") and word in vocab:
                ids.append(vocab[word])
                continue
            ids += [vocab[s] for s in bpe_word(list(word), ranks)]
    return ids


# -- SentencePiece-style BPE ---------------------------------------------------------------------------------
def sentencepiece_tokenizer(style: str, n_merges: int = 120) -> tuple[dict, list[str]]:
    """tokenizer.json of a Gemma ("gemma": no "▁" prefix) or Mistral ("mistral": "▁" prepended) BPE."""
    text = CORPUS.replace(" ", SPACE)
    words = [list(w) for w in re.findall(SPACE + "?[^" + SPACE + "]+|" + SPACE, text)]
    if style == "gemma":
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
        unk = "<unk>"
    else:
        specials = ["<unk>", "<s>", "</s>"]
        unk = "<unk>"
    pieces = list(specials) + [f"<0x{b:02X}>" for b in range(256)] + sorted(set(text))
    for a, b in _train(words, n_merges):
        if a + b not in pieces:
            pieces.append(a + b)
    vocab = {p: i for i, p in enumerate(pieces)}
    # Every pair that concatenates to a piece, ordered by the piece (as transformers' converter lists them).
    merges = []
    for piece in pieces[len(specials) + 256:]:
        splits = [(piece[:c], piece[c:]) for c in range(1, len(piece)) if piece[:c] in vocab and piece[c:] in vocab]
        merges += sorted(splits, key=lambda p: (vocab[p[0]], vocab[p[1]]))
    added = [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s in specials]
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    normalizer = replace if style == "gemma" else {
        "type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
    return tok, specials


def encode_sentencepiece(tok: dict, text: str) -> list[int]:
    """Hugging Face's BPE with byte fallback over the normalized text (specials recognised, none added)."""
    model = tok["model"]
    vocab = model["vocab"]
    specials = {a["content"]: a["id"] for a in tok["added_tokens"]}
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(model["merges"])}
    prepend = tok["normalizer"].get("type") == "Sequence"
    ids = []
    for part in re.split("(" + "|".join(re.escape(s) for s in specials) + ")", text):
        if part in specials:
            ids.append(specials[part])
            continue
        if not part:
            continue
        # the normalizer runs on each stretch between special tokens: each gets its "▁" prefix
        norm = (SPACE if prepend else "") + part.replace(" ", SPACE)
        for symbol in bpe_word(list(norm), ranks):
            if symbol in vocab:
                ids.append(vocab[symbol])
            else:
                ids += [vocab[f"<0x{b:02X}>"] for b in symbol.encode()]
    return ids


def encode(tok: dict, text: str) -> list[int]:
    return (encode_byte_level if tok["model"].get("byte_fallback") is False else encode_sentencepiece)(tok, text)


# -- configs and weights ---------------------------------------------------------------------------------------
FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3")
_ARCHS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
          "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def _config(family: str, vocab_size: int, specials: list[str], tok: dict) -> dict:
    ids = {s: tok["model"]["vocab"].get(s, next((a["id"] for a in tok["added_tokens"] if a["content"] == s), None))
           for s in specials}
    cfg = {"architectures": [_ARCHS[family]], "model_type": family, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "vocab_size": vocab_size,
           "torch_dtype": "float32", "_name_or_path": f"tiny-{family}"}
    if family == "llama":
        cfg.update(hidden_act="silu", rope_theta=500000.0, tie_word_embeddings=False,
                   bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    elif family == "mistral":
        cfg.update(hidden_act="silu", rope_theta=10000.0, tie_word_embeddings=False, sliding_window=None,
                   bos_token_id=ids["<s>"], eos_token_id=ids["</s>"])
    elif family == "qwen2":
        cfg.update(hidden_act="silu", rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                   bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    else:
        cfg.update(head_dim=16, hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
                   rms_norm_eps=1e-6, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                   pad_token_id=ids["<pad>"], tie_word_embeddings=True)
        if family == "gemma":
            cfg.update(rope_theta=10000.0)
        elif family == "gemma2":
            cfg.update(rope_theta=10000.0, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, sliding_window=4)
        else:
            cfg.update(model_type="gemma3_text", num_hidden_layers=6, rope_theta=1000000.0,
                       rope_local_base_freq=10000.0, query_pre_attn_scalar=16, sliding_window=4,
                       sliding_window_pattern=6, final_logit_softcapping=None, attn_logit_softcapping=None,
                       rope_scaling={"rope_type": "linear", "factor": 8.0})
    return cfg


def _weights(cfg: dict, family: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, ff, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim", h // cfg["num_attention_heads"])
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    gemma = family.startswith("gemma")

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):  # Gemma stores w with the norm multiplying by 1 + w
        return (rng.standard_normal(n) * 0.1 + (0.0 if gemma else 1.0)).astype(np.float32)

    w = {"model.embed_tokens.weight": (rng.standard_normal((cfg["vocab_size"], h))
                                       * (0.5 if not gemma else 0.5 / np.sqrt(h))).astype(np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = mat(nq, h)
        w[p + "self_attn.k_proj.weight"] = mat(nkv, h)
        w[p + "self_attn.v_proj.weight"] = mat(nkv, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, nq)
        if family == "qwen2":
            for m, n in (("q", nq), ("k", nkv), ("v", nkv)):
                w[p + f"self_attn.{m}_proj.bias"] = (rng.standard_normal(n) * 0.1).astype(np.float32)
        if family == "gemma3":
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        if family in ("gemma2", "gemma3"):
            w[p + "pre_feedforward_layernorm.weight"] = norm(h)
            w[p + "post_feedforward_layernorm.weight"] = norm(h)
        w[p + "mlp.gate_proj.weight"] = mat(ff, h)
        w[p + "mlp.up_proj.weight"] = mat(ff, h)
        w[p + "mlp.down_proj.weight"] = mat(h, ff)
    w["model.norm.weight"] = norm(h)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(cfg["vocab_size"], h)
    return w


def write_hf_model(directory: Path, family: str, *, seed: int = 0, extra_rows: int = 3) -> Path:
    """A tiny checkpoint of `family` in `directory` (created); the embedding has `extra_rows` rows more
    than the tokenizer has tokens, as real checkpoints often do (llama.cpp's vocabulary gets padded)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if family in ("llama", "qwen2"):
        tok, specials = byte_level_tokenizer("llama3" if family == "llama" else "qwen2")
    else:
        tok, specials = sentencepiece_tokenizer("mistral" if family == "mistral" else "gemma")
    n_tokens = max(max(tok["model"]["vocab"].values()), max(a["id"] for a in tok["added_tokens"])) + 1
    cfg = _config(family, n_tokens + extra_rows, specials, tok)
    tok_config = {
        "llama": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                  "chat_template": CHAT_TEMPLATES["llama3"]},
        "qwen2": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
                  "chat_template": CHAT_TEMPLATES["chatml"]},
        "mistral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                    "add_eos_token": False, "chat_template": CHAT_TEMPLATES["mistral"]},
    }.get(family) or {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                      "add_bos_token": True, "add_eos_token": False, "chat_template": CHAT_TEMPLATES["gemma"]}
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    (directory / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    write_safetensors(directory / "model.safetensors", _weights(cfg, family, seed))
    return directory


# -- tokenizer.model (SentencePiece's protobuf) -----------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def sentencepiece_model_bytes(tok: dict, *, add_dummy_prefix: bool) -> bytes:
    """A SentencePiece BPE `tokenizer.model` for a tokenizer.json of `sentencepiece_tokenizer`: each
    piece scored by its position (as SentencePiece's BPE trainer scores pieces), typed as it would be."""
    vocab = tok["model"]["vocab"]
    specials = {a["content"] for a in tok["added_tokens"]}
    out = b""
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        kind = 2 if piece == tok["model"]["unk_token"] else 3 if piece in specials else \
            6 if re.fullmatch(r"<0x[0-9A-F]{2}>", piece) else 1
        score = 0.0 if kind != 1 else -float(i)
        out += _field(1, _field(1, piece.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", score)
                      + _varint(3 << 3) + _varint(kind))
    out += _field(2, _varint(3 << 3) + _varint(2) + _varint(35 << 3) + _varint(1))  # BPE, byte_fallback
    out += _field(3, _field(1, b"identity") + _varint(3 << 3) + _varint(int(add_dummy_prefix)))
    return out

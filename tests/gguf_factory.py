"""Tiny random-weight llama GGUFs that llama.cpp loads in milliseconds, for engine tests.

The text they generate is noise, but every code path of a real model runs: an SPM vocabulary with
byte fallback (so any UTF-8 text tokenizes and detokenizes exactly), BOS/EOS, F32 or Q4_K weights.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

QK_K = 256  # values per Q4_K super-block
SPACE = "\u2581"  # SentencePiece's visible space

_WORDS = (
    "the a and of to in is you that it he was for on are as with his they I at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do how "
    "their if will up other about out many then them these so some her would make like him into time "
    "has look two more write go see number no way could people my than first water been call who its "
    "now find long down day did get come made may part over new sound take only little work know place "
    "year live me back give most very after thing our just name good sentence man think say great where "
    "help through much before line right too mean old any same tell boy follow came want show also "
    "around form three small set put end does another well large must big even such because turn here "
    "why ask went men read need land different home us move try kind hand picture again change off play "
    "spell air away animal house point page letter mother answer found study still learn should world "
    "Hello hello sky blue red green light sun Rayleigh scattering model story once upon"
).split()


def _vocab() -> tuple[list[str], list[float], list[int]]:
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
    pieces: list[str] = [SPACE] + [chr(c) for c in range(33, 127)]
    for word in _WORDS:
        # Every prefix must be a token, as SentencePiece merges a word up one symbol at a time.
        text = SPACE + word
        pieces += [text[:n] for n in range(2, len(text) + 1)]
    pieces += [c + d for c in "etaoinshrdlu" for d in "etaoinshrdlu"]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(T.NORMAL)
    # Longer pieces score higher so that merging prefers whole words.
    scores = [0.0] * 259 + [float(len(t)) - i * 1e-4 for i, t in enumerate(tokens[259:])]
    return tokens, scores, [int(t) for t in types]


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Quantize float rows (length a multiple of 256) to Q4_K blocks; returns uint8 rows.

    The gguf package only dequantizes Q4_K, so this writes the blocks itself: per 256 values,
    f16 d and dmin, twelve bytes of packed 6-bit sub-block scales and mins, 128 bytes of nibbles.
    """
    rows, cols = x.shape
    if cols % QK_K:
        raise ValueError(f"Q4_K needs rows of a multiple of {QK_K} values, got {cols}")
    sub = x.astype(np.float32).reshape(-1, 8, 32)  # (blocks, sub-blocks, values)
    lo = np.minimum(sub.min(-1), 0.0)
    scale = (sub.max(-1) - lo) / 15.0
    d = (scale.max(-1) / 63.0).astype(np.float16)
    dmin = ((-lo).max(-1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.rint(-lo / dmin32), 0).clip(0, 63).astype(np.uint8)
        eff_scale = (d32 * sc)[..., None]
        eff_min = (dmin32 * mn)[..., None]
        q = np.where(eff_scale > 0, np.rint((sub + eff_min) / eff_scale), 0).clip(0, 15)
    q = q.astype(np.uint8)
    packed = np.empty((sub.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    # Sub-blocks 2c and 2c+1 share 32 bytes: low nibbles then high nibbles.
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate(
        [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1
    )
    return blocks.reshape(rows, cols // QK_K * 144)


def write_tiny_gguf(
    path: Path,
    *,
    quant: str = "f32",
    n_layer: int = 2,
    n_embd: int = 256,
    n_head: int = 4,
    n_head_kv: int = 4,
    n_ff: int = 512,
    context_length: int = 2048,
    seed: int = 0,
    chat_template: str | None = None,
    name: str = "tiny",
) -> Path:
    if quant not in ("f32", "q4_k"):
        raise ValueError(f"quant must be 'f32' or 'q4_k', not {quant!r}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    head_dim = n_embd // n_head

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    file_type = gguf.LlamaFileType.ALL_F32 if quant == "f32" else gguf.LlamaFileType.MOSTLY_Q4_K_M
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def matrix(tensor_name: str, rows: int, cols: int) -> None:
        weights = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
        if quant == "q4_k":
            w.add_tensor(tensor_name, quantize_q4_k(weights), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
        else:
            w.add_tensor(tensor_name, weights)

    def norm(tensor_name: str) -> None:  # norms stay F32, as in real quantized models
        w.add_tensor(tensor_name, np.ones(n_embd, dtype=np.float32))

    n_embd_kv = n_head_kv * head_dim
    matrix("token_embd.weight", len(tokens), n_embd)
    for i in range(n_layer):
        blk = f"blk.{i}."
        norm(blk + "attn_norm.weight")
        matrix(blk + "attn_q.weight", n_embd, n_embd)
        matrix(blk + "attn_k.weight", n_embd_kv, n_embd)
        matrix(blk + "attn_v.weight", n_embd_kv, n_embd)
        matrix(blk + "attn_output.weight", n_embd, n_embd)
        norm(blk + "ffn_norm.weight")
        matrix(blk + "ffn_gate.weight", n_ff, n_embd)
        matrix(blk + "ffn_up.weight", n_ff, n_embd)
        matrix(blk + "ffn_down.weight", n_embd, n_ff)
    norm("output_norm.weight")
    matrix("output.weight", len(tokens), n_embd)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

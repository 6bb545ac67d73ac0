"""Decoder-only language models (Llama, Mistral, Qwen2, Gemma 1/2/3) to llama.cpp's architectures.

Tensor names come from the `gguf` package's TensorNameMap for the target architecture; what
llama.cpp needs beyond renaming:
- llama/mistral: q_proj and k_proj rows permuted. Hugging Face rotates the two halves of each head
  (rotate_half); llama.cpp's "llama" rope rotates adjacent pairs, so each head's rows are reordered
  from [x0..x(d/2-1), y0..] to [x0, y0, x1, y1, ...]. Qwen2 and Gemma use llama.cpp's NEOX rope,
  which rotates halves as Hugging Face does: no permutation.
- gemma: every RMSNorm weight + 1 (Gemma's norm multiplies by 1 + w; llama.cpp's by w); the output
  projection is always the token embedding (lm_head dropped).
- an absent lm_head (tie_word_embeddings): no `output` tensor; llama.cpp then reuses token_embd.
- rope: theta, and linear / yarn scaling as keys; Llama 3.1's "llama3" scaling as a `rope_freqs`
  tensor of per-dimension divisors, computed here as transformers computes them.
- Gemma 2/3 settings llama.cpp hard-codes (sliding-window layer pattern, the local rope base, the
  attention scale) are checked against config.json: a checkpoint that differs is refused rather
  than converted into a model that computes something else.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from .base import ConvertError, Converter
from .checkpoint import Checkpoint
from .gguf_writer import F32, GGUFFile
from .tokenizer import read_tokenizer

K = gguf.Keys


class DecoderConverter(Converter):
    """What the decoder families share; a subclass names its architecture and its differences."""

    gguf_model_arch: gguf.MODEL_ARCH
    permute_qk = False  # llama.cpp's "llama" rope layout (see the module docstring)
    norm_shift = 0.0  # added to RMSNorm weights (Gemma: 1)
    drop_lm_head = False
    activations: tuple[str, ...] = ("silu",)
    extra_layer_tensors: tuple[str, ...] = ()  # needed in every block beyond the common ones

    def __init__(self, directory, config):
        super().__init__(directory, config)
        self.n_layer = int(self.hparam("num_hidden_layers"))
        self.n_head = int(self.hparam("num_attention_heads"))
        self.n_head_kv = int(self.hparam("num_key_value_heads", default=self.n_head))
        self.n_embd = int(self.hparam("hidden_size"))
        self.head_dim = int(self.hparam("head_dim", default=self.n_embd // self.n_head))
        if self.n_head % self.n_head_kv:
            raise ConvertError(f"num_attention_heads ({self.n_head}) is not a multiple of "
                               f"num_key_value_heads ({self.n_head_kv})")
        self.names = gguf.get_tensor_name_map(self.gguf_model_arch, self.n_layer)
        self._checkpoint: Checkpoint | None = None

    # -- tensors --------------------------------------------------------------------------------------
    def tensor_name(self, name: str) -> str | None:
        if name.endswith("rotary_emb.inv_freq") or (self.drop_lm_head and name.startswith("lm_head.")):
            return None  # recomputed by llama.cpp / tied to the embedding
        mapped = self.names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConvertError(f"unexpected tensor {name} in a {self.architectures[0]} checkpoint")
        return mapped

    def transform(self, gguf_name: str, data: np.ndarray) -> np.ndarray:
        if self.permute_qk and gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            data = _rope_interleave(data, self.n_head)
        elif self.permute_qk and gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            data = _rope_interleave(data, self.n_head_kv)
        if self.norm_shift and gguf_name.endswith("norm.weight"):
            data = data.astype(np.float32) + np.float32(self.norm_shift)
        return data

    def check(self, names: set[str]) -> None:
        needed = ["token_embd.weight", "output_norm.weight"]
        per_layer = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                     "ffn_down") + self.extra_layer_tensors
        needed += [f"blk.{i}.{t}.weight" for i in range(self.n_layer) for t in per_layer]
        missing = [n for n in needed if n not in names]
        if missing:
            raise ConvertError(f"the checkpoint lacks tensor {missing[0]}")

    def build(self, checkpoint: Checkpoint, file_type: str = "F16") -> GGUFFile:
        self._checkpoint = checkpoint  # metadata() sizes the vocabulary by the embedding
        f = super().build(checkpoint, file_type)
        factors = self.rope_freq_factors()
        if factors is not None:
            f.add_tensor("rope_freqs.weight", factors.shape, F32, lambda: factors)
        return f

    def embedding_rows(self) -> int | None:
        if self._checkpoint is not None:
            for src in self._checkpoint.names():
                if self.tensor_name(src) == "token_embd.weight":
                    return self._checkpoint.shape(src)[0]
        vocab = self.config.get("vocab_size")
        return int(vocab) if isinstance(vocab, int) else None

    # -- metadata -------------------------------------------------------------------------------------
    def metadata(self, f: GGUFFile) -> None:
        arch = self.gguf_arch
        act = self.config.get("hidden_activation") or self.config.get("hidden_act") or self.activations[0]
        if act not in self.activations:
            raise ConvertError(f"{self.architectures[0]} with activation {act!r} is not supported")
        f.add_uint32(K.LLM.CONTEXT_LENGTH.format(arch=arch), self.hparam("max_position_embeddings"))
        f.add_uint32(K.LLM.EMBEDDING_LENGTH.format(arch=arch), self.n_embd)
        f.add_uint32(K.LLM.BLOCK_COUNT.format(arch=arch), self.n_layer)
        f.add_uint32(K.LLM.FEED_FORWARD_LENGTH.format(arch=arch), self.hparam("intermediate_size"))
        f.add_uint32(K.Attention.HEAD_COUNT.format(arch=arch), self.n_head)
        f.add_uint32(K.Attention.HEAD_COUNT_KV.format(arch=arch), self.n_head_kv)
        f.add_uint32(K.Attention.KEY_LENGTH.format(arch=arch), self.head_dim)
        f.add_uint32(K.Attention.VALUE_LENGTH.format(arch=arch), self.head_dim)
        f.add_uint32(K.Rope.DIMENSION_COUNT.format(arch=arch), self.head_dim)
        f.add_float32(K.Attention.LAYERNORM_RMS_EPS.format(arch=arch), self.hparam("rms_norm_eps", default=1e-6))
        f.add_float32(K.Rope.FREQ_BASE.format(arch=arch), self.rope_theta())
        self.rope_scaling_keys(f)
        self.family_metadata(f)
        tok = read_tokenizer(self.dir, self.config, self.embedding_rows())
        f.add_uint32(K.LLM.VOCAB_SIZE.format(arch=arch), len(tok.tokens))
        tok.write(f)

    def family_metadata(self, f: GGUFFile) -> None:
        """Keys of one family (soft-capping, sliding window); none by default."""

    def rope_parameters(self) -> dict:
        """The rope settings of the global-attention layers: transformers 5's `rope_parameters`
        (per layer type for Gemma 3), else the older `rope_scaling`."""
        params = self.config.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
            params = params["full_attention"]
        if not isinstance(params, dict):
            params = self.config.get("rope_scaling")
        return params if isinstance(params, dict) else {}

    def rope_theta(self) -> float:
        theta = self.config.get("rope_theta") or self.rope_parameters().get("rope_theta")
        return float(theta or self.default_rope_theta)

    default_rope_theta = 10000.0

    def rope_type(self) -> str:
        params = self.rope_parameters()
        return str(params.get("rope_type") or params.get("type") or "default")

    def rope_scaling_keys(self, f: GGUFFile) -> None:
        arch, params, kind = self.gguf_arch, self.rope_parameters(), self.rope_type()
        if kind == "default":
            return
        if kind == "llama3" and self.gguf_arch == "llama":
            return  # the rope_freqs tensor
        factor = params.get("factor")
        if kind not in ("linear", "yarn") or not isinstance(factor, (int, float)):
            raise ConvertError(f"rope scaling {kind!r} is not supported for {self.architectures[0]}")
        f.add_string(K.Rope.SCALING_TYPE.format(arch=arch), kind)
        f.add_float32(K.Rope.SCALING_FACTOR.format(arch=arch), factor)
        if kind == "yarn":
            original = params.get("original_max_position_embeddings")
            if not isinstance(original, int):
                raise ConvertError("yarn rope scaling needs original_max_position_embeddings")
            f.add_uint32(K.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch), original)

    def rope_freq_factors(self) -> np.ndarray | None:
        """Llama 3.1's per-dimension rope divisors (llama.cpp divides each frequency by them)."""
        if self.gguf_arch != "llama" or self.rope_type() != "llama3":
            return None
        p = self.rope_parameters()
        factor = float(p.get("factor", 8.0))
        low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
        old_ctx = float(p.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / self.rope_theta() ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        wavelen = 2 * math.pi / freqs
        smooth = (old_ctx / wavelen - low) / (high - low)
        factors = np.where(wavelen < old_ctx / high, 1.0,
                           np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
        return factors.astype(np.float32)


def _rope_interleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """Each head's rows from halves order to pairs order (see the module docstring); biases too."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConvertError(f"cannot split {rows} rows into {n_head} rope heads")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class LlamaConverter(DecoderConverter):
    architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = "llama"
    gguf_model_arch = gguf.MODEL_ARCH.LLAMA
    permute_qk = True


class Qwen2Converter(DecoderConverter):
    architectures = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    gguf_model_arch = gguf.MODEL_ARCH.QWEN2

    def family_metadata(self, f: GGUFFile) -> None:
        if self.config.get("use_sliding_window"):
            raise ConvertError("Qwen2 with use_sliding_window is not supported (llama.cpp's qwen2 attends fully)")


class GemmaConverter(DecoderConverter):
    architectures = ("GemmaForCausalLM",)
    gguf_arch = "gemma"
    gguf_model_arch = gguf.MODEL_ARCH.GEMMA
    norm_shift = 1.0
    drop_lm_head = True
    activations = ("gelu_pytorch_tanh", "gelu", "gelu_new")  # llama.cpp: tanh-approximated GELU
    #: llama.cpp's sliding-window pattern: every n-th layer attends fully (0: no sliding window)
    swa_period = 0
    #: layer counts llama.cpp takes for a 27B model, whose attention scale it computes differently
    layers_27b: tuple[int, ...] = ()

    def family_metadata(self, f: GGUFFile) -> None:
        self.check_attention_scale()

    def check_attention_scale(self) -> None:
        scalar = self.config.get("query_pre_attn_scalar")
        if scalar is None:
            return
        expected = self.n_embd // self.n_head if self.n_layer in self.layers_27b else self.head_dim
        if scalar != expected:
            raise ConvertError(f"query_pre_attn_scalar {scalar} is not supported (llama.cpp scales attention "
                               f"by 1/sqrt({expected}) for this model)")

    def check_layer_pattern(self) -> None:
        types = self.config.get("layer_types")
        if isinstance(types, list):
            expected = ["full_attention" if (i + 1) % self.swa_period == 0 else "sliding_attention"
                        for i in range(self.n_layer)]
            if types != expected:
                raise ConvertError(f"this layer_types pattern is not supported (llama.cpp makes every "
                                   f"{self.swa_period}th layer global)")

    def sliding_window(self) -> int:
        window = self.config.get("sliding_window")
        if not isinstance(window, int) or window <= 0:
            raise ConvertError("config.json lacks sliding_window")
        return window


class Gemma2Converter(GemmaConverter):
    architectures = ("Gemma2ForCausalLM",)
    gguf_arch = "gemma2"
    gguf_model_arch = gguf.MODEL_ARCH.GEMMA2
    extra_layer_tensors = ("post_attention_norm", "post_ffw_norm")
    swa_period = 2
    layers_27b = (46,)

    def family_metadata(self, f: GGUFFile) -> None:
        self.check_attention_scale()
        self.check_layer_pattern()
        arch = self.gguf_arch
        f.add_float32(K.LLM.ATTN_LOGIT_SOFTCAPPING.format(arch=arch), self.hparam("attn_logit_softcapping"))
        f.add_float32(K.LLM.FINAL_LOGIT_SOFTCAPPING.format(arch=arch), self.hparam("final_logit_softcapping"))
        f.add_uint32(K.Attention.SLIDING_WINDOW.format(arch=arch), self.sliding_window())


class Gemma3Converter(GemmaConverter):
    architectures = ("Gemma3ForCausalLM",)
    gguf_arch = "gemma3"
    gguf_model_arch = gguf.MODEL_ARCH.GEMMA3
    extra_layer_tensors = ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")
    swa_period = 6
    layers_27b = (62,)
    default_rope_theta = 1_000_000.0

    def __init__(self, directory, config):
        super().__init__(directory, config)
        self.drop_lm_head = config.get("tie_word_embeddings", True) is not False

    def family_metadata(self, f: GGUFFile) -> None:
        self.check_attention_scale()
        self.check_layer_pattern()
        pattern = self.config.get("sliding_window_pattern")
        if pattern is not None and pattern != self.swa_period:
            raise ConvertError(f"sliding_window_pattern {pattern} is not supported (llama.cpp uses 6)")
        if self.config.get("attn_logit_softcapping") is not None:
            raise ConvertError("Gemma 3 with attn_logit_softcapping is not supported")
        local = self.config.get("rope_local_base_freq")
        params = self.config.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
            local = params["sliding_attention"].get("rope_theta", local)
        if local is not None and float(local) != 10000.0:
            raise ConvertError(f"rope_local_base_freq {local} is not supported (llama.cpp uses 10000)")
        if self.config.get("final_logit_softcapping"):
            # llama.cpp's sliding-window Gemma 3 graph never soft-caps the logits
            raise ConvertError("Gemma 3 with final_logit_softcapping is not supported")
        f.add_uint32(K.Attention.SLIDING_WINDOW.format(arch=self.gguf_arch), self.sliding_window())


DECODER_CONVERTERS = (LlamaConverter, Qwen2Converter, GemmaConverter, Gemma2Converter, Gemma3Converter)
